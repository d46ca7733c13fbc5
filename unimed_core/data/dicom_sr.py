"""Write findings as a DICOM Structured Report (TID 1500 measurement report, highdicom ``Comprehensive3DSR``).

Beside the DICOM SEG of a DICOM input, the report holds, each as a measurement group made by the "UniMed"
algorithm:

- every image-level class with its probability (TID 1501, "Probability", no units), coded as the label map says;
- every detection as a volumetric ROI (TID 1411) whose 3D region (SCOORD3D, in the source series' frame of
  reference, DICOM patient coordinates: LPS mm) is the box's inferior and superior faces as two closed polygons,
  with its class and its score ("Probability");
- every segment of the SEG as a volumetric ROI that references that segment, with its volume (mm3).

The evidence (``CurrentRequestedProcedureEvidenceSequence``) lists the source series' instances and the SEG, so
the report references both. Class codes come from the label map (``LabelMap.codes``) through
:func:`~unimed_core.data.dicom_seg.class_codes`, the same codes as the SEG's segments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unimed_core.data.atomic import atomic_write
from unimed_core.data.dicom_seg import ALGORITHM_NAME, class_codes, software_version
from unimed_core.errors import ImageWriteError
from unimed_core.label_map import LabelMap

if TYPE_CHECKING:
    from unimed_core.data.image_io import Volume

__all__ = ["write_dicom_sr", "build_dicom_sr", "box_polygons_lps"]


def box_polygons_lps(box_ras: Sequence[float]) -> list[np.ndarray]:
    """The inferior and superior faces of a world RAS box (``x1, y1, z1, x2, y2, z2``) as two closed polygons
    (5 x 3, first point repeated) in DICOM patient coordinates (LPS mm)."""
    x1, y1, z1, x2, y2, z2 = (float(v) for v in box_ras)
    faces = []
    for z in (z1, z2):
        ring = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
        faces.append(np.array([(-x, -y, z) for x, y in ring], dtype=np.float64))
    return faces


def _tracking(hd, identifier: str):
    return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier)


def build_dicom_sr(
    reference: Volume,
    label_map: LabelMap,
    class_probabilities: Mapping[str, float],
    detections: Sequence[Mapping[str, Any]],
    labels: np.ndarray | None = None,
    seg=None,
):
    """The ``highdicom.sr.Comprehensive3DSR`` of one volume's findings (see the module docstring).

    Args:
        reference: a volume read from a DICOM series (``meta["dicom_datasets"]``).
        label_map: class names and codes.
        class_probabilities: image class → probability.
        detections: ``{"label", "score", "box"}`` dicts, boxes in world RAS mm (``Prediction.detections()``).
        labels: the label volume on the reference grid, for the segments' volumes (with ``seg``).
        seg: the DICOM SEG dataset written for ``labels`` (None: no segments to reference).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets = reference.meta.get("dicom_datasets")
    if not datasets:
        raise ValueError(f"a DICOM SR needs a reference read from a DICOM series; {reference.path} is not one")
    first = datasets[0]
    frame_uid = str(getattr(first, "FrameOfReferenceUID", "") or "")
    if not frame_uid:
        raise ValueError(f"{reference.path}: the DICOM series has no FrameOfReferenceUID for 3D coordinates")
    series = hd.sr.SourceSeriesForSegmentation(str(first.SeriesInstanceUID))
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=software_version())
    probability, no_units = codes.DCM.Probability, codes.UCUM.NoUnits

    def score(value: float):
        return [hd.sr.Measurement(name=probability, value=float(value), unit=no_units, algorithm_id=algorithm)]

    groups = []
    for i, (name, p) in enumerate(class_probabilities.items(), start=1):
        coded = class_codes(label_map, name)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(hd, f"image finding {i}: {name}"),
                finding_type=coded["type"],
                finding_category=coded["category"],
                algorithm_id=algorithm,
                measurements=score(p),
            )
        )
    for i, det in enumerate(detections, start=1):
        coded = class_codes(label_map, det["label"])
        surface = hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
            graphic_data=box_polygons_lps(det["box"]),
            frame_of_reference_uid=frame_uid,
            source_series=series,
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(hd, f"detection {i}: {det['label']}"),
                referenced_volume_surface=surface,
                finding_type=coded["type"],
                finding_category=coded["category"],
                algorithm_id=algorithm,
                measurements=score(det["score"]),
            )
        )
    if seg is not None:
        if labels is None:
            raise ValueError("segments need the label volume for their volumes")
        voxel_mm3 = abs(float(np.linalg.det(np.asarray(reference.affine)[:3, :3])))
        ids = label_map.mask_classes_by_name()
        for item in seg.SegmentSequence:
            name = str(item.SegmentLabel)
            coded = class_codes(label_map, name)
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=int(item.SegmentNumber),
                source_series=series,
            )
            volume = float((np.asarray(labels) == ids[name]).sum()) * voxel_mm3
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=_tracking(hd, f"segment {int(item.SegmentNumber)}: {name}"),
                    referenced_segment=segment,
                    finding_type=coded["type"],
                    finding_category=coded["category"],
                    algorithm_id=algorithm,
                    measurements=[
                        hd.sr.Measurement(
                            name=codes.SCT.Volume, value=volume, unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm
                        )
                    ],
                )
            )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=ALGORITHM_NAME, manufacturer_name=ALGORITHM_NAME, model_name=ALGORITHM_NAME
        ),
    )
    modality = str(getattr(first, "Modality", "") or "")
    procedure = codes.LN.MRIUnspecifiedBodyRegion if modality == "MR" else codes.LN.CTUnspecifiedBodyRegion
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure,
        imaging_measurements=groups,
    )
    evidence = [*datasets, *([seg] if seg is not None else [])]
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        is_complete=True,
        series_description="UniMed findings",
    )


def write_dicom_sr(
    path: str | Path,
    reference: Volume,
    label_map: LabelMap,
    class_probabilities: Mapping[str, float],
    detections: Sequence[Mapping[str, Any]],
    labels: np.ndarray | None = None,
    seg=None,
) -> Path:
    """Write :func:`build_dicom_sr` to ``path`` atomically, never over one of the source's files."""
    path = Path(path)
    sources = {p.resolve() for p in reference.meta.get("dicom_files", [])}
    if path.resolve() in sources:
        raise ImageWriteError(path, "refusing to overwrite the input image")
    sr = build_dicom_sr(reference, label_map, class_probabilities, detections, labels, seg)
    with atomic_write(path, ".dcm") as tmp:
        sr.save_as(tmp)
    return path
