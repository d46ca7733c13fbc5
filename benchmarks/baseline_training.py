"""Training MONAI's baselines with their recipes' optimiser, schedule and augmentation, in resumable pieces.

Each task's :class:`Recipe` names the MONAI bundle or tutorial it follows (Project-MONAI/model-zoo unless said
otherwise) and says where this benchmark departs from it and why:

- segmentation (SegResNet): research-contributions ``auto3dseg/algorithm_templates/segresnet/configs/
  hyper_parameters.yaml`` — AdamW, lr 2e-4, weight decay 1e-5, a warm-up of 3 of its 300 epochs (1 %) then a
  cosine decay (MONAI's ``WarmupCosineSchedule``, as its ``segmenter.py``). Augmentation: the BraTS SegResNet
  bundle's intensity scale and shift (0.1 each) and Auto3DSeg's small random affine, which is UniMed's own
  :class:`~unimed_core.data.augmentation.Augmentation`; the bundles' random flips are left out because the labels
  are lateralised (a left-right flip turns the left kidney into the right one, see that module).
- detection (RetinaNet): ``lung_nodule_ct_detection/configs/train.json`` — SGD, lr 1e-2, momentum 0.9, Nesterov,
  weight decay 3e-5; a linear warm-up over 10 of its 300 epochs then a step decay x0.1 at half of them (its
  ``GradualWarmupScheduler`` over ``StepLR``), here as the same fractions of ``schedule_steps``. Augmentation: its
  ``RandFlipBoxd`` on each axis (p 0.5) and ``RandRotateBox90d`` in the axial plane (p 0.75, k 1-3) with MONAI's
  box transforms, and its intensity scale / shift (UniMed's ``Augmentation`` leaves box-only cases in place
  and changes only their intensities). Left out: its zoom and free rotation (a rotated box is no longer tight),
  noise, smoothing and contrast terms.
- classification (DenseNet121): ``pathology_nuclei_classification/configs/train.json`` (MONAI's DenseNet121
  bundle) — Adam, lr 1e-4, constant. The 3D tutorial (tutorials ``3d_classification/torch/
  densenet_training_array.py``) uses 1e-5 for 5 epochs of 10 studies, a demonstration; its augmentation,
  ``RandRotate90`` (p 0.1, axial plane), is kept.

Same for every task, as UniMed: batch 2 (the recipes: 1-4 images, several crops each), the whole study as one 64^3
patch at 6 mm (so the recipes' foreground-aware crops, ``RandCropByPosNegLabeld`` / ``RandCropBoxByPosNegLabeld``,
have nothing to choose: the crop is the study), float32 on the CPU (the recipes: mixed precision on a GPU).

Runs longer than a session use one checkpoint file (:class:`~unimed_core.training.resumable.ResumableCheckpoint`:
atomic write, sha256 beside it), written at an epoch's end; the order and augmentation of an epoch are a function
of (seed, epoch, item), so a run resumed there draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.apps.detection.transforms.array import FlipBox, RotateBox90
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import Flip, Rotate90

from benchmarks.baselines import NEEDS, baseline_loss, items_for
from unimed_core.data.augmentation import DEFAULT_AUGMENTATION
from unimed_core.data.training_data import LoadedCase, crop_case, load_case
from unimed_core.label_map import LabelMap
from unimed_core.model.weights import save_weights
from unimed_core.training.fit import TimeBudget
from unimed_core.training.resumable import ResumableCheckpoint

__all__ = [
    "Recipe",
    "RECIPES",
    "STEP_CPU_S",
    "steps_for_budget",
    "BaselineDataset",
    "train_baseline",
    "train_baseline_run",
]


@dataclass(frozen=True)
class Recipe:
    """A baseline's optimiser, learning-rate schedule and augmentation, as its MONAI recipe sets them.

    Args:
        source: the recipe's file (repository and path).
        optimizer: ``"adamw"``, ``"sgd"`` (momentum 0.9, Nesterov) or ``"adam"``.
        lr, weight_decay: the recipe's.
        schedule: ``"warmup_cosine"``, ``"warmup_step"`` (x0.1 at half of the schedule) or ``"constant"``.
        warmup_fraction: warm-up length as a share of the schedule (the recipe's warm-up epochs / its epochs).
        augment: ``"affine_intensity"`` (segmentation), ``"flip_rot90_intensity"`` (detection), ``"rot90"``
            (classification) or ``"none"``.
    """

    source: str
    optimizer: str
    lr: float
    weight_decay: float
    schedule: str
    warmup_fraction: float
    augment: str

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd", "adam"):
            raise ValueError(f"optimizer must be 'adamw', 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("warmup_cosine", "warmup_step", "constant"):
            raise ValueError(f"schedule must be warmup_cosine, warmup_step or constant, got {self.schedule!r}")
        if self.augment not in ("affine_intensity", "flip_rot90_intensity", "rot90", "none"):
            raise ValueError(f"unknown augment {self.augment!r}")
        if self.lr <= 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"lr must be > 0 and warmup_fraction in [0, 1), got {self.lr}, {self.warmup_fraction}")

    def build_optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        lr = self.lr if lr is None else lr
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=self.weight_decay, nesterov=True)

    def build_schedule(self, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The schedule over ``steps`` optimiser steps (stepped once per step)."""
        warmup = max(1, round(self.warmup_fraction * steps)) if self.warmup_fraction else 0
        if self.schedule == "warmup_cosine":  # Auto3DSeg segmenter.py: warm-up from a tenth of the rate
            return WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=steps, warmup_multiplier=0.1)

        def factor(step: int) -> float:
            ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
            decay = 0.1 if self.schedule == "warmup_step" and step >= steps // 2 else 1.0
            return ramp * decay

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


RECIPES = {
    "segmentation": Recipe(
        "Project-MONAI/research-contributions auto3dseg/algorithm_templates/segresnet/configs/hyper_parameters.yaml",
        "adamw", 2e-4, 1e-5, "warmup_cosine", 3 / 300, "affine_intensity",
    ),
    "detection": Recipe(
        "Project-MONAI/model-zoo models/lung_nodule_ct_detection/configs/train.json",
        "sgd", 1e-2, 3e-5, "warmup_step", 10 / 300, "flip_rot90_intensity",
    ),
    "classification": Recipe(
        "Project-MONAI/model-zoo models/pathology_nuclei_classification/configs/train.json",
        "adam", 1e-4, 0.0, "constant", 0.0, "rot90",
    ),
}  # fmt: skip


# CPU seconds of one training step (batch 2, 64^3, one thread), measured on the 2-core benchmark machine; they
# turn a CPU budget into the length of the learning-rate schedule (``steps_for_budget``).
STEP_CPU_S = {"segmentation": 3.0, "detection": 1.7, "classification": 1.6}


def steps_for_budget(task: str, cpu_s: float) -> int:
    """About how many steps ``cpu_s`` CPU seconds allow the ``task`` baseline: its schedule's length."""
    return max(10, int(cpu_s / STEP_CPU_S[task]))


def _augment(case: LoadedCase, kind: str, rng: np.random.Generator) -> LoadedCase:
    """One draw of the recipe's augmentation (every parameter drawn whatever is used, for reproducible draws)."""
    flips = rng.random(3) < 0.5
    rotate, k = rng.random(), int(rng.integers(1, 4))
    if kind == "none":
        return case
    if kind == "affine_intensity":
        return DEFAULT_AUGMENTATION(case, rng)
    image, boxes = case.image, case.boxes
    if kind == "flip_rot90_intensity":
        # RandFlipBoxd (p 0.5 per axis) and RandRotateBox90d (p 0.75, k 1-3, axes 0 and 1) of the bundle
        case = DEFAULT_AUGMENTATION(replace(case, semantic=None), rng)  # box-only: intensities only
        image, boxes, size = case.image, case.boxes, case.image.shape[1:]
        for axis in np.flatnonzero(flips).tolist():
            image = Flip(spatial_axis=axis)(image).as_subclass(torch.Tensor)
            boxes = FlipBox(spatial_axis=axis)(boxes, size) if boxes is not None and len(boxes) else boxes
        if rotate < 0.75:
            image = Rotate90(k=k, spatial_axes=(0, 1))(image).as_subclass(torch.Tensor)
            if boxes is not None and len(boxes):
                boxes = RotateBox90(k=k, spatial_axes=(0, 1))(boxes, size)
            size = image.shape[1:]
        return replace(case, image=image, boxes=boxes)
    if rotate < 0.1:  # "rot90": the tutorial's RandRotate90() (p 0.1, k 1, axes 0 and 1)
        image = Rotate90(k=1, spatial_axes=(0, 1))(image).as_subclass(torch.Tensor)
    return replace(case, image=image)


class BaselineDataset(torch.utils.data.Dataset):
    """Datalist items → cropped, augmented :class:`LoadedCase` for one baseline; draw ``i`` of epoch ``e`` is
    a function of (seed, e, i) (``set_epoch``), as ``UniMedTrainingDataset``'s."""

    def __init__(
        self,
        task: str,
        items: Sequence[dict],
        label_map: LabelMap,
        patch_size: Sequence[int],
        spacing: Sequence[float],
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        self.items = items_for(task, items)
        if not self.items:
            raise ValueError(f"no training item carries {NEEDS[task]!r}: nothing for the {task} baseline to learn")
        self.task, self.label_map = task, label_map
        self.patch_size, self.spacing = tuple(int(p) for p in patch_size), tuple(float(s) for s in spacing)
        self.seed, self.epoch = seed, 0
        self.augment = RECIPES[task].augment if augment else "none"
        self._cache: dict[int, LoadedCase] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedCase:
        if index not in self._cache:
            self._cache[index] = load_case(self.items[index], self.label_map, self.spacing)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case = crop_case(self._cache[index], self.patch_size, rng)
        if self.task == "detection":  # RetinaNet learns from the boxes alone
            case = replace(case, semantic=None)
        return _augment(case, self.augment, rng)


def _loader(dataset: BaselineDataset, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    # the order of an epoch depends on (seed, epoch) alone, as build_train_loader's (DistributedSampler.set_epoch)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=list, drop_last=len(dataset) >= batch_size
    )


def train_baseline(
    task: str,
    model: torch.nn.Module,
    items: Sequence[dict],
    label_map: LabelMap,
    *,
    patch_size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (6.0, 6.0, 6.0),
    batch_size: int = 2,
    lr: float | None = None,
    max_steps: int = 1000,
    schedule_steps: int | None = None,
    time_budget_s: float | None = None,
    time_budget_clock: str = "process",
    seed: int = 0,
    log_every: int = 50,
    augment: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every_s: float = 600.0,
    stop_after_s: float | None = None,
    snapshot_steps: Sequence[int] = (),
    snapshot_dir: str | Path | None = None,
) -> list[dict]:
    """Train a baseline in place with its task's :data:`RECIPES` entry; returns the logged history.

    Only ``items_for(task, items)`` are used. ``lr`` None is the recipe's. ``schedule_steps``: the length the
    learning-rate schedule (warm-up, decay) is laid over, ``max_steps`` when None; a time-budgeted run that will
    stop long before ``max_steps`` should give it. ``checkpoint`` / ``checkpoint_every_s`` / ``stop_after_s`` /
    ``snapshot_steps`` / ``snapshot_dir``: as ``unimed_core.training.fit.fit`` (one resumable file, resumed
    when it exists; weights at the given steps as ``snapshot_dir/step_<N>.pt``). History rows: step, seconds and
    cpu_seconds since the run's first step (across resumed pieces), loss.
    """
    if time_budget_clock not in ("wall", "process"):
        raise ValueError(f"time_budget_clock must be 'wall' or 'process', got {time_budget_clock!r}")
    if snapshot_steps and snapshot_dir is None:
        raise ValueError("snapshot_steps need a snapshot_dir")
    recipe = RECIPES[task] if task in RECIPES else None
    if recipe is None:
        raise ValueError(f"task must be one of {sorted(RECIPES)}, got {task!r}")
    torch.manual_seed(seed)
    dataset = BaselineDataset(task, items, label_map, patch_size, spacing, seed, augment)
    loader = _loader(dataset, batch_size, seed)
    optimizer = recipe.build_optimizer(model.parameters(), lr)
    schedule = recipe.build_schedule(optimizer, schedule_steps or max_steps)
    model.train()

    def _step(engine: Engine, cases: list[LoadedCase]) -> dict:
        if task == "classification":  # a crop that cut the volume leaves image labels unknown
            cases = [c for c in cases if c.image_classes is not None]
        if not cases:
            return {"loss": math.nan}
        loss = baseline_loss(task, model, cases, label_map)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return {"loss": float(loss.detach())}

    # The handlers below (clocks across pieces, log, snapshots, last row, checkpoint) are those of
    # unimed_core.training.fit.fit, which keeps them inside fit(); a helper there could serve both.
    engine = Engine(_step)
    history: list[dict] = []
    # seconds of earlier pieces of a resumed run (wall, CPU), so that the history's clocks run on across them
    spent = {"seconds": 0.0, "cpu_seconds": 0.0}
    clock = {"wall": time.monotonic(), "cpu": time.process_time()}

    def _spent_now() -> dict:
        return {"seconds": spent["seconds"] + time.monotonic() - clock["wall"],
                "cpu_seconds": spent["cpu_seconds"] + time.process_time() - clock["cpu"]}  # fmt: skip

    def _log(e: Engine) -> None:
        now = _spent_now()
        history.append({"step": e.state.iteration, "seconds": round(now["seconds"], 1),
                        "cpu_seconds": round(now["cpu_seconds"], 1), "loss": e.state.output["loss"]})  # fmt: skip

    @engine.on(Events.EPOCH_STARTED)
    def _set_epoch(e: Engine) -> None:
        loader.sampler.set_epoch(e.state.epoch)
        dataset.set_epoch(e.state.epoch)

    @engine.on(Events.ITERATION_COMPLETED)
    def _after_step(e: Engine) -> None:
        if e.state.iteration >= max_steps:
            e.terminate()
        if e.state.iteration % log_every == 0 or e.state.iteration == 1:
            _log(e)
        if e.state.iteration in snapshot_steps:
            save_weights(model, Path(snapshot_dir) / f"step_{e.state.iteration}.pt")

    @engine.on(Events.COMPLETED)
    def _last_step(e: Engine) -> None:
        if e.state.output is not None and (not history or history[-1]["step"] != e.state.iteration):
            _log(e)

    if time_budget_s:
        TimeBudget(time_budget_s, time_budget_clock).attach(engine)
    if checkpoint is not None:
        resumable = ResumableCheckpoint(
            checkpoint, {"model": model, "optimizer": optimizer, "schedule": schedule, "trainer": engine},
            extra={
                "torch_rng": (torch.get_rng_state, torch.set_rng_state),  # dropout, the detector's sampler
                "history": (lambda: list(history), lambda rows: history.extend(rows)),
                "spent": (_spent_now, lambda value: spent.update(value)),
            },
            every_s=checkpoint_every_s, stop_after_s=stop_after_s,
        )  # fmt: skip
        resumable.load()
        resumable.attach(engine)  # after _last_step, so that the saved history ends at the last step
    clock.update(wall=time.monotonic(), cpu=time.process_time())
    if engine.state.iteration < max_steps:
        engine.run(loader, max_epochs=max(1, -(-max_steps // max(1, len(loader)))))
    return history


def train_baseline_run(
    task: str, model: torch.nn.Module, items: Sequence[dict], label_map: LabelMap, **kwargs
) -> tuple[list[dict], dict]:
    """:func:`train_baseline` with the run's record for a results file: (history, {steps, cpu_s, wall_s, items,
    final_loss, recipe})."""
    cpu, wall = time.process_time(), time.monotonic()
    history = train_baseline(task, model, items, label_map, **kwargs)
    run = {"steps": history[-1]["step"] if history else 0, "cpu_s": round(time.process_time() - cpu, 1),
           "wall_s": round(time.monotonic() - wall, 1), "items": len(items_for(task, items)),
           "final_loss": history[-1]["loss"] if history else None, "recipe": RECIPES[task].source}  # fmt: skip
    return history, run
