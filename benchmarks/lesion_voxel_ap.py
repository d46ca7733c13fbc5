"""Voxel-level average precision of the class tokens' masks, per class: less noisy than lesion mAP on few lesions.

Lesion mAP over the test split's 27 lesions jumps between snapshots; the class-token mask logits of every voxel of
the centred 64³ patch, ranked against the label, say whether the dense path learns a lesion kind at all, on the
training studies (fit) and on held-out ones (generalisation)::

    python -m benchmarks.lesion_voxel_ap runs/curve_s0/step_4800.pt --split training --split test

Prints one line per split and writes ``--out`` (JSON) when given. ``--per-lesion`` also reads each lesion (one
connected component of its class) on its own: the mean class-mask logit inside it, and the organ that hosts it;
the share of lesions whose mean logit is above 0 ("fit"), per kind and host and per kind and domain, says *which* lesions the dense path
cannot draw (on the training split: which ones it cannot even fit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score

from benchmarks.learning import PATCH, SPACING
from benchmarks.learning_curve import _model, benchmark_items
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.training_data import crop_case_at, load_case
from unimed_core.model.weights import load_weights

__all__ = ["centred_patches", "lesion_fit", "voxel_ap"]


def centred_patches(items: list[dict], label_map, patch, spacing):
    """(item, the case cropped to its centred ``patch``) of each labelled item, on the working grid."""
    for item in (i for i in items if i.get("label")):
        case = load_case(item, label_map, spacing)
        window = [((s - p) // 2, (s - p) // 2 + p) for s, p in zip(case.image.shape[1:], patch)]
        yield item, crop_case_at(case, patch, window)


def _class_masks_of(model, items: list[dict], label_map, patch, spacing):
    """(semantic label, class-mask logits) of each labelled item's centred patch."""
    model.eval()
    for item, crop in centred_patches(items, label_map, patch, spacing):
        with torch.no_grad():
            embeddings, levels = model.encode(crop.image[None])
            _, class_masks = model.decode_with_class_masks(embeddings, levels, image=crop.image[None])
        yield item, crop.semantic, class_masks[0].float(), crop.image[0]


def voxel_ap(model, items: list[dict], label_map, patch=PATCH, spacing=SPACING) -> dict[str, float | None]:
    """Class name → AP of its class-token mask logits over every voxel of each item's centred patch (None: the
    class has no voxel in these items). Items without a label volume are skipped."""
    truth: dict[int, list[np.ndarray]] = {}
    scores: dict[int, list[np.ndarray]] = {}
    for _, semantic, class_masks, _ in _class_masks_of(model, items, label_map, patch, spacing):
        for c in range(len(label_map.class_names)):
            mask_id = label_map.class_index_to_mask_id(c)
            if mask_id is None:
                continue
            truth.setdefault(c, []).append((semantic == mask_id).flatten().numpy())
            scores.setdefault(c, []).append(class_masks[c].flatten().numpy())
    out = {}
    for c, parts in truth.items():
        t = np.concatenate(parts)
        out[label_map.class_names[c]] = (
            float(average_precision_score(t, np.concatenate(scores[c]))) if t.any() else None
        )
    return out


def lesion_fit(model, items: list[dict], label_map, patch=PATCH, spacing=SPACING) -> dict:
    """Each lesion's kind, host organ, size and mean class-mask logit inside it, and per "kind/host" the number of
    lesions and the share with a mean logit above 0. The host is the organ most common in a one-voxel shell
    around the lesion."""
    names = label_map.class_names
    box_classes = label_map.box_class_indices()
    organ_of = {label_map.class_index_to_mask_id(c): names[c] for c in range(len(names)) if c not in box_classes}
    organ_of.pop(None, None)
    lesions = []
    for item, semantic, class_masks, image in _class_masks_of(model, items, label_map, patch, spacing):
        sem, image = semantic.numpy(), image.numpy()
        for c in box_classes:
            components, n = ndimage.label(sem == label_map.class_index_to_mask_id(c))
            for k in range(1, n + 1):
                inside = components == k
                shell = sem[ndimage.binary_dilation(inside) & ~inside]
                hosts = [v for v in shell if v in organ_of]
                host_id = max(set(hosts), key=hosts.count) if hosts else None
                host = organ_of.get(host_id, "none")
                # contrast to noise in the model's input: (lesion - host mean) / host sd (sd over the whole organ,
                # its partial-volume rim included: what the lesion must stand out from)
                organ = image[sem == host_id] if host_id is not None else image[~inside]
                cnr = (image[inside].mean() - organ.mean()) / max(float(organ.std()), 1e-6)
                logit = float(class_masks[c][torch.from_numpy(inside)].mean())
                lesions.append({"kind": names[c], "host": host, "domain": item.get("domain"),
                                "voxels": int(inside.sum()), "cnr": round(float(cnr), 2), "mean_logit": round(logit, 3)})  # fmt: skip
    groups: dict[str, list[dict]] = {}
    for lesion in lesions:  # by kind and host, and by kind and imaging domain
        groups.setdefault(f"{lesion['kind']}/{lesion['host']}", []).append(lesion)
        groups.setdefault(f"{lesion['kind']}/{lesion['domain']}", []).append(lesion)
    summary = {
        g: {"lesions": len(v), "fit": round(float(np.mean([x["mean_logit"] > 0 for x in v])), 3),
            "median_abs_cnr": round(float(np.median([abs(x["cnr"]) for x in v])), 2)}
        for g, v in sorted(groups.items())
    }  # fmt: skip
    return {"summary": summary, "fit": round(float(np.mean([x["mean_logit"] > 0 for x in lesions])), 3) if lesions else None,
            "lesions": lesions}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--split", action="append", choices=("training", "validation", "test"))
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=16, help="labelled studies per split")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--per-lesion", action="store_true", help="also each lesion's fit, by kind and host")
    parser.add_argument("--fine-refine-units", type=int, default=0, help="the weights' FineClassHead.refine_units")
    parser.add_argument("--dense-class-head", action="store_true", help="the weights have a DenseClassHead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    label_map, items = benchmark_items(args.data, args.data_seed)
    architecture = {"fine_refine_units": args.fine_refine_units, "dense_class_head": args.dense_class_head}
    model = load_weights(_model(label_map, architecture), args.weights)
    results = {}
    for split in args.split or ["test"]:
        labelled = [i for i in items[split] if i.get("label")][: args.limit]
        results[split] = voxel_ap(model, labelled, label_map)
        print(f"{split} ({len(labelled)} studies): "
              + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in results[split].items()))  # fmt: skip
        if args.per_lesion:
            fit = lesion_fit(model, labelled, label_map)
            results[f"{split}_per_lesion"] = fit
            print(f"  lesions fit (mean logit > 0): {fit['fit']}; "
                  + ", ".join(f"{g} {v['fit']:.2f} of {v['lesions']} (|CNR| {v['median_abs_cnr']})"
                              for g, v in fit["summary"].items()))  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, {"weights": str(args.weights), "limit": args.limit, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
