"""Fixtures for the Slicer extension: a real MRML scene (PyPI ``slicer-core``), test weights, an oblique volume.

``slicer-core`` gives Slicer's MRML libraries without Qt, so the scene and module logics are built here the way
the Slicer application builds them, and ``slicer.modules.<name>.logic()`` is provided for ``slicer.util``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from unimed_slicer_helpers import MODULE_DIR, oblique_affine

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

SHAPE = (48, 46, 41)
SPACING = (2.3, 2.4, 2.9)  # extents not whole multiples of the 2 mm working grid (see report)
CASE_SEED = 3


def _module_logics():
    import slicer

    return {
        "colors": slicer.vtkSlicerColorLogic,
        "volumes": slicer.vtkSlicerVolumesLogic,
        "subjecthierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
        "segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
        "markups": slicer.vtkSlicerMarkupsLogic,
        "tables": slicer.vtkSlicerTablesLogic,
    }


@pytest.fixture(scope="module")
def mrml_scene():
    """A scene with Slicer's application logic and the module logics the extension uses."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    modules = {}
    for name, cls in _module_logics().items():
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        modules[name] = types.SimpleNamespace(logic=lambda logic=logic: logic)
    previous = (getattr(slicer, "mrmlScene", None), getattr(slicer, "modules", None))
    slicer.mrmlScene, slicer.modules = scene, types.SimpleNamespace(**modules)
    yield scene
    slicer.mrmlScene, slicer.modules = previous
    scene.Clear(1)


def make_test_weights(path: Path) -> Path:
    """Random weights with sharpened heads so that the plumbing has something to carry.

    Plain random initialisation labels the whole volume with one class and detects nothing; scaling the class
    projection and the mask embedding makes queries confident and masks spatially varied: with this seed
    and volume, ``unimed-infer`` writes a tumour segment, tumour boxes and both image classes.
    """
    import torch

    from unimed_core.model.factory import unimed_small
    from unimed_core.model.weights import save_weights

    torch.manual_seed(3)
    model = unimed_small()
    decoder = model.decomposed_decoder
    with torch.no_grad():
        decoder.class_proj.weight.mul_(10.0)
        decoder.class_proj.bias.zero_()
        last = [m for m in decoder.mask_embed.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(300.0)
        last.bias.mul_(300.0)
    save_weights(model, path)
    return path


@pytest.fixture(scope="session")
def test_weights(tmp_path_factory) -> Path:
    return make_test_weights(tmp_path_factory.mktemp("weights") / "model.pt")


@pytest.fixture(scope="session")
def oblique_case(tmp_path_factory):
    """``(path, case)``: a synthetic CT-like study on an oblique grid, saved as NIfTI."""
    import nibabel as nib

    from unimed_core.data.synthetic import SyntheticConfig, generate_case

    affine = oblique_affine(SHAPE, SPACING)
    case = generate_case(CASE_SEED, SyntheticConfig(shape=SHAPE, spacing=SPACING, orientation=affine))
    path = tmp_path_factory.mktemp("oblique") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.image, case.affine), str(path))
    return path, case
