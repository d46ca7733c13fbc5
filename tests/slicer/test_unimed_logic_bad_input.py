"""UniMedLogic on a volume the model cannot use: the run fails with the command's reason and adds no nodes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from unimed_slicer_helpers import load_volume_node

slicer = pytest.importorskip("slicer")


@pytest.mark.slow  # a unimed-infer subprocess (about 17 s); the CLI tests cover the same refusals quickly
def test_constant_volume_fails_with_the_reason_and_leaves_the_scene_unchanged(mrml_scene, shipped_weights, tmp_path):
    from UniMed import UniMedLogic
    from UniMedLib import InferenceFailed

    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((24, 24, 16), 40.0, np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    node = load_volume_node(path, "flat")
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(InferenceFailed, match="image intensities are constant"):
        UniMedLogic(weights=str(shipped_weights)).process(node, device="cpu")
    assert slicer.mrmlScene.GetNumberOfNodes() == before
