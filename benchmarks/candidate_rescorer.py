"""Fit the lesion candidates' false-positive reduction stage and measure what it changes (``CandidateRescorer``).

The shipped network's candidates on the "segmentation" detection path (components of a lesion class's score map at
the bundle's component threshold, every score kept) are collected with their ``candidate_features`` on generated
studies the network never trained on: by default the extra studies of seeds 3000, 4000 and 5000 (``DATA-extra<SEED>-960``,
made if missing, 576 of each annotated for lesions), which the shipped weights never saw (seed 3000 only the
continuation run ``curve_s0_lp_ft_new3000`` trained on; pass other ``--fit-seeds`` for other weights). A candidate is a
hit when its box overlaps a lesion of its class with IoU >= 0.1 (the mAP's criterion). The rescorer is
fitted on them (three initialisations, for the spread), and the candidates of the tuning studies (validation + fresh
seed 8, as ``benchmarks/component_threshold.py``), the benchmark's test studies and fresh seed 7 are ranked by their
peaks and by each fit: lesion mAP@0.1 with MONAI's matching and COCO metric, as everywhere. The candidates are taken
once, every score kept, after the predictor's per-class non-maximum suppression by peak (the bundle suppresses after
rescoring; within a class the components are disjoint, so little changes).

    OMP_NUM_THREADS=1 python -m benchmarks.candidate_rescorer --weights bundle/models/model.pt --out bundle/models/rescorer.pt

Writes the rescorer (and its sha256) to ``--out``, ``benchmarks/results/candidate_rescorer.json`` and ``.md``.
Candidates are cached per weights and data set in ``--cache`` (the network's pass is the slow part: about half a
CPU-second a study; a fit takes 3).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from monai.data.box_utils import box_iou

from benchmarks.learning_curve import (
    RESULTS,
    benchmark_items,
    benchmark_predictor,
    bundle_choices,
    extra_training_items,
)
from unimed_core.data.atomic import atomic_write, atomic_write_json, atomic_write_text
from unimed_core.data.image_io import read_image
from unimed_core.inference.candidate_rescorer import feature_names, fit_rescorer, save_rescorer
from unimed_core.metrics import detection_metrics
from unimed_core.model.weights import sha256_of
from unimed_core.paths import BUNDLE_DIR, DEFAULT_WEIGHTS

__all__ = ["candidate_hits", "collect", "detection_summary", "main", "set_items"]

IOU = 0.1
EXTRA_STUDIES = 960  # generated per fit seed, as the learning curve's extra studies
KEYS = ("mAP@0.10", "AP@0.10/cyst", "AP@0.10/tumor", "recall@0.10", "mAP@0.25")
SETS = {"tuning: validation + fresh seed 8": [("", 0, "validation"), ("-fresh8", 8, "test")],
        "test": [("", 0, "test")], "test, fresh seed 7": [("-fresh7", 7, "test")]}  # fmt: skip


def set_items(data: Path, studies: list[tuple[str, int, str]]):
    """(label map, items) of one of ``SETS``' study sets: each (folder suffix, data seed, split) of ``data``."""
    items = []
    for suffix, seed, split in studies:
        label_map, split_items = benchmark_items(Path(f"{data}{suffix}"), seed)
        items += split_items[split]
    return label_map, items


def candidate_hits(
    boxes: np.ndarray, labels: list[str], truth_boxes: np.ndarray, truth_labels: list[str]
) -> np.ndarray:
    """1 for each candidate box whose IoU with a lesion of its own class is at least ``IOU``, else 0."""
    hits = np.zeros(len(boxes), dtype=np.int64)
    for j, (box, label) in enumerate(zip(boxes, labels)):
        same = [t for t, name in zip(truth_boxes, truth_labels) if name == label]
        if same:
            hits[j] = int(box_iou(np.asarray(box, float)[None], np.asarray(same, float)).max() >= IOU)
    return hits


def collect(predictor, items: list[dict], box_names: list[str]) -> dict[str, np.ndarray]:
    """Every candidate of the items that have lesion boxes (an item without the key is not annotated for lesions:
    its candidates could not be called hits or false), as flat arrays: ``features`` (N, F), ``peaks``, ``hits``,
    ``boxes`` (N, 6) world mm, ``classes`` (index into ``box_names``) and ``study`` (N,); the lesions as
    ``truth_boxes``, ``truth_classes``, ``truth_study``; ``studies`` (the count)."""
    parts: dict[str, list] = {k: [] for k in ("features", "peaks", "hits", "boxes", "classes", "study",
                                              "truth_boxes", "truth_classes", "truth_study")}  # fmt: skip
    labelled = [i for i in items if "boxes" in i]
    for n, item in enumerate(labelled):
        prediction = predictor.predict(read_image(item["image"]))
        truth = np.asarray(item["boxes"], float).reshape(-1, 6)
        parts["features"].append(prediction.box_features)
        parts["peaks"].append(prediction.box_features[:, 0])
        parts["hits"].append(candidate_hits(prediction.boxes, prediction.box_labels, truth, list(item["box_labels"])))
        parts["boxes"].append(np.asarray(prediction.boxes, float).reshape(-1, 6))
        parts["classes"].append(np.array([box_names.index(b) for b in prediction.box_labels], dtype=np.int64))
        parts["study"].append(np.full(len(prediction.boxes), n))
        parts["truth_boxes"].append(truth)
        parts["truth_classes"].append(np.array([box_names.index(b) for b in item["box_labels"]], dtype=np.int64))
        parts["truth_study"].append(np.full(len(truth), n))
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    out["studies"] = np.array(len(labelled))
    return out


def detection_summary(candidates: dict[str, np.ndarray], scores: np.ndarray, box_names: list[str]) -> dict:
    """``detection_metrics`` (MONAI's matching and COCO metric) of the candidates under ``scores``, per study."""
    studies = range(int(candidates["studies"]))
    pick = [candidates["study"] == n for n in studies]
    truth = [candidates["truth_study"] == n for n in studies]
    return detection_metrics([candidates["boxes"][m] for m in pick], [scores[m] for m in pick],
                             [candidates["classes"][m] for m in pick], [candidates["truth_boxes"][t] for t in truth],
                             [candidates["truth_classes"][t] for t in truth], box_names)  # fmt: skip


def _cached_candidates(predictor, cache: Path, name: str, items: list[dict], box_names) -> dict[str, np.ndarray]:
    path = cache / f"{name}.npz"
    if path.exists():
        return dict(np.load(path))
    candidates = collect(predictor, items, box_names)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **candidates)
    return candidates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"), help="the benchmark's studies")
    parser.add_argument("--fit-seeds", type=int, nargs="+", default=[3000, 4000, 5000],
                        help="seeds of the extra generated studies to fit on (DATA-extra<SEED>-960); none the weights "
                             "trained on")  # fmt: skip
    parser.add_argument("--fit-studies", type=int, default=576, help="lesion-annotated studies of each to fit on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fit seeds; the first is saved")
    parser.add_argument("--out", type=Path, default=BUNDLE_DIR / "models" / "rescorer.pt")
    parser.add_argument("--cache", type=Path, default=Path("runs/rescorer_candidates"))
    parser.add_argument(
        "--component-threshold",
        type=float,
        default=None,
        help="where the candidates are found; default: the bundle's (inference.json)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())["predictor"]
    threshold = config["component_threshold"] if args.component_threshold is None else args.component_threshold
    label_map = benchmark_items(args.data, 0)[0]
    box_names = list(label_map.box_classes)
    predictor = bundle_choices(benchmark_predictor(args.weights, label_map), config)
    # every candidate (the rescorer's probabilities may fall below the benchmarks' usual 0.05: they still rank)
    predictor.detection_path, predictor.component_threshold, predictor.score_threshold = "segmentation", threshold, 0.0
    weights_sha256 = sha256_of(args.weights)
    shifts = "".join(f"-shift{g:.3g}" for g in predictor.grid_shifts)  # the candidates of the bundle's passes
    cache = args.cache / f"{weights_sha256[:12]}-component{threshold:g}{shifts}"
    parts = []
    for seed in args.fit_seeds:
        extra = extra_training_items(args.data, 0, EXTRA_STUDIES, seed)
        labelled = [i for i in extra if "boxes" in i][: args.fit_studies]
        name = f"{args.data.name}-extra{seed}-{EXTRA_STUDIES}-{len(labelled)}"
        parts.append(_cached_candidates(predictor, cache, name, labelled, box_names))
    fit = _pooled(parts)
    fit_studies = int(fit["studies"])
    print(f"fit on {fit_studies} studies: {len(fit['hits'])} candidates, {int(fit['hits'].sum())} hits", flush=True)
    features, hits = torch.from_numpy(fit["features"]).float(), torch.from_numpy(fit["hits"])
    rescorers = [fit_rescorer(features, hits, threshold, seed=s, weights_sha256=weights_sha256) for s in args.seeds]
    out = {"command": f"python -m benchmarks.candidate_rescorer --weights {args.weights} --out {os.path.relpath(args.out)}",
           "weights_sha256": weights_sha256, "component_threshold": threshold, "iou": IOU,
           "grid_shifts": list(predictor.grid_shifts),
           "fit": {"data": [f"{args.data}-extra{seed}-{EXTRA_STUDIES}" for seed in args.fit_seeds],
                   "seed": args.fit_seeds, "studies": fit_studies,
                   "candidates": int(len(hits)), "hits": int(hits.sum()), "fit_seeds": args.seeds},
           "features": feature_names([label_map.class_names[c] for c in range(label_map.num_mask_classes - 1)],
                                     label_map.box_class_indices()),
           "sets": {}}  # fmt: skip
    for name, studies in SETS.items():
        parts = []
        for suffix, seed, split in studies:
            data = Path(f"{args.data}{suffix}")
            _, split_items = benchmark_items(data, seed)
            parts.append(_cached_candidates(predictor, cache, f"{data.name}-{split}", split_items[split], box_names))
        candidates = _pooled(parts)
        rows = {"peaks": detection_summary(candidates, candidates["peaks"], box_names)}
        for seed, rescorer in zip(args.seeds, rescorers):
            with torch.no_grad():
                scores = rescorer(torch.from_numpy(candidates["features"]).float()).numpy()
            rows[f"rescorer seed {seed}"] = detection_summary(candidates, scores, box_names)
        rows = {label: {k: row.get(k) for k in KEYS} for label, row in rows.items()}
        for label, row in rows.items():
            print(f"{name} {label}: " + ", ".join(f"{k} {row[k]:.3f}" for k in KEYS), flush=True)
        fitted = [row["mAP@0.10"] for label, row in rows.items() if label != "peaks"]
        out["sets"][name] = {"studies": int(candidates["studies"]), "rows": rows,
                             "rescored_mAP@0.10": {"median": float(np.median(fitted)), "min": float(min(fitted)),
                                                   "max": float(max(fitted))}}  # fmt: skip
    out["rescorer_sha256"] = save_rescorer(rescorers[0], args.out)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "candidate_rescorer.json", out)
    lines = [f"Rescorer fitted on {fit_studies} studies of {', '.join(f'`{Path(d).name}`' for d in out['fit']['data'])} ({len(hits)} candidates, "
             f"{int(hits.sum())} hits) for weights `{weights_sha256[:8]}…` at component threshold {threshold}; "
             f"saved: seed {args.seeds[0]} (`{out['rescorer_sha256'][:8]}…`).", "",
             "| studies | lesion scores | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]  # fmt: skip
    for name, result in out["sets"].items():
        for label, row in result["rows"].items():
            lines.append(f"| {name} ({result['studies']}) | {label} | "
                         + " | ".join("–" if row[k] is None else f"{row[k]:.3f}" for k in KEYS) + " |")  # fmt: skip
    atomic_write_text(args.results / "candidate_rescorer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _pooled(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Candidate tables of several study sets as one (study numbers offset)."""
    out: dict[str, list] = {}
    offset = 0
    for part in parts:
        for k, v in part.items():
            if k == "studies":
                continue
            out.setdefault(k, []).append(v + offset if k in ("study", "truth_study") else v)
        offset += int(part["studies"])
    pooled = {k: np.concatenate(v) for k, v in out.items()}
    pooled["studies"] = np.array(offset)
    return pooled


if __name__ == "__main__":
    raise SystemExit(main())
