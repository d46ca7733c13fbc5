"""How sure a lesion detection must be to be reported: the benchmark that chooses the bundle's ``score_threshold``.

mAP reads the whole ranking of candidates (the benchmarks keep them down to a score of 0.05), but a user is shown
the detections above one cut. Computer-aided detection is read on the FROC curve (LUNA16: sensitivity at 1/8 to 8
false positives per scan); its operating point is a false-positive budget. The cut here is the lowest score whose
false positives on the tuning studies stay within ``--fp-per-scan`` (default 1 per scan), i.e. the most sensitive
cut a reader can afford. Chosen on the same 24 tuning studies as the component threshold
(``benchmarks/component_threshold.py``: the 8 validation studies and the 16 test studies of fresh seed 8), reported on
the benchmark's test studies and on fresh seed 7. A hit is a detection of the right class with IoU >= 0.1 to a lesion
not yet found (MONAI's ``matching_batch``, as the mAP); a scan's other detections above the cut are its false
positives.

    OMP_NUM_THREADS=1 python -m benchmarks.reporting_cut --weights bundle/models/model.pt

Writes ``benchmarks/results/reporting_cut.json`` and ``.md``. The bundle's detection path and component threshold
are read from ``bundle/configs/inference.json``, so run it after choosing the component threshold.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou

from benchmarks.learning_curve import RESULTS, benchmark_items, benchmark_predictor, bundle_choices
from unimed_core.data.atomic import atomic_write_json, atomic_write_text
from unimed_core.data.image_io import read_image
from unimed_core.inference.candidate_rescorer import bundle_rescorer
from unimed_core.model.weights import sha256_of
from unimed_core.paths import BUNDLE_DIR, DEFAULT_RESCORER, DEFAULT_WEIGHTS

__all__ = ["froc", "choose_cut", "main"]

CUTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
IOU = 0.1


def froc(
    pred: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    truth: Sequence[tuple[np.ndarray, np.ndarray]],
    cuts: Sequence[float],
    iou: float = IOU,
) -> list[dict]:
    """Per cut: ``sensitivity`` (lesions found / lesions), ``fp_per_scan`` and ``detections_per_scan``.

    ``pred``: per scan ``(boxes (N, 6), scores (N,), class indices (N,))``; ``truth``: per scan ``(boxes (G, 6),
    class indices (G,))``. Detections are matched to lesions of their class once, on all candidates, highest score
    first (a cut keeps a prefix of each scan's ranking, so the matches of what it keeps do not change).
    """
    classes = sorted(
        {int(c) for _, _, labels in pred for c in labels} | {int(c) for _, labels in truth for c in labels}
    )
    matches = matching_batch(
        iou_fn=box_iou, iou_thresholds=[iou], max_detections=10_000,
        pred_boxes=[np.asarray(b, float).reshape(-1, 6) for b, _, _ in pred],
        pred_scores=[np.asarray(s, float) for _, s, _ in pred],
        pred_classes=[np.asarray(c, int) for _, _, c in pred],
        gt_boxes=[np.asarray(b, float).reshape(-1, 6) for b, _ in truth],
        gt_classes=[np.asarray(c, int) for _, c in truth],
    )  # fmt: skip
    lesions = sum(len(labels) for _, labels in truth)
    scans = len(pred)
    rows = []
    for cut in cuts:
        found = false = kept = 0
        for image in matches:
            for c in classes:
                if c not in image:
                    continue
                scores, hit = image[c]["dtScores"], image[c]["dtMatches"][0].astype(bool)
                above = scores >= cut
                found += int((hit & above).sum())
                false += int((~hit & above).sum())
                kept += int(above.sum())
        rows.append({"cut": float(cut), "sensitivity": found / lesions if lesions else float("nan"),
                     "fp_per_scan": false / scans, "detections_per_scan": kept / scans})  # fmt: skip
    return rows


def choose_cut(rows: list[dict], fp_per_scan: float) -> float:
    """The lowest cut whose false positives per scan stay within ``fp_per_scan`` (the highest cut if none does)."""
    within = [r["cut"] for r in rows if r["fp_per_scan"] <= fp_per_scan]
    return min(within) if within else max(r["cut"] for r in rows)


def _candidates(predictor, items: list[dict], box_names: list[str]):
    pred, truth = [], []
    for item in items:
        if "boxes" not in item:
            continue
        p = predictor.predict(read_image(item["image"]))
        pred.append((np.asarray(p.boxes, float).reshape(-1, 6), np.asarray(p.box_scores, float),
                     np.array([box_names.index(b) for b in p.box_labels], int)))  # fmt: skip
        truth.append((np.asarray(item["boxes"], float).reshape(-1, 6),
                      np.array([box_names.index(b) for b in item["box_labels"]], int)))  # fmt: skip
    return pred, truth


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--fp-per-scan", type=float, default=1.0, help="false positives per scan a reader affords")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())["predictor"]
    sets = {"tuning: validation + fresh seed 8": [(args.data, 0, "validation"), (Path(f"{args.data}-fresh8"), 8, "test")],
            "test": [(args.data, 0, "test")], "test, fresh seed 7": [(Path(f"{args.data}-fresh7"), 7, "test")]}  # fmt: skip
    predictor = None
    out = {"command": "python -m benchmarks.reporting_cut --weights " + str(args.weights), "weights_sha256":
           sha256_of(args.weights), "rescorer_sha256": sha256_of(DEFAULT_RESCORER) if DEFAULT_RESCORER.is_file()
           else None, "iou": IOU, "fp_per_scan_budget": args.fp_per_scan,
           "component_threshold": config.get("component_threshold"), "grid_shifts": config.get("grid_shifts", []),
           "sets": {}}  # fmt: skip
    for name, studies in sets.items():
        items = []
        for data, seed, split in studies:
            label_map, split_items = benchmark_items(data, seed)
            items += split_items[split]
        if predictor is None:
            predictor = bundle_choices(benchmark_predictor(args.weights, label_map), config)
            predictor.score_threshold = 0.0  # every candidate: the cuts are applied here
            if DEFAULT_RESCORER.is_file():  # the bundle's scores: the rescorer's, for the weights it was fitted for
                predictor.rescorer = bundle_rescorer(DEFAULT_RESCORER, args.weights)
        pred, truth = _candidates(predictor, items, list(label_map.box_classes))
        out["sets"][name] = {
            "scans": len(pred),
            "lesions": sum(len(t[1]) for t in truth),
            "rows": froc(pred, truth, CUTS),
        }
        print(name, json.dumps(out["sets"][name]), flush=True)
    tuning = next(iter(out["sets"].values()))["rows"]
    out["chosen"] = choose_cut(tuning, args.fp_per_scan)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "reporting_cut.json", out)
    lines = [f"Chosen on the tuning studies: **score >= {out['chosen']:g}** (at most {args.fp_per_scan:g} false "
             f"positive per scan; weights `{out['weights_sha256'][:8]}…`, component threshold "
             f"{out['component_threshold']}, hits at IoU >= {IOU})", "",
             "| studies | cut | sensitivity | false positives / scan | detections / scan |", "|---|---|---|---|---|"]  # fmt: skip
    for name, result in out["sets"].items():
        for r in result["rows"]:
            lines.append(f"| {name} ({result['scans']} scans, {result['lesions']} lesions) | {r['cut']:g} | "
                         f"{r['sensitivity']:.3f} | {r['fp_per_scan']:.2f} | {r['detections_per_scan']:.2f} |")  # fmt: skip
    atomic_write_text(args.results / "reporting_cut.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
