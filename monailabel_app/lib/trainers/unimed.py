"""Training task ``unimed``: fine-tune the served model on the datastore's labels of every level.

Items come from ``lib.annotations.datastore_items``: masks, boxes and image labels as they were saved, and
every image without a label through the unsupervised term (``unimed_core.training.fit`` mixes them as the
bundle's training does; its working grid and patch size come from the bundle's ``train.json``).

The new weights are written with ``save_weights`` to a temporary name in the model folder and swapped in
(atomic renames) only when the run finished and the validation check passed:

1. every logged loss is finite;
2. the temporary file loads back through the hash check (``load_weights``) and its predictor returns a label
   volume with the input's geometry and finite probabilities on a held-out (else the first) image;
3. when mask-labelled images were held out (``val_split`` of them, at least one kept for training), their mean
   Dice with the new weights is not below the current weights' by more than ``dice_tolerance``.

Otherwise the temporary file is removed, the served weights stay, and the task fails with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.image_io import read_image
from unimed_core.label_map import LabelMap
from unimed_core.model.weights import load_weights, save_weights
from unimed_core.paths import BUNDLE_DIR

from ..annotations import count_levels, datastore_items
from ..service import SERVED_NAME, ModelService, replace_weights

__all__ = ["UniMedTrain", "ValidationFailed"]

logger = logging.getLogger(__name__)
STATS_NAME = "train_stats.json"


class ValidationFailed(RuntimeError):
    """The fine-tuned weights did not pass the check; the served weights were kept."""


class UniMedTrain(TrainTask):
    """Fine-tunes the served UniMed weights from the datastore.

    Args:
        service: the app's shared model (weights location, device, variant).
        label_map: the bundle's label map.
    """

    def __init__(self, service: ModelService, label_map: LabelMap) -> None:
        super().__init__("UniMed: fine-tune from masks, boxes, image labels and unlabeled images")
        self.service = service
        self.label_map = label_map
        train = ConfigParser.load_config_file(BUNDLE_DIR / "configs" / "train.json")
        self.spacing = [float(s) for s in train["spacing"]]
        self.patch_size = [int(p) for p in train["patch_size"]]

    def config(self) -> dict:
        return {
            "max_steps": 200,
            "time_budget_s": 1800,
            "learning_rate": 1e-4,
            "batch_size": 2,
            "val_split": 0.2,
            "dice_tolerance": 0.02,
            "seed": 0,
        }

    def stats(self) -> dict:
        path = self.service.config.model_dir / STATS_NAME
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _factory(self):
        from unimed_core.model.factory import unimed_base, unimed_small

        return {"small": unimed_small, "base": unimed_base}[self.service.config.variant](self.label_map)

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        from unimed_core.cli.infer import build_predictor
        from unimed_core.evaluation import evaluate
        from unimed_core.training.fit import fit

        params = {**self.config(), **{k: request[k] for k in self.config() if k in request}}
        start = time.monotonic()
        labelled, unlabeled = datastore_items(datastore, self.label_map)
        if not labelled:
            raise ValueError("no labelled image in the datastore: save a mask, box or image label first")
        masks = [item for item in labelled if "label" in item]
        n_val = min(int(len(masks) * float(params["val_split"])), len(masks) - 1) if masks else 0
        val_items = masks[:n_val]
        train_items = [item for item in labelled if item not in val_items] + unlabeled

        config = self.service.config
        device = config.resolved_device()
        source = config.served_path
        model = load_weights(self._factory(), source)
        history = fit(
            model,
            train_items,
            self.label_map,
            patch_size=self.patch_size,
            spacing=self.spacing,
            batch_size=int(params["batch_size"]),
            lr=float(params["learning_rate"]),
            max_steps=int(params["max_steps"]),
            time_budget_s=float(params["time_budget_s"]),
            device=device,
            amp=device.startswith("cuda"),
            seed=int(params["seed"]),
            log_every=max(1, int(params["max_steps"]) // 10),
        )
        config.model_dir.mkdir(parents=True, exist_ok=True)
        tmp = config.model_dir / f".{SERVED_NAME}.{os.getpid()}.tmp"
        digest = save_weights(model.cpu(), tmp)
        stats = {
            "source_weights": str(source),
            "steps": history[-1]["step"] if history else 0,
            "history": history,
            "items": {**count_levels(labelled, unlabeled), "validation": len(val_items)},
            "weights_sha256": digest,
        }
        try:
            stats["validation"] = self._validate(history, tmp, val_items, labelled, device, params, build_predictor)
            if val_items:
                current = build_predictor(source, device, config.variant)
                new = build_predictor(tmp, device, config.variant)
                before = evaluate(current, val_items, self.label_map, click_classes=[])[0]["dice/all_mean"]
                after = evaluate(new, val_items, self.label_map, click_classes=[])[0]["dice/all_mean"]
                stats["validation"].update({"dice_before": before, "dice_after": after})
                if after < before - float(params["dice_tolerance"]):
                    raise ValidationFailed(f"validation Dice fell from {before:.3f} to {after:.3f}")
            replace_weights(tmp, config.model_dir / SERVED_NAME)
            stats["swapped"] = True
        except Exception as e:
            stats.update({"swapped": False, "reason": str(e)})
            for path in (tmp, tmp.with_name(tmp.name + ".sha256")):
                path.unlink(missing_ok=True)
            raise
        finally:
            stats["total_time"] = round(time.monotonic() - start, 1)
            atomic_write_json(config.model_dir / STATS_NAME, stats)
            logger.info("UniMed training: %s", {k: v for k, v in stats.items() if k != "history"})
        return {k: v for k, v in stats.items() if k != "history"}

    def _validate(self, history, tmp: Path, val_items, labelled, device, params, build_predictor) -> dict:
        losses = [v for row in history for k, v in row.items() if k.startswith("loss")]
        if not losses or not all(math.isfinite(v) for v in losses):
            raise ValidationFailed("training logged no loss or a non-finite one")
        predictor = build_predictor(tmp, device, self.service.config.variant)  # hash-checked load
        volume = read_image((val_items or labelled)[0]["image"])
        prediction = predictor.predict(volume)
        probabilities = list(prediction.class_probabilities.values())
        if prediction.labels.shape != volume.shape or not np.allclose(prediction.affine, volume.affine):
            raise ValidationFailed("the new weights' label volume does not have the input's geometry")
        if not all(math.isfinite(p) for p in probabilities):
            raise ValidationFailed("the new weights give non-finite class probabilities")
        return {"finite_losses": len(losses), "checked_image": str(volume.path)}
