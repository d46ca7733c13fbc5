"""MONAI's single-task baselines at the learning benchmark's scale: same data, budget and test split as UniMed.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.baseline_learning --task segmentation --minutes 30 --clock process

``make bench`` compares UniMed with the baselines after 45 CPU-seconds each, too short for either to learn. This
script trains one baseline (SegResNet, RetinaNet or DenseNet121, ``benchmarks.baselines``) with the settings of
``benchmarks/learning.py`` (its data, 6 mm working grid, 64³ patches, batch 2, AdamW at 1e-3, the same CPU
budget) and scores it on the same 16 held-out studies with the same ``evaluate``, so that its numbers sit next to
``learning.json``'s. Each task runs in its own process: three of them side by side on the 2-core machine take
about as long as one UniMed run. ``--table`` then writes the side-by-side report.

The baselines train on the items with their own annotation only (``items_for``) and without UniMed's augmentation:
MONAI's recipes as they come.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.baselines import BUILDERS, BaselinePredictor, items_for, train_baseline
from benchmarks.learning import PATCH, SPACING, json_safe, make_data
from unimed_core.data.atomic import atomic_write_json, atomic_write_text
from unimed_core.data.datalist import load_datalist
from unimed_core.evaluation import evaluate
from unimed_core.label_map import LabelMap

RESULTS = Path("benchmarks/results")
# The rows of the side-by-side table: (metric, the task whose baseline reports it).
ROWS = [
    *((f"dice/{name}", "segmentation") for name in ("liver", "spleen", "kidney_left", "kidney_right", "cyst", "tumor")),
    ("dice/organs_mean", "segmentation"),
    ("hd95/liver", "segmentation"),
    ("hd95/kidney_left", "segmentation"),
    *((f"{metric}@{iou}", "detection") for metric in ("mAP", "recall") for iou in ("0.10", "0.25", "0.50")),
    ("AUC", "classification"),
    ("accuracy", "classification"),
]


def train_and_evaluate(args) -> dict:
    label_map = LabelMap.default()
    items = load_datalist(make_data(args.data, args.cases, args.seed), label_map)
    torch.manual_seed(args.seed)
    net = BUILDERS[args.task](label_map)
    budget_s = args.minutes * 60 * (torch.get_num_threads() if args.clock == "process" else 1)
    cpu, wall = time.process_time(), time.monotonic()
    history = train_baseline(
        args.task, net, items["training"], label_map, patch_size=PATCH, spacing=SPACING, batch_size=2, lr=1e-3,
        max_steps=args.max_steps, time_budget_s=budget_s, time_budget_clock=args.clock, seed=args.seed,
    )  # fmt: skip
    train = {"steps": history[-1]["step"], "cpu_s": round(time.process_time() - cpu, 1),
             "wall_s": round(time.monotonic() - wall, 1), "items": len(items_for(args.task, items["training"]))}  # fmt: skip
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


def write_table(unimed_path: Path, results: Path) -> str:
    """Markdown: UniMed's ``learning.json`` next to each task's baseline result, with the ratio."""
    unimed = json.loads(unimed_path.read_text())
    baselines = {}
    for task in ("segmentation", "detection", "classification"):
        path = results / f"baseline_learning_{task}.json"
        if path.exists():
            baselines[task] = json.loads(path.read_text())
    lines = [
        "# UniMed vs MONAI's single-task baselines at the learning benchmark's scale",
        "",
        f"UniMed: `{unimed['command']}` ({unimed['steps']} steps, one model for all tasks). Baselines: "
        + "; ".join(
            f"{b['network']} `{b['command']}` ({b['train']['steps']} steps on {b['train']['items']} items)"
            for b in baselines.values()
        )
        + ". Same data, 6 mm grid, 64³ patches, CPU budget and 16 held-out studies; HD95 in mm (lower is better), "
        "every other metric higher is better.",
        "",
        "| metric | UniMed | baseline | UniMed / baseline |",
        "|---|---|---|---|",
    ]
    for metric, task in ROWS:
        ours = unimed["summary"].get(metric)
        theirs = baselines.get(task, {}).get("summary", {}).get(metric)
        ratio = ours / theirs if ours is not None and theirs else None
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {metric} ({task}) | {fmt(ours)} | {fmt(theirs)} | {fmt(ratio)} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(results / "learning_vs_baselines.md", text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(BUILDERS))
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--cases", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--clock", choices=("wall", "process"), default="process")
    parser.add_argument("--score-threshold", type=float, default=0.05, help="as benchmarks/learning.py's")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="only write learning_vs_baselines.md from the results")
    parser.add_argument("--unimed", type=Path, default=RESULTS / "learning.json", help="UniMed's result for --table")
    args = parser.parse_args(argv)
    if args.table:
        print(write_table(args.unimed, args.results))
        return 0
    if args.task is None:
        parser.error("--task is needed unless --table")
    result = train_and_evaluate(args)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / f"baseline_learning_{args.task}.json", json_safe(result))
    print(json.dumps({k: result[k] for k in ("task", "train", "eval_s")}), flush=True)
    print(json.dumps({k: v for k, v in result["summary"].items() if k != "cases"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
