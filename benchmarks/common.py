"""What every benchmark shares: the modes (sizes and budgets), the data, and UniMed's train / evaluate calls.

Every training in a comparison gets the same budget of *process CPU time* (``time_budget_clock="process"``),
so a neighbour slowing the machine down does not change how much work a model gets. The data are
``benchmarks/learning.py``'s (``make_data``) on its working grid (6 mm, 64^3 patches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.learning import PATCH, SPACING, json_safe, make_data
from unimed_core.data.datalist import load_datalist
from unimed_core.evaluation import evaluate
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.training.fit import fit

__all__ = ["Mode", "MODES", "RESULTS", "load_items", "labeled", "train_unimed", "evaluate_unimed", "json_safe"]

RESULTS = Path("benchmarks/results")


@dataclass(frozen=True)
class Mode:
    """Sizes and budgets of one benchmark mode.

    Args:
        name: "quick" or "full".
        cases: generated studies (8 validation and 16 test among them, the rest training or unlabeled).
        budget_s: process CPU seconds of every training run (UniMed and baselines alike).
        labeled_counts: labeled training cases for the with / without unsupervised-term claim.
        shots: labeled MR-like cases for the fine-tuning claim.
        threads: torch threads of every run.
        repeats: timed repeats per speed measurement (the median is reported).
        sizes: input volume shapes for the speed benchmark.
        train_steps: timed training steps per model for the throughput measurement.
        ddp_steps: timed steps per process for the torchrun scaling measurement.
    """

    name: str
    cases: int
    budget_s: float
    labeled_counts: tuple[int, ...]
    shots: int
    threads: int = 2
    repeats: int = 3
    sizes: tuple[tuple[int, int, int], ...] = ((64, 64, 64), (128, 128, 128), (256, 256, 128), (512, 512, 300))
    train_steps: int = 6
    ddp_steps: int = 8

    @property
    def data(self) -> Path:
        return Path(f"data/bench_{self.name}")


# quick: fits `make bench` in 15 minutes on 2 cores, so each of its 14 trainings gets 45 CPU-seconds: its quality
# numbers say whether the pipeline works and how fast each model starts learning, not how good it ends up.
# full: 20 CPU-minutes per training, about 5 hours on 2 cores.
MODES = {
    "quick": Mode("quick", cases=64, budget_s=45.0, labeled_counts=(10, 30), shots=8, ddp_steps=6),
    "full": Mode("full", cases=300, budget_s=1200.0, labeled_counts=(10, 100), shots=100, repeats=5, train_steps=12),
}


def load_items(mode: Mode, label_map: LabelMap, seed: int = 0) -> dict[str, list[dict]]:
    """The mode's datalist splits (generated on first use, reused afterwards)."""
    return load_datalist(make_data(mode.data, mode.cases, seed), label_map)


def labeled(items: list[dict]) -> list[dict]:
    """Items with any annotation (the datalist's training split may hold every level)."""
    return [i for i in items if any(k in i for k in ("label", "boxes", "class"))]


def _steps_for_budget(items: list[dict], label_map: LabelMap, mode: Mode) -> int:
    """About how many UniMed steps ``mode.budget_s`` CPU seconds allow: fit's learning-rate schedule needs it.

    The probe's three steps include loading its cases, so the estimate is low; 1.25x more keeps the budget,
    not ``max_steps``, the limit (fit stops at ``max_steps``, where its cosine schedule reaches zero).
    """
    probe = unimed_small(label_map)
    start = time.process_time()
    fit(probe, items[:4], label_map, patch_size=PATCH, spacing=SPACING, max_steps=3, log_every=1000)
    return max(10, int(1.25 * mode.budget_s / ((time.process_time() - start) / 3)))


_STEPS_CACHE: dict[tuple, int] = {}


def train_unimed(
    items: list[dict],
    label_map: LabelMap,
    mode: Mode,
    *,
    weights: dict | None = None,
    init: dict | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, dict]:
    """Train ``unimed_small`` on ``items`` for ``mode.budget_s`` CPU seconds; returns (model, run facts).

    Args:
        weights: loss weights for ``fit`` (None: its defaults).
        init: a state dict to start from (fine-tuning), else random initialisation.
    """
    key = (mode.name, torch.get_num_threads())
    if key not in _STEPS_CACHE:
        _STEPS_CACHE[key] = _steps_for_budget(items, label_map, mode)
    model = unimed_small(label_map)
    if init is not None:
        model.load_state_dict(init)
    wall, cpu = time.monotonic(), time.process_time()
    history = fit(
        model, items, label_map, patch_size=PATCH, spacing=SPACING, max_steps=_STEPS_CACHE[key],
        time_budget_s=mode.budget_s, time_budget_clock="process", weights=weights, seed=seed, log_every=1,
    )  # fmt: skip
    facts = {
        "steps": history[-1]["step"] if history else 0,
        "cpu_s": round(time.process_time() - cpu, 1),
        "wall_s": round(time.monotonic() - wall, 1),
        "items": len(items),
        "final_loss": history[-1].get("loss") if history else None,
    }
    return model, facts


def evaluate_unimed(
    model: torch.nn.Module, items: list[dict], label_map: LabelMap, clicks: bool = False
) -> tuple[dict, list[dict], UniMedPredictor]:
    """``unimed_core.evaluation.evaluate`` on the working grid (click prompts only when ``clicks``)."""
    predictor = UniMedPredictor(model, label_map, spacing=SPACING, roi_size=PATCH)
    summary, rows = evaluate(predictor, items, label_map, click_classes=None if clicks else [])
    return summary, rows, predictor
