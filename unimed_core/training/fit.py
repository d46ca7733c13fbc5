"""Training on a datalist with MONAI's engine: the pieces the bundle's ``train.json`` wires, as functions.

``build_objective`` assembles matcher → criterion → joint objective (the model never builds its own loss,
STYLE.md §4); ``build_trainer`` makes a ``monai.engines.SupervisedTrainer`` whose iteration is
:class:`~unimed_core.training.joint_iteration.JointIteration`; ``fit`` runs it under a step or time budget,
which is what benchmarks and tests need.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from unimed_core.data.augmentation import DEFAULT_AUGMENTATION, Augmentation
from unimed_core.data.training_data import UniMedTrainingDataset, collate_samples
from unimed_core.label_map import LabelMap
from unimed_core.losses.matcher import HungarianMatcher
from unimed_core.losses.set_criterion import SetCriterion
from unimed_core.model.weights import save_weights
from unimed_core.tokenizer import Tokenizer
from unimed_core.training.joint_iteration import JointIteration
from unimed_core.training.objective import JointObjective
from unimed_core.training.resumable import ResumableCheckpoint

# Mask2Former's balance for the set terms (class 2, mask BCE 5, Dice 5); the box-token term is already a sum
# over six coordinates plus an L1, so it gets 1. The unsupervised term is on, so unlabelled volumes count.
DEFAULT_LOSS_WEIGHTS = {
    "loss_class": 2.0,
    "loss_mask_bce": 5.0,
    "loss_mask_dice": 5.0,
    "loss_box": 1.0,
    "loss_image": 2.0,
    "loss_prompt_mask_bce": 5.0,
    "loss_prompt_mask_dice": 5.0,
    # The prompt masks of the earlier decoder layers (deep supervision, see JointObjective._prompt_mask_terms):
    # at 5, like the last layer's, the organ Dice of a 30-minute run fell to 0.59; at 1 it was 0.78 (0.75 at 0).
    "loss_prompt_mask_bce_aux": 1.0,
    "loss_prompt_mask_dice_aux": 1.0,
    # The prompt queries' class (JointObjective._prompt_class_terms): off. Fine-tuned 720 steps from step 9600 of
    # the learning curve at 2 (aux 1) against 0, it did not lift click Dice (0.769 against 0.772 on the test split,
    # 0.734 against 0.758 on fresh seed 7): the failing prompts turned into lesions instead of "no object".
    "loss_prompt_class": 0.0,
    "loss_prompt_class_aux": 0.0,
    "loss_sequence": 1.0,
    "loss_sequence_mask_bce": 2.0,
    "loss_sequence_mask_dice": 2.0,
    "loss_class_mask_bce": 2.0,
    "loss_class_mask_dice": 2.0,
    "loss_mvm": 0.2,
}

# Foreground weight cap of the class-token masks' BCE (``sigmoid_bce_loss``). Measured on the CPU learning benchmark
# (30 min, 1 thread, same seed): organ Dice 0.76 with 30 vs 0.57 with 1 (unweighted), click Dice 0.56 vs 0.22.
DEFAULT_CLASS_MASK_POS_WEIGHT = 30.0

__all__ = [
    "DEFAULT_CLASS_MASK_POS_WEIGHT",
    "DEFAULT_LOSS_WEIGHTS",
    "build_objective",
    "build_train_loader",
    "build_trainer",
    "fit",
    "parameter_groups",
    "TimeBudget",
]


def build_objective(
    model: torch.nn.Module, label_map: LabelMap, weights: Mapping[str, float] | None = None, **kwargs
) -> JointObjective:
    """Hungarian matcher → set criterion → joint objective over the model's vocabulary.

    ``weights`` None means :data:`DEFAULT_LOSS_WEIGHTS`; a mapping is used as given (missing terms weigh 1,
    the unsupervised term 0: see ``JointObjective``). ``kwargs`` go to ``JointObjective``;
    ``class_mask_pos_weight`` defaults to :data:`DEFAULT_CLASS_MASK_POS_WEIGHT`.
    """
    weights = DEFAULT_LOSS_WEIGHTS if weights is None else weights
    kwargs.setdefault("class_mask_pos_weight", DEFAULT_CLASS_MASK_POS_WEIGHT)
    criterion = SetCriterion(num_classes=len(label_map.class_names), matcher=HungarianMatcher())
    return JointObjective(criterion, Tokenizer(model.vocab), weights=weights, label_map=label_map, **kwargs)


def build_train_loader(
    items: Sequence[dict],
    model: torch.nn.Module,
    label_map: LabelMap,
    patch_size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    batch_size: int = 2,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    augmentation: Augmentation | None = DEFAULT_AUGMENTATION,
) -> torch.utils.data.DataLoader:
    """A shuffling loader of (patch, Target) samples, augmented per draw; a ``DistributedSampler`` under torchrun."""
    dataset = UniMedTrainingDataset(
        items, label_map, Tokenizer(model.vocab), patch_size, spacing, seed=seed, augmentation=augmentation
    )
    # The order of an epoch is a function of (seed, epoch) alone (``set_epoch``, called at every epoch's start), on
    # one process as under torchrun: a run resumed at an epoch's end draws what an uninterrupted one would. (A
    # shuffling loader's generator also advances when ignite ends an epoch and exhausts the sampler, which the
    # checkpoint at that epoch's end cannot see.)
    if distributed:
        sampler = torch.utils.data.DistributedSampler(dataset, seed=seed)
    else:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        generator=generator,
        drop_last=len(dataset) >= batch_size,
        persistent_workers=num_workers > 0,
    )


class TimeBudget:
    """Ignite handler: stop training after ``seconds`` (checked after every iteration).

    ``clock="wall"`` counts wall time; ``clock="process"`` counts this process's CPU time (all threads), which
    is what a fair comparison on a shared, noisy machine needs: another job slowing us down does not eat
    the budget.
    """

    def __init__(self, seconds: float, clock: str = "wall") -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if clock not in ("wall", "process"):
            raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
        self.seconds = seconds
        self.clock = time.monotonic if clock == "wall" else time.process_time
        self.start: float | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _started(self, engine) -> None:
        self.start = self.clock()

    def _check(self, engine) -> None:
        if self.start is not None and self.clock() - self.start > self.seconds:
            engine.terminate()


def _set_epoch(engine) -> None:
    loader = engine.data_loader
    for owner in (loader.sampler, loader.dataset):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(engine.state.epoch)


def build_trainer(
    model: torch.nn.Module,
    objective: JointObjective,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    max_epochs: int = 100,
    amp: bool = False,
    seed: int = 0,
    handlers: Sequence | None = None,
    iteration: JointIteration | None = None,
) -> SupervisedTrainer:
    """MONAI's ``SupervisedTrainer`` running the joint objective (mixed precision when ``amp`` and on CUDA);
    ``iteration``: its iteration update, default ``JointIteration(seed=seed)``."""
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=model,
        optimizer=optimizer,
        loss_function=objective,
        iteration_update=JointIteration(seed=seed) if iteration is None else iteration,
        train_handlers=list(handlers or []),
        amp=amp and torch.device(device).type == "cuda",
    )
    trainer.add_event_handler(Events.EPOCH_STARTED, _set_epoch)
    return trainer


def parameter_groups(model: torch.nn.Module, lr: float, lr_scale: Mapping[str, float] | None = None) -> list[dict]:
    """The optimiser's parameter groups: one at ``lr``, and one per prefix of ``lr_scale`` at ``lr`` times its
    scale (a prefix that names no parameter is an error: a typo would otherwise train at the wrong rate silently).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> [(len(g["params"]), g["lr"]) for g in parameter_groups(net, 1e-3, {"1.": 10.0})]
        [(2, 0.001), (2, 0.01)]
    """
    scales = dict(lr_scale or {})
    groups: dict[str, list] = {"": []} | {prefix: [] for prefix in scales}
    for name, param in model.named_parameters():
        groups[next((p for p in scales if name.startswith(p)), "")].append(param)
    if unused := [p for p in scales if not groups[p]]:
        raise ValueError(f"lr_scale prefixes {unused} name no parameter of the model")
    return [{"params": params, "lr": lr * scales.get(prefix, 1.0)} for prefix, params in groups.items() if params]


def fit(
    model: torch.nn.Module,
    items: Sequence[dict],
    label_map: LabelMap,
    *,
    patch_size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    batch_size: int = 2,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    max_steps: int = 1000,
    time_budget_s: float | None = None,
    time_budget_clock: str = "wall",
    weights: Mapping[str, float] | None = None,
    objective_options: Mapping | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    log_every: int = 50,
    augmentation: Augmentation | None = DEFAULT_AUGMENTATION,
    checkpoint: str | Path | None = None,
    checkpoint_every_s: float = 600.0,
    stop_after_s: float | None = None,
    snapshot_steps: Sequence[int] = (),
    snapshot_dir: str | Path | None = None,
    lr_scale: Mapping[str, float] | None = None,
) -> list[dict]:
    """Train ``model`` in place; returns the logged history (step, seconds, loss terms).

    Learning rate: linear warm-up over 5 % of ``max_steps`` then cosine decay, so that a time-budgeted run
    that stops early still ends at a sensible rate only if ``max_steps`` is close to what the budget allows.

    Runs longer than a session: with ``checkpoint`` (one file, :class:`ResumableCheckpoint`) the run resumes from
    it when it exists, saves it every ``checkpoint_every_s`` wall seconds at an epoch's end and when it stops, and
    stops cleanly at the first epoch end after ``stop_after_s`` wall seconds. ``snapshot_steps``: the weights are
    also saved at these steps as ``snapshot_dir/step_<N>.pt`` (sha256 beside), for a learning curve read from them.
    The history's ``seconds`` and ``cpu_seconds`` count from the run's first step, across resumptions.
    ``objective_options``: keyword arguments of :func:`build_objective` (``class_mask_pos_weight``, ...).
    ``lr_scale``: parameter-name prefix → multiple of ``lr`` (the first prefix that matches): a head added to trained
    weights starts from zero and, at a fine-tuning rate, moves too slowly to learn within the run.
    """
    if snapshot_steps and snapshot_dir is None:
        raise ValueError("snapshot_steps need a snapshot_dir")
    torch.manual_seed(seed)
    model.to(device)
    objective = build_objective(model, label_map, weights, **dict(objective_options or {}))
    loader = build_train_loader(
        items, model, label_map, patch_size, spacing, batch_size, num_workers, seed, augmentation=augmentation
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, lr_scale), lr=lr, weight_decay=weight_decay)
    warmup = max(1, max_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup)
            * 0.5
            * (1 + torch.cos(torch.tensor(min(step, max_steps) / max_steps * torch.pi)).item())
        ),
    )
    epochs = max(1, -(-max_steps // max(1, len(loader))))
    iteration = JointIteration(seed=seed)
    trainer = build_trainer(model, objective, loader, optimizer, device, epochs, amp, seed, iteration=iteration)
    history: list[dict] = []
    # seconds of earlier pieces of a resumed run (wall, CPU), so that the history's clocks run on across them
    spent = {"seconds": 0.0, "cpu_seconds": 0.0}
    resumable = None
    if checkpoint is not None:
        resumable = ResumableCheckpoint(
            checkpoint,
            {"model": model, "optimizer": optimizer, "schedule": schedule, "trainer": trainer,
             "iteration": iteration},
            extra={
                "torch_rng": (torch.get_rng_state, torch.set_rng_state),  # MONAI transforms and samplers draw from it
                "history": (lambda: list(history), lambda rows: history.extend(rows)),
                "spent": (lambda: _spent_now(), lambda value: spent.update(value)),
            },
            every_s=checkpoint_every_s,
            stop_after_s=stop_after_s,
        )  # fmt: skip
        resumable.load()
    start, cpu_start = time.monotonic(), time.process_time()

    def _spent_now() -> dict:
        return {
            "seconds": spent["seconds"] + time.monotonic() - start,
            "cpu_seconds": spent["cpu_seconds"] + time.process_time() - cpu_start,
        }

    def _log(engine) -> None:
        now = _spent_now()
        row = {"step": engine.state.iteration, "seconds": round(now["seconds"], 1),
               "cpu_seconds": round(now["cpu_seconds"], 1)}  # fmt: skip
        row.update({k: float(v) for k, v in engine.state.output.items() if k != "image"})
        history.append(row)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _step(engine) -> None:
        schedule.step()
        if engine.state.iteration >= max_steps:
            engine.terminate()
        if engine.state.iteration % log_every == 0 or engine.state.iteration == 1:
            _log(engine)
        if engine.state.iteration in snapshot_steps:
            save_weights(model, Path(snapshot_dir) / f"step_{engine.state.iteration}.pt")

    @trainer.on(Events.COMPLETED)
    def _last_step(engine) -> None:  # the history ends at the last step, so that its "step" is the run's count
        if engine.state.output is not None and (not history or history[-1]["step"] != engine.state.iteration):
            _log(engine)

    if time_budget_s:
        TimeBudget(time_budget_s, time_budget_clock).attach(trainer)
    if resumable is not None:
        resumable.attach(trainer)  # after _last_step, so that the saved history ends at the last step
    if trainer.state.iteration < max_steps:
        trainer.run()
    return history
