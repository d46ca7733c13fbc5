"""Quality against training steps and CPU time: one long, resumable run, read from its saved snapshots.

Three subcommands, so that a run of several CPU-hours can span working sessions that end without warning:

    # train (resumes from RUN/checkpoint.pt when it exists; stops cleanly at an epoch end after --stop-after-min)
    OMP_NUM_THREADS=1 python -m benchmarks.learning_curve train --run runs/curve_s0 --seed 0 --total-steps 9600 \
        --stop-after-min 100
    # evaluate every snapshot RUN/step_<N>.pt not yet evaluated (held-out test split, the bundle's settings)
    OMP_NUM_THREADS=1 python -m benchmarks.learning_curve evaluate --run runs/curve_s0
    # gather every run's evaluations into benchmarks/results/learning_curve.json, a table and a plot
    python -m benchmarks.learning_curve assemble runs/curve_s0 [runs/curve_s1 ...]

Same data, grid, patch, batch and optimiser as ``benchmarks/learning.py`` (its 144 generated studies, 6 mm, 64³,
batch 2, AdamW 1e-3). Snapshots are taken at budgets that double (``--snapshot-steps``, 600 steps ≈ 15 CPU-minutes
of the small model on one thread). They are points on *one* run's cosine schedule over ``--total-steps``: an early
snapshot is at a high learning rate, so it is a lower bound on what a run of that length with its own schedule
would reach, and the curve's slope at the end says whether more steps help.

Each evaluation reports one metric per task (organ Dice, lesion mAP@0.1, image-label AUC, click Dice) for each
path that can give it (detection: the decomposed queries and the label volume's components; label volume: queries
and class tokens), so the curve also says which path learns first.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.learning import LESION_RADIUS_MM, PATCH, SPACING, json_safe, make_data
from benchmarks.report import format_spread
from unimed_core.cli.infer import PREDICTOR_CHOICES
from unimed_core.data.atomic import atomic_write_json, atomic_write_text
from unimed_core.data.augmentation import DEFAULT_AUGMENTATION
from unimed_core.data.datalist import load_datalist
from unimed_core.evaluation import evaluate
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights, save_weights, sha256_of
from unimed_core.paths import BUNDLE_DIR
from unimed_core.training.fit import DEFAULT_LOSS_WEIGHTS, fit
from unimed_core.training.resumable import read_checkpoint

DEFAULT_SNAPSHOTS = (300, 600, 1200, 2400, 4800, 9600)
# The headline metric of each task, and where it is read from (name of the evaluation, key in its summary).
HEADLINE = {
    "organ Dice": ("label_volume", "dice/organs_mean"),
    "lesion mAP@0.1 (queries)": ("decomposed", "mAP@0.10"),
    "lesion mAP@0.1 (label volume)": ("components", "mAP@0.10"),
    # the bundle's rule since 2026-12-04: components of each lesion class's own score map (>= CURVE_SCORE_THRESHOLD),
    # so a lesion that an organ outscores is still found; evaluations before then have only the label volume's
    "lesion mAP@0.1 (score map)": ("components_scores", "mAP@0.10"),
    "image AUC": ("label_volume", "AUC"),
    "click Dice": ("label_volume", "click_dice/mean"),
}
RESULTS = Path("benchmarks/results")
# The score-map rule's threshold on the curve: fixed (the value chosen for the weights of 2026-12-04), so that every
# snapshot is read with one rule; the bundle's own threshold is re-chosen for each shipped model
# (benchmarks/component_threshold.py, COMPONENT_THRESHOLD).
CURVE_SCORE_THRESHOLD = 0.2


def benchmark_items(data: Path, seed: int, cases: int = 144, fov_mm=None, lesions: dict | None = None):
    label_map = LabelMap.default()
    return label_map, load_datalist(make_data(data, cases, seed, fov_mm, lesions), label_map)


# Settings of the machine a piece ran on: a run may resume on another machine or thread count.
_MACHINE = ("threads", "machine")


def extra_seed_of(data_seed: int) -> int:
    """The default seed of the extra generated studies of a run on ``data_seed``'s data."""
    return 1000 + data_seed


def check_or_write_config(run: Path, config: dict) -> None:
    """Write a new run's settings to ``run/config.json``; a resumed run must have the same ones (the machine and
    thread count may differ), else it stops rather than continue another run's checkpoint."""
    config_path = run / "config.json"
    if config_path.exists():
        before = json.loads(config_path.read_text())
        changed = {k: (before.get(k), v) for k, v in config.items() if k not in _MACHINE
                   and json.loads(json.dumps(before.get(k))) != json.loads(json.dumps(v))}  # fmt: skip
        if changed:
            raise SystemExit(f"{run}: this run was started with other settings, not resuming: {changed}")
    else:
        atomic_write_json(config_path, config)


def train(args) -> int:
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    label_map, items = benchmark_items(args.data, args.data_seed)
    config = {"seed": args.seed, "fine_class_masks": not args.coarse_class_masks, "total_steps": args.total_steps, "snapshot_steps": list(args.snapshot_steps),
              "lr": args.lr, "batch_size": 2, "spacing": SPACING, "patch": PATCH, "data": str(args.data),
              "data_seed": args.data_seed, "lesion_radius_mm": LESION_RADIUS_MM,
              "threads": torch.get_num_threads(), "machine": platform.platform()}  # fmt: skip
    objective_options = {}
    if args.lesion_balanced_bce:  # only then in the config, so that earlier runs still resume
        config["lesion_balanced_bce"] = objective_options["lesion_balanced_bce"] = True
    if args.class_mask_pos_weight is not None:  # only then in the config, so that earlier runs still resume
        config["class_mask_pos_weight"] = objective_options["class_mask_pos_weight"] = args.class_mask_pos_weight
    if args.fine_refine_units:  # only then in the config, so that earlier runs still resume
        config["fine_refine_units"] = args.fine_refine_units
    if args.dense_class_head:  # only then in the config, so that earlier runs still resume
        config["dense_class_head"] = True
    lr_scale = dict(args.lr_scale or [])
    if lr_scale:  # only then in the config, so that earlier runs still resume
        config["lr_scale"] = lr_scale
    augmentation = DEFAULT_AUGMENTATION
    if args.field_of_view_cut:  # only then in the config (and in the draws), so that earlier runs still resume
        config["field_of_view_cut"] = args.field_of_view_cut
        augmentation = replace(DEFAULT_AUGMENTATION, field_of_view_cut=args.field_of_view_cut)
    training = items["training"] + items["unlabeled"]
    if args.extra_studies:  # more generated studies (their own seed, mixed annotation levels) join the training set
        extra_seed = extra_seed_of(args.data_seed) if args.extra_seed is None else args.extra_seed
        lesions = extra_lesions(args.extra_lesion_presence, args.extra_lesions_per_kind, args.extra_lesion_hosts)
        training += extra_training_items(Path(args.data), args.data_seed, args.extra_studies, extra_seed, lesions)
        config["extra_studies"], config["extra_seed"] = args.extra_studies, extra_seed
        if lesions:  # only then in the config, so that earlier runs still resume
            config["extra_lesions"] = lesions
    # The prompt queries' class term: off by default (its ablation: curve_s0_promptcls).
    weights = {**DEFAULT_LOSS_WEIGHTS, "loss_prompt_class": args.prompt_class_weight,
               "loss_prompt_class_aux": args.prompt_class_weight / 2}  # fmt: skip
    if args.prompt_class_weight:  # only then in the config, so that the runs from before the term still resume
        config["prompt_class_weight"] = args.prompt_class_weight
    model = _model(label_map, config)  # the architecture as the config records it, as evaluate_run rebuilds it
    if args.init_weights is not None:  # a fine-tuning run: these weights, a fresh optimiser and schedule
        # The refinement units and the dense class head start as identities: weights trained without them continue.
        load_weights(model, args.init_weights, missing_ok=("fine_class_head.refine", "dense_class_head"))
        config["init_weights"], config["init_sha256"] = str(args.init_weights), sha256_of(args.init_weights)
    check_or_write_config(run, config)
    start = time.monotonic()
    history = fit(
        model, training, label_map, patch_size=PATCH, spacing=SPACING, batch_size=2,
        lr=args.lr, max_steps=args.total_steps, seed=args.seed, log_every=25, checkpoint=run / "checkpoint.pt",
        checkpoint_every_s=args.checkpoint_every_min * 60, stop_after_s=args.stop_after_min * 60,
        snapshot_steps=args.snapshot_steps, snapshot_dir=run, objective_options=objective_options, weights=weights,
        augmentation=augmentation, lr_scale=lr_scale,
    )  # fmt: skip
    atomic_write_json(run / "history.json", json_safe(history))
    last = history[-1] if history else {}
    print(f"{run}: at step {last.get('step')} ({last.get('cpu_seconds')} CPU s in all), "
          f"{time.monotonic() - start:.0f} s this piece", flush=True)  # fmt: skip
    if last.get("step", 0) >= args.total_steps:
        save_weights(model, run / "final.pt")
    return 0


def extra_lesions(presence: float | None, per_kind: list[int] | None, hosts: list[str] | None = None) -> dict:
    """``SyntheticConfig`` lesion settings of the extra studies other than the benchmark's (empty: the same).
    ``hosts``: ``organ=weight`` strings, the relative frequency of each lesion host organ."""
    lesions = {}
    if presence is not None:
        lesions["lesion_presence"] = presence
    if per_kind is not None:
        lesions["lesions_per_kind"] = tuple(per_kind)
    if hosts is not None:
        try:
            lesions["organ_weights"] = {k: float(v) for k, v in (h.split("=") for h in hosts)}
        except ValueError as e:
            raise SystemExit(f"lesion hosts must be organ=weight, got {hosts}") from e
    return lesions


def _prefix_scale(text: str) -> tuple[str, float]:
    """``"PREFIX=SCALE"`` → (prefix, scale) (argparse type)."""
    prefix, sep, scale = text.partition("=")
    try:
        value = float(scale)
    except ValueError:
        value = float("nan")
    if not sep or not prefix or not value > 0:
        raise argparse.ArgumentTypeError(f"expected PREFIX=SCALE with SCALE > 0, got {text!r}")
    return prefix, value


def _setting_name(value) -> str:
    """A lesion setting as a folder-name part: 0.7, 1-4, liver0.4-spleen0.2."""
    if isinstance(value, dict):
        return "-".join(f"{k}{v}" for k, v in value.items())
    return "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def extra_training_items(
    data: Path, data_seed: int, studies: int, seed: int | None = None, lesions: dict | None = None
) -> list[dict]:
    """The training and unlabeled items of ``studies`` more generated studies (seed 1000 + data seed unless
    ``seed``; 24 more are made for their own validation and test splits, unused). The first extra set (240) kept
    the folder name ``DATA-extra<SEED>``; a set of another size has its own, ``DATA-extra<SEED>-<N>``, and one
    with other lesion settings (``lesions``, e.g. lesion-rich studies: the study-level counterpart of nnU-Net's
    foreground oversampling, as a training sample here is the whole study) adds them to the name, e.g.
    ``DATA-extra2000-960-lesion_presence0.7``. A folder that holds another number of studies is refused rather
    than silently reused."""
    seed = extra_seed_of(data_seed) if seed is None else seed
    lesions = lesions or {}
    name = f"{data}-extra{seed}" + ("" if studies == 240 and not lesions else f"-{studies}")
    name += "".join(f"-{k}{_setting_name(v)}" for k, v in lesions.items())
    root = Path(name)
    _, extra = benchmark_items(root, seed, studies + 24, lesions=lesions)
    have = sum(len(extra[split]) for split in ("training", "validation", "test", "unlabeled"))
    if have != studies + 24:
        raise SystemExit(f"{root} holds {have} generated studies, not {studies + 24}")
    return extra["training"] + extra["unlabeled"]


def _model(label_map: LabelMap, architecture: dict | None = None):
    """``unimed_small`` as a run's config (``architecture``) built it: its keys ``fine_class_masks``,
    ``fine_refine_units`` and ``dense_class_head``, each absent from the configs of the runs from before it (and
    then off); without ``architecture``, the factory's model (the bundle's)."""
    if architecture is None:
        return unimed_small(label_map)
    model = unimed_small(label_map, fine_refine_units=architecture.get("fine_refine_units", 0),
                         dense_class_head=architecture.get("dense_class_head", False))  # fmt: skip
    if not architecture.get("fine_class_masks", True):  # the ablation: class-token masks on E's grid, as before
        model.fine_class_head = None
    return model


def benchmark_predictor(weights: Path, label_map: LabelMap, architecture: dict | None = None) -> UniMedPredictor:
    """The benchmark's predictor for ``weights``: the bundle's grid, window and label-volume scores, and a low
    score threshold so that mAP sees the whole ranking (torch seeded: the evaluation is repeatable)."""
    model = _model(label_map, architecture)
    load_weights(model, weights)
    torch.manual_seed(0)
    return UniMedPredictor(model, label_map, spacing=SPACING, roi_size=PATCH, score_threshold=0.05,
                           semantic_source="both")  # fmt: skip


def bundle_choices(predictor: UniMedPredictor, config: dict | None = None) -> UniMedPredictor:
    """``predictor`` with the choices the bundle's ``inference.json`` made for the shipped weights, the ones
    ``unimed-infer`` reads too (``PREDICTOR_CHOICES``: detection path, component threshold, grid shifts, ...) but
    the reporting cut, and not the rescorer: benchmarks set those as they need. Returns the predictor."""
    if config is None:
        config = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())["predictor"]
    for key in (k for k in PREDICTOR_CHOICES if k != "score_threshold" and k in config):
        setattr(predictor, key, tuple(config[key]) if key == "grid_shifts" else config[key])
    return predictor


def evaluate_weights(weights: Path, items: list[dict], label_map: LabelMap, architecture: dict | None = None) -> dict:
    """Headline metrics of ``weights`` on ``items``, with the bundle's predictor settings."""
    predictor = benchmark_predictor(weights, label_map, architecture)
    results = {}
    results["label_volume"], _ = evaluate(predictor, items, label_map)
    predictor.detection_path = "segmentation"
    for key, threshold in (("components", None), ("components_scores", CURVE_SCORE_THRESHOLD)):
        predictor.component_threshold = threshold
        results[key], _ = evaluate(predictor, items, label_map, click_classes=[])
    results["decomposed"] = {k: v for k, v in results["label_volume"].items() if k.startswith(("mAP", "recall", "AP@"))}
    return results


def evaluate_run(args) -> int:
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    suffix = ""
    if args.field_of_view and args.fresh_seed is None:
        raise SystemExit("--field-of-view goes with --fresh-seed (the same fresh studies, cut)")
    if args.fresh_seed is None:
        label_map, items = benchmark_items(Path(config["data"]), config["data_seed"])
    else:  # studies generated from a seed no run trained or was tuned on (the check against over-tuning)
        if args.fresh_seed == config["data_seed"]:
            raise SystemExit(f"--fresh-seed {args.fresh_seed} is the seed this run's data came from")
        suffix = f"_fresh{args.fresh_seed}"
        if args.field_of_view:  # the same bodies, cut by a smaller field of view
            suffix += "_fov" + "x".join(f"{f:g}" for f in args.field_of_view)
        label_map, items = benchmark_items(Path(f"{config['data']}{suffix.replace('_', '-')}"), args.fresh_seed,
                                           fov_mm=args.field_of_view)  # fmt: skip
    snapshots = sorted(run.glob("step_*.pt"), key=_snapshot_step)
    if args.steps:
        snapshots = [p for p in snapshots if _snapshot_step(p) in args.steps]
    history = run_history(run)
    for path in snapshots:
        out = run / f"eval_{path.stem}_{args.split}{suffix}.json"
        if out.exists():
            continue
        step = _snapshot_step(path)
        start = time.monotonic()
        results = evaluate_weights(path, items[args.split], label_map, config)
        cpu = _cpu_seconds_at(history, step)
        atomic_write_json(out, json_safe({"step": step, "cpu_seconds": cpu, "split": args.split, "weights": str(path),
                                          "data_seed": config["data_seed"] if args.fresh_seed is None else args.fresh_seed,
                                          "eval_seconds": round(time.monotonic() - start, 1), **results}))  # fmt: skip
        print(f"{out}: " + ", ".join(f"{k} {_headline(results, k):.3f}" for k in HEADLINE), flush=True)
    return 0


def _snapshot_step(path: Path) -> int:
    """N of a snapshot file ``step_<N>.pt``."""
    return int(path.stem.split("_")[1])


def run_history(run: Path) -> list[dict]:
    """The run's logged history: ``history.json`` (written when a piece ends) or, when the piece still running has
    logged further, the history inside its last checkpoint (sha256 checked)."""
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    if not (run / "checkpoint.pt").exists():
        return history
    try:
        saved = read_checkpoint(run / "checkpoint.pt").get("history") or []
    except ValueError:  # being replaced, or altered: history.json is what there is
        return history
    return saved if saved and (not history or saved[-1]["step"] > history[-1]["step"]) else history


def _cpu_seconds_at(history: list[dict], step: int) -> float | None:
    return next((row.get("cpu_seconds") for row in history if row["step"] >= step), None)


def _headline(results: dict, name: str) -> float:
    source, key = HEADLINE[name]
    value = results.get(source, {}).get(key)
    return float("nan") if value is None else float(value)


def _start_of(config: dict) -> tuple[int, float]:
    """(steps, CPU seconds) a run had already trained before it started: a fine-tuning run (``--init-weights``)
    continues its parent's snapshot (``PARENT/step_N.pt`` or ``PARENT/final.pt``), so its points sit after it on
    the curve. The parent's folder must be at hand (its history gives the clock); else the run stops here. Weights
    of a head fitted on frozen features (``benchmarks/dense_head_fit.py``: its record ``W.json`` beside them) add
    that fit's CPU time and no steps to the weights it started from."""
    if "init_weights" not in config:
        return 0, 0.0
    weights = Path(config["init_weights"])
    parent = weights.parent
    if not (parent / "config.json").exists():
        fit = weights.with_suffix(".json")
        if not fit.exists():
            raise SystemExit(f"{weights}: the parent run of a fine-tuning run is needed to place it on the curve")
        record = json.loads(fit.read_text())
        steps, cpu = _start_of({"init_weights": record["init"]})
        return steps, cpu + record["cpu_seconds"]
    parent_config = json.loads((parent / "config.json").read_text())
    step = parent_config["total_steps"] if weights.stem == "final" else _snapshot_step(weights)
    before_steps, before_cpu = _start_of(parent_config)
    return before_steps + step, before_cpu + (_cpu_seconds_at(run_history(parent), step) or 0.0)


def assemble(args) -> int:
    rows, configs = [], {}
    for run in map(Path, args.runs):
        config = configs[run.name] = json.loads((run / "config.json").read_text())
        start_step, start_cpu = _start_of(config)
        history = None
        for path in sorted(run.glob(f"eval_step_*_{args.split}.json")):
            ev = json.loads(path.read_text())
            if ev["cpu_seconds"] is None:  # evaluated while its piece was still running: read the clock now
                history = run_history(run) if history is None else history
                ev["cpu_seconds"] = _cpu_seconds_at(history, ev["step"])
            cpu = None if ev["cpu_seconds"] is None else start_cpu + ev["cpu_seconds"]
            rows.append({"run": run.name, "seed": config["seed"], "step": start_step + ev["step"], "cpu_seconds": cpu,
                         "total_steps": start_step + config["total_steps"],
                         **{k: _headline(ev, k) for k in HEADLINE}})  # fmt: skip
    rows.sort(key=lambda r: (r["run"], r["step"]))
    spread = seed_spread(rows, configs)
    result = {"command": "python -m benchmarks.learning_curve assemble " + " ".join(args.runs), "split": args.split,
              "headline": {k: "/".join(v) for k, v in HEADLINE.items()}, "rows": rows, "seed_spread": spread}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "learning_curve.json", json_safe(result))
    lines = ["| run | seed | step | CPU min | " + " | ".join(HEADLINE) + " |", "|---" * (4 + len(HEADLINE)) + "|"]
    for r in rows:
        cpu = "" if r["cpu_seconds"] is None else f"{r['cpu_seconds'] / 60:.0f}"
        lines.append(f"| {r['run']} | {r['seed']} | {r['step']} | {cpu} | "
                     + " | ".join(f"{r[k]:.3f}" for k in HEADLINE) + " |")  # fmt: skip
    if spread:
        lines += ["", "Seeds of one recipe (runs whose settings differ only in the seed): mean ± sd (min-max) at each "
                  "step that two or more of them reached.", "",
                  "| runs | step | seeds | " + " | ".join(HEADLINE) + " |", "|---" * (3 + len(HEADLINE)) + "|"]  # fmt: skip
        for g in spread:
            cells = [format_spread(g["metrics"][k]) for k in HEADLINE]
            lines.append(f"| {', '.join(g['runs'])} | {g['step']} | {len(g['seeds'])} | " + " | ".join(cells) + " |")
    atomic_write_text(args.results / "learning_curve.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, args.plot)
    return 0


# Settings that may differ between the seeds of one recipe (the snapshot steps only choose where it is read).
_NOT_RECIPE = ("seed", "snapshot_steps", *_MACHINE)


def seed_spread(rows: list[dict], configs: dict[str, dict]) -> list[dict]:
    """Mean, sd, min and max of every headline metric over the seeds of one recipe, at each step that two or more
    seeds reached. Runs belong to one recipe when their configs are equal but for :data:`_NOT_RECIPE`; a
    fine-tuning run is its own recipe (its ``init_weights`` differ)."""
    groups: dict[str, list[str]] = {}
    for run, config in configs.items():
        recipe = json.dumps({k: v for k, v in config.items() if k not in _NOT_RECIPE}, sort_keys=True)
        groups.setdefault(recipe, []).append(run)
    out = []
    for runs in groups.values():
        if len({configs[r]["seed"] for r in runs}) < 2:
            continue
        for step in sorted({r["step"] for r in rows if r["run"] in runs}):
            at = [r for r in rows if r["run"] in runs and r["step"] == step]
            if len(at) < 2:
                continue
            metrics = {}
            for k in HEADLINE:
                values = torch.tensor([r[k] for r in at if r[k] == r[k]], dtype=torch.float64)  # NaN: not measured
                metrics[k] = None if len(values) < 2 else {
                    "mean": float(values.mean()), "sd": float(values.std()), "min": float(values.min()),
                    "max": float(values.max()), "n": len(values)}  # fmt: skip
            out.append({"runs": sorted(r["run"] for r in at), "seeds": sorted(r["seed"] for r in at), "step": step,
                        "metrics": metrics})  # fmt: skip
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["organ Dice", "lesion mAP@0.1 (label volume)", "image AUC", "click Dice"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), constrained_layout=True)
    for ax, name in zip(axes, names):
        for i, run in enumerate(sorted({r["run"] for r in rows})):
            pts = [(r["step"], r[name]) for r in rows if r["run"] == run]
            (line,) = ax.plot(*zip(*pts), marker="o", label=run, color=plt.cm.tab20(i % 20))  # more runs than 10
            if name == "lesion mAP@0.1 (label volume)":  # the shipped rule, where it was measured: crosses
                later = [(r["step"], r["lesion mAP@0.1 (score map)"]) for r in rows if r["run"] == run]
                ax.plot(*zip(*later), marker="x", linestyle="--", color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("training steps (batch 2)")
        ax.set_title(name + (", x: score map" if name == "lesion mAP@0.1 (label volume)" else ""))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (or resume) one run")
    p.add_argument("--run", type=Path, required=True, help="run folder: checkpoint, snapshots, history")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=int, default=9600, help="length of the learning-rate schedule")
    p.add_argument("--snapshot-steps", type=int, nargs="*", default=DEFAULT_SNAPSHOTS)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--stop-after-min", type=float, default=100.0, help="wall minutes of this piece")
    p.add_argument("--checkpoint-every-min", type=float, default=10.0)
    p.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--coarse-class-masks", action="store_true", help="ablation: no FineClassHead")
    p.add_argument(
        "--extra-studies",
        type=int,
        default=0,
        help="this many more generated studies (seed 1000 + data seed, DATA-extra<SEED>) in training",
    )
    p.add_argument("--extra-seed", type=int, default=None, help="seed of the extra studies (default 1000 + data seed)")
    p.add_argument(
        "--extra-lesion-presence",
        type=float,
        default=None,
        help="probability of each lesion kind in an extra study (default the benchmark's, 0.5)",
    )
    p.add_argument(
        "--extra-lesions-per-kind",
        type=int,
        nargs=2,
        default=None,
        help="(min, max) lesions of a present kind in an extra study (default the benchmark's, 1 3)",
    )
    p.add_argument(
        "--extra-lesion-hosts",
        nargs="+",
        default=None,
        metavar="ORGAN=WEIGHT",
        help="relative frequency of each lesion host organ in the extra studies (default the generator's: "
        "liver=0.65 spleen=0.1 kidney_left=0.125 kidney_right=0.125)",
    )
    p.add_argument("--init-weights", type=Path, default=None, help="start from these weights (fine-tuning)")
    p.add_argument(
        "--fine-refine-units",
        type=int,
        default=0,
        help="residual units of the class masks' head at the working grid (FineClassHead.refine_units)",
    )
    p.add_argument(
        "--dense-class-head",
        action="store_true",
        help="add per-voxel class logits from E and the image to the class masks (DenseClassHead)",
    )
    p.add_argument(
        "--lesion-balanced-bce",
        action="store_true",
        help="add the lesion classes' balanced BCE to the class masks' losses (JointObjective.lesion_balanced_bce)",
    )
    p.add_argument(
        "--lr-scale",
        nargs="+",
        type=_prefix_scale,
        default=None,
        metavar="PREFIX=SCALE",
        help="train the parameters whose names start with PREFIX at SCALE times --lr (e.g. dense_class_head=10: a "
        "head added to trained weights)",
    )
    p.add_argument(
        "--field-of-view-cut",
        type=float,
        default=0.0,
        help="probability of training on a cut field of view (Augmentation.field_of_view_cut; default 0, off)",
    )
    p.add_argument(
        "--class-mask-pos-weight",
        type=float,
        default=None,
        help="cap of the class masks' BCE foreground weight (default: fit's, 30)",
    )
    p.add_argument(
        "--prompt-class-weight",
        type=float,
        default=DEFAULT_LOSS_WEIGHTS["loss_prompt_class"],
        help="weight of the prompt queries' class term (its earlier layers: half); default fit's, 0 (off)",
    )
    p.set_defaults(func=train)
    p = sub.add_parser("evaluate", help="evaluate the run's snapshots not yet evaluated")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--steps", type=int, nargs="*", help="only these snapshots (default: all)")
    p.add_argument(
        "--fresh-seed",
        type=int,
        default=None,
        help="evaluate on studies generated from this seed instead (DATA-fresh<SEED>, made if missing)",
    )
    p.add_argument(
        "--field-of-view",
        type=float,
        nargs=3,
        default=None,
        help="with --fresh-seed: the same studies with this field of view (mm), which cuts the body",
    )
    p.set_defaults(func=evaluate_run)
    p = sub.add_parser("assemble", help="gather runs' evaluations into the results file, a table and a plot")
    p.add_argument("runs", nargs="+")
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=Path("docs/figures/learning_curve.png"))
    p.set_defaults(func=assemble)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
