"""The findings table: warnings first, image classes with probabilities, detections with size and segment.

Computed from the label volume (indexed ``[i, j, k]``) and its voxel → RAS affine, so it works for any grid,
oblique included: a world box covers the voxels whose *centres* lie inside it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .results import Detection

__all__ = ["Finding", "box_voxel_mask", "overlapping_segment", "findings_rows", "COLUMNS"]

COLUMNS = ("Kind", "Label", "Score", "Size (mm)", "Segment", "Overlap")


@dataclass(frozen=True)
class Finding:
    """One row of the findings table.

    Attributes:
        kind: "warning" (the scan is unlike the training data), "class" (image-level) or "detection".
        label: class name (for a warning: its signal and message).
        score: probability (class) or detection score (NaN for a warning: its text says why).
        size_mm: box size along R, A, S (detections only).
        center: box centre, RAS mm (detections only; what the views centre on).
        segment: name of the segment covering most of the box ("" if none).
        overlap: fraction of the box's voxels in that segment.
    """

    kind: str
    label: str
    score: float
    size_mm: tuple[float, float, float] | None = None
    center: tuple[float, float, float] | None = None
    segment: str = ""
    overlap: float = 0.0

    def cells(self) -> tuple[str, ...]:
        """Text of the row in :data:`COLUMNS` order."""
        size = "" if self.size_mm is None else " x ".join(f"{s:.1f}" for s in self.size_mm)
        overlap = f"{self.overlap:.2f}" if self.kind == "detection" else ""
        score = "" if self.score != self.score else f"{self.score:.3f}"  # NaN: no score
        return (self.kind, self.label, score, size, self.segment, overlap)


def box_voxel_mask(box: Sequence[float], shape: Sequence[int], affine: np.ndarray):
    """``(slices, mask)``: the index region around a world box and which voxel centres in it lie inside the box.

    Args:
        box: x1, y1, z1, x2, y2, z2 in RAS mm.
        shape: label volume shape (I, J, K).
        affine: voxel → RAS affine of that volume.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    lo, hi = np.asarray(box[:3], dtype=np.float64), np.asarray(box[3:], dtype=np.float64)
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    ijk = (np.linalg.inv(affine) @ np.c_[corners, np.ones(8)].T).T[:, :3]
    start = np.clip(np.floor(ijk.min(0)), 0, np.asarray(shape)).astype(int)
    stop = np.clip(np.ceil(ijk.max(0)) + 1, 0, np.asarray(shape)).astype(int)
    region = tuple(slice(a, b) for a, b in zip(start, stop))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(start, stop)], indexing="ij"), -1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    eps = 1e-6  # centres exactly on a face count as inside
    return region, np.all((world >= lo - eps) & (world <= hi + eps), axis=-1)


def overlapping_segment(
    box: Sequence[float], labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str]
) -> tuple[str, float]:
    """The segment covering most voxels of ``box`` and the fraction of the box it covers (``("", 0.0)``: none)."""
    region, inside = box_voxel_mask(box, labels.shape, affine)
    values = labels[region][inside]
    values = values[values > 0]
    if inside.sum() == 0 or values.size == 0:
        return "", 0.0
    ids, counts = np.unique(values, return_counts=True)
    best = int(ids[np.argmax(counts)])
    return names.get(best, str(best)), float(counts.max() / inside.sum())


def findings_rows(
    detections: Sequence[Detection],
    class_probabilities: Mapping[str, float],
    labels: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    names: Mapping[int, str] | None = None,
    warnings: Sequence[Mapping] = (),
) -> list[Finding]:
    """Rows of the findings table: warnings, image classes (most probable first), then detections by score.

    Args:
        detections: boxes from the model.
        class_probabilities: image class → probability.
        labels: label volume ``[i, j, k]`` to find each box's segment in (None: no segment column).
        affine: its voxel → RAS affine.
        names: label id → segment name.
        warnings: ``{"signal", "message"}`` dicts (``InferenceOutputs.warnings``), each a row on top.
    """
    if labels is not None and (affine is None or names is None):
        raise ValueError("labels need their affine and the label names")
    rows = [Finding("warning", f"{w['signal']}: {w['message']}", float("nan")) for w in warnings]
    rows += [Finding("class", k, float(p)) for k, p in sorted(class_probabilities.items(), key=lambda kv: -kv[1])]
    for det in sorted(detections, key=lambda d: -d.score):
        segment, overlap = ("", 0.0) if labels is None else overlapping_segment(det.box, labels, affine, names)
        rows.append(Finding("detection", det.label, det.score, det.size, det.center, segment, overlap))
    return rows
