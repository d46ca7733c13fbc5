"""Output files of one prediction: NIfTI, Slicer .seg.nrrd, DICOM SEG (DICOM input only), boxes and classes JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import slicerio

from unimed_core.data.image_io import Volume, read_image
from unimed_core.inference.predictor import Prediction
from unimed_core.inference.writers import case_name, markups_roi_document, write_prediction
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible

LM = LabelMap.default()
SHAPE = (12, 10, 8)
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, -2.5, 0, 40.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])  # LPS-stored


def _load_series_writer():
    """The DICOM series writer of tests/data/conftest.py (a fixture there; imported here by path)."""
    spec = importlib.util.spec_from_file_location("_data_conftest", Path(__file__).parents[1] / "data" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._write_ct_series


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[2:8, 2:7, 1:6] = 1
    labels[3:5, 3:5, 2:4] = 6
    labels[9:11, 6:9, 5:7] = 2
    return labels


def _prediction(affine: np.ndarray) -> Prediction:
    boxes = np.array([[1.0, 2.0, -40.0, 9.0, 12.0, -31.0], [-5.0, 20.0, -45.0, 3.0, 24.5, -42.0]])
    return Prediction(
        labels=_labels(),
        affine=affine.copy(),
        boxes=boxes,
        box_labels=["tumor", "cyst"],
        box_scores=np.array([0.9, 0.45]),
        class_probabilities={"cyst": 0.25, "tumor": 0.75},
    )


@pytest.fixture
def nifti_volume(tmp_path) -> Volume:
    rng = np.random.default_rng(0)
    path = save_nifti_reproducible(rng.normal(0, 100, SHAPE).astype(np.float32), AFFINE, tmp_path / "in" / "ct.nii.gz")
    return read_image(path)


def test_case_name():
    assert case_name("/a/ct.nii.gz") == "ct"
    assert case_name("/a/b.seg.nrrd") == "b"
    assert case_name(Path("/a/dicom_folder")) == "dicom_folder"
    assert case_name(None) == "volume"


def test_write_prediction_writes_every_file_atomically(tmp_path, nifti_volume):
    prediction = _prediction(nifti_volume.affine)
    out = tmp_path / "out"
    written = write_prediction(prediction, nifti_volume, out, LM)
    assert set(written) == {"label_nifti", "label_seg_nrrd", "boxes_json", "boxes_markups", "classes_json"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written.values())  # no temp files
    assert written["label_nifti"].name == "ct_seg.nii.gz"

    img = nib.load(written["label_nifti"])
    np.testing.assert_allclose(img.affine, nifti_volume.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), prediction.labels)

    seg = slicerio.read_segmentation(str(written["label_seg_nrrd"]))
    names = {s["labelValue"]: s["name"] for s in seg["segments"]}
    assert names == {i: n for i, n in LM.mask_classes.items() if i != 0}
    np.testing.assert_array_equal(seg["voxels"], prediction.labels)

    boxes = json.loads(written["boxes_json"].read_text())
    assert "RAS" in boxes["coordinates"] and boxes["image"] == str(nifti_volume.path)
    np.testing.assert_allclose([d["box"] for d in boxes["detections"]], prediction.boxes)
    assert [d["label"] for d in boxes["detections"]] == prediction.box_labels
    assert [d["score"] for d in boxes["detections"]] == pytest.approx(prediction.box_scores.tolist())

    classes = json.loads(written["classes_json"].read_text())
    assert classes["probabilities"] == prediction.class_probabilities


def test_markups_has_one_roi_per_detection(tmp_path, nifti_volume):
    prediction = _prediction(nifti_volume.affine)
    written = write_prediction(prediction, nifti_volume, tmp_path, LM, name="case")
    document = json.loads(written["boxes_markups"].read_text())
    assert document == markups_roi_document(prediction, LM)
    markups = document["markups"]
    assert len(markups) == len(prediction.boxes)
    for roi, box, label in zip(markups, prediction.boxes, prediction.box_labels):
        assert roi["type"] == "ROI" and roi["coordinateSystem"] == "RAS"
        np.testing.assert_allclose(roi["center"], (box[:3] + box[3:]) / 2)
        np.testing.assert_allclose(roi["size"], box[3:] - box[:3])
        assert roi["name"].startswith(label)
    assert markups_roi_document(Prediction(_labels(), AFFINE), LM)["markups"] == []


def test_labels_of_the_wrong_shape_are_refused(tmp_path, nifti_volume):
    prediction = _prediction(nifti_volume.affine)
    prediction.labels = prediction.labels[:-1]
    with pytest.raises(ValueError, match="does not match the reference image shape"):
        write_prediction(prediction, nifti_volume, tmp_path / "out", LM)


def test_dicom_seg_only_for_dicom_input(tmp_path):
    write_series = _load_series_writer()
    rng = np.random.default_rng(1)
    ras = np.diag([2.0, 2.5, 3.0, 1.0])
    write_series(tmp_path / "dicom", rng.integers(-200, 200, SHAPE).astype(np.int16), ras)
    volume = read_image(tmp_path / "dicom")
    assert volume.shape == SHAPE
    written = write_prediction(_prediction(volume.affine), volume, tmp_path / "out", LM)
    assert written["label_dicom_seg"].name == "dicom_seg.dcm"
    ds = pydicom.dcmread(written["label_dicom_seg"])
    assert ds.Modality == "SEG"
    assert ds.SeriesInstanceUID != volume.meta["series_uid"]
    present = {int(v) for v in np.unique(_labels()) if v}
    labels = {str(s.SegmentLabel) for s in ds.SegmentSequence}
    assert {LM.mask_classes[i] for i in present} <= labels
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written.values())


def _dicom_prediction(tmp_path):
    write_series = _load_series_writer()
    rng = np.random.default_rng(2)
    ras = np.array([[2.0, 0, 0, -10.0], [0, 2.5, 0, 5.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])
    write_series(tmp_path / "dicom", rng.integers(-200, 200, SHAPE).astype(np.int16), ras)
    volume = read_image(tmp_path / "dicom")
    prediction = _prediction(volume.affine)
    return volume, prediction, write_prediction(prediction, volume, tmp_path / "out", LM)


def _code(item) -> tuple[str, str, str]:
    return (str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning))


def test_dicom_seg_segments_carry_the_label_maps_codes(tmp_path):
    _, _, written = _dicom_prediction(tmp_path)
    ds = pydicom.dcmread(written["label_dicom_seg"])
    assert len(ds.SegmentSequence) == 3
    for item in ds.SegmentSequence:
        codes = LM.codes(str(item.SegmentLabel))
        assert _code(item.SegmentedPropertyCategoryCodeSequence[0]) == codes["category"]
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert _code(prop) == codes["type"]
        if "typeModifier" in codes:
            assert _code(prop.SegmentedPropertyTypeModifierCodeSequence[0]) == codes["typeModifier"]
    assert {"SCT"} == {str(i.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) for i in ds.SegmentSequence}


def test_seg_nrrd_segments_carry_slicer_terminology(tmp_path, nifti_volume):
    written = write_prediction(_prediction(nifti_volume.affine), nifti_volume, tmp_path / "out", LM)
    segments = {s["name"]: s for s in slicerio.read_segmentation(str(written["label_seg_nrrd"]))["segments"]}
    for name, segment in segments.items():
        codes = LM.codes(name)
        terminology = segment["terminology"]
        assert tuple(terminology["category"]) == codes["category"] and tuple(terminology["type"]) == codes["type"]
        assert tuple(terminology.get("typeModifier", ())) == codes.get("typeModifier", ("", "", "")) or (
            "typeModifier" not in codes
        )
    assert tuple(segments["kidney_left"]["terminology"]["typeModifier"]) == ("SCT", "7771000", "Left")


def test_dicom_sr_holds_every_finding_and_references_series_and_seg(tmp_path):
    import highdicom as hd

    volume, prediction, written = _dicom_prediction(tmp_path)
    assert written["findings_dicom_sr"].name == "dicom_sr.dcm"
    sr = hd.sr.srread(written["findings_dicom_sr"])
    seg = pydicom.dcmread(written["label_dicom_seg"])
    source = volume.meta["dicom_datasets"]
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == source[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in {volume.meta["series_uid"], seg.SeriesInstanceUID}
    evidence = {
        str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
    }
    assert evidence[volume.meta["series_uid"]] == {str(d.SOPInstanceUID) for d in source}
    assert evidence[str(seg.SeriesInstanceUID)] == {str(seg.SOPInstanceUID)}

    report = hd.sr.MeasurementReport.from_sequence([sr])
    image_groups = report.get_image_measurement_groups()
    found = {}
    for group in image_groups:
        (measurement,) = group.get_measurements()
        found[str(group.finding_type.meaning)] = measurement.value
    expected = {LM.codes(k)["type"][2]: v for k, v in prediction.class_probabilities.items()}
    assert found == pytest.approx(expected)

    volumetric = report.get_volumetric_roi_measurement_groups()
    boxes = [g for g in volumetric if g.roi is not None]
    assert len(boxes) == len(prediction.boxes)
    for group, det in zip(boxes, prediction.detections()):
        assert str(group.finding_type.meaning) == LM.codes(det["label"])["type"][2]
        assert group.get_measurements()[0].value == pytest.approx(det["score"])
        assert group.roi.frame_of_reference_uid == source[0].FrameOfReferenceUID
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.POLYGON
        points = np.concatenate(group.roi.graphic_data)  # two closed polygons, LPS mm
        ras = points * np.array([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(ras.min(0), det["box"][:3], atol=1e-3)
        np.testing.assert_allclose(ras.max(0), det["box"][3:], atol=1e-3)
    segments = [g for g in volumetric if g.roi is None]
    assert len(segments) == len(seg.SegmentSequence)
    voxel_mm3 = abs(np.linalg.det(volume.affine[:3, :3]))
    for group, item in zip(segments, seg.SegmentSequence):
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_segment_numbers == [item.SegmentNumber]
        assert str(group.finding_type.meaning) == LM.codes(str(item.SegmentLabel))["type"][2]
        label_id = LM.mask_classes_by_name()[str(item.SegmentLabel)]
        assert group.get_measurements()[0].value == pytest.approx((_labels() == label_id).sum() * voxel_mm3)


def test_dicom_sr_and_seg_pass_dciodvfy(tmp_path):
    """dicom3tools' validator (Debian ``dicom3tools``, installed by ``.ci/run``) finds no error in either object."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools); highdicom's own checks ran above")
    _, _, written = _dicom_prediction(tmp_path)
    for kind in ("findings_dicom_sr", "label_dicom_seg"):
        run = subprocess.run(["dciodvfy", str(written[kind])], capture_output=True, text=True, timeout=60)
        report = (run.stdout + run.stderr).splitlines()
        assert report and report[0] in ("Comprehensive3DSR", "Segmentation"), report
        errors = [line for line in report if line.startswith("Error")]
        assert not errors, f"{kind}: {errors}"
