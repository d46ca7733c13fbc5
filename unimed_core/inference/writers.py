"""Write a :class:`Prediction` as the files a user gets (DESIGN.md §5), each atomically.

Per input: the label volume (NIfTI and Slicer ``.seg.nrrd``; DICOM SEG when the input was a DICOM series),
the detections as JSON (world mm, RAS stated) and as Slicer markups ROIs (``.mrk.json``), and the image
class probabilities as JSON. For a DICOM series also a DICOM SR (TID 1500) of every finding, referencing the
series and the SEG (``unimed_core.data.dicom_sr``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.dicom_seg import has_dicom_source, write_dicom_seg
from unimed_core.data.dicom_sr import write_dicom_sr
from unimed_core.data.image_io import Volume, write_label
from unimed_core.inference.predictor import COORDINATES, Prediction
from unimed_core.label_map import LabelMap

__all__ = ["write_prediction", "markups_roi_document", "case_name"]

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def case_name(path: str | Path | None) -> str:
    """A file stem for outputs: ``ct.nii.gz`` → ``ct``, a DICOM folder → its name."""
    if path is None:
        return "volume"
    name = Path(path).name
    for suffix in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def markups_roi_document(prediction: Prediction, label_map: LabelMap) -> dict:
    """Slicer markups JSON with one ROI per detection, named "label score", in RAS millimetres."""
    markups = []
    for box, name, score in zip(prediction.boxes, prediction.box_labels, prediction.box_scores):
        lo, hi = np.asarray(box[:3], dtype=float), np.asarray(box[3:], dtype=float)
        centre = ((lo + hi) / 2).tolist()
        colour = [c / 255.0 for c in label_map.color(name)]
        markups.append(
            {
                "type": "ROI",
                "coordinateSystem": "RAS",
                "coordinateUnits": "mm",
                "name": f"{name} {score:.2f}",
                "roiType": "Box",
                "center": centre,
                "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                "size": (hi - lo).tolist(),
                "insideOut": False,
                "controlPoints": [{"id": "1", "label": f"{name} {score:.2f}", "position": centre}],
                "display": {"color": colour, "selectedColor": colour},
            }
        )
    return {"@schema": MARKUPS_SCHEMA, "markups": markups}


def write_prediction(
    prediction: Prediction,
    reference: Volume,
    out_dir: str | Path,
    label_map: LabelMap,
    name: str | None = None,
) -> dict[str, Path]:
    """Write every output of one volume into ``out_dir``; returns kind → path.

    Files: ``NAME_seg.nii.gz``, ``NAME.seg.nrrd``, ``NAME_seg.dcm`` (DICOM input with a segment),
    ``NAME_sr.dcm`` (DICOM input), ``NAME_boxes.json``, ``NAME_boxes.mrk.json``, ``NAME_classes.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or case_name(reference.path)
    written = {
        "label_nifti": write_label(prediction.labels, reference, out_dir / f"{name}_seg.nii.gz", label_map),
        "label_seg_nrrd": write_label(prediction.labels, reference, out_dir / f"{name}.seg.nrrd", label_map),
    }
    if has_dicom_source(reference):
        seg = None
        if np.any(prediction.labels > 0):  # a DICOM SEG needs at least one segment
            written["label_dicom_seg"] = write_dicom_seg(
                prediction.labels, reference, out_dir / f"{name}_seg.dcm", label_map
            )
            import pydicom

            seg = pydicom.dcmread(written["label_dicom_seg"], stop_before_pixels=True)
        written["findings_dicom_sr"] = write_dicom_sr(
            out_dir / f"{name}_sr.dcm",
            reference,
            label_map,
            prediction.class_probabilities,
            prediction.detections(),
            prediction.labels,
            seg,
        )
    boxes = {"coordinates": COORDINATES, "image": str(reference.path or ""), "detections": prediction.detections()}
    written["boxes_json"] = atomic_write_json(out_dir / f"{name}_boxes.json", boxes)
    written["boxes_markups"] = atomic_write_json(
        out_dir / f"{name}_boxes.mrk.json", markups_roi_document(prediction, label_map)
    )
    classes = {"image": str(reference.path or ""), "probabilities": prediction.class_probabilities}
    written["classes_json"] = atomic_write_json(out_dir / f"{name}_classes.json", classes)
    return written
