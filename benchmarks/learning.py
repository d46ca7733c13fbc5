"""Does UniMed learn? Train the small variant on the CPU within a time budget, evaluate on held-out studies.

    .venv/bin/python benchmarks/learning.py --minutes 25 --save-weights bundle/models/model.pt

Generates (or reuses) synthetic CT-like and MR-like studies with mixed annotation levels, trains
``unimed_small`` with the one-stage joint objective, and reports on the held-out test split: organ Dice,
lesion detection mAP / recall at IoU 0.1 / 0.25 / 0.5, image-label AUC and accuracy, click-prompted Dice.
Writes ``benchmarks/results/learning.json`` and ``learning.md``.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from unimed_core.data.atomic import atomic_write_json, atomic_write_text
from unimed_core.data.datalist import load_datalist
from unimed_core.evaluation import evaluate
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights, save_weights
from unimed_core.synthetic.case import SyntheticConfig
from unimed_core.synthetic.dataset import generate_dataset
from unimed_core.training.fit import fit

TARGETS = {"dice/organs_mean": 0.85, "mAP@0.10": 0.6, "AUC": 0.9, "click_dice/mean": 0.8}
# The working grid on the CPU: the generated field of view (384 x 384 x 360 mm) fits one 64^3 patch at 6 mm, so
# every training sample is the whole study and image-level labels stay valid. (The shipped model, trained on a
# GPU by benchmarks/gpu_check.py, uses 5 mm and 80^3: see bundle/configs.)
SPACING = (6.0, 6.0, 6.0)
PATCH = (64, 64, 64)
# Lesion radii of the benchmark's studies. The generator's default (3-30 mm) includes lesions of one or two
# voxels at 6 mm, below what this grid (and the decoder's mask grid, 12 mm) can resolve; the CPU benchmark keeps
# the lesions it can see, from 16 mm across. Finer grids (GPU configs) train on the full range.
LESION_RADIUS_MM = (8.0, 30.0)


def json_safe(value):
    """NaN / inf (an undefined metric) become null, so the results file is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_data(
    root: Path, cases: int, seed: int, fov_mm: Sequence[float] | None = None, lesions: dict | None = None
) -> Path:
    """The benchmark's generated studies (``fov_mm``: a field of view other than the generator's whole body; the
    anatomy is drawn from the seed alone, so the same seed with a smaller field of view cuts the same bodies;
    ``lesions``: ``SyntheticConfig`` lesion settings other than its defaults, e.g. ``lesion_presence``)."""
    datalist = root / "datalist.json"
    if datalist.exists():  # made before (or a test's smaller copy): reused as it is
        return datalist
    fov = {} if fov_mm is None else {"fov_mm": tuple(fov_mm)}
    return generate_dataset(
        root, cases, seed=seed, domains="mixed", shape=None, spacing=(4.0, 4.0, 4.5), spacing_max=(5.0, 5.0, 6.0),
        orientations=("RAS", "LPS"), n_validation=8, n_test=16,
        base_config=SyntheticConfig(lesion_radius_mm=LESION_RADIUS_MM, **(lesions or {})), **fov,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--cases", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument(
        "--clock", choices=("wall", "process"), default="wall",
        help="what --minutes counts: wall time, or this process's CPU time divided by its torch threads (the "
        "wall time it would take on an otherwise idle machine; for a shared, busy one)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save-weights", type=Path)
    parser.add_argument(
        "--score-threshold", type=float, default=0.05,
        help="lowest detection score kept for the evaluation: mAP ranks detections by score, so low-score ones "
        "count (COCO-style; MONAI's RetinaNet detector keeps from 0.02). Users' default stays at the predictor's.",
    )  # fmt: skip
    parser.add_argument("--evaluate-only", action="store_true", help="no training: evaluate --init-weights")
    parser.add_argument("--init-weights", type=Path, help="continue from these weights (sha256 beside them)")
    parser.add_argument("--name", default="learning", help="results file stem in --results")
    parser.add_argument("--spacing", type=float, nargs=3, default=SPACING, help="working spacing (mm)")
    parser.add_argument("--patch", type=int, nargs=3, default=PATCH, help="training patch (multiples of 16)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.evaluate_only and not args.init_weights:
        parser.error("--evaluate-only needs --init-weights")
    spacing, patch = tuple(args.spacing), tuple(args.patch)
    label_map = LabelMap.default()
    items = load_datalist(make_data(args.data, args.cases, args.seed), label_map)
    model = unimed_small(label_map)
    if args.init_weights:
        load_weights(model, args.init_weights)
    # A process-time budget counts CPU seconds of all threads: scale so that "--minutes 26" means 26 minutes of
    # this process running alone on its threads.
    budget_s = args.minutes * 60 * (torch.get_num_threads() if args.clock == "process" else 1)
    start, cpu_start = time.monotonic(), time.process_time()
    history = [] if args.evaluate_only else fit(
        model, items["training"] + items["unlabeled"], label_map, patch_size=patch, spacing=spacing,
        batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps, time_budget_s=budget_s, time_budget_clock=args.clock,
        device=args.device, amp=args.device.startswith("cuda"), seed=args.seed, log_every=25,
    )  # fmt: skip
    train_seconds = time.monotonic() - start
    train_cpu_seconds = time.process_time() - cpu_start
    print(f"trained {history[-1]['step'] if history else 0} steps in {train_seconds:.0f} s: {history[-1:]}", flush=True)
    if args.save_weights:
        save_weights(model, args.save_weights)
    predictor = UniMedPredictor(
        model, label_map, spacing=spacing, roi_size=patch, device=args.device, score_threshold=args.score_threshold
    )
    start = time.monotonic()
    summary, rows = evaluate(predictor, items["test"], label_map)
    # Both decoders detect (DESIGN.md §1): the paths' numbers decide which one the bundle uses.
    predictor.detection_path = "composed"
    composed, _ = evaluate(predictor, items["test"], label_map, click_classes=[])
    summary.update({f"composed/{k}": v for k, v in composed.items() if k.startswith(("mAP", "recall", "AP@"))})
    predictor.detection_path = "decomposed"
    # ... and on the decomposed path, whether a query's box is read from its box tokens or its mask.
    predictor.box_source = "masks"
    from_masks, _ = evaluate(predictor, items["test"], label_map, click_classes=[])
    summary.update({f"mask_boxes/{k}": v for k, v in from_masks.items() if k.startswith(("mAP", "recall", "AP@"))})
    predictor.box_source = "tokens"
    predictor.detection_path = "segmentation"
    from_labels, _ = evaluate(predictor, items["test"], label_map, click_classes=[])
    summary.update({f"seg_boxes/{k}": v for k, v in from_labels.items() if k.startswith(("mAP", "recall", "AP@"))})
    predictor.detection_path = "decomposed"
    # Likewise for the label volume: the queries' masks, the class tokens' own masks, or both.
    for source in ("class_tokens", "both"):
        predictor.semantic_source = source
        other, _ = evaluate(predictor, items["test"], label_map, click_classes=[])
        summary.update({f"{source}/{k}": v for k, v in other.items() if k.startswith(("dice/", "hd95/"))})
    eval_seconds = time.monotonic() - start
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "init_weights": str(args.init_weights) if args.init_weights else None,
        "score_threshold": args.score_threshold,
        "data": {"cases": {k: len(v) for k, v in items.items()}, "spacing": spacing, "patch": patch},
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu_seconds, 1),
        "clock": args.clock, "steps": history[-1]["step"] if history else 0,
        "eval_seconds": round(eval_seconds, 1),
        "targets": TARGETS, "reached": {k: bool(summary.get(k, 0) >= v) for k, v in TARGETS.items()},
        "summary": summary, "per_case": rows, "history": history,
    }  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / f"{args.name}.json", json_safe(result))
    lines = ["# UniMed small: does it learn?", "", f"`{result['command']}` on {args.device}, "
             f"{result['steps']} steps in {train_seconds / 60:.1f} min wall time, "
             f"{train_cpu_seconds / 60:.1f} min of CPU time on {torch.get_num_threads()} threads", "", "| metric | value | target |", "|---|---|---|"]  # fmt: skip
    for key in sorted(k for k in summary if k != "cases"):
        target = TARGETS.get(key)
        lines.append(f"| {key} | {summary[key]:.3f} | {'' if target is None else f'>= {target}'} |")
    atomic_write_text(args.results / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
