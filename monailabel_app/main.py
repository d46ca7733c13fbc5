"""UniMed as a MONAI Label app: one model for segmentation, detection, classification and clicks.

Start (from the repository root, in the server's own environment; ``make label-server`` does both)::

    .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies STUDIES --host 127.0.0.1

Options (``--conf KEY VALUE``): ``weights`` (initial weights, sha256 beside them; default the bundle's
``models/model.pt``), ``model_dir`` (where fine-tuned weights go; default ``monailabel_app/model``),
``device`` (auto, cpu, cuda[:N]), ``variant`` (small, base). Everything about classes comes from the
bundle's ``configs/metadata.json``. See ``docs/monailabel.md``.
"""

from __future__ import annotations

import json
import logging

from fastapi import HTTPException
from lib.activelearning.uncertainty import UncertaintyStrategy
from lib.annotations import check_mask_label, count_levels, datastore_items, item_levels, label_item
from lib.infers.unimed import UniMedClassification, UniMedDetection, UniMedInteractive, UniMedSegmentation
from lib.safety import SafeLocalDatastore, SafeSessions, check_infer_image
from lib.scoring.uncertainty import UncertaintyScoring
from lib.service import ModelService, ServiceConfig
from lib.trainers.unimed import UniMedTrain
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

from unimed_core.label_map import LabelMap
from unimed_core.paths import BUNDLE_DIR

__all__ = ["UniMedApp"]

logger = logging.getLogger(__name__)


class UniMedApp(MONAILabelApp):
    """The UniMed MONAI Label app (MONAI Label finds it as the ``MONAILabelApp`` subclass of ``main.py``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        metadata = BUNDLE_DIR / "configs" / "metadata.json"
        self.label_map = LabelMap.from_metadata(metadata)
        conf = conf or {}
        # e.g. --conf score_threshold 0.1: how sure a detection must be to be returned
        predictor_kwargs = {"score_threshold": float(conf["score_threshold"])} if "score_threshold" in conf else {}
        self.service = ModelService(ServiceConfig.from_conf(conf, app_dir), **predictor_kwargs)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="UniMed",
            description="One 3D model for classification, detection and segmentation, at any annotation level",
            version=json.loads(metadata.read_text())["version"],  # the model's: what an annotator's results came from
        )

    def init_datastore(self):
        """MONAI Label's local datastore with ids and tags checked (``lib.safety``); remote ones unchanged."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return SafeLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _load_sessions(self, load=False):
        """MONAI Label's sessions with uploaded archives checked before unpacking (``lib.safety``)."""
        if not load:
            return None
        return SafeSessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY)

    def infer(self, request, datastore=None):
        """Refuse an ``image`` that is neither a datastore id nor a file the server made (``lib.safety``)."""
        sessions = self.sessions()
        roots = [sessions.store_path] if sessions is not None else []
        check_infer_image(request.get("image"), datastore or self.datastore(), roots)
        return super().infer(request, datastore)

    def init_infers(self):
        return {
            "unimed": UniMedSegmentation(self.service, self.label_map),
            "unimed_detection": UniMedDetection(self.service, self.label_map),
            "unimed_classification": UniMedClassification(self.service, self.label_map),
            "unimed_interactive": UniMedInteractive(self.service, self.label_map),
        }

    def init_trainers(self):
        return {"unimed": UniMedTrain(self.service, self.label_map)}

    def init_strategies(self):
        return {"unimed_uncertainty": UncertaintyStrategy(self.service), "random": Random()}

    def init_scoring_methods(self):
        return {"unimed_uncertainty": UncertaintyScoring(self.service)}

    def on_save_label(self, image_id: str, label_id: str):
        """Check a saved label against the label map and record its annotation level(s) in its info.

        A label that cannot be read (unknown class or file type, corrupt, not on the image's grid) is removed
        again and the request fails with 400 and the reason, so the datastore only holds labels training can use.
        """
        datastore = self.datastore()
        image = datastore.get_image_uri(image_id)
        levels = {}
        for tag, tag_label in datastore.get_labels_by_image_id(image_id).items():
            try:
                item = label_item(
                    image,
                    datastore.get_label_uri(tag_label, tag),
                    self.label_map,
                    datastore.get_label_info(tag_label, tag),
                )
                if "label" in item:
                    check_mask_label(item, self.label_map)
            except ValueError as e:
                datastore.remove_label(tag_label, tag)
                datastore.refresh()  # a JSON label is no watched file type: forget it now, not at the next scan
                raise HTTPException(status_code=400, detail=f"label of {image_id} ({tag}) rejected: {e}") from e
            levels[tag] = item_levels(item)
            datastore.update_label_info(tag_label, tag, {"levels": levels[tag]})
        logger.info("label saved for %s: %s", image_id, levels)
        return {"levels": levels.get("final", [])}

    def info(self):
        meta = super().info()
        try:
            meta["annotation_levels"] = count_levels(*datastore_items(self.datastore(), self.label_map))
        except ValueError as e:  # a label file put into the studies folder by hand that training could not use
            meta["annotation_levels"] = {"error": str(e)}
        meta["weights"] = {"path": str(self.service.config.served_path), "sha256": self.service.weights_hash()}
        return meta
