"""Fixtures for the Slicer extension: a real MRML scene (PyPI ``slicer-core``), the shipped weights, an oblique
study."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from unimed_slicer_helpers import MODULE_DIR, oblique_affine
from unimed_slicer_helpers import mrml_scene as make_mrml_scene

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

# The whole generated field of view (about 384 x 384 x 360 mm), as the shipped model was trained on; extents
# that are not whole multiples of its 6 mm working grid, so that resampling back to this grid is exercised.
SHAPE = (48, 50, 44)
SPACING = (7.9, 7.7, 8.3)
CASE_SEED = 3


@pytest.fixture(scope="module")
def mrml_scene():
    """A real MRML scene with the module logics the extension uses (see ``unimed_slicer_helpers.mrml_scene``)."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core")
    with make_mrml_scene() as scene:
        yield scene


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    """The bundle's trained weights, which the extension uses by default (not skipped: the repository ships them)."""
    from unimed_core.paths import DEFAULT_WEIGHTS

    assert DEFAULT_WEIGHTS.is_file(), f"the shipped weights are missing: {DEFAULT_WEIGHTS}"
    return DEFAULT_WEIGHTS


@pytest.fixture(scope="session")
def oblique_case(tmp_path_factory):
    """``(path, case)``: a synthetic CT-like study on an oblique grid, saved as NIfTI."""
    import nibabel as nib

    from unimed_core.synthetic.case import SyntheticConfig, generate_case

    affine = oblique_affine(SHAPE, SPACING)
    case = generate_case(CASE_SEED, SyntheticConfig(shape=SHAPE, spacing=SPACING, orientation=affine))
    path = tmp_path_factory.mktemp("oblique") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.image, case.affine), str(path))
    return path, case


@pytest.fixture(scope="session")
def permuted_case(tmp_path_factory):
    """``(path, case)``: a synthetic CT-like study whose array axes run P, L, S (a non-identity direction matrix
    without rotation, as scanners write). The shipped model was trained on axis-aligned studies only, so click
    coverage is checked here; the oblique study checks geometry."""
    import nibabel as nib

    from unimed_core.synthetic.case import SyntheticConfig, generate_case

    shape, spacing = (SHAPE[1], SHAPE[0], SHAPE[2]), (SPACING[1], SPACING[0], SPACING[2])
    case = generate_case(CASE_SEED, SyntheticConfig(shape=shape, spacing=spacing, orientation="PLS"))
    path = tmp_path_factory.mktemp("permuted") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.image, case.affine), str(path))
    return path, case
