"""Quality: UniMed (one model, all tasks) vs MONAI's three single-task baselines, same data, same CPU budget.

    .venv/bin/python -m benchmarks.quality --mode quick

UniMed trains on every training item plus the unlabeled ones; each baseline on the items carrying its
annotation (``benchmarks.baselines.items_for``); each run gets ``mode.budget_s`` seconds of process CPU time.
Both are scored by ``unimed_core.evaluation.evaluate`` on the same held-out test split. Writes
``benchmarks/results/quality.json`` and, with ``--weights``, the trained models (for the speed benchmark).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.baseline_training import steps_for_budget, train_baseline_run
from benchmarks.baselines import BUILDERS, TASKS, BaselinePredictor
from benchmarks.common import MODES, RESULTS, Mode, evaluate_unimed, json_safe, load_items, train_unimed
from benchmarks.learning import PATCH, SPACING
from unimed_core.data.atomic import atomic_write_json
from unimed_core.evaluation import evaluate
from unimed_core.label_map import LabelMap
from unimed_core.model.weights import save_weights

__all__ = ["HEADLINE", "run_quality", "main"]

# The metric that speaks for each task in the headline table (higher is better for all of them).
HEADLINE = {"segmentation": "dice/all_mean", "detection": "mAP@0.10", "classification": "AUC"}


def run_quality(mode: Mode, label_map: LabelMap, weights_dir: Path | None = None) -> tuple[dict, dict]:
    """Train and evaluate UniMed and the baselines; returns (result, UniMed state dict for the claims)."""
    items = load_items(mode, label_map)
    train = items["training"] + items["unlabeled"]
    model, unimed_run = train_unimed(train, label_map, mode)
    start = time.monotonic()
    unimed_summary, _, predictor = evaluate_unimed(model, items["test"], label_map, clicks=True)
    unimed_run["eval_s"] = round(time.monotonic() - start, 1)
    baselines, runs = {}, {}
    for task in TASKS:
        net = BUILDERS[task](label_map)
        _, runs[task] = train_baseline_run(
            task, net, items["training"], label_map, patch_size=PATCH, spacing=SPACING,
            max_steps=100_000, schedule_steps=steps_for_budget(task, mode.budget_s), time_budget_s=mode.budget_s,
            time_budget_clock="process",
        )  # fmt: skip
        baselines[task] = net
    combined = BaselinePredictor(
        baselines["segmentation"], baselines["detection"], baselines["classification"], label_map, SPACING, PATCH,
        score_threshold=predictor.score_threshold, nms_iou=predictor.nms_iou,
    )  # fmt: skip
    start = time.monotonic()
    baseline_summary, _ = evaluate(combined, items["test"], label_map, click_classes=[])
    eval_s = round(time.monotonic() - start, 1)
    if weights_dir is not None:
        save_weights(model, weights_dir / "unimed.pt")
        for task, net in baselines.items():
            save_weights(net, weights_dir / f"{task}.pt")
    headline = {
        task: {"metric": metric, "unimed": unimed_summary.get(metric), "baseline": baseline_summary.get(metric)}
        for task, metric in HEADLINE.items()
    }
    result = {
        "mode": mode.name, "budget_cpu_s": mode.budget_s, "threads": torch.get_num_threads(),
        "test_cases": len(items["test"]), "training_items": len(items["training"]),
        "unlabeled_items": len(items["unlabeled"]),
        "unimed": {"run": unimed_run, "summary": unimed_summary},
        "baselines": {"runs": runs, "eval_s": eval_s, "summary": baseline_summary},
        "headline": headline,
    }  # fmt: skip
    return json_safe(result), model.state_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", type=Path, help="folder to save the trained models in")
    args = parser.parse_args(argv)
    mode = MODES[args.mode]
    torch.set_num_threads(args.threads or mode.threads)
    result, _ = run_quality(mode, LabelMap.default(), args.weights)
    atomic_write_json(RESULTS / "quality.json", result)
    print(result["headline"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
