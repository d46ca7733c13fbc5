"""Write a label volume as a DICOM Segmentation object (highdicom) referencing its source DICOM series.

The reference must be a :class:`~unimed_core.data.image_io.Volume` read from DICOM. When its grid is the
series' own slices, ``meta["dicom_datasets"]`` holds the series' datasets in slice order ``k`` (``read_image``
keeps them), so that frame ``k`` of the SEG is ``labels[:, :, k]`` on source image ``k``. When it is not (slices
resampled for jitter or gantry tilt, a multi-frame source), ``meta["dicom_source_datasets"]`` are the sources
referenced and each frame carries its own position, computed from the volume's affine. Segment numbers are 1..S
in order of label id; each segment's label is the class name of the label map.
Each segment's category, type and type modifier are the class's coded terminology in the label map
(``LabelMap.codes``: SNOMED CT in the bundle's ``metadata.json``), or "Tissue" for a label map without codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unimed_core.data.atomic import atomic_write
from unimed_core.errors import ImageWriteError
from unimed_core.label_map import LabelMap

if TYPE_CHECKING:
    from unimed_core.data.image_io import Volume

__all__ = [
    "write_dicom_seg",
    "build_dicom_seg",
    "has_dicom_source",
    "class_codes",
    "software_version",
    "ALGORITHM_NAME",
]

ALGORITHM_NAME = "UniMed"


def class_codes(label_map: LabelMap, name: str) -> dict:
    """pydicom ``Code`` s of class ``name`` from the label map: ``category``, ``type`` and ``typeModifier`` (when
    declared); SNOMED CT "Tissue" for both of the first two when the label map has no codes for it."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    declared = label_map.codes(name)
    if declared is None:
        return {"category": codes.SCT.Tissue, "type": codes.SCT.Tissue}
    return {k: Code(value, scheme, meaning) for k, (scheme, value, meaning) in declared.items()}


def software_version() -> str:
    """The installed ``unimed_core`` version ("unknown" in a checkout that is not pip-installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("unimed_core")
    except PackageNotFoundError:  # running from a checkout that is not pip-installed
        return "unknown"


def has_dicom_source(reference: Volume) -> bool:
    """Whether ``reference`` was read from DICOM datasets that a DICOM SEG can reference."""
    return bool(reference.meta.get("dicom_datasets") or reference.meta.get("dicom_source_datasets"))


def _frames_on_own_grid(numbered: np.ndarray, reference: Volume, datasets) -> object:
    """The SEG frames as a highdicom Volume with the reference's geometry, for grids that are not the sources'."""
    import highdicom as hd

    # highdicom indexes (slice, row, column) and works in LPS; UniMed (i = column, j = row, k = slice) in RAS
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ reference.affine
    return hd.Volume(
        numbered.transpose(2, 1, 0),
        lps[:, [2, 1, 0, 3]],
        coordinate_system="PATIENT",
        frame_of_reference_uid=str(getattr(datasets[0], "FrameOfReferenceUID", "")) or None,
    )


def write_dicom_seg(
    labels: np.ndarray,
    reference: Volume,
    path: str | Path,
    label_map: LabelMap,
    series_description: str = "UniMed segmentation",
) -> Path:
    """Write ``labels`` as a binary DICOM SEG, one segment per label id present, atomically.

    Args:
        labels: non-negative integer array with ``reference.shape``; 0 is background.
        reference: a volume read from DICOM by ``read_image`` (``meta["dicom_datasets"]`` or
            ``meta["dicom_source_datasets"]`` is needed).
        path: output file (``.dcm``).
        label_map: gives each label id its segment label.
        series_description: SeriesDescription of the SEG.

    Returns:
        ``path``.

    Raises:
        ValueError: reference without DICOM source datasets, labels of the wrong shape, or unknown label ids.
        ImageWriteError: ``path`` is the reference DICOM folder or one of its files.
    """

    path = Path(path)
    own_grid = bool(reference.meta.get("dicom_datasets"))
    datasets = reference.meta.get("dicom_datasets") or reference.meta.get("dicom_source_datasets")
    if not datasets:
        raise ValueError(
            "write_dicom_seg needs a reference read from a DICOM series (meta['dicom_datasets']); "
            f"{reference.path} has format {reference.meta.get('format')!r}. Write .nii.gz or .seg.nrrd instead."
        )
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise ValueError(f"labels shape {labels.shape} does not match the reference image shape {reference.shape}")
    if own_grid and len(datasets) != reference.shape[2]:
        raise ValueError(f"reference has {len(datasets)} DICOM datasets for {reference.shape[2]} slices")
    ids = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [i for i in ids if i not in label_map.mask_classes]
    if unknown or (labels.size and labels.min() < 0):
        raise ValueError(f"label ids {unknown or int(labels.min())} are not foreground ids of {label_map.mask_classes}")
    if not ids:
        raise ValueError("labels are all background; a DICOM SEG needs at least one segment")
    sources = {p.resolve() for p in reference.meta.get("dicom_files", [])}
    if reference.path is not None:
        sources.add(reference.path.resolve())
    if path.resolve() in sources:
        raise ImageWriteError(path, "refusing to overwrite the input image")
    seg = build_dicom_seg(labels, reference, label_map, series_description)
    with atomic_write(path, ".dcm") as tmp:
        seg.save_as(tmp)
    return path


def build_dicom_seg(labels: np.ndarray, reference: Volume, label_map: LabelMap, series_description: str):
    """The ``highdicom.seg.Segmentation`` that :func:`write_dicom_seg` writes (arguments checked there)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    version = software_version()
    own_grid = bool(reference.meta.get("dicom_datasets"))
    datasets = reference.meta.get("dicom_datasets") or reference.meta.get("dicom_source_datasets")
    ids = [int(v) for v in np.unique(labels) if v != 0]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=str(version)
    )
    descriptions = []
    for number, label_id in enumerate(ids, start=1):
        coded = class_codes(label_map, label_map.mask_classes[label_id])
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label_map.mask_classes[label_id],
            segmented_property_category=coded["category"],
            segmented_property_type=coded["type"],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        if "typeModifier" in coded:  # e.g. Kidney + Left (highdicom has no argument for it)
            modifier = hd.sr.CodedConcept.from_code(coded["typeModifier"])
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    # Segment numbers must be 1..S; map sparse label ids onto them. Frames are (k, rows=j, columns=i).
    numbered = np.zeros(labels.shape, dtype=np.uint16)
    for number, label_id in enumerate(ids, start=1):
        numbered[labels == label_id] = number
    pixel_array = numbered.transpose(2, 1, 0) if own_grid else _frames_on_own_grid(numbered, reference, datasets)
    seg = hd.seg.Segmentation(
        source_images=list(datasets),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=str(version),
        device_serial_number="0",
        series_description=series_description,
    )
    return seg
