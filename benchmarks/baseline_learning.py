"""MONAI's single-task baselines at the learning benchmark's scale: same data, budget and test split as UniMed.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.baseline_learning --task segmentation --minutes 30 --clock process

``make bench`` compares UniMed with the baselines after 45 CPU-seconds each, too short for either to learn. This
script trains one baseline (SegResNet, RetinaNet or DenseNet121, ``benchmarks.baselines``) with its MONAI recipe's
optimiser, schedule and augmentation (``benchmarks.baseline_training.RECIPES``) on ``benchmarks/learning.py``'s
data, 6 mm working grid, 64³ patches and batch, for the same CPU budget, and scores it on the same 16 held-out studies with the same ``evaluate``, so that its numbers sit next to
``learning.json``'s. Each task runs in its own process: three of them side by side on the 2-core machine take
about as long as one UniMed run. ``benchmarks/report.py`` sets the results beside ``learning.json`` in
``docs/benchmarks.md``.

The baselines train on the items with their own annotation only (``items_for``). For quality against training
steps (snapshots of one long, resumable run each) see ``benchmarks/baseline_curve.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.baseline_training import steps_for_budget, train_baseline_run
from benchmarks.baselines import BUILDERS, BaselinePredictor
from benchmarks.learning import PATCH, SPACING, json_safe, make_data
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.datalist import load_datalist
from unimed_core.evaluation import evaluate
from unimed_core.label_map import LabelMap

RESULTS = Path("benchmarks/results")


def train_and_evaluate(args) -> dict:
    label_map = LabelMap.default()
    items = load_datalist(make_data(args.data, args.cases, args.seed), label_map)
    torch.manual_seed(args.seed)
    net = BUILDERS[args.task](label_map)
    budget_s = args.minutes * 60 * (torch.get_num_threads() if args.clock == "process" else 1)
    history, train = train_baseline_run(
        args.task, net, items["training"], label_map, patch_size=PATCH, spacing=SPACING, batch_size=2,
        max_steps=args.max_steps, schedule_steps=min(args.max_steps, steps_for_budget(args.task, budget_s)),
        time_budget_s=budget_s, time_budget_clock=args.clock, seed=args.seed,
    )  # fmt: skip
    parts = {"segmenter": None, "detector": None, "classifier": None}
    parts[{"segmentation": "segmenter", "detection": "detector", "classification": "classifier"}[args.task]] = net
    predictor = BaselinePredictor(
        **parts, label_map=label_map, spacing=SPACING, roi_size=PATCH, score_threshold=args.score_threshold
    )
    start = time.monotonic()
    summary, rows = evaluate(predictor, items["test"], label_map, click_classes=[])
    return {
        "command": "python " + " ".join(sys.argv), "task": args.task, "network": type(net).__name__,
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads()},
        "clock": args.clock, "minutes": args.minutes, "score_threshold": args.score_threshold,
        "train": train, "eval_s": round(time.monotonic() - start, 1), "history": history,
        "summary": summary, "per_case": rows,
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(BUILDERS), required=True)
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--cases", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--clock", choices=("wall", "process"), default="process")
    parser.add_argument("--score-threshold", type=float, default=0.05, help="as benchmarks/learning.py's")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = train_and_evaluate(args)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / f"baseline_learning_{args.task}.json", json_safe(result))
    print(json.dumps({k: result[k] for k in ("task", "train", "eval_s")}), flush=True)
    print(json.dumps({k: v for k, v in result["summary"].items() if k != "cases"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
