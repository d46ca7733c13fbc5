"""Small pieces ``train.json`` and ``multi_gpu_train.json`` wire around MONAI's ``SupervisedTrainer``.

- :class:`SetDatasetEpoch`: gives ``UniMedTrainingDataset`` the epoch so its random crops differ per epoch
  (MONAI already does this for a ``DistributedSampler``, not for the dataset);
- :class:`WeightHashes`: writes the ``.sha256`` beside every checkpoint, which ``load_weights`` requires;
- :func:`rank_handlers`: under ``torchrun`` only rank 0 validates, logs and saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Events

from unimed_core.data.atomic import atomic_write_text
from unimed_core.model.weights import sha256_of

__all__ = ["SetDatasetEpoch", "WeightHashes", "attach_handlers", "rank_handlers", "EVERY_RANK"]

# Handlers every rank must run under torchrun: they change the model or the data order, not the logs.
EVERY_RANK = ("CheckpointLoader", "LrScheduleHandler", "SetDatasetEpoch")


class SetDatasetEpoch:
    """Handler: call ``dataset.set_epoch(epoch)`` on the engine's data loader's dataset at every epoch start."""

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        dataset = getattr(engine.data_loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(engine.state.epoch)


class WeightHashes:
    """Handler: write ``NAME.pt.sha256`` for every ``*.pt`` in ``directory`` that lacks an up-to-date one, and
    remove the sidecars of checkpoints that were deleted (MONAI keeps only the last ``n_saved``).

    Args:
        directory: the checkpoint folder.
        event: when to run (the evaluator's ``COMPLETED`` after the best model was saved, or the trainer's).
    """

    def __init__(self, directory: str | Path, event: str = "COMPLETED") -> None:
        self.directory = Path(directory)
        try:
            self.event = Events[event]
        except KeyError:
            raise ValueError(f"event must be an ignite Events name like 'COMPLETED', got {event!r}") from None

    def attach(self, engine) -> None:
        engine.add_event_handler(self.event, self)

    def __call__(self, engine=None) -> None:
        for sidecar in self.directory.glob("*.pt.sha256"):  # checkpoints MONAI rotated away
            if not sidecar.with_suffix("").is_file():
                sidecar.unlink(missing_ok=True)
        for path in sorted(self.directory.glob("*.pt")):
            sidecar = path.with_name(path.name + ".sha256")
            if sidecar.is_file() and sidecar.stat().st_mtime >= path.stat().st_mtime:
                continue
            atomic_write_text(sidecar, f"{sha256_of(path)}  {path.name}\n")


def rank_handlers(handlers: Sequence) -> list:
    """All ``handlers`` on rank 0 (or without torch.distributed); on other ranks only :data:`EVERY_RANK`."""
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        return list(handlers)
    return [h for h in handlers if type(h).__name__ in EVERY_RANK]


def attach_handlers(engine, handlers: Sequence) -> list:
    """Attach ``handlers`` (None entries, i.e. disabled config components, skipped) filtered by :func:`rank_handlers`.

    For handlers whose arguments name the engine itself (resuming or saving the trainer's state), which
    a config cannot pass to the engine's constructor without a circular reference.
    """
    attached = rank_handlers([h for h in handlers if h is not None])
    for handler in attached:
        handler.attach(engine)
    return attached
