"""DICOM as scanners write it: each case on files the test writes, its geometry checked against ITK's reading.

ITK (SimpleITK's GDCM series reader) is the reference where it reads the files right (regular series, compressed
transfer syntaxes); where it does not (jittered or tilted positions, per-slice rescale), the reference is ITK's
reading of each slice file on its own, which puts every pixel where that file says it is.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import uid as dicom_uid

from unimed_core.data.dicom_seg import write_dicom_seg
from unimed_core.data.dicom_series import DicomNote
from unimed_core.data.image_io import read_image
from unimed_core.errors import ImageReadError
from unimed_core.label_map import LabelMap

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _itk_series(folder, series_uid=None):
    """ITK's own reading of a series: (array [i, j, k], voxel → RAS affine)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_uid or ""))
    with warnings.catch_warnings():
        img = reader.Execute()
    return _itk_volume(img)


def _itk_volume(img):
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), LPS @ lps


def _itk_files(folder):
    """ITK's reading of each file on its own: [(pixels [i, j], voxel → RAS affine of that slice)]."""
    return [_itk_volume(sitk.ReadImage(str(f))) for f in sorted(folder.glob("*.dcm"))]


def _positions(affine_ras, n, normal_offsets=None, inplane_mm=0.0):
    """LPS ImagePositionPatient of ``n`` slices: the affine's, moved along the normal and along j by request."""
    lps = LPS @ affine_ras
    normal = lps[:3, 2] / np.linalg.norm(lps[:3, 2])
    col = lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    extra = np.zeros(n) if normal_offsets is None else np.asarray(normal_offsets)
    return [lps[:3, 3] + k * lps[:3, 2] + extra[k] * normal + k * inplane_mm * col for k in range(n)]


@pytest.fixture
def ramp():
    """(8, 6, 20) CT values linear in i and in the slice index; affine with 1.5 mm pixels and 7 mm slices."""
    i, _, k = np.meshgrid(np.arange(8), np.arange(6), np.arange(20), indexing="ij")
    return (10.0 * i + 30.0 * k - 500.0), np.diag([1.5, 1.5, 7.0, 1.0])


def test_regular_series_matches_itk(tmp_path, write_ct_series, ramp):
    hu, affine = ramp
    write_ct_series(tmp_path / "dcm", hu, affine)
    vol = read_image(tmp_path / "dcm")
    itk_array, itk_affine = _itk_series(tmp_path / "dcm")
    np.testing.assert_allclose(vol.affine, itk_affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, itk_array)
    assert vol.array.dtype == np.int16 and "dicom_resampled" not in vol.meta


def test_jittered_positions_are_resampled_with_a_note(tmp_path, write_ct_series, ramp):
    hu, affine = ramp
    # steps of 6.93 to 7.07 mm, as the MR series: +-1 % of the 7 mm spacing
    jitter = np.random.default_rng(0).uniform(-0.035, 0.035, 20)
    jitter[[0, -1]] = 0
    z_true = 7.0 * np.arange(20) + jitter
    slices = 10.0 * np.arange(8)[:, None, None] + 30.0 * z_true[None, None, :] / 7.0 - 500.0  # linear in true z
    rescale = [(0.05, -600.0)] * 20  # 0.05 HU steps keep the ramp exact to 0.025
    write_ct_series(
        tmp_path / "dcm",
        np.broadcast_to(slices, (8, 6, 20)),
        affine,
        positions=_positions(affine, 20, jitter),
        rescale=rescale,
    )
    with pytest.warns(
        DicomNote, match=r"slice positions jitter by up to 0\.0[0-9]+ mm .*resampled onto a regular grid"
    ):
        vol = read_image(tmp_path / "dcm")
    files = _itk_files(tmp_path / "dcm")
    # the grid: first slice's origin and in-plane axes (as ITK reads the file), slices every (last - first) / 19 mm
    np.testing.assert_allclose(vol.affine[:3, :2], files[0][1][:3, :2], atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 3], files[0][1][:3, 3], atol=1e-6)
    step = (files[-1][1][:3, 3] - files[0][1][:3, 3]) / 19
    np.testing.assert_allclose(vol.affine[:3, 2], step, atol=1e-6)
    # linear interpolation between the two nearest slices reproduces the ramp at the regular positions
    expected = np.broadcast_to(10.0 * np.arange(8)[:, None, None] + 30.0 * np.arange(20) - 500.0, (8, 6, 20))
    np.testing.assert_allclose(vol.array, expected, atol=0.03)
    assert vol.meta["dicom_resampled"].startswith("slice positions jitter")


def test_gap_is_refused_naming_the_missing_position_and_uneven_steps_too(tmp_path, write_ct_series, ramp):
    hu, affine = ramp
    write_ct_series(tmp_path / "gap", hu, affine, skip=(5, 6))
    with pytest.raises(
        ImageReadError,
        match=re.escape(str(tmp_path / "gap"))
        + r": missing slices .*2 slice\(s\) of the 7 mm spacing absent at 35\.00, 42\.00 mm",
    ):
        read_image(tmp_path / "gap")
    offsets = np.zeros(20)
    offsets[10:] = 3.0  # one step of 10 mm among steps of 7 mm: neither jitter nor a missing slice
    write_ct_series(tmp_path / "uneven", hu, affine, positions=_positions(affine, 20, offsets))
    with pytest.raises(ImageReadError, match="unevenly spaced slices .* from 7 to 10 mm"):
        read_image(tmp_path / "uneven")
    write_ct_series(tmp_path / "dup", hu[:, :, :4], affine, positions=[_positions(affine, 4)[k] for k in (0, 1, 1, 2)])
    with pytest.raises(ImageReadError, match="1 duplicate slice positions"):
        read_image(tmp_path / "dup")


def test_gantry_tilt_is_resampled_so_every_pixel_stays_where_its_file_says(tmp_path, write_ct_series):
    hu = np.random.default_rng(1).integers(-200, 200, size=(6, 8, 5)).astype(float)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    # each slice 1 mm further along j than the one before over a 2 mm step: atan(1 / 2) = 26.57 degrees
    write_ct_series(tmp_path / "dcm", hu, affine, positions=_positions(affine, 5, inplane_mm=1.0), tilt=26.565)
    with pytest.warns(DicomNote, match=r"tilted by 26\.57 degrees \(gantry tilt 26\.565"):
        vol = read_image(tmp_path / "dcm")
    assert vol.shape == (6, 8 + 4, 5)
    inverse = np.linalg.inv(vol.affine)
    for k, (pixels, slice_affine) in enumerate(_itk_files(tmp_path / "dcm")):
        ijk = np.argwhere(np.ones(pixels.shape[:2], bool))
        world = np.c_[ijk, np.zeros(len(ijk)), np.ones(len(ijk))] @ slice_affine.T
        ours = world @ inverse.T
        np.testing.assert_allclose(ours[:, :3], np.rint(ours[:, :3]), atol=1e-6)  # on our grid
        idx = np.rint(ours[:, :3]).astype(int)
        np.testing.assert_allclose(
            vol.array[idx[:, 0], idx[:, 1], idx[:, 2]], pixels[ijk[:, 0], ijk[:, 1], 0], atol=1e-3
        )
        assert k == idx[0, 2]
    # the grid is orthogonal: slices perpendicular to the normal, as the model's resampling expects
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-9)


def test_rescale_slope_and_intercept_of_each_slice(tmp_path, write_ct_series, ramp):
    hu, affine = ramp
    hu = 2 * np.round(hu / 2)  # even values: exact with every slope below
    rescale = [((0.5, -1024.0), (1.0, -1000.0), (2.0, -2048.0))[k % 3] for k in range(20)]
    write_ct_series(tmp_path / "dcm", hu, affine, rescale=rescale)
    vol = read_image(tmp_path / "dcm")
    np.testing.assert_array_equal(vol.array, hu)
    per_file = np.stack([pixels[:, :, 0] for pixels, _ in _itk_files(tmp_path / "dcm")], axis=-1)
    np.testing.assert_array_equal(vol.array, per_file)  # ITK applies each file's own rescale when read alone


TRANSFER_SYNTAXES = {
    "RLE": dicom_uid.RLELossless,
    "JPEG-LS lossless": dicom_uid.JPEGLSLossless,
    "JPEG 2000 lossless": dicom_uid.JPEG2000Lossless,
    "JPEG lossless": dicom_uid.JPEGLosslessSV1,
    "JPEG baseline": dicom_uid.JPEGBaseline8Bit,
}


@pytest.mark.parametrize("syntax", list(TRANSFER_SYNTAXES))
def test_compressed_transfer_syntaxes_decode_like_itk(tmp_path, write_ct_series, syntax):
    i, j, k = np.meshgrid(np.arange(40), np.arange(36), np.arange(3), indexing="ij")
    hu = (2 * i + 3 * j + 20 * k).astype(float)  # openjpeg needs frames of 32 pixels or more
    if syntax != "JPEG baseline":
        hu -= 300.0
    rescale = [(1.0, 0.0)] * 3 if syntax == "JPEG baseline" else None
    affine = np.array([[0.8, 0.1, 0, -20], [-0.1, 0.8, 0, 10], [0, 0, 2.5, 30], [0, 0, 0, 1.0]])
    write_ct_series(tmp_path / "dcm", hu, affine, rescale=rescale, transfer_syntax=TRANSFER_SYNTAXES[syntax])
    vol = read_image(tmp_path / "dcm")
    itk_array, itk_affine = _itk_series(tmp_path / "dcm")
    np.testing.assert_allclose(vol.affine, itk_affine, atol=1e-5)
    if syntax == "JPEG baseline":  # lossy: two decoders may round the inverse DCT differently
        assert np.abs(vol.array.astype(float) - itk_array).max() <= 2
        assert np.abs(vol.array.astype(float) - hu).mean() < 2
    else:
        np.testing.assert_array_equal(vol.array, itk_array)
        np.testing.assert_array_equal(vol.array, hu)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_multi_frame_enhanced_reads_like_its_single_frame_series(tmp_path, write_ct_series, ramp, modality):
    import highdicom as hd
    import pydicom

    hu, affine = ramp
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))  # oblique: 10 degrees about x
    affine = np.array([[1, 0, 0, 5], [0, c, -s, -3], [0, s, c, 40], [0, 0, 0, 1.0]]) @ np.diag([1.5, 1.5, 7.0, 1.0])
    write_ct_series(tmp_path / "single", hu, affine, modality=modality)
    legacy = [pydicom.dcmread(f) for f in sorted((tmp_path / "single").glob("*.dcm"))]
    convert = hd.legacy.LegacyConvertedEnhancedCTImage if modality == "CT" else hd.legacy.LegacyConvertedEnhancedMRImage
    enhanced = convert(
        legacy, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1
    )
    (tmp_path / "multi").mkdir()
    enhanced.save_as(tmp_path / "multi" / "enhanced.dcm")
    vol = read_image(tmp_path / "multi")
    single = read_image(tmp_path / "single")
    itk_array, itk_affine = _itk_series(tmp_path / "single")
    np.testing.assert_allclose(vol.affine, itk_affine, atol=1e-4)
    np.testing.assert_allclose(vol.affine, single.affine, atol=1e-4)
    np.testing.assert_array_equal(vol.array, itk_array)
    assert vol.meta["modality"] == modality and vol.shape == (8, 6, 20)


def test_several_series_are_listed_and_one_is_chosen(tmp_path, write_ct_series, ramp):
    hu, affine = ramp
    ct = write_ct_series(tmp_path / "dcm", hu, affine, description="Abdomen 7mm")
    mr = write_ct_series(tmp_path / "dcm", hu[:, :, :12], affine, modality="MR", description="T2 axial")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "dcm")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'dcm'}: folder holds 2 DICOM series")
    assert f"{ct} (CT, 'Abdomen 7mm', 8 x 6 x 20)" in message and f"{mr} (MR, 'T2 axial', 8 x 6 x 12)" in message
    assert "--series UID" in message
    chosen = read_image(tmp_path / "dcm", series_uid=mr)
    assert chosen.shape == (8, 6, 12) and chosen.meta["modality"] == "MR"


def test_non_image_objects_are_skipped_with_a_note_each(tmp_path, write_ct_series, ramp):
    from pydicom.dataset import FileDataset, FileMetaDataset

    hu, affine = ramp
    series = write_ct_series(tmp_path / "dcm", hu, affine)
    reference = read_image(tmp_path / "dcm")
    labels = np.zeros(reference.shape, np.int16)
    labels[2:5, 2:4, 3:9] = 1
    write_dicom_seg(labels, reference, tmp_path / "seg.dcm", LabelMap.default())
    (tmp_path / "seg.dcm").rename(tmp_path / "dcm" / "seg.dcm")
    for name, sop in (
        ("sr.dcm", dicom_uid.BasicTextSRStorage),
        ("gsps.dcm", dicom_uid.GrayscaleSoftcopyPresentationStateStorage),
    ):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, dicom_uid.generate_uid()
        meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
        ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = dicom_uid.generate_uid(), "SR" if "SR" in name else "PR"
        ds.save_as(tmp_path / "dcm" / name, enforce_file_format=True)
    (tmp_path / "dcm" / "README.txt").write_text("exported by PACS")
    with pytest.warns(DicomNote) as notes:
        vol = read_image(tmp_path / "dcm")
    text = " | ".join(str(n.message) for n in notes)
    for expected in (
        "seg.dcm skipped: not an image (Segmentation Storage)",
        "sr.dcm skipped: not an image (Basic Text SR",
        "gsps.dcm skipped: not an image (Grayscale Softcopy Presentation State",
        "README.txt skipped: not a readable DICOM",
    ):
        assert expected in text
    assert vol.meta["series_uid"] == series
    np.testing.assert_array_equal(vol.array, reference.array)


@pytest.mark.parametrize("source", ["tilted", "multi-frame"])
def test_dicom_seg_on_a_grid_that_is_not_the_source_slices(tmp_path, write_ct_series, source):
    import highdicom as hd
    import pydicom

    hu = np.random.default_rng(2).integers(-200, 200, size=(6, 8, 5)).astype(float)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    if source == "tilted":
        write_ct_series(tmp_path / "dcm", hu, affine, positions=_positions(affine, 5, inplane_mm=1.0))
        with pytest.warns(DicomNote):
            vol = read_image(tmp_path / "dcm")
    else:
        write_ct_series(tmp_path / "single", hu, affine)
        legacy = [pydicom.dcmread(f) for f in sorted((tmp_path / "single").glob("*.dcm"))]
        (tmp_path / "dcm").mkdir()
        enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
            legacy, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1
        )
        enhanced.save_as(tmp_path / "dcm" / "enhanced.dcm")
        vol = read_image(tmp_path / "dcm")
    labels = np.zeros(vol.shape, np.int16)
    labels[1:4, 2:7, 1:4] = LabelMap.default().mask_classes_by_name()["liver"]
    write_dicom_seg(labels, vol, tmp_path / "seg.dcm", LabelMap.default())
    seg = hd.seg.segread(tmp_path / "seg.dcm").get_volume(combine_segments=True)
    # the SEG's frames lie where the mask's voxels are: same world position of each labelled voxel
    lps = np.asarray(seg.affine)[:, [2, 1, 0, 3]]
    ours = np.argwhere(labels > 0)
    theirs = np.argwhere(np.asarray(seg.array).transpose(2, 1, 0) > 0)
    world = lambda a, ijk: np.c_[ijk, np.ones(len(ijk))] @ a.T  # noqa: E731
    np.testing.assert_allclose(
        np.sort(world(LPS @ vol.affine, ours)[:, :3], axis=0), np.sort(world(lps, theirs)[:, :3], axis=0), atol=1e-4
    )


def test_damaged_compressed_pixel_data_names_the_file_and_the_transfer_syntax(tmp_path, write_ct_series):
    import pydicom

    hu = np.zeros((40, 36, 3))
    write_ct_series(tmp_path / "dcm", hu, np.eye(4), transfer_syntax=dicom_uid.JPEG2000Lossless)
    broken = sorted((tmp_path / "dcm").glob("*.dcm"))[1]
    ds = pydicom.dcmread(broken)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 40])  # a J2K start marker and nothing usable
    ds.save_as(broken)
    with pytest.raises(
        ImageReadError, match=rf"cannot decode the pixel data of {broken.name} \(transfer syntax JPEG 2000"
    ):
        read_image(tmp_path / "dcm")
