"""Inference as MONAI's engine runs it: an ``iteration_update`` that predicts, a post-transform that writes.

``inference.json`` builds a ``monai.engines.SupervisedEvaluator`` over volumes (``LoadVolumed``); each
iteration runs :class:`~unimed_core.inference.predictor.UniMedPredictor` (sliding window, outputs on the
input's own geometry), the ``postprocessing`` transform :class:`WritePredictiond` writes the files, and the
:class:`InferenceSummary` handler records what was written in ``summary.json``, with each volume's
``warnings`` (a scan unlike the training data, ``unimed_core.inference.familiarity``), which it also logs.
MONAI's handlers (progress bar, stats, MLflow) attach to this engine unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.transforms import Transform

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.image_io import Volume
from unimed_core.inference.familiarity import warning_lines
from unimed_core.inference.predictor import COORDINATES, Prediction, UniMedPredictor
from unimed_core.inference.writers import write_prediction
from unimed_core.label_map import LabelMap

__all__ = ["PredictionIteration", "WritePredictiond", "InferenceSummary", "NetInOut", "segment_volumes_ml"]


class PredictionIteration:
    """``iteration_update`` for ``SupervisedEvaluator``: run the predictor on each volume of the batch.

    The batch is a list of dicts (``no_collation``) whose ``image_key`` holds a ``Volume``; the output is one
    ``{"pred": Prediction}`` per volume. ``FORWARD_COMPLETED`` and ``MODEL_COMPLETED`` fire as in MONAI's own
    iteration, so ``postprocessing`` and handlers run per volume.

    Args:
        predictor: the predictor (model, label map, working grid, sliding window).
        image_key: key of the volume in each batch item.
        classes: restrict the automatic mode to these class names (None: all).
    """

    def __init__(self, predictor: UniMedPredictor, image_key: str = "image", classes: Sequence[str] | None = None):
        if not isinstance(predictor, UniMedPredictor):
            raise ValueError(f"predictor must be a UniMedPredictor, got {type(predictor).__name__}")
        self.predictor, self.image_key = predictor, image_key
        self.classes = None if classes is None else list(classes)

    def __call__(self, engine, batch: Sequence[dict]) -> list[dict]:
        batch = batch if isinstance(batch, list) else [batch]
        self.predictor.model.eval()
        outputs = []
        for item in batch:
            volume = item[self.image_key]
            if not isinstance(volume, Volume):
                raise ValueError(f"batch item {self.image_key!r} must be a Volume (use LoadVolumed), got {volume!r}")
            outputs.append({"pred": self.predictor.predict(volume, classes=self.classes)})
        # as in MONAI's own iterations: the output is on the state before the events, whose postprocessing
        # handler replaces it
        engine.state.output = outputs
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class WritePredictiond(Transform):
    """Post-transform: write a volume's outputs (``write_prediction``) and record the paths under ``written``.

    Args:
        output_dir: folder for the files (created).
        label_map: names and colours of the classes.
        pred_key: key of the :class:`Prediction`.
        image_key: key of the input ``Volume`` (its geometry and DICOM headers).
    """

    def __init__(
        self, output_dir: str | Path, label_map: LabelMap, pred_key: str = "pred", image_key: str = "image"
    ) -> None:
        self.output_dir, self.label_map = Path(output_dir), label_map
        self.pred_key, self.image_key = pred_key, image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        prediction, volume = d[self.pred_key], d[self.image_key]
        written = write_prediction(prediction, volume, self.output_dir, self.label_map)
        d["written"] = {kind: str(path) for kind, path in written.items()}
        return d


def segment_volumes_ml(prediction: Prediction, label_map: LabelMap) -> dict[str, float]:
    """Volume in millilitres of every segment present in ``prediction.labels``."""
    voxel_ml = abs(float(np.linalg.det(prediction.affine[:3, :3]))) / 1000.0
    ids, counts = np.unique(prediction.labels, return_counts=True)
    return {label_map.mask_classes[int(i)]: round(float(n) * voxel_ml, 3) for i, n in zip(ids, counts) if i > 0}


class InferenceSummary:
    """Handler: collect, per volume, what was found and written; write ``summary.json`` when the run ends.

    Args:
        output_dir: where ``summary.json`` goes.
        label_map: for segment names.
        filename: name of the summary file.
    """

    def __init__(self, output_dir: str | Path, label_map: LabelMap, filename: str = "summary.json") -> None:
        self.path = Path(output_dir) / filename
        self.label_map = label_map
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self.rows = []

    def _iteration(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, out in zip(batch, outputs):
            prediction: Prediction = out["pred"]
            volume = item.get("image")
            self.rows.append(
                {
                    "input": str(getattr(volume, "path", "") or ""),
                    "outputs": out.get("written", {}),
                    "segments_ml": segment_volumes_ml(prediction, self.label_map),
                    "coordinates": COORDINATES,
                    "detections": prediction.detections(),
                    "classes": prediction.class_probabilities,
                    "warnings": prediction.warnings,
                }
            )
            # the bundle's printout: the engine's logger (a module logger made at import is disabled by the bundle's
            # logging.conf, which logging.config.fileConfig applies with disable_existing_loggers)
            for line in warning_lines(prediction.warnings):
                engine.logger.warning("%s: %s", getattr(volume, "path", "") or "volume", line)

    def _completed(self, engine) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.rows)


class NetInOut(torch.nn.Module):
    """A tensor-in, tensor-out view of the whole predictor, for ``python -m monai.bundle verify_net_in_out``.

    UniMed's network returns a structured output (queries, masks, tokens), which MONAI's shape check cannot
    read; this wrapper takes ``(B, 1, D, H, W)`` patches on the working grid and returns the label volumes
    ``(B, 1, D, H, W)`` int16 that ``metadata.json`` declares as ``pred``, through the same predictor that
    writes the bundle's outputs.

    Args:
        predictor: the bundle's predictor; its network is a submodule, so ``.to()`` and ``.eval()`` reach it.
    """

    def __init__(self, predictor: UniMedPredictor) -> None:
        super().__init__()
        if not isinstance(predictor, UniMedPredictor):
            raise ValueError(f"predictor must be a UniMedPredictor, got {type(predictor).__name__}")
        self.predictor = predictor
        self.network = predictor.model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 5 or image.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, D, H, W), got {tuple(image.shape)}")
        affine = np.diag([*self.predictor.spacing, 1.0])
        labels = [
            torch.from_numpy(self.predictor.predict(Volume(x[0].float().cpu().numpy(), affine)).labels) for x in image
        ]
        return torch.stack(labels)[:, None].to(device=image.device, dtype=torch.int16)
