"""Click prompts through UniMedLogic: a point inside a structure gives a segment on the input grid.

With the test weights only the plumbing can be checked (a mask comes back on the right grid and becomes a
segment equal to what the subprocess wrote). Whether the segment *covers* the structure needs trained weights:
that part runs when ``bundle/models/model.pt`` exists and is marked ``slow``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import ndimage
from unimed_slicer_helpers import ijk_to_ras, load_volume_node, segment_image_to_world

slicer = pytest.importorskip("slicer")
nib = pytest.importorskip("nibabel")


def _click_inside(label: np.ndarray, affine: np.ndarray, value: int) -> tuple[np.ndarray, np.ndarray]:
    """The world point deepest inside the largest component of ``value``, and that component."""
    components, count = ndimage.label(label == value)
    if count == 0:
        raise ValueError(f"label {value} is not in the volume")
    sizes = ndimage.sum(np.ones_like(components), components, index=range(1, count + 1))
    structure = components == 1 + int(np.argmax(sizes))
    depth = ndimage.distance_transform_edt(structure)
    ijk = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (affine @ np.array([*ijk, 1.0]))[:3], structure


def _run_click(case_path, case, weights):
    from UniMed import UniMedLogic

    from unimed_core.label_map import LabelMap

    liver = LabelMap.default().class_names.index("liver") + 1
    point, structure = _click_inside(case.label, case.affine, liver)
    node = load_volume_node(case_path, "prompted")
    logic = UniMedLogic(weights=None if weights is None else str(weights))
    result = logic.process(node, positivePoints=[point], device="cpu", keepFiles=True)
    return node, result, structure


def test_click_prompt_gives_a_segment_on_the_input_grid(mrml_scene, oblique_case, test_weights):
    path, case = oblique_case
    node, result, _ = _run_click(path, case, test_weights)
    try:
        written = nib.load(str(result.outputDir / "out" / "input_click.nii.gz"))
        mask = np.asarray(written.dataobj) > 0
        assert mask.shape == case.image.shape
        np.testing.assert_allclose(written.affine, ijk_to_ras(node), atol=1e-3)
        assert mask.any(), "the test weights gave an empty prompt mask: nothing to carry"
        segmentation_node = result.segmentationNode
        segment = segmentation_node.GetSegmentation().GetSegment(result.promptSegmentId)
        assert segment is not None and segment.GetName() == "UniMed prompt 1"
        np.testing.assert_allclose(
            segment_image_to_world(segmentation_node, result.promptSegmentId), ijk_to_ras(node), atol=1e-3
        )
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, result.promptSegmentId, node)
        np.testing.assert_array_equal(array.transpose(2, 1, 0) > 0, mask)
        assert result.tableNode is None and not result.roiNodes
    finally:
        shutil.rmtree(result.outputDir, ignore_errors=True)


@pytest.mark.slow
def test_click_prompt_covers_the_structure_with_trained_weights(mrml_scene, oblique_case):
    from unimed_core.paths import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no trained weights at {DEFAULT_WEIGHTS}")
    path, case = oblique_case
    node, result, structure = _run_click(path, case, None)
    try:
        array = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentationNode, result.promptSegmentId, node)
        mask = array.transpose(2, 1, 0) > 0
        dice = 2 * np.logical_and(mask, structure).sum() / (mask.sum() + structure.sum())
        assert dice >= 0.5, f"Dice {dice:.2f} of the clicked liver"
    finally:
        shutil.rmtree(result.outputDir, ignore_errors=True)
