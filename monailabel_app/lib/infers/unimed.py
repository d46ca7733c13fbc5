"""The app's inference tasks: four MONAI Label models over the one shared UniMed model.

- ``unimed`` (segmentation): the label volume on the input grid; the result JSON also carries
  ``detections`` (world RAS mm boxes) and ``probabilities`` (image classes), so one call gives all three
  tasks (what the UniMed Slicer extension's server mode reads). With ``foreground`` clicks it segments the
  structure under them instead (binary mask), as the UniMed extension asks.
- ``unimed_detection`` (detection): a Slicer markups JSON file of ROIs — the file MONAI Label's Slicer
  plugin loads with ``slicer.util.loadMarkups`` for a detection model; the boxes also in the result JSON.
- ``unimed_classification`` (classification): no file; the result JSON has the class ``probabilities``.
- ``unimed_interactive`` (deepgrow): MONAI Label's click protocol — ``foreground`` / ``background`` points
  in image voxel indices (``[i, j, k]``, what the Slicer plugin sends); ``"coordinates": "RAS mm"`` in the
  request says they are world millimetres instead. Returns a binary mask on the input grid.

A box prompt (the model's ``BOX`` token sequence) works wherever clicks do (``unimed`` and ``unimed_interactive``):
``"roi": [x1, y1, z1, x2, y2, z2]``, two opposite corners, in voxel indices of the image with MONAI's box
convention (voxels ``x1 .. x2 - 1``), or world RAS mm with ``"coordinates": "RAS mm"``. (MONAI Label's own SAM2
app orders its 2D ``roi`` differently; this app's is MONAI's ``XYZXYZ`` box mode.) The result is the structure
inside the box, as a binary mask on the input grid.

Every result JSON has ``warnings``: why the scan looks unlike the training data
(``unimed_core.inference.familiarity``), a list of ``{"signal", "score", "limit", "message"}``, empty when it does
not; the result is returned all the same.

Request parameters: ``classes`` (label-map names to keep) for ``unimed`` / ``unimed_detection``. The device
is the server's (``--conf device``); a request's ``device`` is ignored.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from unimed_core.data.boxes import voxel_to_world_boxes, voxel_to_world_points
from unimed_core.data.image_io import Volume, read_image, write_label
from unimed_core.inference.familiarity import uncertainty_warning
from unimed_core.inference.predictor import COORDINATES
from unimed_core.inference.writers import markups_roi_document
from unimed_core.model.weights import WeightsError

from ..service import ModelService

__all__ = [
    "UniMedSegmentation",
    "UniMedDetection",
    "UniMedClassification",
    "UniMedInteractive",
    "click_points",
    "box_prompt",
]

logger = logging.getLogger(__name__)
WORLD = "RAS mm"


def click_points(request: dict, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) clicks of a request in world RAS mm.

    MONAI Label clients send voxel indices of the image; ``"coordinates": "RAS mm"`` marks world points.

    Raises:
        ValueError: a point that is not three finite numbers.
    """
    world = str(request.get("coordinates", "")).strip().lower() == WORLD.lower()
    out = []
    for key in ("foreground", "background"):
        raw = request.get(key) or []
        try:
            points = np.asarray(raw, dtype=np.float64).reshape(-1, 3)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{key} must be a list of [x, y, z] points, got {raw!r}") from e
        if not np.all(np.isfinite(points)):
            raise ValueError(f"{key} has non-finite coordinates: {raw!r}")
        out.append(points if world or len(points) == 0 else voxel_to_world_points(points, volume.affine))
    return out[0], out[1]


def box_prompt(request: dict, volume: Volume) -> np.ndarray | None:
    """The request's ``roi`` as a world RAS mm box ``(6,)``, or None when it has none.

    Raises:
        ValueError: an ``roi`` that is not six finite numbers.
    """
    raw = request.get("roi")
    if raw is None or (hasattr(raw, "__len__") and len(raw) == 0):
        return None
    try:
        box = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError) as e:
        raise ValueError(f"roi must be [x1, y1, z1, x2, y2, z2], got {raw!r}") from e
    if box.shape != (6,) or not np.all(np.isfinite(box)):
        raise ValueError(f"roi must be six finite numbers [x1, y1, z1, x2, y2, z2], got {raw!r}")
    if str(request.get("coordinates", "")).strip().lower() == WORLD.lower():
        return box
    corners = np.concatenate([np.minimum(box[:3], box[3:]), np.maximum(box[:3], box[3:])])
    return voxel_to_world_boxes(corners[None], volume.affine)[0]


def _prompt_mask(predictor, volume: Volume, request: dict) -> tuple[str, np.ndarray] | None:
    """``("box" | "clicks", mask)`` for a prompted request, None for an automatic one."""
    box = box_prompt(request, volume)
    positive, negative = click_points(request, volume)
    if box is not None and len(positive):
        raise ValueError("give either an roi (box) or foreground clicks, not both")
    if box is not None:
        return "box", predictor.segment_box(volume, box)
    if len(positive):
        return "clicks", predictor.segment_clicks(volume, positive, negative)
    return None


_RESULTS_DIR: str | None = None


def _temp_path(suffix: str) -> str:
    """A new result file in this process's own folder. MONAI Label deletes it once sent; a client on the same
    machine saves the answer under the same base name in its temporary folder (``/tmp`` by default), so the
    server's file must not be there, or the server would delete the client's copy."""
    global _RESULTS_DIR
    if _RESULTS_DIR is None or not Path(_RESULTS_DIR).is_dir():
        _RESULTS_DIR = tempfile.mkdtemp(prefix="unimed_results_")
    handle = tempfile.NamedTemporaryFile(dir=_RESULTS_DIR, prefix="unimed_", suffix=suffix, delete=False)
    handle.close()
    return handle.name


class _UniMedInfer(InferTask):
    """Shared parts: the model service, reading the request's image, timing."""

    def __init__(self, service: ModelService, type: InferType, labels, description: str) -> None:
        super().__init__(type=type, labels=labels, dimension=3, description=description)
        self.service = service

    def is_valid(self) -> bool:
        # listed even before weights exist: a request then fails with the path it looked for
        return True

    def __call__(self, request: dict) -> tuple[str | None, dict[str, Any]]:
        start = time.monotonic()
        try:
            volume = read_image(request["image"])
            predictor = self.service.predictor()
            loaded = time.monotonic()
            result_file, result = self.run(predictor, volume, request)
            if "warnings" not in result:  # automatic results bring their own, from the same checks
                result["warnings"] = predictor.familiarity_warnings(volume)
            if result.get("mode") == "automatic":
                result["warnings"] += self._uncertainty_warnings(predictor, volume, result)
        except WeightsError:
            raise  # the server's fault, not the request's: stays a 500 with the weights' path
        except ValueError as e:  # bad input (unreadable, 2-D, too large, constant, clicks outside): say why
            raise HTTPException(status_code=400, detail=str(e)) from e
        result.update(
            {
                "weights_sha256": self.service.loaded_hash(),
                "latencies": {
                    "pre": round(loaded - start, 3),
                    "infer": round(time.monotonic() - loaded, 3),
                    "total": round(time.monotonic() - start, 3),
                },
            }
        )
        return result_file, result

    def run(self, predictor, volume: Volume, request: dict) -> tuple[str | None, dict[str, Any]]:
        raise NotImplementedError

    def _uncertainty_warnings(self, predictor, volume: Volume, result: dict) -> list[dict]:
        """The model's own uncertainty (one more pass; also put in ``result["uncertainty"]``), only when the
        statistics hold a limit calibrated for the weights being served (``familiarity_calibration.py --weights``)."""
        reference = predictor.familiarity
        if reference is None or "uncertainty" not in reference.limits:
            return []
        if reference.weights_sha256 != self.service.loaded_hash():
            return []
        from ..uncertainty import volume_uncertainty

        result["uncertainty"] = volume_uncertainty(predictor, volume).as_dict()
        return uncertainty_warning(result["uncertainty"], reference)


class UniMedSegmentation(_UniMedInfer):
    """``unimed``: automatic segmentation (+ boxes and class probabilities in the JSON), or clicks."""

    def __init__(self, service: ModelService, label_map) -> None:
        labels = {name: i for i, name in sorted(label_map.mask_classes.items())}
        super().__init__(service, InferType.SEGMENTATION, labels, "UniMed: segmentation, detection, classification")
        self.label_map = label_map

    def run(self, predictor, volume, request):
        prompted = _prompt_mask(predictor, volume, request)
        path = _temp_path(".nii.gz")
        if prompted is not None:
            mode, mask = prompted
            write_label(mask, volume, path)
            return path, {"mode": mode, "label_names": {"background": 0, request.get("label", "structure"): 1}}
        prediction = predictor.predict(volume, classes=request.get("classes") or None)
        write_label(prediction.labels, volume, path, self.label_map)
        return path, {
            "mode": "automatic",
            "label_names": self.labels,
            "coordinates": COORDINATES,
            "detections": prediction.detections(),
            "probabilities": prediction.class_probabilities,
            "warnings": prediction.warnings,
        }


class UniMedDetection(_UniMedInfer):
    """``unimed_detection``: Slicer markups ROIs (RAS mm) as the result file."""

    def __init__(self, service: ModelService, label_map) -> None:
        super().__init__(service, InferType.DETECTION, list(label_map.box_classes), "UniMed: lesion detection (ROIs)")
        self.label_map = label_map

    def run(self, predictor, volume, request):
        prediction = predictor.predict(volume, classes=request.get("classes") or None)
        path = _temp_path(".json")
        Path(path).write_text(json.dumps(markups_roi_document(prediction, self.label_map)), encoding="utf-8")
        return path, {"coordinates": COORDINATES, "detections": prediction.detections()}


class UniMedClassification(_UniMedInfer):
    """``unimed_classification``: image class probabilities (no result file)."""

    def __init__(self, service: ModelService, label_map, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        super().__init__(
            service, InferType.CLASSIFICATION, list(label_map.image_classes), "UniMed: image-level findings"
        )
        self.threshold = threshold

    def run(self, predictor, volume, request):
        probabilities = predictor.predict(volume).class_probabilities
        present = [name for name, p in probabilities.items() if p >= self.threshold]
        return None, {"probabilities": probabilities, "prediction": present, "threshold": self.threshold}


class UniMedInteractive(_UniMedInfer):
    """``unimed_interactive``: the structure under positive clicks, excluding negative ones, or inside an ``roi``."""

    def __init__(self, service: ModelService, label_map) -> None:
        labels = [name for i, name in sorted(label_map.mask_classes.items()) if i > 0]
        super().__init__(service, InferType.DEEPGROW, labels, "UniMed: interactive segmentation from clicks or a box")

    def run(self, predictor, volume, request):
        prompted = _prompt_mask(predictor, volume, request)
        if prompted is None:
            raise ValueError("interactive segmentation needs at least one foreground point or an roi (box)")
        mode, mask = prompted
        path = _temp_path(".nii.gz")
        write_label(mask, volume, path)
        names = {"background": 0, request.get("label", "structure"): 1}
        return path, {"label_names": names, "voxels": int(mask.sum()), "mode": mode}
