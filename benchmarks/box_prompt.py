"""Box prompts with the shipped weights: the Dice of the mask a box around each organ of a held-out study gives.

    python -m benchmarks.box_prompt --datalist data/learning-cpu/datalist.json

For every ``test`` item with a mask label, the box is the organ's voxel extent in world RAS mm (what a user draws
around it), given to ``UniMedPredictor.segment_box`` as ``unimed-infer --box`` does. Writes
``benchmarks/results/box_prompt.json`` (per structure: mean, min, every value). The numbers belong to the weights
of the day (``weights_sha256``): rerun after a retraining.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from unimed_core.cli.infer import build_predictor
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.boxes import voxel_to_world_boxes
from unimed_core.data.datalist import load_datalist
from unimed_core.data.image_io import read_image
from unimed_core.label_map import LabelMap
from unimed_core.paths import DEFAULT_WEIGHTS

__all__ = ["main", "box_dice"]

STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right")


def box_dice(predictor, volume, labels: np.ndarray, label_id: int) -> float | None:
    """Dice of the box prompt around ``label_id``'s voxels with that structure (None when it is absent)."""
    truth = labels == label_id
    if truth.sum() == 0:
        return None
    idx = np.argwhere(truth)
    box = voxel_to_world_boxes(np.array([[*idx.min(0), *(idx.max(0) + 1)]], float), volume.affine)[0]
    mask = predictor.segment_box(volume, box) > 0
    return float(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/box_prompt.json"))
    args = parser.parse_args(argv)
    label_map = LabelMap.default()
    predictor = build_predictor(args.weights, device="cpu")
    ids = label_map.mask_classes_by_name()
    values: dict[str, list[float]] = {s: [] for s in STRUCTURES}
    for item in load_datalist(args.datalist, label_map)["test"]:
        if "label" not in item:
            continue
        volume = read_image(item["image"])
        labels = np.asarray(read_image(item["label"]).array).astype(int)
        for name in STRUCTURES:
            dice = box_dice(predictor, volume, labels, ids[name])
            if dice is not None:
                values[name].append(round(dice, 4))
    result = {
        "command": f"python -m benchmarks.box_prompt --datalist {args.datalist}",
        "weights_sha256": hashlib.sha256(args.weights.read_bytes()).hexdigest(),
        "dice": {
            k: {"mean": round(float(np.mean(v)), 3), "min": min(v), "n": len(v), "values": v}
            for k, v in values.items()
            if v
        },
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results, result)
    print(json.dumps({k: {m: d[m] for m in ("mean", "min", "n")} for k, d in result["dice"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
