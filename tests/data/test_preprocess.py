"""Working grid: reorientation to (closest) RAS, resampling, intensity normalisation, and the way back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from scipy.spatial.transform import Rotation

from unimed_core.data.image_io import Volume
from unimed_core.data.preprocess import (
    normalize_intensity,
    prepare_image,
    resample_label_to,
    resample_onto,
    restore_to_source,
)

LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine(spacing, rotation_deg=(0.0, 0.0, 0.0), flip=None, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff if flip is None else flip @ aff


def _ramp(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return (grid[0] + 2 * grid[1] + 3 * grid[2] + rng.normal(0, 0.5, shape)).astype(np.float32)


def _centres_to_world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return (affine @ np.c_[index, np.ones(len(index))].T).T[:, :3]


def _corners(shape) -> np.ndarray:
    return np.array([[(c >> a) & 1 and shape[a] - 1 for a in range(3)] for c in range(8)], dtype=np.float64)


@pytest.mark.parametrize(
    "affine",
    [
        _affine((3.0, 3.0, 4.0), flip=LPS_FLIP),  # LPS array axes
        _affine((3.0, 2.5, 4.0), rotation_deg=(12.0, -8.0, 20.0), flip=LPS_FLIP),  # oblique LPS
    ],
    ids=["lps", "oblique"],
)
def test_prepare_image_reorients_to_ras_and_covers_the_source(affine):
    shape = (20, 18, 12)
    volume = Volume(_ramp(shape), affine)
    spacing = (4.0, 4.0, 4.0)
    prepared = prepare_image(volume, spacing)

    assert prepared.image.shape == (1, *prepared.shape)
    assert prepared.image.dtype == torch.float32
    assert float(prepared.image.min()) >= -1.0 and float(prepared.image.max()) <= 1.0
    assert prepared.source_shape == shape
    np.testing.assert_allclose(prepared.source_affine, affine)
    # closest RAS: every working axis points mostly along +x, +y, +z respectively, with the working spacing
    direction = prepared.affine[:3, :3] / np.linalg.norm(prepared.affine[:3, :3], axis=0)
    assert np.argmax(np.abs(direction), axis=0).tolist() == [0, 1, 2]
    assert np.all(np.diag(direction) > 0)
    np.testing.assert_allclose(np.linalg.norm(prepared.affine[:3, :3], axis=0), spacing, atol=1e-6)
    # same world region: the working grid's corner voxel centres lie inside the source's extent of voxel
    # centres, and reach to within one working voxel of its far end on every axis
    world = _centres_to_world(prepared.affine, _corners(prepared.shape))
    in_source = _centres_to_world(np.linalg.inv(affine), world)
    assert np.all(in_source >= -1e-3) and np.all(in_source <= np.array(shape) - 1 + 1e-3)
    old = np.linalg.norm(affine[:3, :3], axis=0)
    covered = in_source.max(0) - in_source.min(0)
    assert np.all(covered >= np.array(shape) - 1 - np.array(spacing) / old - 1e-3)
    # the source's min-world corner is the working grid's first voxel centre (no shift)
    source_world = _centres_to_world(affine, _corners(shape))
    first = prepared.affine[:3, 3]
    assert np.min(np.linalg.norm(source_world - first, axis=1)) < 1e-3


def test_working_size_is_stable_under_affine_noise():
    # (n - 1) * old / new + 1 = 5 * 1 / 2 + 1 = 3.5: rounding it would flip between 3 and 4 on 1e-7 mm noise
    shape = (6, 6, 6)
    image = _ramp(shape)
    sizes = set()
    for noise in (-1e-7, 0.0, 1e-7):
        affine = np.diag([1.0 + noise, 1.0 - noise, 1.0 + noise, 1.0])
        sizes.add(prepare_image(Volume(image, affine), (2.0, 2.0, 2.0)).shape)
    assert sizes == {(3, 3, 3)}


def test_resample_label_and_restore_round_trip_a_sphere():
    shape = (40, 36, 30)
    affine = _affine((2.0, 2.2, 3.0), rotation_deg=(5.0, 0.0, -10.0), flip=LPS_FLIP)
    volume = Volume(_ramp(shape), affine)
    prepared = prepare_image(volume, (3.0, 3.0, 3.0))
    world = _centres_to_world(affine, np.argwhere(np.ones(shape, dtype=bool)).astype(np.float64)).reshape(*shape, 3)
    centre = _centres_to_world(affine, ((np.array(shape) - 1) / 2)[None])[0]
    sphere = (np.linalg.norm(world - centre, axis=-1) < 25.0).astype(np.int16) * 3

    working = resample_label_to(sphere, affine, prepared)
    assert working.shape == prepared.shape and working.dtype == torch.long
    assert set(torch.unique(working).tolist()) == {0, 3}

    restored = restore_to_source(working[None], prepared, mode="nearest")
    assert restored.shape == (1, *shape)
    back = restored[0].round().numpy().astype(np.int16)
    assert set(np.unique(back).tolist()) <= {0, 3}
    a, b = back == 3, sphere == 3
    dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    assert dice > 0.95


def test_restore_bilinear_keeps_probabilities_in_range():
    volume = Volume(_ramp((16, 16, 12)), _affine((2.0, 2.0, 3.0)))
    prepared = prepare_image(volume, (4.0, 4.0, 4.0))
    probs = torch.rand(2, *prepared.shape)
    out = restore_to_source(probs, prepared, mode="bilinear")
    assert out.shape == (2, 16, 16, 12)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_constant_image_is_refused():
    volume = Volume(np.full((8, 8, 8), 7.0, dtype=np.float32), np.eye(4))
    with pytest.raises(ValueError, match="constant"):
        prepare_image(volume, (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="constant"):
        normalize_intensity(torch.zeros(1, 4, 4, 4))


@pytest.mark.parametrize("spacing", [(2.0, 2.0), (2.0, 0.0, 2.0), (-1.0, 2.0, 2.0)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        prepare_image(Volume(_ramp((8, 8, 8)), np.eye(4)), spacing)


@pytest.mark.parametrize("domain", ["ct", "mr"])
def test_normalisation_spreads_soft_tissue(domain):
    """CT liver and spleen differ by 10 HU: a linear percentile map puts them about 0.02 apart, equalisation more
    (about 2.4 times with the contrast limit of 2, 3.5 times without)."""
    from monai.transforms import ScaleIntensityRangePercentiles

    from unimed_core.synthetic.case import SyntheticConfig, generate_case

    case = generate_case(3, SyntheticConfig(domain=domain, shape=(48, 48, 40), spacing=(8.0, 8.0, 9.0)))
    out = normalize_intensity(torch.as_tensor(case.image)[None])[0].numpy()
    assert out.min() == -1.0 and out.max() == 1.0
    liver, spleen = (float(np.median(out[case.label == i])) for i in (1, 2))
    linear = ScaleIntensityRangePercentiles(0.5, 99.5, -1.0, 1.0, clip=True)(torch.as_tensor(case.image)).numpy()
    linear_gap = abs(float(np.median(linear[case.label == 1])) - float(np.median(linear[case.label == 2])))
    assert abs(liver - spleen) > (2 * linear_gap if domain == "ct" else 0.9 * linear_gap)
    assert float(np.median(out[case.label == 0])) < min(liver, spleen)
    # monotone: brighter input never maps lower
    order = np.argsort(case.image.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)


def test_contrast_limit_keeps_rare_bright_tissue_visible():
    """In CT, everything brighter than the liver (kidneys, enhancing tumours) covers little of the body: plain
    equalisation squeezes it within a few liver noise sds, the contrast limit keeps more of the raw contrast."""
    from scipy import ndimage

    from unimed_core.synthetic.case import SyntheticConfig, generate_case

    case = generate_case(3, SyntheticConfig(domain="ct", shape=(64, 64, 56), spacing=(6.0, 6.0, 6.5)))
    liver = ndimage.binary_erosion(case.label == 1, iterations=2)
    kidney = ndimage.binary_erosion(case.label == 3, iterations=1)

    def cnr(a):
        return (a[kidney].mean() - a[liver].mean()) / a[liver].std()

    image = torch.as_tensor(case.image)
    limited = normalize_intensity(image).numpy()
    plain = normalize_intensity(image, clip_limit=float("inf")).numpy()
    assert cnr(limited) > 1.5 * cnr(plain) and cnr(limited) > 0.3 * cnr(case.image)
    assert limited.min() == -1.0 and limited.max() == 1.0
    with pytest.raises(ValueError, match="clip_limit"):
        normalize_intensity(image, clip_limit=1.0)


def test_restore_in_slabs_equals_one_call():
    """Slab-wise restoring (bounded memory on large inputs) gives what one resampling of the whole grid gives."""
    rot = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])  # oblique: the slabs cut the working grid
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.5, 1.5, 2.5])
    volume = Volume(_ramp((30, 26, 21)), affine)
    # spacings whose ratios put no input voxel exactly half-way between two working voxels, where nearest
    # neighbour is a tie that float rounding decides either way
    prepared = prepare_image(volume, (4.1, 4.3, 3.7))
    data = torch.rand(2, *prepared.shape)
    whole = restore_to_source(data, prepared, mode="bilinear", max_chunk_voxels=10**9)
    slabs = restore_to_source(
        data, prepared, mode="bilinear", max_chunk_voxels=2 * 30 * 26 * 4
    )  # 4 slices of 2 channels per slab
    assert whole.shape == slabs.shape == (2, 30, 26, 21)
    torch.testing.assert_close(whole, slabs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("code", ["RAS", "LPS", "PIL", "ASR"])
def test_axis_aligned_nearest_restore_equals_the_resampler(code):
    """The indexing fast path gives exactly what MONAI's SpatialResample gives on the same grids."""
    from unimed_core.data.preprocess import _restore_axis_aligned_nearest
    from unimed_core.synthetic.case import orientation_affine

    shape = (30, 26, 21)
    volume = Volume(_ramp(shape), orientation_affine(code, (1.5, 1.3, 2.5), shape))
    prepared = prepare_image(volume, (4.1, 4.3, 3.7))
    data = torch.randint(0, 5, (1, *prepared.shape)).float()
    fast = _restore_axis_aligned_nearest(data, prepared.affine, prepared.source_affine, shape)
    assert fast is not None
    src = MetaTensor(data, affine=torch.as_tensor(prepared.affine))
    reference = SpatialResample(mode="nearest", padding_mode="zeros")(
        src, dst_affine=torch.as_tensor(prepared.source_affine), spatial_size=shape
    )
    torch.testing.assert_close(fast, reference.as_tensor(), atol=0, rtol=0)


def test_grids_at_an_angle_take_the_resampler():
    """The working grid keeps the input's directions (oblique ones too), so the fast path normally applies; a
    grid at an angle to the working grid is resampled."""
    from unimed_core.data.preprocess import _restore_axis_aligned_nearest

    volume = Volume(_ramp((20, 20, 10)), np.diag([2.0, 2.0, 2.0, 1.0]))
    prepared = prepare_image(volume, (4.0, 4.0, 4.0))
    turned = np.eye(4)
    turned[:3, :3] = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) * 2.0
    data = torch.zeros(1, *prepared.shape)
    assert _restore_axis_aligned_nearest(data, prepared.affine, turned, (20, 20, 10)) is None
    assert _restore_axis_aligned_nearest(data, prepared.affine, volume.affine, (20, 20, 10)) is not None


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("code", ["RAS", "LPS", "PIL"])
def test_separable_trilinear_restore_equals_the_resampler(code, padding):
    """Trilinear restoring between parallel grids (three 1-D interpolations per slab) gives what MONAI's
    SpatialResample gives, with either padding, in slabs or not."""
    from unimed_core.data.preprocess import _axis_aligned_linear_slabs, restore_slabs
    from unimed_core.synthetic.case import orientation_affine

    shape = (30, 26, 21)
    volume = Volume(_ramp(shape), orientation_affine(code, (1.5, 1.3, 2.5), shape))
    prepared = prepare_image(volume, (4.1, 4.3, 3.7))
    data = torch.rand(2, *prepared.shape)
    assert _axis_aligned_linear_slabs(data, prepared, padding, step=4) is not None  # the fast path is taken
    fast = torch.cat([s for _, s in restore_slabs(data, prepared, "bilinear", padding, 2 * 30 * 26 * 4)], dim=-1)
    src = MetaTensor(data, affine=torch.as_tensor(prepared.affine))
    reference = SpatialResample(mode="bilinear", padding_mode=padding)(
        src, dst_affine=torch.as_tensor(prepared.source_affine), spatial_size=shape
    )
    torch.testing.assert_close(fast, reference.as_tensor(), atol=1e-5, rtol=0)


def test_a_shifted_working_grid_starts_offset_working_voxels_along_its_axes():
    volume = Volume(_ramp((20, 20, 20)), _affine((2.0, 2.0, 2.0)))
    base = prepare_image(volume, (4.0, 4.0, 4.0))
    shifted = prepare_image(volume, (4.0, 4.0, 4.0), offset=(0.5, 0.25, 0.0))
    assert shifted.shape == base.shape
    np.testing.assert_allclose(shifted.affine[:3, :3], base.affine[:3, :3])
    np.testing.assert_allclose(shifted.affine[:3, 3] - base.affine[:3, 3], base.affine[:3, :3] @ [0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match="offset must be three finite numbers"):
        prepare_image(volume, (4.0, 4.0, 4.0), offset=(0.5, float("nan"), 0.0))


def test_scores_of_a_shifted_grid_are_brought_onto_the_working_grid():
    # a linear ramp in world x sampled on a grid shifted by half a voxel reads, once resampled onto the unshifted grid,
    # the unshifted grid's own ramp (trilinear interpolation is exact on a linear function; the first voxel lies before
    # the shifted grid's first one and takes the border's value)
    volume = Volume(np.zeros((24, 24, 24), np.float32) + _ramp((24, 24, 24)), _affine((2.0, 2.0, 2.0)))
    base = prepare_image(volume, (4.0, 4.0, 4.0))
    shifted = prepare_image(volume, (4.0, 4.0, 4.0), offset=(0.5, 0.5, 0.5))

    def world_x(prepared):
        index = np.stack(np.meshgrid(*[np.arange(s) for s in prepared.shape], indexing="ij"), -1).reshape(-1, 3)
        return torch.from_numpy(_centres_to_world(prepared.affine, index)[:, 0].reshape(prepared.shape)).float()[None]

    moved = resample_onto(world_x(shifted), shifted.affine, base)
    assert moved.shape == (1, *base.shape)
    torch.testing.assert_close(moved[0, 1:-1, 1:-1, 1:-1], world_x(base)[0, 1:-1, 1:-1, 1:-1], atol=1e-3, rtol=0)
    assert float((moved[0, 0] - world_x(base)[0, 0]).abs().max()) > 1.0  # the border: a real difference, not skipped
