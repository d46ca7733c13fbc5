"""One resumable checkpoint file for runs longer than a working session (``fit(..., checkpoint=...)``).

A run of several CPU-hours on a 2-core machine spans sessions that end without warning. The bundle resumes with
MONAI's ``CheckpointLoader`` over ``CheckpointSaver`` files; ``fit`` (benchmarks, the learning curve) keeps one file
instead, replaced atomically with its sha256 beside it (``AtomicDiskSaver``'s format), holding everything the run's
next step depends on: weights, optimiser, learning-rate schedule, the engine's step and epoch, torch's global
generator, the objective's prompt / mask generator and the logged history.

It is written at the end of an epoch (and when the run stops): the loader's order and the dataset's augmentation are
a function of the epoch (``DistributedSampler.set_epoch``, ``UniMedTrainingDataset.set_epoch``), so a run resumed
from an epoch's end draws exactly the batches an uninterrupted run would (tested: the same weights, bit for bit). A
run killed mid-epoch loses at most the steps since the last save (``every_s``, 10 minutes by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from unimed_core.data.atomic import atomic_write, atomic_write_text
from unimed_core.model.weights import sha256_of

__all__ = ["ResumableCheckpoint", "read_checkpoint"]


def read_checkpoint(path: str | Path) -> dict:
    """The state in a checkpoint file, after checking it against its sha256 sidecar (``path + ".sha256"``).

    Raises:
        ValueError: the file does not match its sidecar, or has none (incomplete or altered checkpoint).
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    expected = sidecar.read_text(encoding="utf-8").split()[:1] if sidecar.is_file() else []
    if expected != [sha256_of(path)]:
        raise ValueError(f"{path}: sha256 does not match {sidecar} (incomplete or altered checkpoint)")
    return torch.load(path, map_location="cpu", weights_only=True)


class ResumableCheckpoint:
    """Saves and restores a training run's whole state in one file.

    Args:
        path: the checkpoint file (``.pt``); its sha256 goes to ``path + ".sha256"``.
        objects: name → object with ``state_dict`` / ``load_state_dict`` (model, optimiser, scheduler, the engine,
            the iteration update), saved and restored together.
        extra: name → (getter, setter) for state without that protocol (a generator's state, the history).
        every_s: seconds of wall time between saves (checked at the end of each epoch).
        stop_after_s: end the run cleanly (saved) at the first epoch end after this many wall seconds, or None.

    Example:
        >>> ckpt = ResumableCheckpoint("run.pt", {"model": model, "trainer": trainer})  # doctest: +SKIP
        >>> ckpt.load()  # doctest: +SKIP
        >>> ckpt.attach(trainer); trainer.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        objects: Mapping[str, object],
        extra: Mapping[str, tuple[Callable[[], object], Callable[[object], None]]] | None = None,
        every_s: float = 600.0,
        stop_after_s: float | None = None,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        if stop_after_s is not None and stop_after_s <= 0:
            raise ValueError(f"stop_after_s must be > 0 or None, got {stop_after_s}")
        for name, obj in objects.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise ValueError(f"{name!r} has no state_dict / load_state_dict")
        self.path = Path(path)
        self.objects = dict(objects)
        self.extra = dict(extra or {})
        self.every_s = float(every_s)
        self.stop_after_s = stop_after_s
        self._start = time.monotonic()
        self._last_save = self._start
        self._saved_at: int | None = None  # the engine's step at the last save

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self) -> None:
        state = {name: obj.state_dict() for name, obj in self.objects.items()}
        state.update({name: get() for name, (get, _) in self.extra.items()})
        with atomic_write(self.path) as tmp:
            torch.save(state, tmp)
        atomic_write_text(self.sidecar, f"{sha256_of(self.path)}  {self.path.name}\n")
        self._last_save = time.monotonic()

    def load(self) -> bool:
        """Restore every object from the file, after checking its sha256; False when there is no file yet."""
        if not self.exists():
            return False
        state = read_checkpoint(self.path)
        missing = [name for name in [*self.objects, *self.extra] if name not in state]
        if missing:
            raise ValueError(f"{self.path}: checkpoint lacks {missing}")
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        for name, (_, put) in self.extra.items():
            put(state[name])
        return True

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _epoch_completed(self, engine: Engine) -> None:
        now = time.monotonic()
        stop = self.stop_after_s is not None and now - self._start >= self.stop_after_s
        if stop or now - self._last_save >= self.every_s:
            self.save()
            self._saved_at = engine.state.iteration
        if stop:
            engine.terminate()

    def _completed(self, engine: Engine) -> None:
        # the end of the run (its step budget, a time budget or ``stop_after_s``): saved wherever it stopped. A save
        # mid-epoch resumes at the next epoch's start, so only saves at an epoch's end resume exactly.
        # Not again when the epoch's end just saved this step: ignite sets up the next epoch's data iterator when it
        # stops, which draws from the loader's generator, so a second save would resume with a different order.
        if engine.state.iteration and engine.state.iteration != self._saved_at:
            self.save()
