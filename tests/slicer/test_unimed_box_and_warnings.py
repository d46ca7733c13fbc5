"""A markups ROI as a box prompt, and warnings on an unfamiliar scan, through UniMedLogic on real MRML nodes.

With the shipped weights (the extension's default). The box test checks the plumbing (ROI node → world box →
``--box`` → mask on the input grid → segment) and a loose Dice bound: today's value is in docs/reliability.md and
changes with every retraining.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from unimed_slicer_helpers import ijk_to_ras, load_volume_node, on_grid

slicer = pytest.importorskip("slicer")
nib = pytest.importorskip("nibabel")
BOX_DICE = 0.5


def _liver_roi(case):
    """A markups ROI node around the case's liver (world RAS), and the liver mask."""
    from unimed_core.data.boxes import voxel_to_world_boxes
    from unimed_core.label_map import LabelMap

    liver = case.label == LabelMap.default().mask_classes_by_name()["liver"]
    idx = np.argwhere(liver)
    box = voxel_to_world_boxes(np.array([[*idx.min(0), *(idx.max(0) + 1)]], float), case.affine)[0]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "liver box")
    roi.SetCenter(*((box[:3] + box[3:]) / 2))
    roi.SetSize(*(box[3:] - box[:3]))
    return roi, box, liver


def test_a_markups_roi_becomes_a_box_prompt_and_its_result_a_segment(mrml_scene, permuted_case):
    from UniMed import UniMedLogic

    path, case = permuted_case
    node = load_volume_node(path, "boxed")
    roi, box, liver = _liver_roi(case)
    assert UniMedLogic._boxInVolumeSpace(node, roi) == pytest.approx(tuple(box), abs=1e-4)
    result = UniMedLogic().process(node, roi=roi, device="cpu", keepFiles=True)
    try:
        written = nib.load(str(result.outputDir / "out" / "input_box.nii.gz"))
        mask = np.asarray(written.dataobj) > 0
        np.testing.assert_allclose(written.affine, ijk_to_ras(node), atol=1e-3)
        segmentation = result.segmentationNode
        segment = segmentation.GetSegmentation().GetSegment(result.promptSegmentId)
        assert segment is not None and segment.GetName().startswith("UniMed prompt")
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, result.promptSegmentId, node)
        np.testing.assert_array_equal(array.transpose(2, 1, 0) > 0, mask)
        assert result.tableNode is None and not result.roiNodes
        found = on_grid(mask, written.affine, case.affine, liver.shape)
        dice = 2 * np.logical_and(found, liver).sum() / (found.sum() + liver.sum())
        assert dice >= BOX_DICE, f"box Dice {dice:.2f}"
    finally:
        shutil.rmtree(result.outputDir, ignore_errors=True)
        slicer.mrmlScene.RemoveNode(roi)


def test_warnings_on_an_unfamiliar_scan_reach_the_table_and_the_status(mrml_scene, permuted_case, tmp_path):
    """A 100 mm slab of the study (the training scans span 360 mm along S): results, a warning row, a status."""
    from UniMed import UniMedLogic

    path, case = permuted_case
    spacing = float(np.linalg.norm(case.affine[:3, 2]))
    k, half = case.image.shape[2] // 2, int(round(50 / spacing))
    affine = case.affine.copy()
    affine[:3, 3] = case.affine[:3, :3] @ np.array([0, 0, k - half]) + case.affine[:3, 3]
    nib.save(nib.Nifti1Image(case.image[:, :, k - half : k + half], affine), str(tmp_path / "slab.nii.gz"))
    node = load_volume_node(tmp_path / "slab.nii.gz", "slab")
    messages = []
    result = UniMedLogic().process(node, device="cpu", progressCallback=lambda f, m: messages.append(m))
    assert [w["signal"] for w in result.warnings] == ["region"]
    table = result.tableNode
    kinds = [table.GetCellText(r, table.GetColumnIndex("Kind")) for r in range(table.GetNumberOfRows())]
    assert kinds[0] == "warning" and "class" in kinds  # the results are still there
    label = table.GetCellText(0, table.GetColumnIndex("Label"))
    assert label.startswith("region: the body region or field of view") and "along S" in label
    assert messages[-1] == result.statusMessage and messages[-1].startswith("Done, with warnings: region:")
