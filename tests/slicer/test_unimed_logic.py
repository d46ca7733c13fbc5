"""UniMedLogic end to end with Slicer's real MRML libraries: oblique volume node → ``unimed-infer`` subprocess →
segmentation, ROIs and findings table, compared with the command's own output for the same file."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from scipy import ndimage
from unimed_slicer_helpers import ijk_to_ras, load_volume_node, segment_image_to_world

slicer = pytest.importorskip("slicer")
nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def run(mrml_scene, oblique_case, shipped_weights, tmp_path_factory):
    """The Logic's run on the volume node, and ``unimed-infer``'s own run on the original NIfTI."""
    from UniMed import UniMedLogic

    from unimed_core.cli.infer import main as infer_main

    path, case = oblique_case
    node = load_volume_node(path)
    logic = UniMedLogic(weights=str(shipped_weights))
    progress, messages = [], []
    start = time.perf_counter()
    result = logic.process(
        node, device="cpu", progressCallback=lambda f, m: progress.append(f) or messages.append(m), keepFiles=True
    )
    seconds = time.perf_counter() - start
    reference = tmp_path_factory.mktemp("cli")
    assert (
        infer_main(
            [str(path), "--out", str(reference), "--weights", str(shipped_weights), "--device", "cpu", "--quiet"]
        )
        == 0
    )
    labels = nib.load(str(reference / "ct_seg.nii.gz"))
    own = result.outputDir / "out"  # what the Logic's own subprocess wrote for the file it made from the node
    own_labels = nib.load(str(own / "input_seg.nii.gz"))
    yield {
        "node": node,
        "case": case,
        "logic": logic,
        "result": result,
        "progress": progress,
        "messages": messages,
        "seconds": seconds,
        "labels": np.asarray(labels.dataobj).astype(np.int16),
        "labels_affine": labels.affine,
        "boxes": json.loads((reference / "ct_boxes.json").read_text())["detections"],
        "classes": json.loads((reference / "ct_classes.json").read_text())["probabilities"],
        "own_labels": np.asarray(own_labels.dataobj).astype(np.int16),
        "own_affine": own_labels.affine,
        "own_boxes": json.loads((own / "input_boxes.json").read_text())["detections"],
        "own_classes": json.loads((own / "input_classes.json").read_text())["probabilities"],
    }
    shutil.rmtree(result.outputDir, ignore_errors=True)


def test_volume_node_has_the_oblique_geometry(run):
    matrix = ijk_to_ras(run["node"])
    direction = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    assert not np.allclose(direction, np.eye(3), atol=0.1)  # really oblique
    np.testing.assert_allclose(matrix, run["case"].affine, atol=1e-4)
    assert slicer.util.arrayFromVolume(run["node"]).shape == run["case"].image.shape[::-1]


def test_cli_output_is_not_trivial(run):
    """Guards the fixture: otherwise the comparisons below would compare empty things."""
    assert len(np.unique(run["labels"])) >= 2, "the shipped weights gave no segment"
    assert run["boxes"], "the shipped weights gave no detection"
    assert run["classes"]


def test_segments_match_the_cli_output(run):
    """Exactly the labels the subprocess wrote, and (up to float noise at a few boundary voxels) what
    ``unimed-infer`` gives for the original NIfTI: the node → file round trip changes the affine by ~1e-7 mm."""
    from UniMedLib import label_entries

    segmentation_node = run["result"].segmentationNode
    segmentation = segmentation_node.GetSegmentation()
    entries = {e.value: e for e in label_entries()}
    present = sorted(int(v) for v in np.unique(run["labels"]) if v > 0)
    assert present == sorted(int(v) for v in np.unique(run["own_labels"]) if v > 0)
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(names) == sorted(entries[v].name for v in present)
    # the CLI's label volumes are on the input grid with the input affine
    np.testing.assert_allclose(run["labels_affine"], ijk_to_ras(run["node"]), atol=1e-3)
    np.testing.assert_allclose(run["own_affine"], ijk_to_ras(run["node"]), atol=1e-3)
    for value in present:
        segment_id = segmentation.GetSegmentIdBySegmentName(entries[value].name)
        segment = segmentation.GetSegment(segment_id)
        np.testing.assert_allclose(segment.GetColor(), entries[value].color, atol=1e-6)
        np.testing.assert_allclose(
            segment_image_to_world(segmentation_node, segment_id), ijk_to_ras(run["node"]), atol=1e-3
        )
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, run["node"]).transpose(2, 1, 0)
        np.testing.assert_array_equal(mask > 0, run["own_labels"] == value)
        reference = run["labels"] == value
        # "float noise at boundary voxels": every voxel that differs touches the segment's boundary (one voxel in
        # or out of it), and they are few (5 %, or 10 voxels for a small segment)
        differ = np.logical_xor(mask > 0, reference)
        boundary = ndimage.binary_dilation(reference) & ~ndimage.binary_erosion(reference)
        assert not (differ & ~boundary).any(), f"label {value}: voxels away from the boundary differ"
        assert differ.sum() <= max(10, 0.05 * reference.sum()), (
            f"label {value}: {int(differ.sum())} of {int(reference.sum())} voxels differ"
        )


@pytest.mark.parametrize("which", ["own_boxes", "boxes"])
def test_rois_sit_at_the_cli_boxes(run, which):
    rois = run["result"].roiNodes
    assert len(rois) == len(run[which])
    for roi, det in zip(rois, run[which]):
        box = np.asarray(det["box"])
        assert roi.GetName() == f"{det['label']} {det['score']:.2f}"
        centre = [0.0] * 3
        roi.GetCenterWorld(centre)
        size = roi.GetSize()
        np.testing.assert_allclose(centre, (box[:3] + box[3:]) / 2, atol=1e-3)
        np.testing.assert_allclose(size, box[3:] - box[:3], atol=1e-3)
        bounds = [0.0] * 6
        roi.GetBounds(bounds)  # world (xmin, xmax, ymin, ymax, zmin, zmax): the box itself, axis-aligned
        np.testing.assert_allclose(bounds[0::2], box[:3], atol=1e-3)
        np.testing.assert_allclose(bounds[1::2], box[3:], atol=1e-3)


def _brute_force_segment(box, labels, affine, names):
    """Most frequent label among voxel centres inside the world box, by testing every voxel of the volume."""
    ijk = np.stack(np.indices(labels.shape), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = np.all((world >= np.asarray(box[:3]) - 1e-6) & (world <= np.asarray(box[3:]) + 1e-6), axis=1)
    values = labels.reshape(-1)[inside]
    values = values[values > 0]
    if values.size == 0:
        return "", 0.0
    ids, counts = np.unique(values, return_counts=True)
    return names[int(ids[np.argmax(counts)])], counts.max() / inside.sum()


def test_table_rows_match_the_json(run):
    from UniMedLib import label_entries

    table = run["result"].tableNode
    rows = [
        {table.GetColumnName(c): table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())}
        for r in range(table.GetNumberOfRows())
    ]
    classes = [r for r in rows if r["Kind"] == "class"]
    detections = [r for r in rows if r["Kind"] == "detection"]
    assert len(rows) == len(run["own_classes"]) + len(run["own_boxes"]) == len(run["classes"]) + len(run["boxes"])
    assert {r["Label"]: float(r["Score"]) for r in classes} == pytest.approx(run["own_classes"], abs=1e-6)
    assert {r["Label"]: float(r["Score"]) for r in classes} == pytest.approx(run["classes"], abs=1e-4)
    names = {e.value: e.name for e in label_entries()}
    expected = sorted(run["own_boxes"], key=lambda d: -d["score"])
    for row, det in zip(detections, expected):
        box = np.asarray(det["box"])
        assert row["Label"] == det["label"]
        assert float(row["Score"]) == pytest.approx(det["score"], abs=1e-6)
        size = [float(v) for v in row["Size (mm)"].split(" x ")]
        np.testing.assert_allclose(size, box[3:] - box[:3], atol=0.06)
        segment, overlap = _brute_force_segment(box, run["own_labels"], run["own_affine"], names)
        assert row["Segment"] == segment
        assert float(row["Overlap"] or 0) == pytest.approx(overlap, abs=0.006)
        roi = slicer.mrmlScene.GetNodeByID(row["ROI"])
        assert roi is not None and roi.GetName() == f"{det['label']} {det['score']:.2f}"


def test_progress_is_reported_in_order(run):
    progress = run["progress"]
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert all(a <= b for a, b in zip(progress, progress[1:]))
    assert any("%|" in m for m in run["messages"])  # the subprocess' own progress bar came through


def test_segmentation_and_rois_save_and_load_back(run, tmp_path):
    result = run["result"]
    seg_path = tmp_path / "ct.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(seg_path))
    assert storage.WriteData(result.segmentationNode)
    loaded = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(seg_path))
    assert reader.ReadData(loaded)
    original, back = result.segmentationNode.GetSegmentation(), loaded.GetSegmentation()
    assert back.GetNumberOfSegments() == original.GetNumberOfSegments() > 0
    for i in range(original.GetNumberOfSegments()):
        name = original.GetNthSegment(i).GetName()
        back_id = back.GetSegmentIdBySegmentName(name)
        assert back_id, f"segment {name} missing after reload"
        a = slicer.util.arrayFromSegmentBinaryLabelmap(
            result.segmentationNode, original.GetNthSegmentID(i), run["node"]
        )
        b = slicer.util.arrayFromSegmentBinaryLabelmap(loaded, back_id, run["node"])
        np.testing.assert_array_equal(a, b)

    for index, roi in enumerate(result.roiNodes):
        path = tmp_path / f"roi{index}.mrk.json"
        writer = slicer.vtkMRMLMarkupsROIJsonStorageNode()
        writer.SetFileName(str(path))
        assert writer.WriteData(roi)
        back_roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        reader = slicer.vtkMRMLMarkupsROIJsonStorageNode()
        reader.SetFileName(str(path))
        assert reader.ReadData(back_roi)
        # the file keeps geometry, not the node name (Slicer names a loaded node after its file)
        np.testing.assert_allclose(back_roi.GetCenter(), roi.GetCenter(), atol=1e-6)
        np.testing.assert_allclose(back_roi.GetSize(), roi.GetSize(), atol=1e-6)


def test_centering_on_a_row(run):
    result = run["result"]
    table = result.tableNode
    class_row = 0
    detection_row = next(r for r in range(table.GetNumberOfRows()) if table.GetCellText(r, 0) == "detection")
    assert result.segmentationNode is not None
    assert not run["logic"].centerViewsOnRow(table, class_row)
    assert not run["logic"].centerViewsOnRow(table, table.GetNumberOfRows())
    assert run["logic"].centerViewsOnRow(table, detection_row)


def test_cancel_kills_the_run_and_leaves_no_nodes(run, tmp_path):
    from UniMed import UniMedLogic
    from UniMedLib import InferenceCancelled

    before = slicer.mrmlScene.GetNumberOfNodes()
    calls = []
    start = time.perf_counter()
    with pytest.raises(InferenceCancelled):
        UniMedLogic(weights=str(tmp_path / "none.pt")).process(
            run["node"], shouldCancel=lambda: calls.append(1) or len(calls) > 2
        )
    assert time.perf_counter() - start < 10
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def test_bad_arguments(run, mrml_scene):
    from UniMed import UniMedLogic

    logic = UniMedLogic()
    with pytest.raises(ValueError, match="scalar volume"):
        logic.process(None)
    with pytest.raises(ValueError, match="tasks"):
        logic.process(run["node"], tasks=["segment", "paint"])
    with pytest.raises(ValueError, match="RAS"):
        logic.process(run["node"], positivePoints=[[1.0, 2.0]])
