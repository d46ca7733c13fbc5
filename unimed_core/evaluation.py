"""Held-out evaluation of a predictor over datalist items: all three tasks plus click prompts.

Used by the learning benchmark, the bundle's ``evaluate.json`` and the benchmarks. Every number is computed
on the input's own grid (segmentation) or in world millimetres (boxes), against the files of the datalist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from unimed_core.data.boxes import voxel_to_world_points
from unimed_core.data.image_io import read_image, read_label
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.metrics import classification_metrics, detection_metrics, dice_per_class, hd95_per_class

__all__ = ["evaluate", "interior_point"]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The voxel of ``mask`` farthest from its boundary: where a user would click."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(distance)), mask.shape), dtype=np.float64)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / denom) if denom else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (without numpy's empty-slice warning) when there are none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


def evaluate(
    predictor: UniMedPredictor,
    items: Sequence[dict],
    label_map: LabelMap,
    click_classes: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, list[dict]]:
    """Evaluate on annotated items (``image`` and any of ``label``, ``boxes``/``box_labels``, ``class``).

    Each level is scored on the items that have it: an item without ``label`` adds no Dice, one without
    ``boxes`` no detection, one without ``class`` no classification (a missing key is "not annotated").

    Args:
        predictor: the model to evaluate.
        items: datalist items with absolute paths.
        label_map: the label map.
        click_classes: mask classes to test click-prompted segmentation on (one click at each structure's
            most interior voxel; organs by default, i.e. mask classes that are not box classes).
        progress: called with (done, total) after each case.

    Returns:
        ``(summary, per_case)``: summary metrics (means over cases, detection mAP/recall at IoU 0.1/0.25/0.5,
        classification AUC/accuracy, click Dice) and one row per case.
    """
    num_classes = label_map.num_mask_classes
    box_names = list(label_map.box_classes)
    if click_classes is None:
        click_classes = [n for n in label_map.class_names[: num_classes - 1] if n not in box_names]
    foreground = [label_map.mask_classes[i] for i in range(1, num_classes)]
    unknown = [n for n in click_classes if n not in foreground]
    if unknown:
        raise ValueError(f"click_classes must be foreground mask classes {foreground}, got unknown {unknown}")
    rows: list[dict] = []
    det_pred: dict[str, list] = {"boxes": [], "scores": [], "labels": []}
    det_gt: dict[str, list] = {"boxes": [], "labels": []}
    probs, truths = [], []
    for n, item in enumerate(items):
        volume = read_image(item["image"])
        # a key the item lacks is "not annotated" (DESIGN.md §4): that level is not scored on it, never as negative
        truth = read_label(item["label"], reference=volume).array.astype(np.int64) if "label" in item else None
        prepared = predictor.prepare(volume)  # once per case: the clicks below reuse it
        prediction = predictor.predict(volume, prepared=prepared)
        row: dict = {"image": str(item["image"]), "domain": item.get("domain", "")}
        if truth is not None:
            dice = dice_per_class(prediction.labels.astype(np.int64), truth, num_classes)
            hd95 = hd95_per_class(prediction.labels.astype(np.int64), truth, num_classes, spacing=tuple(volume.spacing))
            for mask_id in range(1, num_classes):
                name = label_map.mask_classes[mask_id]
                row[f"dice/{name}"], row[f"hd95/{name}"] = dice[mask_id], hd95[mask_id]
        if "boxes" in item:
            det_pred["boxes"].append(np.asarray(prediction.boxes, dtype=np.float64).reshape(-1, 6))
            det_pred["scores"].append(np.asarray(prediction.box_scores, dtype=np.float64))
            det_pred["labels"].append(np.array([box_names.index(b) for b in prediction.box_labels], dtype=np.int64))
            det_gt["boxes"].append(np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 6))
            det_gt["labels"].append(np.array([box_names.index(b) for b in item["box_labels"]], dtype=np.int64))
        if "class" in item:
            present = set(item["class"])
            probs.append([prediction.class_probabilities[c] for c in label_map.image_classes])
            truths.append([float(c in present) for c in label_map.image_classes])
        for name in click_classes if truth is not None else ():
            structure = truth == label_map.mask_classes_by_name()[name]
            if not structure.any():
                continue
            click = voxel_to_world_points(interior_point(structure)[None], volume.affine)
            mask = predictor.segment_clicks(volume, click, prepared=prepared)
            row[f"click_dice/{name}"] = _dice(mask > 0, structure)
        rows.append(row)
        if progress:
            progress(n + 1, len(items))
    summary: dict = {"cases": len(rows)}
    for key in sorted({k for r in rows for k in r if "/" in k}):
        values = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[key] = float(finite.mean()) if len(finite) else float("nan")
    organs = [n for n in label_map.class_names[: num_classes - 1] if n not in box_names]
    summary["dice/organs_mean"] = _nanmean([summary.get(f"dice/{n}", np.nan) for n in organs])
    summary["dice/all_mean"] = _nanmean(
        [summary.get(f"dice/{label_map.mask_classes[i]}", np.nan) for i in range(1, num_classes)]
    )
    clicks = [summary[k] for k in summary if k.startswith("click_dice/")]
    summary["click_dice/mean"] = _nanmean(clicks)
    summary.update(
        detection_metrics(
            det_pred["boxes"], det_pred["scores"], det_pred["labels"], det_gt["boxes"], det_gt["labels"], box_names
        )
    )
    n_image = len(label_map.image_classes)
    summary.update(
        classification_metrics(
            np.array(probs).reshape(-1, n_image), np.array(truths).reshape(-1, n_image), list(label_map.image_classes)
        )
    )
    return summary, rows
