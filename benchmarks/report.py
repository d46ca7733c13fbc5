"""``benchmarks/results/*.json`` → ``docs/benchmarks.md`` with tables and PNG plots.

    .venv/bin/python -m benchmarks.report

Reads whichever of ``quality.json``, ``claims.json`` and ``speed.json`` exist, and the learning benchmark's
``learning.json`` with the baselines and the claims' arms trained at its scale (``baseline_learning_<task>.json``,
``benchmarks/baseline_learning.py``; ``claims_learning.json``, ``benchmarks/claims_learning.py``) and the
baselines' learning curve (``baseline_curve.json``, ``benchmarks/baseline_curve.py``) beside UniMed's
(``learning_curve.json``); every number in the report comes from them, including the closing verdict (where UniMed
wins and loses, by how much), so a rerun rewrites it.

Quick mode (``make bench``: 45 CPU-seconds per training) is a smoke run of the machinery: every model is still at
its first steps there, so its quality and claim rows are shown as such and stay out of the verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unimed_core.data.atomic import atomic_write_text

__all__ = ["build_report", "verdict", "curve_comparison", "curve_comparison_by_cpu", "format_spread", "main"]

QUALITY_KEYS = ("dice/liver", "dice/spleen", "dice/kidney_left", "dice/kidney_right", "dice/cyst", "dice/tumor",
                "dice/all_mean", "hd95/liver", "hd95/spleen", "hd95/kidney_left", "hd95/kidney_right",
                "mAP@0.10", "mAP@0.25", "mAP@0.50", "recall@0.10", "recall@0.25", "recall@0.50",
                "AUC", "accuracy", "click_dice/mean")  # fmt: skip
# The learning-scale comparison: (metric, the task whose baseline reports it); the first of each task is its headline.
LEARNING_ROWS = (
    *((f"dice/{name}", "segmentation") for name in ("organs_mean", "liver", "spleen", "kidney_left", "kidney_right",
                                                    "cyst", "tumor", "all_mean")),
    ("hd95/liver", "segmentation"), ("hd95/kidney_left", "segmentation"),
    *((f"{metric}@{iou}", "detection") for metric in ("mAP", "recall") for iou in ("0.10", "0.25", "0.50")),
    ("AUC", "classification"), ("accuracy", "classification"),
)  # fmt: skip
BASELINE_TASKS = ("segmentation", "detection", "classification")
# The per-arm table of the learning-scale claims (all 16 test studies).
ARM_KEYS = ("dice/organs_mean", "dice/liver", "dice/kidney_left", "mAP@0.10", "recall@0.10", "AUC", "click_dice/mean")


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(a, b) -> str:
    return "n/a" if a is None or b is None or not b else f"{a / b:.2f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows
    ]


def _quality(q: dict) -> list[str]:
    u, b = q["unimed"]["summary"], q["baselines"]["summary"]
    runs = q["baselines"]["runs"]
    smoke = q["mode"] in SMOKE_MODES
    title = (
        "Smoke run (quick mode): UniMed and MONAI's single-task models"
        if smoke
        else "Quality: UniMed vs MONAI's single-task models"
    )
    lines = [f"## {title}", "", *([SMOKE_NOTE, ""] if smoke else []),
             f"Mode `{q['mode']}`: every model trained for {q['budget_cpu_s']:.0f} s of process CPU time "
             f"({q['threads']} threads), tested on {q['test_cases']} held-out generated studies. UniMed: "
             f"{q['unimed']['run']['steps']} steps on {q['training_items']} training + {q['unlabeled_items']} unlabeled "
             "items. Baselines (SegResNet / RetinaNet / DenseNet121): "
             + ", ".join(f"{t} {r['steps']} steps on {r['items']} items" for t, r in runs.items()) + ". "
             "HD95 in mm (lower is better); every other metric higher is better. Click Dice exists only for UniMed. "
             "Equal CPU time means equal work only on an otherwise idle machine: beside other jobs, threads that "
             "spin-wait for a core count as CPU time too (a run beside a test suite got a third of its steps).",
             ""]  # fmt: skip
    rows = [[k, u.get(k), b.get(k), _ratio(u.get(k), b.get(k))] for k in QUALITY_KEYS if k in u or k in b]
    return lines + _table(["metric", "UniMed", "baselines", "ratio UniMed / baseline"], rows) + [""]


def _learning_scale(learning: dict, baselines: dict[str, dict]) -> list[str]:
    runs = "; ".join(
        f"{task}: {b['network']}, {b['train']['steps']} steps on {b['train']['items']} items"
        + ("" if b["train"].get("recipe") else " (trained before the recipes: AdamW 1e-3, no augmentation)")
        for task, b in baselines.items()
    )
    lines = ["## Quality at the learning benchmark's scale", "",
             f"UniMed as `benchmarks/learning.py` trained it (`{learning['command']}`, {learning['steps']} steps, one "
             f"model for all tasks) beside MONAI's baselines trained by `benchmarks/baseline_learning.py` with the "
             f"same data, grid, patches, clock and CPU budget, one process each ({runs}). One run (seed) each; same 16 held-out studies. "
             "HD95 in mm (lower is better); every other metric higher is better.", ""]  # fmt: skip
    rows = []
    for k, task in LEARNING_ROWS:
        u, b = learning["summary"].get(k), baselines.get(task, {}).get("summary", {}).get(k)
        rows.append([f"{k} ({task})", u, b, _ratio(u, b)])
    return lines + _table(["metric", "UniMed", "baseline", "ratio UniMed / baseline"], rows) + [""]


def _learning_headline(learning: dict | None, baselines: dict[str, dict]) -> dict:
    """The headline rows of the learning-scale comparison, shaped like ``quality.json``'s ``headline``."""
    if not learning:
        return {}
    out = {}
    for task in baselines:
        metric = next(k for k, t in LEARNING_ROWS if t == task)
        out[task] = {"metric": metric, "unimed": learning["summary"].get(metric),
                     "baseline": baselines[task]["summary"].get(metric)}  # fmt: skip
    return out


# The learning curve: a baseline's metric (baseline_curve.json), UniMed's column for it (learning_curve.json) and the
# metric's name in the verdict (so that its rules, e.g. an AUC at chance, apply). UniMed's lesions: the curve's
# score-map rule (each lesion class's score map), so snapshots evaluated before that rule existed are not compared.
CURVE_METRICS = {"segmentation": ("organ Dice", "organ Dice", "dice/organs_mean"),
                 "detection": ("lesion mAP@0.1", "lesion mAP@0.1 (score map)", "mAP@0.10"),
                 "classification": ("image AUC", "image AUC", "AUC")}  # fmt: skip


def curve_comparison(curve: dict | None, unimed: dict | None) -> list[tuple[str, dict]]:
    """("step N", headline) for every step where a baseline and a UniMed run both have a snapshot evaluated."""
    if not curve or not unimed:
        return []
    out = []
    for step in sorted({r["step"] for r in curve["rows"]}):
        headline = {}
        for b in (r for r in curve["rows"] if r["step"] == step):
            name, column, metric = CURVE_METRICS[b["task"]]
            for u in (r for r in unimed["rows"] if r["step"] == step and r.get(column) is not None):
                headline[f"{b['task']}, {b['model']} vs UniMed {u['run']}"] = {
                    "metric": metric, "unimed": u[column], "baseline": b.get(name)}  # fmt: skip
        if headline:
            out.append((f"step {step}", headline))
    return out


def curve_comparison_by_cpu(curve: dict | None, unimed: dict | None) -> list[tuple[str, dict]]:
    """("N CPU-min", headline) for every baseline snapshot with a CPU time: UniMed's latest snapshot of each run that
    had used no more CPU time (a fine-tuning run's time includes its parents'), or None where no run had one yet.

    Equal steps are not equal work: a SegResNet step on a 64³ patch costs about three of UniMed's on this machine,
    so the same-step comparison alone favours the baseline."""
    if not curve or not unimed:
        return []
    out = []
    for b in sorted((r for r in curve["rows"] if r.get("cpu_seconds")), key=lambda r: r["cpu_seconds"]):
        name, column, metric = CURVE_METRICS[b["task"]]
        latest: dict[str, dict] = {}
        for u in unimed["rows"]:
            if u.get(column) is not None and u.get("cpu_seconds") and u["cpu_seconds"] <= b["cpu_seconds"]:
                if u["run"] not in latest or u["cpu_seconds"] > latest[u["run"]]["cpu_seconds"]:
                    latest[u["run"]] = u
        budget = f"{b['cpu_seconds'] / 60:.1f} CPU-min"
        headline = {f"{b['task']}, {b['model']} step {b['step']} vs UniMed {u['run']} step {u['step']}": {
                        "metric": metric, "unimed": u[column], "baseline": b.get(name)}
                    for u in latest.values()}  # fmt: skip
        if not headline:
            headline[f"{b['task']}, {b['model']} step {b['step']} vs UniMed (no snapshot yet)"] = {
                "metric": metric, "unimed": None, "baseline": b.get(name)}  # fmt: skip
        out.append((f"equal CPU time, {budget}", headline))
    return out


def _curve(curve: dict, unimed: dict | None, figure: str | None) -> list[str]:
    runs = sorted({(r["run"], r["model"], r["recipe"]) for r in curve["rows"]})
    lines = ["## Learning curve: MONAI's baselines trained with their own recipes", "",
             "`benchmarks/baseline_curve.py`: one resumable run per baseline (`benchmarks/baseline_training.py`: the "
             "recipe's optimiser, learning-rate schedule and augmentation; `benchmarks/baselines.py`: the network as "
             "the recipe builds it, and each deviation with its reason), same data, 6 mm grid, 64^3 patch and batch "
             "(2) as UniMed, snapshots at steps that double, each scored by `unimed_core.evaluation.evaluate` on the "
             "same 16 held-out studies (detections from score 0.05). A snapshot is a point on one run's schedule "
             "(over `total_steps`): an early one is a lower bound on a run of that length. Recipes: "
             + "; ".join(f"{model} (`{run}`): {recipe}" for run, model, recipe in runs) + ".", ""]  # fmt: skip
    if figure:
        lines += [f"![learning curve]({figure})", ""]
    rows = []
    for r in curve["rows"]:
        name, column, _ = CURVE_METRICS[r["task"]]
        detail = ", ".join(f"{k.split('/')[-1] if k.startswith('dice/') else k} {r[k]:.2f}"
                           for k in r if "/" in k or k.startswith(("recall", "mAP", "accuracy"))
                           if isinstance(r.get(k), float))  # fmt: skip
        at = [f"{u['run']} {u[column]:.3f}" for u in (unimed or {}).get("rows", [])
              if u["step"] == r["step"] and u.get(column) is not None]  # fmt: skip
        cpu = None if r.get("cpu_seconds") is None else round(r["cpu_seconds"] / 60, 1)
        rows.append([r["model"], r["step"], cpu, name, r.get(name), detail, "; ".join(at) or "n/a"])
    lines += _table(["baseline", "step", "CPU min", "metric", "value", "detail", "UniMed at this step"], rows)
    return lines + [""]


def _unimed_curve(curve: dict, figure: str | None) -> list[str]:
    """UniMed's learning curve: the seeds' spread at each budget they share (the runs, one row a snapshot, are in
    ``benchmarks/results/learning_curve.md``)."""
    lines = ["## UniMed's learning curve", "",
             "`benchmarks/learning_curve.py`: resumable runs read from their saved snapshots, each scored on the 16 "
             "held-out test studies (lesions: each lesion class's score map >= 0.2, the curve's fixed rule); every "
             "row in `benchmarks/results/learning_curve.md`.", ""]  # fmt: skip
    if figure:
        lines += [f"![UniMed learning curve]({figure})", ""]
    spread = curve.get("seed_spread") or []
    if spread:
        names = ("organ Dice", "lesion mAP@0.1 (score map)", "image AUC", "click Dice")
        lines += ["Seeds of one recipe (runs that differ only in the seed): mean ± sd (min-max) at each step two or "
                  "more of them reached.", ""]  # fmt: skip
        rows = [[", ".join(g["runs"]), g["step"], len(g["seeds"]),
                 *(format_spread(g["metrics"].get(n)) for n in names)] for g in spread]  # fmt: skip
        lines += _table(["runs", "step", "seeds", *names], rows)
    return lines + [""]


def format_spread(m: dict | None) -> str:
    """``mean ± sd (min-max)`` of a seed spread (``learning_curve.seed_spread``); n/a when not measured."""
    return "n/a" if m is None else f"{m['mean']:.3f} ± {m['sd']:.3f} ({m['min']:.3f}-{m['max']:.3f})"


def _component_threshold(ct: dict) -> list[str]:
    keys = ("mAP@0.10", "recall@0.10", "AP@0.10/cyst", "AP@0.10/tumor")
    lines = ["## Lesion detections: which regions are reported", "",
             "`benchmarks/component_threshold.py`: the label-volume detection path boxes each lesion class's regions, "
             "either the label volume's (argmax: the host organ wins where it outscores the lesion) or those where "
             "the lesion class's own score reaches a threshold. The threshold is chosen on the tuning studies and "
             f"checked on the others. Weights `{ct['weights_sha256'][:8]}…`; chosen: **{ct['chosen']}**.", ""]  # fmt: skip
    rows = [[split, name, *(summary.get(k) for k in keys)] for split, found in ct["splits"].items()
            for name, summary in found.items()]  # fmt: skip
    return lines + _table(["studies", "regions", *keys], rows) + [""]


def _folders(data: str | list[str]) -> str:
    return ", ".join(f"`{Path(d).name}`" for d in ([data] if isinstance(data, str) else data))


def _candidate_rescorer(cr: dict, other: dict | None) -> list[str]:
    fit = cr["fit"]
    lines = ["## Lesion candidates: false-positive reduction", "",
             "`benchmarks/candidate_rescorer.py`: a small MLP ensemble (`CandidateRescorer`) re-ranks the segmentation "
             "path's lesion candidates from what their peak score does not say (size, fill, contrast, surrounding "
             f"organ, the other lesion class's score, image probabilities). Fitted on {fit['studies']} studies of "
             f"{_folders(fit['data'])} that the weights never trained on ({fit['candidates']} candidates, "
             f"{fit['hits']} hits at IoU >= {cr['iou']}) for weights `{cr['weights_sha256'][:8]}…`; three fits "
             f"(seeds) per row set; the bundle ships seed {fit['fit_seeds'][0]} (`{cr['rescorer_sha256'][:8]}…`).",
             ""]  # fmt: skip
    keys = ["mAP@0.10", "AP@0.10/cyst", "AP@0.10/tumor", "recall@0.10", "mAP@0.25"]
    rows = []
    for result in [cr] + ([other] if other else []):
        for name, found in result["sets"].items():
            for label, row in found["rows"].items():
                rows.append([result["component_threshold"], f"{name} ({found['studies']})", label]
                            + [row.get(k) for k in keys])  # fmt: skip
    return lines + _table(["component threshold", "studies", "lesion scores", *keys], rows) + [""]


def _grid_shifts(g: dict) -> list[str]:
    lines = ["## Organ boundaries: shifted working grids", "",
             "`benchmarks/grid_shifts.py`: the class scores averaged over the working grid and grids shifted by "
             "fractions of a working voxel along every axis (test-time augmentation, one network pass per shift). "
             f"Chosen on the tuning studies by organ Dice (ties within {g['tie']} go to fewer passes): **shifts "
             f"{g['chosen']}** (weights `{g['weights_sha256'][:8]}…`; lesions by the candidates' peaks, image labels "
             "by the head: the rescorer is fitted afterwards).", ""]  # fmt: skip
    keys = ["dice/organs_mean", "dice/spleen", "mAP@0.10", "AUC", "cpu_seconds_per_study"]
    rows = [[f"{name} ({found['studies']})", label, *[row.get(k) for k in keys]]
            for name, found in g["sets"].items() for label, row in found["rows"].items()]  # fmt: skip
    header = ["studies", "shifts", "organ Dice", "spleen Dice", "lesion mAP@0.1 (peaks)", "image AUC (head)",
              "CPU s / study"]  # fmt: skip
    return lines + _table(header, rows) + [""]


def _boundary_refiner_ablation(shipped: dict, variants: dict[str, dict]) -> list[str]:
    """Organ Dice of the refiner's variants (other initialisations, fit data, grids) beside the shipped fit."""
    rows = []
    for name, b in {"shipped": shipped, **variants}.items():
        sets = b["sets"].values()
        rows.append([name, b["fit"]["studies"], b["spacing_mm"], b["command"].split("--seed ")[-1] if "--seed" in
                     b["command"] else 0, *[s["rows"]["boundary refiner"]["dice/organs_mean"] for s in sets]])  # fmt: skip
    header = ["fit", "studies", "grid mm", "seed", *[f"organ Dice, {n}" for n in shipped["sets"]]]
    return ["Variants of the fit (`benchmarks/results/boundary_refiner_ablation/`):", ""] + _table(header, rows) + [""]


def _boundary_refiner(b: dict) -> list[str]:
    fit = b["fit"]
    lines = ["## Organ boundaries: the boundary refiner", "",
             "`benchmarks/boundary_refiner.py`: each organ's band (one voxel either side of its predicted boundary, "
             f"on a {b['spacing_mm']:g} mm grid) decided again by a small MLP from the network's score and the "
             "voxel's contrast to the study's own organ (`unimed_core/inference/boundary_refiner.py`); fitted on "
             f"the band voxels of {fit['studies']} generated studies the network never trained on (seed "
             f"{fit['seed']}; refiner `{b['refiner_sha256'][:8]}…`, weights `{b['weights_sha256'][:8]}…`).", ""]  # fmt: skip
    keys = [k for k in next(iter(next(iter(b["sets"].values()))["rows"].values()))]
    rows = [[f"{name} ({found['studies']})", label, *[row.get(k) for k in keys]]
            for name, found in b["sets"].items() for label, row in found["rows"].items()]  # fmt: skip
    header = ["studies", "label volume from", *[k.replace("dice/", "Dice ").replace("_", " ") for k in keys]]
    return lines + _table(header, rows) + [""]


def _image_label_fusion(f: dict) -> list[str]:
    lines = ["## Image labels that read the lesion candidates", "",
             "`benchmarks/image_label_fusion.py`: a lesion class's image probability from the image head, from the "
             "rescored candidates (noisy-OR: the chance that at least one is a true lesion), their mean or their "
             f"maximum; chosen on the tuning studies: **{f['chosen']}** (weights `{f['weights_sha256'][:8]}…`, "
             f"rescorer `{f['rescorer_sha256'][:8]}…`). The predictor applies it whenever it has a rescorer.", ""]  # fmt: skip
    classes = [k for k in next(iter(next(iter(f["sets"].values()))["rows"].values())) if k != "mean"]
    rows = [[f"{name} ({found['studies']})", rule, row["mean"], *[row[c] for c in classes]]
            for name, found in f["sets"].items() for rule, row in found["rows"].items()]  # fmt: skip
    return lines + _table(["studies", "rule", "mean AUC", *[f"AUC {c}" for c in classes]], rows) + [""]


def _reporting_cut(rc: dict) -> list[str]:
    rescorer = (f", candidates rescored (rescorer `{rc['rescorer_sha256'][:8]}…`)" if rc.get("rescorer_sha256")
                else ", candidates scored by their peaks")  # fmt: skip
    lines = ["## Lesion detections: which are shown", "",
             "`benchmarks/reporting_cut.py`: mAP reads every candidate; a user sees those above the predictor's "
             "`score_threshold`. Chosen on the tuning studies as the most sensitive cut with at most "
             f"{rc['fp_per_scan_budget']:g} false positive per scan (FROC, hits at IoU >= {rc['iou']}). Weights "
             f"`{rc['weights_sha256'][:8]}…`, component threshold {rc['component_threshold']}{rescorer}; chosen: "
             f"**score >= {rc['chosen']:g}**.", ""]  # fmt: skip
    rows = [
        [
            f"{name} ({found['scans']} scans, {found['lesions']} lesions)",
            r["cut"],
            r["sensitivity"],
            r["fp_per_scan"],
            r["detections_per_scan"],
        ]
        for name, found in rc["sets"].items()
        for r in found["rows"]
    ]
    return lines + _table(["studies", "cut", "sensitivity", "false positives / scan", "detections / scan"], rows) + [""]


def _claims(c: dict) -> list[str]:
    if c["mode"] == "learning":
        steps = " or ".join(map(str, c["steps"]))
        lines = ["## The paper's claims at the learning benchmark's scale", "",
                 f"`benchmarks/claims_learning.py`: every arm trained for {steps} steps (the same work whatever shares "
                 "the machine) with `benchmarks/learning.py`'s data and settings, one process and one seed each, "
                 "scored with the bundle's predictor settings on the same 16 held-out studies (the zero-shot and "
                 "few-shot rows on their 8 MR-like or 8 CT-like halves). One seed is one draw: in "
                 "`benchmarks/results/learning_ablations.md` the same code's organ Dice spreads by 0.07-0.13 (sd) "
                 "over four seeds, so smaller differences here are not evidence either way. "
                 "Difference = first arm minus second arm. The arms' CPU seconds (last table) include waiting for "
                 "cores when other jobs shared the machine: they are not a speed comparison.", ""]  # fmt: skip
    elif c["mode"] in SMOKE_MODES:
        lines = ["## The paper's claims: smoke run (quick mode)", "", SMOKE_NOTE, "",
                 f"Every UniMed run {c['budget_cpu_s']:.0f} s of process CPU time. Difference = first arm minus second arm.", ""]  # fmt: skip
    else:
        lines = ["## The paper's claims", "",
                 f"Mode `{c['mode']}`, every UniMed run {c['budget_cpu_s']:.0f} s of process CPU time. "
                 "Difference = first arm minus second arm (for HD95 lower is better; these rows use Dice, mAP, AUC).", ""]  # fmt: skip
    rows = [[r["claim"], r["metric"], f"{r['a']}: {_fmt(r['a_value'])}", f"{r['b']}: {_fmt(r['b_value'])}",
             r["difference"], _ratio(r["a_value"], r["b_value"]), r.get("note", "")] for r in c["rows"]]  # fmt: skip
    lines += _table(["claim", "metric", "first arm", "second arm", "difference", "ratio", "note"], rows) + [""]
    if c["mode"] == "learning":  # what each arm trained on, and its scores on all 16 test studies
        arms = [[name, f"{run['train']['annotated_items']} of {run['train']['items']}", run["train"]["steps"],
                 round(run["train"]["cpu_s"]), *(run["summary"].get(k) for k in ARM_KEYS)]
                for name, run in sorted(c["runs"].items())]  # fmt: skip
        lines += _table(["arm", "annotated items", "steps", "CPU s", *ARM_KEYS], arms) + [""]
    return lines


def _speed(s: dict) -> list[str]:
    lines = ["## Speed and memory on the CPU", "",
             f"{s['machine']['cpus']} CPU cores ({s['machine']['processor'] or s['machine']['platform']}), "
             f"{s['threads']} torch threads, median of {s['repeats']} calls after a warm-up, weights: {s['weights']}. "
             "One field of view (384 x 384 x 360 mm) at four voxel counts; both sides resample to the 6 mm working "
             "grid, so the network cost is the same at every size and the rest is resampling in and out. "
             "Peak = the process's resident-set high-water mark (own process per row); 'inference' = peak minus "
             "the RSS before the first call (model loaded, volume read).", ""]  # fmt: skip
    rows = []
    for r in s["inference"]:
        if "error" in r:
            rows.append(["x".join(map(str, r["shape"])), r["model"], "failed", "", "", ""])
            continue
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.get("parts_s", {}).items())
        rows.append(["x".join(map(str, r["shape"])), r["model"], r["latency_s"], r["peak_rss_mib"],
                     r["inference_mib"], parts])  # fmt: skip
    lines += _table(["input voxels", "model", "latency s", "peak RSS MiB", "inference MiB", "parts (s)"], rows)
    lines += ["", "Ratios (baselines in turn / UniMed; above 1 means UniMed is faster or smaller):", ""]
    lines += _table(["input voxels", "latency ratio", "peak memory ratio"],
                    [["x".join(map(str, r["shape"])), r["latency_baselines_over_unimed"],
                      r["peak_baselines_over_unimed"]] for r in s["ratios"]])  # fmt: skip
    t = s["training_samples_per_s"]
    lines += ["", "Training throughput (samples/s, batch 2, 64^3 patches, same threads):", ""]
    lines += _table(["model", "samples/s"], [[k, v] for k, v in t.items()])
    d = s.get("torchrun_cpu", {})
    lines += ["", "Two-process `torchrun` (gloo) scaling of UniMed's training step, one thread per process, batch 2 "
              "per process. This machine has only "
              f"{s['machine']['cpus']} cores, so 2 processes use every core and share memory bandwidth with each "
              "other (and with anything else running); the number says what data parallelism buys on one small "
              "host, not what it does across nodes.", ""]  # fmt: skip
    rows = [[n, v.get("median_step_s"), v.get("samples_per_s")] for n, v in d.items() if isinstance(v, dict)]
    lines += _table(["processes", "median step s", "samples/s"], rows)
    if "speedup_2_vs_1" in d:
        lines += ["", f"Speed-up 2 vs 1 process: {d['speedup_2_vs_1']:.2f}x (ideal 2x)."]
    return lines + [""]


# Below these a difference is not called a win or a loss: with 16 test studies one case moves a mean Dice or an
# AUC by several hundredths, and timings on a shared machine by a few percent.
METRIC_TOLERANCE = 0.02
# A claim measured with one seed per arm at the learning benchmark's scale: the same code's organ Dice spreads by an
# sd of 0.07-0.13 over four seeds there (benchmarks/results/learning_ablations.md), so a smaller gap decides nothing.
SEED_SPREAD = 0.10
# An AUC at or below this is chance on these 16 test studies: a gap between two such arms is noise, not a result.
CHANCE_AUC = 0.55
RATIO_TOLERANCE = 0.05
# Modes whose trainings are too short to compare models: shown, labelled, and left out of the verdict.
SMOKE_MODES = ("quick",)
SMOKE_NOTE = ("A smoke run of the machinery (`make bench`): every training gets a few dozen CPU-seconds, so each "
              "model is at its first steps and most numbers are zeros or chance. It shows that training, inference "
              "and scoring run end to end; it compares nothing, and the verdict leaves these rows out.")  # fmt: skip


def _no_difference(metric: str, a: float, b: float) -> str | None:
    """Why the gap between ``a`` and ``b`` is neither a win nor a loss ("" needs no reason), or None if it is one."""
    if abs(a - b) < METRIC_TOLERANCE:
        return ""
    if metric == "AUC" and max(a, b) <= CHANCE_AUC:
        return f" (both at chance, AUC <= {CHANCE_AUC})"
    return None


def verdict(
    quality: dict | None,
    claims: dict | None,
    speed: dict | None,
    learning_headline: dict | None = None,
    learning_claims: dict | None = None,
    curve_headlines: list[tuple[int, dict]] | None = None,
) -> list[str]:
    """Plain sentences: where UniMed wins, where it loses, by how much (from the numbers alone).

    Results of a smoke mode (:data:`SMOKE_MODES`) are named as left out, not judged. ``curve_headlines``: (step,
    headline) pairs of the learning curve, UniMed against each baseline at the same step (:func:`curve_comparison`)
    or within the same CPU time (:func:`curve_comparison_by_cpu`); a pair without UniMed's value is listed as not
    measured.
    """
    wins, losses, neutral, even = [], [], [], []
    smoke = [f"{what} ({q['mode']} mode)" for what, q in (("quality", quality), ("claims", claims))
             if q and q.get("mode") in SMOKE_MODES]  # fmt: skip
    quality = None if quality and quality.get("mode") in SMOKE_MODES else quality
    claims = None if claims and claims.get("mode") in SMOKE_MODES else claims
    headlines = [(f", {quality['mode']} mode" if "mode" in quality else "", quality["headline"])] if quality else []
    if learning_headline:
        headlines.append((", learning benchmark", learning_headline))
    unmeasured = []
    for scale, headline in headlines + [(f", learning curve at {at}", h) for at, h in curve_headlines or []]:
        for task, h in headline.items():
            u, b = h["unimed"], h["baseline"]
            if u is None and b is not None:
                unmeasured.append(f"{task} ({h['metric']}{scale}): baseline {b:.3f}, UniMed not measured")
            if u is None or b is None:
                continue
            text = f"{task} ({h['metric']}{scale}): UniMed {u:.3f} vs baseline {b:.3f} ({u - b:+.3f})"
            if (reason := _no_difference(h["metric"], u, b)) is not None:
                even.append(text + reason)
                continue
            (wins if u > b else losses).append(text)
    claim_sets = [(f", {c['mode']} mode" if c.get("mode") != "learning" else ", learning benchmark", c)
                  for c in (claims, learning_claims) if c]  # fmt: skip
    for scale, c in claim_sets:
        for r in c["rows"]:
            if r["difference"] is None:
                continue
            text = (f"claim '{r['claim']}' on {r['metric']}{scale}: {r['a']} {r['a_value']:.3f} vs {r['b']} "
                    f"{r['b_value']:.3f}")  # fmt: skip
            holds = r["difference"] > 0
            if r["claim"] == "zero-shot CT -> MR":  # a transfer gap, not a contest: reported as measured
                neutral.append(text + f" (difference {r['difference']:+.3f})")
                continue
            if (reason := _no_difference(r["metric"], r["a_value"], r["b_value"])) is not None:
                even.append(text + reason)
                continue
            if c.get("mode") == "learning" and abs(r["difference"]) < SEED_SPREAD:
                even.append(text + f" (a gap under one seed's spread, {SEED_SPREAD})")
                continue
            (wins if holds else losses).append(text + (" (holds)" if holds else " (does not hold here)"))
    if speed:
        for r in speed["ratios"]:
            shape = "x".join(map(str, r["shape"]))
            lat, mem = r["latency_baselines_over_unimed"], r["peak_baselines_over_unimed"]
            for ratio, text in ((lat, f"latency at {shape}: baselines take {lat:.2f}x UniMed's time"),
                                (mem, f"peak memory at {shape}: baselines use {mem:.2f}x UniMed's")):  # fmt: skip
                if abs(ratio - 1) < RATIO_TOLERANCE:
                    even.append(text)
                else:
                    (wins if ratio > 1 else losses).append(text)
    lines = ["## Verdict (generated from the numbers above)", "", "UniMed wins:", ""]
    lines += [f"- {w}" for w in wins] or ["- nothing measured"]
    lines += ["", "UniMed loses or the claim does not hold:", ""]
    lines += [f"- {x}" for x in losses] or ["- nothing measured"]
    if even:
        lines += [
            "",
            f"No measurable difference (under {METRIC_TOLERANCE} in a metric, {RATIO_TOLERANCE:.0%} in a ratio; "
            f"the learning benchmark's claims: under one seed's spread, {SEED_SPREAD}; AUCs both at chance):",
            "",
        ]
        lines += [f"- {x}" for x in even]
    if neutral:
        lines += ["", "Zero-shot transfer, as measured:", ""] + [f"- {x}" for x in neutral]
    if unmeasured:
        lines += ["", "Not compared (no UniMed measurement at that budget):", ""] + [f"- {x}" for x in unmeasured]
    if smoke:
        lines += ["", "Not judged (a smoke run of the machinery, not a comparison): " + ", ".join(smoke) + "."]
    return lines + [""]


def _plots(quality: dict | None, speed: dict | None, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if quality:
        tasks = list(quality["headline"])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        x = range(len(tasks))
        ax.bar([i - 0.2 for i in x], [quality["headline"][t]["unimed"] or 0 for t in tasks], 0.4, label="UniMed")
        ax.bar([i + 0.2 for i in x], [quality["headline"][t]["baseline"] or 0 for t in tasks], 0.4, label="baseline")
        ax.set_xticks(list(x), [f"{t}\n{quality['headline'][t]['metric']}" for t in tasks])
        ax.set_ylim(0, 1)
        ax.legend()
        smoke = " - smoke run, not a comparison" if quality.get("mode") in SMOKE_MODES else ""
        ax.set_title(f"Quality, same CPU budget ({quality['budget_cpu_s']:.0f} s){smoke}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "quality.png", dpi=100)
        plt.close(fig)
        written.append("quality.png")
    if speed:
        rows = [r for r in speed["inference"] if "error" not in r]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for model in ("unimed", "baselines"):
            mine = [r for r in rows if r["model"] == model]
            labels = ["x".join(map(str, r["shape"])) for r in mine]
            axes[0].plot(labels, [r["latency_s"] for r in mine], marker="o", label=model)
            axes[1].plot(labels, [r["peak_rss_mib"] for r in mine], marker="o", label=model)
        axes[0].set_ylabel("latency (s)")
        axes[1].set_ylabel("peak RSS (MiB)")
        for ax in axes:
            ax.tick_params(axis="x", labelsize=7)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "speed.png", dpi=100)
        plt.close(fig)
        written.append("speed.png")
    return written


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def build_report(results: Path, out: Path, plots: bool = True) -> str:
    """Write ``out`` (markdown) and its plots (in ``out``'s stem folder) from ``results``; return the markdown."""
    quality, claims, speed = (_load(results / f"{n}.json") for n in ("quality", "claims", "speed"))
    learning_claims = _load(results / "claims_learning.json")
    learning = _load(results / "learning.json")
    baselines = {t: b for t in BASELINE_TASKS if (b := _load(results / f"baseline_learning_{t}.json"))}
    curve, unimed_curve = _load(results / "baseline_curve.json"), _load(results / "learning_curve.json")
    lines = ["# UniMed benchmarks", "",
             "Generated by `make bench` (quick mode) or `make bench-full` from `benchmarks/results/*.json` "
             "(`benchmarks/report.py`). Data: generated CT-like and MR-like studies (`benchmarks/learning.py`'s "
             "`make_data`), 6 mm working grid, 64^3 patches. Baselines are MONAI's networks trained with the same "
             "CPU budget on the items carrying their annotation; everything is scored by "
             "`unimed_core.evaluation.evaluate`.", ""]  # fmt: skip
    if plots:
        folder = out.with_suffix("")
        for name in _plots(quality, speed, folder):
            lines += [f"![{name}]({folder.name}/{name})", ""]
    if quality:
        lines += _quality(quality)
    if learning and baselines:
        lines += _learning_scale(learning, baselines)
    if unimed_curve:
        figure = out.parent / "figures" / "learning_curve.png"
        lines += _unimed_curve(unimed_curve, f"figures/{figure.name}" if figure.is_file() else None)
    if curve:
        figure = out.parent / "figures" / "learning_curve_baselines.png"
        lines += _curve(curve, unimed_curve, f"figures/{figure.name}" if figure.is_file() else None)
    if component_threshold := _load(results / "component_threshold.json"):
        lines += _component_threshold(component_threshold)
    if grid_shifts := _load(results / "grid_shifts.json"):
        lines += _grid_shifts(grid_shifts)
    if boundary_refiner := _load(results / "boundary_refiner.json"):
        lines += _boundary_refiner(boundary_refiner)
        variants = {
            p.parent.name: _load(p)
            for p in sorted((results / "boundary_refiner_ablation").glob("*/boundary_refiner.json"))
        }
        if variants:
            lines += _boundary_refiner_ablation(boundary_refiner, variants)
    if candidate_rescorer := _load(results / "candidate_rescorer.json"):
        other = _load(results / "candidate_rescorer_component0.2" / "candidate_rescorer.json")
        lines += _candidate_rescorer(candidate_rescorer, other)
    if image_label_fusion := _load(results / "image_label_fusion.json"):
        lines += _image_label_fusion(image_label_fusion)
    if reporting_cut := _load(results / "reporting_cut.json"):
        lines += _reporting_cut(reporting_cut)
    if claims:
        lines += _claims(claims)
    if learning_claims:
        lines += _claims(learning_claims)
    if speed:
        lines += _speed(speed)
    lines += verdict(
        quality,
        claims,
        speed,
        _learning_headline(learning, baselines),
        learning_claims,
        curve_comparison(curve, unimed_curve) + curve_comparison_by_cpu(curve, unimed_curve),
    )
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    build_report(args.results, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
