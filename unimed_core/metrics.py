"""Evaluation metrics: thin functions over MONAI (Dice, HD95, COCO detection) and scikit-learn (AUC).

Conventions:

- segmentation metrics take one label volume per call (ids as in ``LabelMap.mask_classes``) and return
  ``{label id: value}`` for the foreground ids ``1..num_classes-1``;
- detection metrics take per-image lists of ``XYZXYZ`` boxes (MONAI ``StandardMode``, any consistent unit:
  voxels, normalised or mm) with class indices into ``class_names``;
- NaN means "not defined for this case" (the class is absent), and means over classes skip NaN.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot
from sklearn.metrics import roc_auc_score

__all__ = ["dice_per_class", "hd95_per_class", "detection_metrics", "classification_metrics"]


def _one_hot_pair(pred: Any, target: Any, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, K, *spatial) one-hot tensors of two label volumes, after checking shapes and values."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background + at least one class), got {num_classes}")
    p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred).detach().cpu()
    t = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target).detach().cpu()
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.ndim < 1 or p.numel() == 0:
        raise ValueError("pred and target must be non-empty label volumes")
    for name, x in (("pred", p), ("target", t)):
        if x.is_floating_point() and not torch.equal(x, x.round()):
            raise ValueError(f"{name} must hold integer labels")
        if x.min() < 0 or x.max() >= num_classes:
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got [{int(x.min())}, {int(x.max())}]")
    # one_hot wants a channel dim of 1 and a batch dim: (1, 1, *spatial) → (1, K, *spatial).
    p1 = one_hot(p.long()[None, None], num_classes=num_classes, dim=1)
    t1 = one_hot(t.long()[None, None], num_classes=num_classes, dim=1)
    return p1, t1


def dice_per_class(pred: Any, target: Any, num_classes: int) -> dict[int, float]:
    """Dice of each foreground label id, via ``monai.metrics.compute_dice``.

    Args:
        pred: predicted label volume (numpy or tensor of integer ids), any spatial shape.
        target: reference label volume, same shape.
        num_classes: number of label ids including background (0).

    Returns:
        ``{id: dice}`` for ids ``1..num_classes-1``: NaN when the id is absent from both volumes, 0.0 when it is
        in only one of them.

    Example:
        >>> dice_per_class(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
        {1: 0.6666666865348816, 2: 0.6666666865348816}
    """
    p1, t1 = _one_hot_pair(pred, target, num_classes)
    # ignore_empty=False scores a class predicted where the reference has none as 0 (a false positive)
    # rather than NaN; only "absent from both" is undefined, and we set that to NaN ourselves.
    dice = compute_dice(p1, t1, include_background=False, ignore_empty=False)[0]
    both_absent = (p1.sum(dim=tuple(range(2, p1.ndim))) + t1.sum(dim=tuple(range(2, t1.ndim))))[0, 1:] == 0
    dice = torch.where(both_absent, torch.full_like(dice, float("nan")), dice)
    return {i + 1: float(d) for i, d in enumerate(dice.tolist())}


def hd95_per_class(
    pred: Any, target: Any, num_classes: int, spacing: Sequence[float] | float = (1.0, 1.0, 1.0)
) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance of each foreground id, via MONAI.

    Args:
        pred: predicted label volume (numpy or tensor of integer ids).
        target: reference label volume, same shape.
        num_classes: number of label ids including background (0).
        spacing: voxel size per axis (mm), or one number for isotropic voxels; must match the volume's dims.

    Returns:
        ``{id: hd95}`` for ids ``1..num_classes-1``, in the units of ``spacing``: NaN when the id is absent from
        both volumes, ``inf`` when it is in only one (no surface to measure to); means should skip both.
    """
    p1, t1 = _one_hot_pair(pred, target, num_classes)
    ndim = p1.ndim - 2
    sp = [float(spacing)] * ndim if np.isscalar(spacing) else [float(s) for s in spacing]
    if len(sp) != ndim or any(s <= 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
    with warnings.catch_warnings():
        # MONAI warns for every empty class; our NaN / inf rule below says what an empty class gives.
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p1, t1, include_background=False, percentile=95, spacing=sp)[0]
    p_any = p1.flatten(2).any(-1)[0, 1:]
    t_any = t1.flatten(2).any(-1)[0, 1:]
    out = {}
    for i, value in enumerate(hd.tolist()):
        if not p_any[i] and not t_any[i]:
            value = float("nan")
        elif bool(p_any[i]) != bool(t_any[i]):
            value = float("inf")
        out[i + 1] = float(value)
    return out


def _as_array(x: Any, dtype: Any, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(f"{name} must have shape {('N', *shape_tail)}, got {arr.shape}")
    return arr


def detection_metrics(
    pred_boxes: Sequence[Any],
    pred_scores: Sequence[Any],
    pred_labels: Sequence[Any],
    gt_boxes: Sequence[Any],
    gt_labels: Sequence[Any],
    class_names: Sequence[str],
    iou_thresholds: Sequence[float] = (0.1, 0.25, 0.5),
    max_detections: int = 100,
) -> dict[str, float]:
    """COCO-style AP and recall at each IoU threshold, per class and averaged over classes.

    Matching and precision / recall are MONAI's (``matching_batch`` with ``box_iou``, then ``COCOMetric``).

    Args:
        pred_boxes: per image, (N, 6) predicted ``XYZXYZ`` boxes.
        pred_scores: per image, N scores (higher is more confident).
        pred_labels: per image, N class indices into ``class_names``.
        gt_boxes: per image, (G, 6) reference boxes, same coordinates as the predictions.
        gt_labels: per image, G class indices.
        class_names: names of the classes, index ``i`` is label ``i``.
        iou_thresholds: IoU thresholds in (0, 1] at which a prediction counts as a hit.
        max_detections: most predictions per image considered (highest scores first).

    Returns:
        Flat dict of floats: ``"mAP@0.10"``, ``"recall@0.10"`` (means over classes that have reference
        boxes), and ``"AP@0.10/<class>"``, ``"recall@0.10/<class>"`` per class (NaN for a class without
        reference boxes), for each threshold (formatted with two decimals).
    """
    n = len(pred_boxes)
    lists = {"pred_scores": pred_scores, "pred_labels": pred_labels, "gt_boxes": gt_boxes, "gt_labels": gt_labels}
    for name, values in lists.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} images but pred_boxes has {n}")
    names = [str(c) for c in class_names]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class_names must be non-empty and unique, got {names}")
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds or any(not 0 < t <= 1 for t in thresholds) or len(set(thresholds)) != len(thresholds):
        raise ValueError(f"iou_thresholds must be distinct values in (0, 1], got {list(iou_thresholds)}")
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"max_detections must be a positive integer, got {max_detections}")

    pb, ps, pl, gb, gl = [], [], [], [], []
    for i in range(n):
        boxes = _as_array(pred_boxes[i], np.float64, (6,), f"pred_boxes[{i}]")
        scores = _as_array(pred_scores[i], np.float64, (), f"pred_scores[{i}]")
        labels = _as_array(pred_labels[i], np.int64, (), f"pred_labels[{i}]")
        g_boxes = _as_array(gt_boxes[i], np.float64, (6,), f"gt_boxes[{i}]")
        g_labels = _as_array(gt_labels[i], np.int64, (), f"gt_labels[{i}]")
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {i}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        if len(g_boxes) != len(g_labels):
            raise ValueError(f"image {i}: {len(g_boxes)} reference boxes but {len(g_labels)} labels")
        for lname, lab in (("pred_labels", labels), ("gt_labels", g_labels)):
            if lab.size and (lab.min() < 0 or lab.max() >= len(names)):
                raise ValueError(f"{lname}[{i}] must be class indices in [0, {len(names)})")
        for bname, b in (("pred_boxes", boxes), ("gt_boxes", g_boxes)):
            if not np.isfinite(b).all() or (b[:, 3:] < b[:, :3]).any():
                raise ValueError(f"{bname}[{i}] must be finite XYZXYZ boxes with x1 <= x2, y1 <= y2, z1 <= z2")
        pb.append(boxes)
        ps.append(scores)
        pl.append(labels)
        gb.append(g_boxes)
        gl.append(g_labels)

    # iou_range is required by COCOMetric for its own averaged mAP; one value keeps it from adding thresholds.
    coco = COCOMetric(
        classes=names,
        iou_list=thresholds,
        iou_range=(thresholds[0], thresholds[0], 1.0),
        max_detection=(max_detections,),
        verbose=False,
    )
    matches = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=coco.iou_thresholds,
        pred_boxes=pb,
        pred_classes=pl,
        pred_scores=ps,
        gt_boxes=gb,
        gt_classes=gl,
        max_detections=max_detections,
    )
    # COCOMetric logs "no gt / no results for class" on the root logger; our NaN per class says the same.
    root = logging.getLogger()
    root.addFilter(_drop_coco_empty_class_warnings)
    try:
        raw, _ = coco(matches)
    finally:
        root.removeFilter(_drop_coco_empty_class_warnings)

    has_gt = np.zeros(len(names), dtype=bool)
    for g in gl:
        has_gt[np.unique(g)] = True
    out: dict[str, float] = {}
    for t in thresholds:
        aps, recalls = [], []
        for c, name in enumerate(names):
            ap = raw[f"{name}_AP_IoU_{t:.2f}_MaxDet_{max_detections}"]
            rec = raw[f"{name}_AR_IoU_{t:.2f}_MaxDet_{max_detections}"]
            # COCOMetric writes -1 for a class without reference boxes; that is "undefined", not a score.
            ap, rec = (float(ap), float(rec)) if has_gt[c] else (float("nan"), float("nan"))
            out[f"AP@{t:.2f}/{name}"] = ap
            out[f"recall@{t:.2f}/{name}"] = rec
            aps.append(ap)
            recalls.append(rec)
        # MONAI's own class mean counts the -1 of absent classes; average over present classes instead.
        out[f"mAP@{t:.2f}"] = _nanmean(aps)
        out[f"recall@{t:.2f}"] = _nanmean(recalls)
    return out


def _drop_coco_empty_class_warnings(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("WARNING, no ")


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def classification_metrics(
    probs: Any, labels: Any, class_names: Sequence[str], threshold: float = 0.5
) -> dict[str, float]:
    """ROC AUC and accuracy of multi-label image classification, per class and macro-averaged.

    Args:
        probs: (N, C) predicted probabilities.
        labels: (N, C) multi-hot reference (0 / 1); NaN marks "not annotated" and that entry is skipped.
        class_names: the C class names (column order).
        threshold: probability at which a prediction counts as positive for the accuracy.

    Returns:
        Flat dict of floats: ``"AUC/<class>"`` (``sklearn.metrics.roc_auc_score``; NaN when the class's
        annotated labels are all one value), ``"accuracy/<class>"`` (NaN without annotated samples), and the
        macro means ``"AUC"`` and ``"accuracy"`` over the classes where they are defined.
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    p = p.astype(np.float64)
    y = y.astype(np.float64)
    names = [str(c) for c in class_names]
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(names):
        raise ValueError(
            f"probs and labels must both be (N, C) with C = {len(names)} classes, got {p.shape} and {y.shape}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite")
    known = ~np.isnan(y)
    if not np.isin(y[known], (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (or NaN for not annotated)")
    out: dict[str, float] = {}
    aucs, accs = [], []
    for c, name in enumerate(names):
        m = known[:, c]
        yc, pc = y[m, c], p[m, c]
        auc = float(roc_auc_score(yc, pc)) if np.unique(yc).size == 2 else float("nan")
        acc = float(np.mean((pc >= threshold) == (yc == 1))) if yc.size else float("nan")
        out[f"AUC/{name}"] = auc
        out[f"accuracy/{name}"] = acc
        aucs.append(auc)
        accs.append(acc)
    out["AUC"] = _nanmean(aucs)
    out["accuracy"] = _nanmean(accs)
    return out
