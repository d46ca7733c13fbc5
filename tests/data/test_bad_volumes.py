"""Readable but unusable or odd volumes: overflowing integer types and scalings, constant and too-large volumes,
extreme and anisotropic spacing, and datalist items whose label or boxes do not fit their image.

Each is either handled correctly (asserted) or refused with an error naming the file and the problem.
"""

from __future__ import annotations

import re
import time

import nibabel as nib
import numpy as np
import pytest

from unimed_core.data.image_io import read_image
from unimed_core.data.preprocess import prepare_image
from unimed_core.data.training_data import load_case
from unimed_core.errors import ImageReadError
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small

LM = LabelMap.default()
SHAPE = (12, 10, 8)
AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])


def save_nifti(path, array, affine=AFFINE, slope=None):
    # nibabel wants 64-bit integer types confirmed explicitly (other tools may not read them)
    img = nib.Nifti1Image(array, affine, dtype=array.dtype if array.dtype.itemsize == 8 else None)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_integer_types_normalise_over_their_full_range_without_overflow(tmp_path, dtype):
    info = np.iinfo(dtype)
    # a ramp from the type's minimum to its maximum, in Python integers (float64 cannot hold 2**63 - 1):
    # a subtraction or a sum in the type itself would wrap around
    span = int(info.max) - int(info.min)
    n = int(np.prod(SHAPE))
    ramp = [min(int(info.min) + span * i // (n - 1), int(info.max)) for i in range(n)]
    array = np.array(ramp, dtype=dtype).reshape(SHAPE)
    volume = read_image(save_nifti(tmp_path / "ints.nii.gz", array))
    assert volume.array.dtype == dtype  # integer data stay integer when read
    prepared = prepare_image(volume, spacing=(3.0, 3.0, 4.0))  # the same grid: no resampling
    image = prepared.image[0].numpy()
    assert np.isfinite(image).all() and image.min() == -1.0 and image.max() == 1.0
    # order is kept: normalised values rise with the original ones (no wrap-around)
    flat_in = volume.array.astype(np.float64).ravel()
    flat_out = image.ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= -1e-6)


def test_scaling_that_overflows_float32_is_refused(tmp_path):
    path = save_nifti(tmp_path / "scaled.nii.gz", np.full(SHAPE, 30000, np.int16), slope=1e38)
    with pytest.raises(
        ImageReadError, match=re.escape(str(path)) + r": image has non-finite voxels: 0 NaN and 960 Inf"
    ):
        read_image(path)


def test_constant_volume_is_refused_naming_the_file(tmp_path):
    path = save_nifti(tmp_path / "flat.nii.gz", np.full(SHAPE, 7.0, np.float32))
    with pytest.raises(ImageReadError, match=re.escape(str(path)) + r": image intensities are constant"):
        prepare_image(read_image(path))


def _nifti_header_only(path, shape):
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * 4)  # the extension flag; no voxel data follows
    return path


def test_too_large_volume_is_refused_from_its_header_before_reading(tmp_path):
    nifti = _nifti_header_only(tmp_path / "huge.nii", (3000, 3000, 3000))
    mha = tmp_path / "huge.mha"
    mha.write_text("ObjectType = Image\nNDims = 3\nDimSize = 3000 3000 3000\nElementType = MET_FLOAT\n"
                   "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n")  # fmt: skip
    for path in (nifti, mha):
        start = time.monotonic()
        with pytest.raises(ImageReadError, match=re.escape(str(path)) + r": volume of 3000 x 3000 x 3000 .*voxels "
                           r"needs about 301\.7 GB to read, more than the 1\.0 GB allowed"):  # fmt: skip
            read_image(path, max_bytes=2**30)
        assert time.monotonic() - start < 5  # refused from the header: no 300 GB read was tried
    # the default limit is half the memory available now: far below 300 GB here
    with pytest.raises(ImageReadError, match="needs about 301.7 GB"):
        read_image(nifti)


def test_dicom_series_too_large_is_refused_before_reading(tmp_path, write_ct_series):
    write_ct_series(tmp_path / "dcm", np.zeros((64, 64, 8), np.int16), np.eye(4))
    with pytest.raises(ImageReadError, match=r"dcm: volume of 64 x 64 x 8 voxels needs about"):
        read_image(tmp_path / "dcm", max_bytes=1000)


@pytest.fixture(scope="module")
def predictor():
    return UniMedPredictor(unimed_small(LM), LM, spacing=(6.0, 6.0, 6.0), max_working_voxels=256**3)


def test_anisotropic_spacing_gives_a_working_grid_and_comes_back_to_the_input_grid(tmp_path, predictor):
    rng = np.random.default_rng(0)
    path = save_nifti(tmp_path / "aniso.nii.gz", rng.normal(size=(80, 80, 6)).astype(np.float32),
                      np.diag([0.4, 0.4, 8.0, 1.0]))  # fmt: skip
    volume = read_image(path)
    prepared = predictor.prepare(volume)
    assert prepared.shape == (6, 6, 7)  # 31.6 x 31.6 x 40 mm from first to last voxel centre, at 6 mm
    assert prepared.source_shape == (80, 80, 6)


@pytest.mark.parametrize(
    ("spacing", "problem"),
    [
        (1e-4, r"the volume spans only .* mm .*; the model works at \(6\.0, 6\.0, 6\.0\) mm: check the spacing"),
        (1e4, r"about .* voxels at \(6\.0, 6\.0, 6\.0\) mm exceed the limit of 1\.68e\+07; use a coarser spacing"),
    ],
)
def test_extreme_spacing_is_refused_with_the_numbers(tmp_path, predictor, spacing, problem):
    path = save_nifti(tmp_path / "extreme.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32),
                      np.diag([spacing, spacing, spacing, 1.0]))  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + problem):
        predictor.prepare(read_image(path))


@pytest.fixture
def case_files(tmp_path):
    rng = np.random.default_rng(1)
    image = save_nifti(
        tmp_path / "ct.nii.gz", rng.normal(size=(16, 16, 16)).astype(np.float32), np.diag([4.0] * 3 + [1])
    )
    return tmp_path, image


def _load(item):
    return load_case(item, LM, spacing=(4.0, 4.0, 4.0))


def test_datalist_label_off_the_image_grid_is_refused(case_files):
    folder, image = case_files
    shifted = np.diag([4.0] * 3 + [1])
    shifted[0, 3] = 2.0
    label = save_nifti(folder / "shifted.nii.gz", np.zeros((16, 16, 16), np.int16), shifted)
    with pytest.raises(ImageReadError, match=r"shifted\.nii\.gz: label geometry does not match image .*ct\.nii\.gz"):
        _load({"image": str(image), "label": str(label)})
    small = save_nifti(folder / "small.nii.gz", np.zeros((16, 16, 15), np.int16), np.diag([4.0] * 3 + [1]))
    with pytest.raises(ImageReadError, match=r"small\.nii\.gz: label geometry does not match image .*shape"):
        _load({"image": str(image), "label": str(small)})


def test_datalist_label_with_ids_outside_the_label_map_is_refused(case_files):
    folder, image = case_files
    labels = np.zeros((16, 16, 16), np.int16)
    labels[2:5, 2:5, 2:5] = 99
    path = save_nifti(folder / "label.nii.gz", labels, np.diag([4.0] * 3 + [1]))
    with pytest.raises(ImageReadError, match=r"label\.nii\.gz: label ids \[99\] are not in the label map"):
        _load({"image": str(image), "label": str(path)})


def test_datalist_box_outside_the_image_is_refused_and_a_box_inside_is_kept(case_files):
    _, image = case_files
    inside = [4.0, 4.0, 4.0, 20.0, 20.0, 20.0]  # world RAS mm; the image spans [-2, 62] mm on each axis
    outside = [100.0, 100.0, 100.0, 120.0, 120.0, 120.0]
    case = _load({"image": str(image), "boxes": [inside], "box_labels": ["cyst"]})
    assert case.boxes.shape == (1, 6) and case.box_labels.tolist() == [LM.class_index("cyst")]
    with pytest.raises(ValueError, match=r"ct\.nii\.gz: box 1 \[100\.0, .*\] \(world RAS mm\) lies outside the image"):
        _load({"image": str(image), "boxes": [inside, outside], "box_labels": ["cyst", "tumor"]})
