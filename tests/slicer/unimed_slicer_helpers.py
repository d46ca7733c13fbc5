"""Helpers shared by the Slicer extension tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_extension" / "UniMed"

__all__ = [
    "MODULE_DIR",
    "mrml_scene",
    "oblique_affine",
    "load_volume_node",
    "ijk_to_ras",
    "segment_image_to_world",
    "on_grid",
]


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


@contextmanager
def mrml_scene():
    """A scene with Slicer's application logic and the module logics the extension uses.

    ``slicer-core`` gives Slicer's MRML libraries without Qt, so the scene and module logics are built here the way
    the Slicer application builds them, and ``slicer.mrmlScene`` / ``slicer.modules.<name>.logic()`` are set for
    ``slicer.util`` while the context lasts.
    """
    import slicer

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
    try:
        yield scene
    finally:
        slicer.mrmlScene, slicer.modules = previous
        scene.Clear(1)


def load_volume_node(path: Path, name: str = "ct"):
    """Load a volume file into a scalar volume node with the Volumes module logic (as File > Add Data does)."""
    import slicer

    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name)
    if node is None:
        raise OSError(f"cannot load {path}")
    return node


def ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def segment_image_to_world(segmentation_node, segment_id: str) -> np.ndarray:
    """The voxel → RAS matrix of a segment's internal binary labelmap."""
    import slicer
    import vtk

    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def oblique_affine(shape, spacing) -> np.ndarray:
    """Voxel → RAS with a rotation about all three axes, centred on the world origin."""
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [15, -10, 25], degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def on_grid(mask: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape) -> np.ndarray:
    """``mask`` sampled at the voxels of another grid covering the same voxels (axes permuted or reversed)."""
    ijk = np.indices(shape).reshape(3, -1)
    world = target_affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    source = np.rint(np.linalg.inv(affine) @ world)[:3].astype(int)
    return mask[tuple(source)].reshape(shape)
