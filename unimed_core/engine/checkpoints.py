"""Checkpoints that survive a killed run: MONAI's ``CheckpointSaver`` with atomic, remove-after-save writes.

MONAI 1.6's ``CheckpointSaver`` writes checkpoints in place (``DiskSaver(atomic=False)``, to keep group read
permission), and ignite's ``Checkpoint`` deletes the file it rotates out *before* it writes the new one. A
training run killed while a checkpoint is being written is then left with no complete checkpoint at all,
and a fixed name (the best model's ``model.pt``) is left truncated. :class:`AtomicCheckpointSaver` keeps
MONAI's handler (events, file names, key metric, final save) and only swaps its save handlers for
:class:`AtomicDiskSaver`, which

- writes to a hidden temporary file in the same folder and renames it into place (``unimed_core.data.atomic``,
  normal permissions; the temporary name ends in ``.tmp``, so nothing globbing ``*.pt`` picks it up);
- writes the sha256 beside every checkpoint at once (what ``load_weights`` checks), not only when the run ends;
- deletes the files ignite asked to remove only after the new checkpoint is complete.

:func:`latest_checkpoint` finds the newest complete checkpoint to resume from after a kill.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from unimed_core.data.atomic import atomic_write, atomic_write_text
from unimed_core.model.weights import sha256_of

__all__ = ["AtomicDiskSaver", "AtomicCheckpointSaver", "latest_checkpoint"]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class AtomicDiskSaver(DiskSaver):
    """An ignite save handler: atomic write + sha256 sidecar, deferred removal of rotated-out files.

    Args:
        dirname: the checkpoint folder (created when missing).
        filename: a fixed file name for every save (MONAI's ``final_filename`` / ``key_metric_filename``).
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self._stale: list[Path] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        path = Path(self.dirname) / (self.filename or filename)
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)
        atomic_write_text(_sidecar(path), f"{sha256_of(path)}  {path.name}\n")
        for old in self._stale:
            if old != path:
                old.unlink(missing_ok=True)
                _sidecar(old).unlink(missing_ok=True)
        self._stale.clear()

    def remove(self, filename: str) -> None:
        # ignite calls this before saving the replacement: remember it, delete once the new file is complete
        self._stale.append(Path(self.dirname) / (self.filename or filename))


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments) whose files are written by :class:`AtomicDiskSaver`.

    Example (a bundle config)::

        {"_target_": "unimed_core.engine.AtomicCheckpointSaver", "save_dir": "@ckpt_dir",
         "save_dict": {"model": "@network_def", "optimizer": "@optimizer"}, "save_interval": 1, "n_saved": 1}
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # MONAI builds up to three ignite Checkpoints, each with its own fixed-name-aware DiskSaver
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, fixed)


def _epoch(path: Path) -> int:
    match = re.search(r"epoch=(\d+)", path.name)
    return int(match.group(1)) if match else -1


def latest_checkpoint(directory: str | Path, prefix: str = "checkpoint") -> str | None:
    """The newest complete checkpoint in ``directory`` to resume from, or None when there is none.

    Complete means its sha256 sidecar exists and matches (an interrupted write leaves only a ``.tmp`` file).
    The final checkpoint (``PREFIX_last.pt`` in ``train.json``) comes first, then the highest
    ``PREFIX_epoch=N.pt``.
    """
    candidates = sorted(
        Path(directory).glob(f"{prefix}*.pt"), key=lambda p: (p.name.startswith(f"{prefix}_last"), _epoch(p))
    )
    for path in reversed(candidates):
        sidecar = _sidecar(path)
        if sidecar.is_file() and sidecar.read_text(encoding="utf-8").split()[:1] == [sha256_of(path)]:
            return str(path)
    return None
