"""The organ boundary refiner: fitted on studies the network never trained on, read on the tuning and test studies.

Organ Dice had stayed at 0.88-0.90 (bundle 0.5.1) with the errors in a one-voxel band around each organ
(``unimed_core/inference/boundary_refiner.py``). This benchmark collects the band voxels' features and truths from
the predictor's own class scores (``UniMedPredictor.class_scores``: the bundle's grid shifts included) on generated
studies the network never trained on (the first ``--fit-studies`` of extra seed 3000, among the rescorer's fit
studies), fits one small MLP per organ, saves the refiner, and evaluates the bundle's predictor without and with it
on the tuning studies (validation + fresh seed 8, as every other choice), the benchmark's 16 test studies and fresh
seed 7: organ Dice per organ, and the lesion classes' Dice (which the refiner leaves alone) as a check.

    OMP_NUM_THREADS=1 python -m benchmarks.boundary_refiner --weights bundle/models/model.pt \\
        --out bundle/models/boundary_refiner.pt

Writes ``benchmarks/results/boundary_refiner.json`` and ``.md``; caches the fit samples in
``runs/boundary_refiner/<weights sha256[:12]>-<spacing>mm-<studies>.npz``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from benchmarks.candidate_rescorer import SETS, set_items
from benchmarks.learning_curve import (
    RESULTS,
    benchmark_predictor,
    bundle_choices,
    extra_training_items,
)
from unimed_core.data.atomic import atomic_write, atomic_write_json, atomic_write_text
from unimed_core.data.image_io import read_image
from unimed_core.data.preprocess import resample_label_to
from unimed_core.evaluation import evaluate
from unimed_core.inference.boundary_refiner import (
    FEATURE_NAMES,
    band_features,
    fit_boundary_refiner,
    save_boundary_refiner,
)
from unimed_core.label_map import LabelMap
from unimed_core.model.weights import sha256_of
from unimed_core.paths import DEFAULT_WEIGHTS

__all__ = ["fit_samples", "main", "organ_mask_ids"]

FIT_SEED = 3000
MAX_FIT_VOXELS = 200_000  # per organ: a full-batch fit of a 16-wide MLP stays a few seconds


def organ_mask_ids(label_map: LabelMap) -> list[int]:
    """Mask ids of the label map's organs: its mask classes that are not lesion (box) classes."""
    boxes = set(label_map.box_class_indices())
    return [c + 1 for c in range(label_map.num_mask_classes - 1) if c not in boxes]


def fit_samples(predictor, items: list[dict], mask_ids: list[int], spacing: float) -> dict[int, tuple]:
    """Per organ, the band voxels' (N, F) features and (N,) truths of ``items`` (with ``label``), from the
    predictor's class scores on the refinement grid of ``spacing`` mm, as ``UniMedPredictor.boundary_scores``
    reads them (``UniMedPredictor.on_refinement_grid``)."""
    out = {m: ([], []) for m in mask_ids}
    for n, item in enumerate(items):
        volume = read_image(item["image"])
        prepared = predictor.prepare(volume)
        working = predictor.class_scores(volume, prepared)
        grid, scores, labels = predictor.on_refinement_grid(volume, working, prepared, (spacing,) * 3)
        label_image = nib.load(item["label"])
        truth = resample_label_to(np.asarray(label_image.dataobj), label_image.affine, grid).numpy()
        for mask_id in mask_ids:
            found = band_features(grid.image[0], scores, labels, mask_id)
            if found is not None:
                box, band, features = found
                out[mask_id][0].append(features.numpy())
                out[mask_id][1].append(truth[box][band] == mask_id)
        if (n + 1) % 20 == 0:
            print(f"fit samples: {n + 1} / {len(items)} studies", flush=True)
    return {m: (np.concatenate(f), np.concatenate(t)) for m, (f, t) in out.items() if f}


def _subsample(samples: dict, limit: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for mask_id, (features, truth) in samples.items():
        keep = rng.permutation(len(truth))[:limit]
        out[mask_id] = (torch.from_numpy(features[keep]), torch.from_numpy(truth[keep].astype(np.float32)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"), help="the benchmark's studies")
    parser.add_argument("--fit-studies", type=int, default=240)
    parser.add_argument("--spacing", type=float, default=4.0, help="refinement grid, mm")
    parser.add_argument("--seed", type=int, default=0, help="the MLPs' initialisation")
    parser.add_argument("--out", type=Path, default=Path("runs/boundary_refiner/boundary_refiner.pt"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    label_map = LabelMap.default()
    mask_ids = organ_mask_ids(label_map)
    digest = sha256_of(args.weights)
    predictor = bundle_choices(benchmark_predictor(args.weights, label_map))
    cache = Path("runs/boundary_refiner") / f"{digest[:12]}-{args.spacing:g}mm-{args.fit_studies}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            samples = {m: (stored[f"features_{m}"], stored[f"truth_{m}"]) for m in mask_ids}
    else:
        items = [i for i in extra_training_items(args.data, 0, 960, FIT_SEED) if "label" in i][: args.fit_studies]
        start = time.process_time()
        samples = fit_samples(predictor, items, mask_ids, args.spacing)
        print(f"fit samples: {time.process_time() - start:.0f} CPU s", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{f"features_{m}": s[0] for m, s in samples.items()},
                     **{f"truth_{m}": s[1] for m, s in samples.items()})  # fmt: skip
    refiner = fit_boundary_refiner(_subsample(samples, MAX_FIT_VOXELS), args.spacing, seed=args.seed,
                                   weights_sha256=digest)  # fmt: skip
    refiner_sha = save_boundary_refiner(refiner, args.out)
    names = {m: label_map.mask_classes[m] for m in mask_ids}
    keys = ["dice/organs_mean"] + [f"dice/{n}" for n in names.values()] + ["dice/cyst", "dice/tumor"]
    out = {"command": f"python -m benchmarks.boundary_refiner --weights {args.weights} --out {args.out} "
                      f"--fit-studies {args.fit_studies} --spacing {args.spacing:g} --seed {args.seed}",
           "weights_sha256": digest, "refiner_sha256": refiner_sha, "spacing_mm": args.spacing,
           "fit": {"seed": FIT_SEED, "studies": args.fit_studies,
                   "band_voxels": {names[m]: int(len(s[1])) for m, s in samples.items()},
                   "inside_share": {names[m]: round(float(s[1].mean()), 3) for m, s in samples.items()}},
           "features": list(FEATURE_NAMES), "sets": {}}  # fmt: skip
    for name, studies in SETS.items():
        _, items = set_items(args.data, studies)
        rows = {}
        for label, stage in (("scores alone", None), ("boundary refiner", refiner)):
            predictor.boundary_refiner = stage
            start = time.process_time()
            summary, _ = evaluate(predictor, items, label_map, click_classes=[])
            rows[label] = {k: summary.get(k) for k in keys}
            rows[label]["cpu_seconds_per_study"] = round((time.process_time() - start) / len(items), 2)
            print(f"{name}, {label}: " + json.dumps(rows[label]), flush=True)
        out["sets"][name] = {"studies": len(items), "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "boundary_refiner.json", out)
    lines = [f"Boundary refiner `{refiner_sha[:8]}…` for weights `{digest[:8]}…`, fitted on the band voxels of "
             f"{args.fit_studies} unseen studies (seed {FIT_SEED}) on a {args.spacing:g} mm grid", "",
             "| studies | label volume from | organ Dice | " + " | ".join(names.values()) + " | cyst | tumour | CPU s / "
             "study |", "|---|---|" + "---|" * (len(keys) + 1)]  # fmt: skip
    for name, result in out["sets"].items():
        for label, r in result["rows"].items():
            lines.append(f"| {name} ({result['studies']}) | {label} | "
                         + " | ".join(f"{r[k]:.4f}" for k in keys) + f" | {r['cpu_seconds_per_study']} |")  # fmt: skip
    atomic_write_text(args.results / "boundary_refiner.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
