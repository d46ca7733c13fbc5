"""MONAI's baselines on the learning curve: one resumable run per baseline, read from its saved snapshots.

The same three subcommands as ``benchmarks/learning_curve.py`` (UniMed's curve), so that both are trained,
evaluated and assembled the same way:

    # train (resumes from RUN/checkpoint.pt when it exists; ends this piece at --stop-at-step or after
    # --stop-after-min wall minutes, at an epoch's end)
    OMP_NUM_THREADS=1 python -m benchmarks.baseline_curve train --model segresnet --run runs/baseline_segresnet_s0 \
        --total-steps 2400 --stop-at-step 600
    # evaluate every snapshot RUN/step_<N>.pt not yet evaluated (the 16 held-out test studies, UniMed's evaluate)
    OMP_NUM_THREADS=1 python -m benchmarks.baseline_curve evaluate --run runs/baseline_segresnet_s0
    # gather the runs' evaluations (and UniMed's rows from learning_curve.json) into baseline_curve.json, a plot
    python -m benchmarks.baseline_curve assemble runs/baseline_segresnet_s0 runs/baseline_retinanet_s0 ...

Each baseline (``--model``: SegResNet, RetinaNet or DenseNet121, ``benchmarks.baselines``) trains with its MONAI
recipe (``benchmarks.baseline_training.RECIPES``) on the items carrying its annotation, with
``benchmarks/learning.py``'s data, grid (6 mm), patch (64^3) and batch (2). Snapshots are taken at steps that
double (``--snapshot-steps``); like UniMed's they are points on *one* run's schedule over ``--total-steps``, so an
early one is a lower bound on what a run of that length with its own schedule would reach.

Every evaluation is scored by ``unimed_core.evaluation.evaluate`` on the same 16 held-out studies as UniMed's
curve, through ``BaselinePredictor`` (score threshold 0.05, as ``learning_curve.py``'s predictor). A baseline has
one task, so its rows carry that task's metric only (organ Dice, lesion mAP@0.1 or image AUC); rows have
``learning_curve.json``'s shape (run, seed, step, cpu_seconds, total_steps, one column per metric), so that the
two files' rows can be read together. The plot puts UniMed's rows (when ``--unimed`` exists) beside them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.baseline_training import RECIPES, train_baseline
from benchmarks.baselines import BUILDERS, BaselinePredictor
from benchmarks.learning import LESION_RADIUS_MM, PATCH, SPACING, json_safe
from benchmarks.learning_curve import benchmark_items, check_or_write_config
from unimed_core.data.atomic import atomic_write_json, atomic_write_text
from unimed_core.evaluation import evaluate
from unimed_core.label_map import LabelMap
from unimed_core.model.weights import load_weights

__all__ = ["MODELS", "HEADLINE", "main"]

# --model → the task its network does, and the BaselinePredictor argument it fills
MODELS = {
    "segresnet": ("segmentation", "segmenter"),
    "retinanet": ("detection", "detector"),
    "densenet": ("classification", "classifier"),
}
# The headline metric of each task: its name on the curve (as learning_curve.py names UniMed's) and its summary key.
HEADLINE = {"segmentation": ("organ Dice", "dice/organs_mean"), "detection": ("lesion mAP@0.1", "mAP@0.10"),
            "classification": ("image AUC", "AUC")}  # fmt: skip
# Further summary keys kept in each row: the organs one by one, recall, the other IoUs.
DETAIL = {
    "segmentation": ("dice/liver", "dice/spleen", "dice/kidney_left", "dice/kidney_right", "dice/cyst", "dice/tumor"),
    "detection": ("recall@0.10", "mAP@0.25", "mAP@0.50", "recall@0.10/cyst", "recall@0.10/tumor"),
    "classification": ("AUC/cyst", "AUC/tumor", "accuracy"),
}
DEFAULT_SNAPSHOTS = (150, 300, 600, 1200, 2400)
SCORE_THRESHOLD = 0.05
RESULTS = Path("benchmarks/results")


def train(args) -> int:
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    task = MODELS[args.model][0]
    label_map, items = benchmark_items(args.data, args.data_seed)
    config = {"model": args.model, "task": task, "seed": args.seed, "total_steps": args.total_steps,
              "snapshot_steps": list(args.snapshot_steps), "recipe": RECIPES[task].source,
              "lr": args.lr or RECIPES[task].lr, "batch_size": 2, "spacing": SPACING, "patch": PATCH,
              "data": str(args.data), "data_seed": args.data_seed, "lesion_radius_mm": LESION_RADIUS_MM,
              "threads": torch.get_num_threads(), "machine": platform.platform()}  # fmt: skip
    check_or_write_config(run, config)
    torch.manual_seed(args.seed)
    model = BUILDERS[task](label_map)
    start = time.monotonic()
    history = train_baseline(
        task, model, items["training"], label_map, patch_size=PATCH, spacing=SPACING, batch_size=2, lr=args.lr,
        max_steps=min(args.stop_at_step or args.total_steps, args.total_steps), schedule_steps=args.total_steps,
        seed=args.seed, log_every=25, checkpoint=run / "checkpoint.pt",
        checkpoint_every_s=args.checkpoint_every_min * 60, stop_after_s=args.stop_after_min * 60,
        snapshot_steps=args.snapshot_steps, snapshot_dir=run,
    )  # fmt: skip
    atomic_write_json(run / "history.json", json_safe(history))
    last = history[-1] if history else {}
    print(f"{run}: at step {last.get('step')} ({last.get('cpu_seconds')} CPU s in all), "
          f"{time.monotonic() - start:.0f} s this piece", flush=True)  # fmt: skip
    return 0


def evaluate_weights(model_name: str, weights: Path, items: list[dict], label_map: LabelMap) -> tuple[dict, list]:
    """``evaluate`` of one baseline's ``weights`` on ``items`` (its own task's part of the prediction only)."""
    task, part = MODELS[model_name]
    net = BUILDERS[task](label_map)
    load_weights(net, weights)
    parts = {"segmenter": None, "detector": None, "classifier": None, part: net}
    predictor = BaselinePredictor(**parts, label_map=label_map, spacing=SPACING, roi_size=PATCH,
                                  score_threshold=SCORE_THRESHOLD)  # fmt: skip
    return evaluate(predictor, items, label_map, click_classes=[])


def evaluate_run(args) -> int:
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    label_map, items = benchmark_items(Path(config["data"]), config["data_seed"])
    snapshots = sorted(run.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    name, key = HEADLINE[config["task"]]
    for path in snapshots:
        out = run / f"eval_{path.stem}_{args.split}.json"
        if out.exists():
            continue
        step = int(path.stem.split("_")[1])
        start = time.monotonic()
        summary, rows = evaluate_weights(config["model"], path, items[args.split], label_map)
        cpu = cpu_seconds_at(history, step)
        atomic_write_json(out, json_safe({"step": step, "cpu_seconds": cpu, "split": args.split, "weights": str(path),
                                          "model": config["model"], "task": config["task"],
                                          "eval_seconds": round(time.monotonic() - start, 1),
                                          "summary": summary, "per_case": rows}))  # fmt: skip
        print(f"{out}: {name} {summary.get(key, float('nan')):.3f}", flush=True)
    return 0


def cpu_seconds_at(history: list[dict], step: int) -> float | None:
    """The run's training CPU seconds at its first logged step at or after ``step`` (None when not logged yet)."""
    return next((row.get("cpu_seconds") for row in history if row["step"] >= step), None)


def rows_of(run: Path, split: str = "test") -> list[dict]:
    """One row per evaluated snapshot of ``run``, in ``learning_curve.json``'s row shape. A snapshot evaluated
    while its run was still training (``history.json`` is written when a piece ends) takes its CPU seconds from the
    history when it has them."""
    config = json.loads((run / "config.json").read_text())
    history_path = run / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    task = config["task"]
    name, key = HEADLINE[task]
    rows = []
    for path in sorted(run.glob(f"eval_step_*_{split}.json")):
        ev = json.loads(path.read_text())
        summary = ev["summary"]
        cpu = ev["cpu_seconds"] if ev["cpu_seconds"] is not None else cpu_seconds_at(history, ev["step"])
        rows.append({"run": run.name, "model": config["model"], "task": task, "seed": config["seed"],
                     "step": ev["step"], "cpu_seconds": cpu, "total_steps": config["total_steps"],
                     "recipe": config["recipe"], name: summary.get(key),
                     **{k: summary.get(k) for k in DETAIL[task]}})  # fmt: skip
    return rows


def assemble(args) -> int:
    rows = [row for run in map(Path, args.runs) for row in rows_of(run, args.split)]
    rows.sort(key=lambda r: (r["run"], r["step"]))
    unimed = json.loads(args.unimed.read_text()).get("rows", []) if args.unimed and args.unimed.is_file() else []
    result = {"command": "python -m benchmarks.baseline_curve assemble " + " ".join(args.runs), "split": args.split,
              "headline": {task: "/".join(v) for task, v in HEADLINE.items()},
              "score_threshold": SCORE_THRESHOLD, "rows": rows}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "baseline_curve.json", json_safe(result))
    lines = ["| run | model | step | CPU min | metric | value | detail |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = HEADLINE[r["task"]][0]
        cpu = "" if r["cpu_seconds"] is None else f"{r['cpu_seconds'] / 60:.0f}"
        detail = ", ".join(f"{k} {r[k]:.3f}" for k in DETAIL[r["task"]] if r.get(k) is not None)
        lines.append(f"| {r['run']} | {r['model']} | {r['step']} | {cpu} | {name} | {_fmt(r[name])} | {detail} |")
    atomic_write_text(args.results / "baseline_curve.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, unimed, args.plot)
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot(rows: list[dict], unimed_rows: list[dict], path: Path) -> None:
    """One panel per task metric, steps on a log axis: each baseline's run in colour, UniMed's runs in grey (one
    legend entry for all of them: with a line per run the legends covered the curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # UniMed's column in learning_curve.json for each panel: the first it has (the lesion score map first)
    panels = {"organ Dice": ["organ Dice"],
              "lesion mAP@0.1": ["lesion mAP@0.1 (score map)", "lesion mAP@0.1 (label volume)",
                                 "lesion mAP@0.1 (queries)"],
              "image AUC": ["image AUC"]}  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), constrained_layout=True)
    for ax, (name, unimed_names) in zip(axes, panels.items()):
        labelled = False
        for run in sorted({r["run"] for r in unimed_rows}):
            mine = [r for r in unimed_rows if r["run"] == run]
            column = next((c for c in unimed_names if any(r.get(c) is not None for r in mine)), None)
            pts = [(r["step"], r[column]) for r in mine if column and r.get(column) is not None]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", markersize=3, linestyle="--", linewidth=0.8, color="0.6",
                        label=None if labelled else "UniMed (every run)")  # fmt: skip
                labelled = True
        for run in sorted({r["run"] for r in rows}):
            pts = [(r["step"], r[name]) for r in rows if r["run"] == run and r.get(name) is not None]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="s", label=run)
        ax.set_xscale("log")
        ax.set_xlabel("training steps (batch 2)")
        ax.set_title(name)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (or resume) one baseline's run")
    p.add_argument("--model", choices=sorted(MODELS), required=True)
    p.add_argument("--run", type=Path, required=True, help="run folder: checkpoint, snapshots, history")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=int, default=2400, help="length of the learning-rate schedule")
    p.add_argument("--stop-at-step", type=int, help="end this piece at this step (resumable); default the end")
    p.add_argument("--snapshot-steps", type=int, nargs="*", default=DEFAULT_SNAPSHOTS)
    p.add_argument("--lr", type=float, help="default: the recipe's")
    p.add_argument("--stop-after-min", type=float, default=100.0, help="wall minutes of this piece")
    p.add_argument("--checkpoint-every-min", type=float, default=10.0)
    p.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    p.add_argument("--data-seed", type=int, default=0)
    p.set_defaults(func=train)
    p = sub.add_parser("evaluate", help="evaluate the run's snapshots not yet evaluated")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.set_defaults(func=evaluate_run)
    p = sub.add_parser("assemble", help="gather runs' evaluations into the results file, a table and a plot")
    p.add_argument("runs", nargs="+")
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--unimed", type=Path, default=RESULTS / "learning_curve.json", help="UniMed's curve, if any")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=Path("docs/figures/learning_curve_baselines.png"))
    p.set_defaults(func=assemble)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
