"""Round trips of volumes and labels through every supported format, with oblique and flipped geometry.

Tolerances: voxel values exact; affines within 1e-4 mm (NIfTI stores its sform in float32).
"""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from unimed_core.data.dicom_seg import write_dicom_seg
from unimed_core.data.image_io import Volume, read_image, read_label, write_label
from unimed_core.errors import ImageReadError, ImageWriteError
from unimed_core.label_map import LabelMap

ATOL_MM = 1e-4
SHAPE = (7, 6, 5)
LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    """Rotation by ``z_deg`` about z, after ``x_deg`` about x."""
    z, x = np.deg2rad(z_deg), np.deg2rad(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


def make_affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = origin
    return affine


# RAS-style oblique; oblique with i and k flipped; LPS-style axis-aligned; left-handed LAS (dcm2niix-style NIfTI).
AFFINES = {
    "oblique": make_affine(rotation(20, 10), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0)),
    "flipped_oblique": make_affine(rotation(20, 10) @ np.diag([-1.0, 1.0, -1.0]), (1.2, 0.7, 3.0), (-5.0, 7.0, 2.0)),
    "lps_axis_aligned": make_affine(np.diag([-1.0, -1.0, 1.0]), (0.5, 0.6, 2.0), (100.0, 120.0, -40.0)),
    "las_left_handed": make_affine(np.diag([-1.0, 1.0, 1.0]), (0.7, 0.7, 1.5), (50.0, -60.0, 10.0)),
}


@pytest.fixture
def hu() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 2000, size=SHAPE).astype(np.int16)


@pytest.fixture
def labels() -> np.ndarray:
    out = np.zeros(SHAPE, np.int16)
    out[1:4, 2:5, 1:3] = 1
    out[5, 0, 4] = 6
    out[6, 5, 0] = 3
    return out


def world(affine: np.ndarray, ijk: tuple[int, int, int]) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


def save_nifti(path, array, affine):
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def save_nrrd(path, array, affine_ras, space):
    """Write with pynrrd (independent of ITK), in the named space."""
    matrix = affine_ras if space == "right-anterior-superior" else LPS_FLIP @ affine_ras
    header = {"space": space, "space directions": matrix[:3, :3].T, "space origin": matrix[:3, 3]}
    header["kinds"] = ["domain"] * 3
    nrrd.write(str(path), array, header, index_order="F")


def save_mha(path, array, affine_ras):
    lps = LPS_FLIP @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy())
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(img, str(path))


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_image_formats_agree(tmp_path, write_ct_series, hu, name):
    affine = AFFINES[name]
    floats = (hu.astype(np.float32) / 7.0).astype(np.float32)
    save_nifti(tmp_path / "a.nii.gz", floats, affine)
    save_nrrd(tmp_path / "lps.nrrd", floats, affine, "left-posterior-superior")
    save_nrrd(tmp_path / "ras.nrrd", floats, affine, "right-anterior-superior")
    save_mha(tmp_path / "a.mha", floats, affine)
    files = ["a.nii.gz", "lps.nrrd", "ras.nrrd", "a.mha"]
    volumes = {f: read_image(tmp_path / f) for f in files}
    for f, vol in volumes.items():
        assert vol.array.dtype == np.float32, f
        assert vol.shape == SHAPE
        np.testing.assert_array_equal(vol.array, floats, err_msg=f)
        np.testing.assert_allclose(vol.affine, affine, atol=ATOL_MM, err_msg=f)
        # The same voxel is at the same world point, computed independently of the reader.
        np.testing.assert_allclose(world(vol.affine, (6, 0, 3)), world(affine, (6, 0, 3)), atol=ATOL_MM)
    write_ct_series(tmp_path / "dcm", hu, affine)
    dcm = read_image(tmp_path / "dcm")
    assert np.issubdtype(dcm.array.dtype, np.integer)
    assert dcm.meta["format"] == "dicom" and dcm.meta["modality"] == "CT"
    assert len(dcm.meta["dicom_datasets"]) == SHAPE[2]
    expected_array, expected_affine = hu, affine
    if np.linalg.det(affine[:3, :3]) < 0:
        # GDCM stacks slices along the slice normal (row x column direction); a left-handed grid comes back with
        # k reversed: same voxels at the same world points, other index order.
        flip_k = np.diag([1.0, 1.0, -1.0, 1.0])
        flip_k[2, 3] = SHAPE[2] - 1
        expected_array, expected_affine = hu[:, :, ::-1], affine @ flip_k
    np.testing.assert_array_equal(dcm.array, expected_array)
    np.testing.assert_allclose(dcm.affine, expected_affine, atol=ATOL_MM)
    np.testing.assert_allclose(world(dcm.affine, (6, 0, 3)), world(expected_affine, (6, 0, 3)), atol=ATOL_MM)


def test_volume_properties():
    affine = AFFINES["oblique"]
    vol = Volume(np.zeros(SHAPE, np.float32), affine)
    np.testing.assert_allclose(vol.spacing, [0.8, 0.9, 2.5])
    np.testing.assert_allclose(vol.direction, rotation(20, 10), atol=1e-12)
    np.testing.assert_allclose(vol.origin, [10.0, -20.0, 30.0])
    with pytest.raises(ValueError, match="3-D"):
        Volume(np.zeros((3, 3)), affine)


def test_nifti_keeps_integer_labels_and_squeezes_trailing_axis(tmp_path, labels):
    save_nifti(tmp_path / "l.nii.gz", labels[..., None], AFFINES["oblique"])
    vol = read_image(tmp_path / "l.nii.gz")
    assert vol.array.dtype == np.int16 and vol.shape == SHAPE
    np.testing.assert_array_equal(vol.array, labels)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"])
@pytest.mark.parametrize("name", ["oblique", "flipped_oblique"])
def test_label_round_trip(tmp_path, labels, suffix, name):
    lm = LabelMap.default()
    save_nifti(tmp_path / "img.nii.gz", labels.astype(np.float32), AFFINES[name])
    ref = read_image(tmp_path / "img.nii.gz")
    out = write_label(labels, ref, tmp_path / f"pred{suffix}", label_map=lm)
    back = read_label(out, reference=ref, label_map=lm)
    np.testing.assert_array_equal(back.array, labels)
    assert np.issubdtype(back.array.dtype, np.integer)
    np.testing.assert_allclose(back.affine, ref.affine, atol=ATOL_MM)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    if suffix == ".seg.nrrd":
        assert back.meta["segment_names"] == {i: n for i, n in lm.mask_classes.items() if i}
        header = nrrd.read_header(str(out))
        assert header["space"] == "left-posterior-superior"
        liver = next(k[: -len("_Name")] for k, v in header.items() if k.endswith("_Name") and v == "liver")
        assert int(header[f"{liver}_LabelValue"]) == 1
        color = [float(c) for c in header[f"{liver}_Color"].split()]
        np.testing.assert_allclose(color, np.array(lm.color("liver")) / 255.0, atol=1e-6)
    if suffix.endswith(".nii.gz"):
        img = nib.load(str(out))
        assert img.get_data_dtype() == np.int16
        assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0


def test_chain_nifti_nrrd_segnrrd_dicom(tmp_path, write_ct_series, hu, labels):
    """Labels made on a NIfTI image travel NRRD → .seg.nrrd and land on the DICOM series of the same grid."""
    lm = LabelMap.default()
    affine = AFFINES["oblique"]
    save_nifti(tmp_path / "img.nii.gz", hu, affine)
    write_ct_series(tmp_path / "dcm", hu, affine)
    nifti, dicom = read_image(tmp_path / "img.nii.gz"), read_image(tmp_path / "dcm")
    step1 = read_label(write_label(labels, nifti, tmp_path / "a.nrrd"), reference=dicom)
    step2 = read_label(write_label(step1.array, dicom, tmp_path / "b.seg.nrrd", lm), reference=nifti, label_map=lm)
    np.testing.assert_array_equal(step2.array, labels)
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 2, 1)]:
        np.testing.assert_allclose(world(step2.affine, ijk), world(dicom.affine, ijk), atol=ATOL_MM)


def test_seg_nrrd_segment_names_map_to_label_map_ids(tmp_path, labels):
    """A Slicer file whose 'tumor' segment has label value 1 reads as our tumor id (6) given the label map."""
    import slicerio

    ref = Volume(np.zeros(SHAPE, np.float32), AFFINES["oblique"])
    seg = {
        "voxels": (labels == 6).astype(np.uint8),
        "ijkToLPS": LPS_FLIP @ ref.affine,
        "segments": [{"id": "Segment_1", "name": "tumor", "labelValue": 1, "layer": 0}],
    }
    slicerio.write_segmentation(str(tmp_path / "s.seg.nrrd"), seg)
    back = read_label(tmp_path / "s.seg.nrrd", reference=ref, label_map=LabelMap.default())
    np.testing.assert_array_equal(back.array, np.where(labels == 6, 6, 0))
    assert back.meta["segment_names"] == {6: "tumor"}
    raw = read_label(tmp_path / "s.seg.nrrd")
    assert raw.array.max() == 1 and raw.meta["segment_names"] == {1: "tumor"}


def test_label_geometry_mismatch(tmp_path, labels):
    ref = Volume(np.zeros(SHAPE, np.float32), AFFINES["oblique"], tmp_path / "img.nii.gz")
    moved = AFFINES["oblique"].copy()
    moved[0, 3] += 0.5
    save_nifti(tmp_path / "shifted.nii.gz", labels, moved)
    with pytest.raises(ImageReadError, match=r"shifted\.nii\.gz: label geometry does not match image"):
        read_label(tmp_path / "shifted.nii.gz", reference=ref)
    save_nifti(tmp_path / "small.nii.gz", labels[:-1], AFFINES["oblique"])
    with pytest.raises(ImageReadError, match=r"small\.nii\.gz: label geometry does not match image.*shape"):
        read_label(tmp_path / "small.nii.gz", reference=ref)


def test_read_label_refuses_fractional_values(tmp_path):
    save_nifti(tmp_path / "p.nii.gz", np.full(SHAPE, 0.5, np.float32), np.eye(4))
    with pytest.raises(ImageReadError, match=r"p\.nii\.gz: label volume has non-integer values"):
        read_label(tmp_path / "p.nii.gz")


def test_dicom_seg_round_trip(tmp_path, write_ct_series, hu, labels):
    lm = LabelMap.default()
    write_ct_series(tmp_path / "dcm", hu, AFFINES["oblique"])
    ref = read_image(tmp_path / "dcm")
    out = write_dicom_seg(labels, ref, tmp_path / "seg.dcm", lm)
    seg = hd.seg.segread(out)
    present = [1, 3, 6]
    assert seg.number_of_segments == len(present)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [lm.mask_classes[i] for i in present]
    assert all(d.SegmentAlgorithmName == "UniMed" for d in seg.SegmentSequence)
    sources = [ds.SOPInstanceUID for ds in ref.meta["dicom_datasets"]]
    # Frames come back in source-slice order; segment numbers 1..3 stand for label ids 1, 3, 6.
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources, combine_segments=True, relabel=False)
    expected = np.zeros(SHAPE, np.int64)
    for number, label_id in enumerate(present, start=1):
        expected[labels == label_id] = number
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), expected)


def test_dicom_single_file_reads_its_series(tmp_path, write_ct_series, hu):
    write_ct_series(tmp_path / "dcm", hu, AFFINES["oblique"])
    one = sorted((tmp_path / "dcm").iterdir())[2]
    vol = read_image(one)
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.affine, AFFINES["oblique"], atol=ATOL_MM)


def test_dicom_seg_needs_dicom_reference(tmp_path, labels):
    ref = Volume(np.zeros(SHAPE, np.float32), np.eye(4), tmp_path / "img.nii.gz", {"format": "nifti"})
    with pytest.raises(ValueError, match="needs a reference read from a DICOM series"):
        write_dicom_seg(labels, ref, tmp_path / "seg.dcm", LabelMap.default())
    assert not (tmp_path / "seg.dcm").exists()


def test_write_refuses_input_image_and_unknown_format(tmp_path, labels):
    save_nifti(tmp_path / "img.nii.gz", labels.astype(np.float32), AFFINES["oblique"])
    before = (tmp_path / "img.nii.gz").read_bytes()
    ref = read_image(tmp_path / "img.nii.gz")
    with pytest.raises(ImageWriteError, match=r"img\.nii\.gz: refusing to overwrite the input image"):
        write_label(labels, ref, tmp_path / "sub" / ".." / "img.nii.gz")
    assert (tmp_path / "img.nii.gz").read_bytes() == before
    with pytest.raises(ImageWriteError, match=r"out\.png: unknown label output format"):
        write_label(labels, ref, tmp_path / "out.png")
    with pytest.raises(ValueError, match="label ids \\[9\\] are not in the label map"):
        write_label(np.full(SHAPE, 9, np.int16), ref, tmp_path / "out.nii.gz", LabelMap.default())
    with pytest.raises(ValueError, match="does not match the reference image shape"):
        write_label(labels[:-1], ref, tmp_path / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, labels, monkeypatch):
    ref = Volume(np.zeros(SHAPE, np.float32), AFFINES["oblique"])
    out = write_label(labels, ref, tmp_path / "pred.mha")
    before = out.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_label(np.zeros(SHAPE, np.int16), ref, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.mha"]
