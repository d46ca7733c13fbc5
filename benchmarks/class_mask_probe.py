"""Does the model see the lesions? The class-token masks' probabilities inside lesions, in organs, in the body.

    .venv/bin/python benchmarks/class_mask_probe.py bundle/models/model.pt --split test

A diagnostic for the learning benchmark (``learning.py``), whose lesion Dice can be 0 for two different reasons:
the masks may rise inside lesions but stay under the 0.5 threshold (a calibration problem), or not rise there at
all (the model has not learned what a lesion looks like). For each lesion class it reports, over the masked
studies of a split (whole study in one patch, as the benchmark trains): the mean probability inside the lesions,
in the organs (where lesions grow), and in the rest of the body, and the voxels above 0.5 inside and outside the
lesions. Writes ``<results>/class_mask_probe.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.datalist import load_datalist
from unimed_core.data.training_data import crop_case, load_case
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights

sys.path.insert(0, str(Path(__file__).parent))
from learning import PATCH, SPACING  # noqa: E402  (the benchmark's working grid)


def probe(weights: Path, datalist: Path, split: str, max_studies: int) -> dict:
    label_map = LabelMap.default()
    model = unimed_small(label_map)
    load_weights(model, weights)
    model.eval()
    items = [it for it in load_datalist(datalist, label_map)[split] if it.get("label")][:max_studies]
    organ_ids = [label_map.class_index_to_mask_id(label_map.class_index(n)) for n in label_map.class_names
                 if n not in label_map.box_classes]  # fmt: skip
    rows = {name: [] for name in label_map.box_classes}
    for item in items:
        case = crop_case(load_case(item, label_map, SPACING), PATCH, np.random.default_rng(0))
        with torch.no_grad():
            embeddings, _ = model.encode(case.image[None])
            logits = model.class_masks(embeddings, case.image[None])
            prob = F.interpolate(logits, size=PATCH, mode="trilinear")[0].sigmoid()
        semantic = case.semantic
        body = case.image[0] > case.image.min() + 0.1
        organs = torch.isin(semantic, torch.tensor(organ_ids))
        for name in label_map.box_classes:
            index = label_map.class_index(name)
            lesion = semantic == label_map.class_index_to_mask_id(index)
            p = prob[index]
            rows[name].append({
                "lesion_voxels": int(lesion.sum()),
                "p_lesion": float(p[lesion].mean()) if lesion.any() else None,
                "p_organs": float(p[organs & ~lesion].mean()),
                "p_body": float(p[body & ~lesion].mean()),
                "voxels_above_half_in_lesions": int((p[lesion] > 0.5).sum()),
                "voxels_above_half_elsewhere": int((p[~lesion] > 0.5).sum()),
            })  # fmt: skip
    summary = {}
    for name, per_study in rows.items():
        inside = [r["p_lesion"] for r in per_study if r["p_lesion"] is not None]
        summary[name] = {
            "studies": len(per_study), "studies_with_lesion": len(inside),
            "lesion_voxels": sum(r["lesion_voxels"] for r in per_study),
            "p_lesion": float(np.mean(inside)) if inside else None,
            "p_organs": float(np.mean([r["p_organs"] for r in per_study])),
            "p_body": float(np.mean([r["p_body"] for r in per_study])),
            "voxels_above_half_in_lesions": sum(r["voxels_above_half_in_lesions"] for r in per_study),
            "voxels_above_half_elsewhere": sum(r["voxels_above_half_elsewhere"] for r in per_study),
        }  # fmt: skip
    return {"weights": str(weights), "split": split, "summary": summary, "per_study": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu/datalist.json"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-studies", type=int, default=16)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    result = probe(args.weights, args.data, args.split, args.max_studies)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "class_mask_probe.json", result)
    print(f"{args.weights} on the {args.split} split: class-token mask probability (working grid, {SPACING[0]} mm)")
    print("| class | studies with it | p in lesions | p in organs | p elsewhere in the body | voxels > 0.5 in / out |")
    print("|---|---|---|---|---|---|")
    for name, s in result["summary"].items():
        p_lesion = "-" if s["p_lesion"] is None else f"{s['p_lesion']:.3f}"
        print(
            f"| {name} | {s['studies_with_lesion']} / {s['studies']} | {p_lesion} | {s['p_organs']:.3f} | "
            f"{s['p_body']:.3f} | {s['voxels_above_half_in_lesions']} / {s['voxels_above_half_elsewhere']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
