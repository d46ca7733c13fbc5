"""Boxes and points between world millimetres (RAS) and voxel coordinates.

Conventions (MONAI's, not new ones):

- Box layout is MONAI's ``StandardMode``, ``"xyzxyz"``: ``[x1, y1, z1, x2, y2, z2]`` with ``x1 <= x2`` etc.; other
  MONAI modes (``"xxyyzz"``, ``"xyzwhd"``, ``"cccwhd"``) are accepted as input through
  :func:`monai.data.box_utils.convert_box_to_standard_mode`.
- Voxel box coordinates are MONAI detection's corner convention: voxel ``i`` spans ``[i, i + 1)`` along its
  axis (``x`` along array axis ``i``, ``y`` along ``j``, ``z`` along ``k``), so a mask whose voxels span indices
  ``a..b`` has the box ``[a, b + 1)`` (:func:`monai.apps.detection.transforms.box_ops.convert_mask_to_box`,
  whose inverse is ``convert_box_to_mask``). Points, by contrast, are continuous voxel indices whose integers
  are voxel centres (``affine @ (i, j, k, 1)``). A box corner ``c`` is therefore the point ``c - 0.5``: the
  world box of a mask is the physical extent of its voxels, from half a voxel before the first voxel centre to
  half a voxel after the last one. (MONAI's ``AffineBoxToWorldCoordinated`` applies the affine to corners
  directly and so shifts boxes by half a voxel; we do not.)
- World coordinates are RAS millimetres (``Volume.affine``'s space, see :mod:`unimed_core.data.image_io`).

Boxes are mapped by transforming all 8 corners and taking their min/max in float64. For axis-aligned affines
(permutations, flips, anisotropic spacing) this equals MONAI's ``apply_affine_to_boxes`` (which maps 2 corners
in float32) and round-trips exactly; for oblique affines it is the smallest axis-aligned box that contains the
rotated box, so a round trip grows the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.data.box_utils import BoxMode, clip_boxes_to_image, convert_box_to_standard_mode
from scipy import ndimage

__all__ = [
    "world_to_voxel_boxes",
    "voxel_to_world_boxes",
    "world_to_voxel_points",
    "voxel_to_world_points",
    "clip_boxes_to_shape",
    "boxes_from_mask",
]


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is not invertible")
    return affine


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    return points


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def voxel_to_world_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map continuous voxel indices ``(N, 3)`` to world RAS millimetres ``(N, 3)``.

    Args:
        points: voxel coordinates ``(i, j, k)``; integers are voxel centres.
        affine: 4x4 voxel → RAS affine (``Volume.affine``).
    """
    return _apply(_check_affine(affine), _check_points(points))


def world_to_voxel_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map world RAS millimetres ``(N, 3)`` to continuous voxel indices ``(N, 3)``.

    Args:
        points: RAS points in mm.
        affine: 4x4 voxel → RAS affine (``Volume.affine``).
    """
    return _apply(np.linalg.inv(_check_affine(affine)), _check_points(points))


def _standard(boxes: np.ndarray, mode: str | BoxMode | None) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 6:
        raise ValueError(f"boxes must have shape (N, 6), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("boxes must be finite")
    boxes = np.asarray(convert_box_to_standard_mode(boxes, mode=mode), dtype=np.float64)
    if np.any(boxes[:, 3:] < boxes[:, :3]):
        raise ValueError("boxes have a max corner below the min corner; check the box mode")
    return boxes


# Corner-convention box coordinates → centre-convention voxel indices (see the module docstring).
_CORNER_TO_CENTRE = np.array([[1, 0, 0, -0.5], [0, 1, 0, -0.5], [0, 0, 1, -0.5], [0, 0, 0, 1.0]])


def _map_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    n = boxes.shape[0]
    # The 8 corners of each box: pick min or max per axis by the bits of the corner number.
    bits = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)])  # (8, 3)
    corners = np.where(bits[None], boxes[:, None, 3:], boxes[:, None, :3])  # (N, 8, 3)
    mapped = _apply(matrix, corners.reshape(-1, 3)).reshape(n, 8, 3)
    return np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)


def world_to_voxel_boxes(
    boxes_world: np.ndarray, affine: np.ndarray, mode: str | BoxMode | None = "xyzxyz"
) -> np.ndarray:
    """World RAS boxes ``(N, 6)`` → voxel boxes ``(N, 6)`` in ``"xyzxyz"`` corner mode (min, max corners).

    Args:
        boxes_world: boxes in RAS millimetres, in MONAI box ``mode``.
        affine: 4x4 voxel → RAS affine (``Volume.affine``).
        mode: MONAI box mode of ``boxes_world`` (``"xyzxyz"``, ``"xxyyzz"``, ``"xyzwhd"``, ``"cccwhd"``).

    Example:
        >>> world_to_voxel_boxes(np.array([[-4.0, 0, 0, 0, 2, 3]]), np.diag([-2.0, 1, 1, 1])).tolist()
        [[0.5, 0.5, 0.5, 2.5, 2.5, 3.5]]
    """
    return _map_boxes(_standard(boxes_world, mode), np.linalg.inv(_check_affine(affine) @ _CORNER_TO_CENTRE))


def voxel_to_world_boxes(
    boxes_voxel: np.ndarray, affine: np.ndarray, mode: str | BoxMode | None = "xyzxyz"
) -> np.ndarray:
    """Voxel boxes ``(N, 6)`` → world RAS boxes ``(N, 6)`` in ``"xyzxyz"`` corner mode (min, max corners).

    Args:
        boxes_voxel: boxes in continuous voxel indices, in MONAI box ``mode``.
        affine: 4x4 voxel → RAS affine (``Volume.affine``).
        mode: MONAI box mode of ``boxes_voxel``.
    """
    return _map_boxes(_standard(boxes_voxel, mode), _check_affine(affine) @ _CORNER_TO_CENTRE)


def clip_boxes_to_shape(
    boxes: np.ndarray, shape: Sequence[int], remove_empty: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``"xyzxyz"`` voxel boxes to the volume ``[0, shape)`` (MONAI's ``clip_boxes_to_image``).

    Args:
        boxes: voxel boxes ``(N, 6)``.
        shape: the volume's spatial shape ``(I, J, K)``.
        remove_empty: drop boxes with no extent left after clipping.

    Returns:
        The clipped boxes (float) and the boolean ``keep`` mask over the input boxes.
    """
    boxes = _standard(boxes, "xyzxyz")
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"shape must be three positive sizes, got {tuple(shape)}")
    clipped, keep = clip_boxes_to_image(boxes, list(shape), remove_empty=remove_empty)
    return np.asarray(clipped, dtype=np.float64), np.asarray(keep, dtype=bool)


def boxes_from_mask(instance_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel boxes of every instance id > 0 of a 3-D mask, MONAI's ``[a, b + 1)`` convention.

    Same result as ``monai.apps.detection.transforms.box_ops.convert_mask_to_box`` on one channel per instance,
    computed with ``scipy.ndimage.find_objects`` so it needs no per-instance copy of the volume.

    Args:
        instance_mask: 3-D integer (or boolean) array; 0 is background, each other value one instance.

    Returns:
        ``(ids, boxes)``: the instance ids present, ascending ``(M,)``, and their ``"xyzxyz"`` boxes ``(M, 6)``.
    """
    mask = np.asarray(instance_mask)
    if mask.ndim != 3:
        raise ValueError(f"instance_mask must be 3-D, got shape {mask.shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(f"instance_mask must hold integer ids, got dtype {mask.dtype}")
    mask = mask.astype(np.int64)
    if mask.size and mask.min() < 0:
        raise ValueError("instance_mask has negative ids")
    ids, boxes = [], []
    for index, slices in enumerate(ndimage.find_objects(mask), start=1):
        if slices is not None:
            ids.append(index)
            boxes.append([s.start for s in slices] + [s.stop for s in slices])
    return np.asarray(ids, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
