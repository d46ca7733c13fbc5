"""One test per kind of bad input: each must raise ImageReadError naming the file and the problem."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from unimed_core.data.dicom_series import DicomNote
from unimed_core.data.image_io import read_image
from unimed_core.errors import ImageReadError, ImageWriteError

SHAPE = (6, 5, 4)


def save_nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def expect(path, problem: str, **kwargs) -> ImageReadError:
    """read_image(path) must fail with 'PATH: ...problem...'."""
    with pytest.raises(ImageReadError, match=re.escape(str(path)) + ": .*" + problem) as info:
        read_image(path, **kwargs)
    assert info.value.path == path
    return info.value


def test_error_message_format():
    err = ImageReadError("a/b.nii.gz", "empty volume")
    assert str(err) == "a/b.nii.gz: empty volume" and isinstance(err, ValueError)
    assert str(ImageWriteError("o.nrrd", "x")) == "o.nrrd: x"


def test_missing_file(tmp_path):
    expect(tmp_path / "nope.nii.gz", "file does not exist")


def test_unknown_extension(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    expect(tmp_path / "scan.png", "unknown image format")


def test_nifti_cut_in_half(tmp_path):
    for name in ("v.nii.gz", "v.nii"):
        full = save_nifti(tmp_path / f"full_{name}", np.ones(SHAPE, np.float32))
        cut = tmp_path / f"cut_{name}"
        data = full.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        expect(cut, "corrupt or truncated NIfTI file")


@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.nrrd", "junk.mha"])
def test_garbage_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    expect(path, "corrupt")


def test_truncated_mha(tmp_path):
    full = tmp_path / "full.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones(SHAPE, np.float32)), str(full))
    cut = tmp_path / "cut.mha"
    cut.write_bytes(full.read_bytes()[:-40])
    expect(cut, "corrupt, truncated or unreadable file")


def test_2d_image(tmp_path):
    expect(save_nifti(tmp_path / "slice.nii.gz", np.ones((6, 5), np.float32)), "2-D image")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 5), np.float32)), str(tmp_path / "slice.nrrd"))
    expect(tmp_path / "slice.nrrd", "2-D image")


def test_4d_image(tmp_path):
    expect(save_nifti(tmp_path / "time.nii.gz", np.ones((*SHAPE, 2), np.float32)), "4-D or multi-channel image")


def test_multichannel_image(tmp_path):
    img = sitk.GetImageFromArray(np.ones((*SHAPE, 3), np.float32), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.mha"))
    expect(tmp_path / "rgb.mha", "3 components per voxel")


def test_trailing_singleton_is_squeezed(tmp_path):
    assert read_image(save_nifti(tmp_path / "t.nii.gz", np.ones((*SHAPE, 1), np.float32))).shape == SHAPE


def test_empty_volume(tmp_path):
    expect(save_nifti(tmp_path / "empty.nii.gz", np.ones((0, 5, 4), np.float32)), "empty volume")


@pytest.mark.parametrize("bad, word", [(np.nan, "1 NaN"), (np.inf, "1 Inf"), (-np.inf, "1 Inf")])
def test_non_finite_voxels(tmp_path, bad, word):
    array = np.ones(SHAPE, np.float32)
    array[1, 2, 3] = bad
    expect(save_nifti(tmp_path / "nan.nii.gz", array), f"non-finite voxels.*{word}")


@pytest.mark.parametrize("column", ["zero", "parallel"])
def test_degenerate_affine(tmp_path, column):
    affine = np.eye(4)
    affine[:3, 2] = 0.0 if column == "zero" else affine[:3, 1]
    img = nib.Nifti1Image(np.ones(SHAPE, np.float32), None)
    img.set_sform(affine, code=2)  # the constructor refuses a singular qform; a file can still carry one in sform
    nib.save(img, str(tmp_path / "flat.nii.gz"))
    expect(tmp_path / "flat.nii.gz", "degenerate affine")


def test_dicom_folder_without_series(tmp_path):
    folder = tmp_path / "notdicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    with pytest.warns(DicomNote, match="readme.txt skipped: not a readable DICOM file"):
        expect(folder, "no DICOM series found in the folder .*readme.txt skipped")


def test_dicom_folder_with_two_series(tmp_path, write_ct_series):
    hu = np.zeros(SHAPE, np.int16)
    uid_a = write_ct_series(tmp_path / "dcm", hu, np.diag([1.0, 1.0, 2.0, 1.0]))
    uid_b = write_ct_series(tmp_path / "dcm", hu + 5, np.diag([1.0, 1.0, 3.0, 1.0]))
    err = expect(tmp_path / "dcm", "folder holds 2 DICOM series.*series_uid=")
    assert uid_a in str(err) and uid_b in str(err)
    chosen = read_image(tmp_path / "dcm", series_uid=uid_b)
    assert chosen.meta["series_uid"] == uid_b
    np.testing.assert_array_equal(chosen.array, hu + 5)
    np.testing.assert_allclose(chosen.spacing, [1.0, 1.0, 3.0], atol=1e-6)
    expect(tmp_path / "dcm", "DICOM series 1.2.3 not found", series_uid="1.2.3")


def test_dicom_series_with_missing_slice(tmp_path, write_ct_series):
    write_ct_series(tmp_path / "dcm", np.zeros((6, 5, 6), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), skip=(3,))
    expect(tmp_path / "dcm", "missing slices in DICOM series .* absent at 6.00 mm along the slice normal")


def test_dicom_single_slice(tmp_path, write_ct_series):
    write_ct_series(tmp_path / "dcm", np.zeros((6, 5, 1), np.int16), np.eye(4))
    expect(tmp_path / "dcm", "2-D image: DICOM series .* has a single slice")
