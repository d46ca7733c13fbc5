"""Boxes and points between world RAS millimetres and voxel indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes, convert_box_to_mask, convert_mask_to_box
from monai.data.box_utils import convert_box_mode

from unimed_core.data.boxes import (
    boxes_from_mask,
    clip_boxes_to_shape,
    voxel_to_world_boxes,
    voxel_to_world_points,
    world_to_voxel_boxes,
    world_to_voxel_points,
)


def axis_aligned(perm, signs, spacing, origin) -> np.ndarray:
    """Affine that maps voxel axis a to world axis perm[a] with the given sign and spacing."""
    affine = np.zeros((4, 4))
    for axis, (world_axis, sign, step) in enumerate(zip(perm, signs, spacing)):
        affine[world_axis, axis] = sign * step
    affine[:3, 3] = origin
    affine[3, 3] = 1.0
    return affine


AXIS_ALIGNED = [
    axis_aligned((0, 1, 2), (1, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    axis_aligned((0, 1, 2), (-1, -1, 1), (0.7, 0.8, 2.5), (120.0, 140.0, -60.0)),  # LPS-style grid, anisotropic
    axis_aligned((2, 0, 1), (1, -1, -1), (3.0, 0.5, 1.25), (-10.0, 33.0, 7.0)),  # permuted and flipped
]


def oblique() -> np.ndarray:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array([0.8, 0.9, 2.5])
    affine[:3, 3] = [5.0, -3.0, 11.0]
    return affine


def random_boxes(rng, n=16, high=40.0) -> np.ndarray:
    lo = rng.uniform(-high, high, size=(n, 3))
    return np.concatenate([lo, lo + rng.uniform(0.5, 20.0, size=(n, 3))], axis=1)


@pytest.mark.parametrize("index", range(len(AXIS_ALIGNED)))
def test_box_round_trip_axis_aligned(index):
    affine = AXIS_ALIGNED[index]
    boxes_world = random_boxes(np.random.default_rng(index))
    voxel = world_to_voxel_boxes(boxes_world, affine)
    assert voxel.shape == (16, 6)
    assert np.all(voxel[:, 3:] >= voxel[:, :3])  # flips swap corners; results stay min/max
    np.testing.assert_allclose(voxel_to_world_boxes(voxel, affine), boxes_world, rtol=0, atol=1e-5)
    # MONAI's two-corner transform, exact for axis-aligned affines (in float32), plus our half-voxel corner shift.
    expected = apply_affine_to_boxes(torch.as_tensor(boxes_world), torch.as_tensor(np.linalg.inv(affine)))
    np.testing.assert_allclose(voxel, expected.numpy() + 0.5, atol=1e-3)


def test_box_modes_are_monai_modes():
    affine = AXIS_ALIGNED[1]
    boxes = random_boxes(np.random.default_rng(7), n=4)
    ccc = convert_box_mode(boxes, src_mode="xyzxyz", dst_mode="cccwhd")
    np.testing.assert_allclose(
        world_to_voxel_boxes(ccc, affine, mode="cccwhd"), world_to_voxel_boxes(boxes, affine), atol=1e-9
    )


def test_oblique_box_contains_rotated_corners():
    affine = oblique()
    boxes_world = random_boxes(np.random.default_rng(3), n=5)
    voxel = world_to_voxel_boxes(boxes_world, affine)
    back = voxel_to_world_boxes(voxel, affine)
    # Enclosing boxes can only grow through a rotation, never lose the original box.
    assert np.all(back[:, :3] <= boxes_world[:, :3] + 1e-9) and np.all(back[:, 3:] >= boxes_world[:, 3:] - 1e-9)
    centre = (boxes_world[:, :3] + boxes_world[:, 3:]) / 2
    np.testing.assert_allclose(
        voxel_to_world_points((voxel[:, :3] + voxel[:, 3:]) / 2 - 0.5, affine), centre, atol=1e-9
    )


@pytest.mark.parametrize("affine", [*AXIS_ALIGNED, oblique()])
def test_point_round_trip(affine):
    points = np.random.default_rng(1).uniform(-100, 100, size=(10, 3))
    voxel = world_to_voxel_points(points, affine)
    np.testing.assert_allclose(voxel_to_world_points(voxel, affine), points, atol=1e-9)
    np.testing.assert_allclose(voxel_to_world_points(np.zeros((1, 3)), affine)[0], affine[:3, 3])


@pytest.mark.parametrize("affine", [*AXIS_ALIGNED, oblique()])
def test_box_from_mask_contains_world_points_of_mask(affine):
    mask = np.zeros((12, 10, 8), np.int16)
    mask[2:5, 3:9, 1:2] = 1
    mask[7, 0, 6] = 4  # a one-voxel instance
    mask[8:12, 5:7, 3:8] = 2
    ids, boxes = boxes_from_mask(mask)
    assert ids.tolist() == [1, 2, 4]
    np.testing.assert_array_equal(boxes[0], [2, 3, 1, 5, 9, 2])  # voxels a..b -> [a, b + 1)
    world_boxes = voxel_to_world_boxes(boxes, affine)
    for instance, box in zip(ids, world_boxes):
        points = voxel_to_world_points(np.argwhere(mask == instance).astype(float), affine)
        assert np.all(points >= box[:3] - 1e-9) and np.all(points <= box[3:] + 1e-9)
    # the world box is the voxels' physical extent: the mask box's centre is the centre of its voxel centres
    first = voxel_to_world_points(np.array([[2.0, 3, 1], [4, 8, 1]]), affine).mean(0)
    np.testing.assert_allclose((world_boxes[0, :3] + world_boxes[0, 3:]) / 2, first, atol=1e-9)


def test_boxes_from_mask_matches_monai_and_inverts_box_to_mask():
    mask = np.zeros((9, 8, 7), np.int16)
    mask[1:4, 2:6, 0:3] = 3
    _, boxes = boxes_from_mask(mask)
    monai_boxes, _ = convert_mask_to_box(np.where(mask > 0, 3, -1)[None].astype(np.int16))
    np.testing.assert_array_equal(boxes, monai_boxes)
    back = convert_box_to_mask(boxes, np.array([3]), mask.shape, bg_label=0)[0]
    np.testing.assert_array_equal(back, mask)


def test_boxes_from_empty_mask():
    ids, boxes = boxes_from_mask(np.zeros((3, 3, 3), bool))
    assert ids.shape == (0,) and boxes.shape == (0, 6)


def test_clip_boxes_to_shape():
    boxes = np.array([[-2.0, 1, 1, 4, 3, 3], [9.0, 9, 9, 12, 12, 12], [1.0, 1, 1, 2, 2, 2]])
    clipped, keep = clip_boxes_to_shape(boxes, (8, 8, 8))
    assert keep.tolist() == [True, False, True]
    np.testing.assert_allclose(clipped, [[0, 1, 1, 4, 3, 3], [1, 1, 1, 2, 2, 2]])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 6\)"):
        world_to_voxel_boxes(np.zeros((2, 4)), np.eye(4))
    with pytest.raises(ValueError, match="max corner below the min corner"):
        world_to_voxel_boxes(np.array([[5.0, 0, 0, 1, 1, 1]]), np.eye(4))
    with pytest.raises(ValueError, match="not invertible"):
        world_to_voxel_points(np.zeros((1, 3)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\)"):
        voxel_to_world_points(np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="instance_mask must be 3-D"):
        boxes_from_mask(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="three positive sizes"):
        clip_boxes_to_shape(np.zeros((1, 6)), (4, 4))
