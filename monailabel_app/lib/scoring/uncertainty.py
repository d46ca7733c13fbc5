"""Scoring method ``unimed_uncertainty``: stores every unlabeled image's uncertainty in the datastore.

Each image's info gets ``unimed_uncertainty``: the three terms and their mean (``lib.uncertainty``), the
suggested next annotation level, and the sha256 of the weights that produced them, so a score is recomputed
only when the served weights changed (e.g. after training). MONAI Label runs scoring methods after start-up,
after each training run and after each next-sample request (``MONAI_LABEL_AUTO_UPDATE_SCORING``).
"""

from __future__ import annotations

import logging

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from unimed_core.data.image_io import read_image

from ..service import ModelService
from ..uncertainty import SCORE_KEY, suggest_levels, volume_uncertainty

__all__ = ["UncertaintyScoring", "score_images"]

logger = logging.getLogger(__name__)


def score_images(service: ModelService, datastore: Datastore, image_ids: list[str], force: bool = False) -> dict:
    """Image id → stored score dict for ``image_ids``, computing (and storing) the missing or stale ones.

    The suggested level is relative to ``image_ids`` (see ``lib.uncertainty.suggest_levels``), so it is
    refreshed for all of them whenever any score is recomputed.
    """
    weights = service.weights_hash()
    predictor = None  # loaded only when a score has to be computed
    scores: dict[str, dict] = {}
    changed = False
    for image_id in image_ids:
        stored = datastore.get_image_info(image_id).get(SCORE_KEY)
        if not force and isinstance(stored, dict) and stored.get("weights_sha256") == weights:
            scores[image_id] = dict(stored)
            continue
        if predictor is None:
            predictor = service.predictor()
            weights = service.loaded_hash()
        uncertainty = volume_uncertainty(predictor, read_image(datastore.get_image_uri(image_id)))
        scores[image_id] = {**uncertainty.as_dict(), "class": uncertainty.image, "weights_sha256": weights}
        changed = True
    levels = suggest_levels({i: {k: s[k] for k in ("class", "boxes", "mask")} for i, s in scores.items()})
    for image_id, score in scores.items():
        if changed or score.get("suggested_level") != levels[image_id]:
            score["suggested_level"] = levels[image_id]
            datastore.update_image_info(image_id, {SCORE_KEY: score})
    return scores


class UncertaintyScoring(ScoringMethod):
    """Scores the unlabeled images (``request["all"]``: every image) and stores the scores in the datastore.

    Args:
        service: the app's shared model.
    """

    def __init__(self, service: ModelService) -> None:
        super().__init__("UniMed uncertainty over segmentation, detection and classification (stored per image)")
        self.service = service

    def __call__(self, request, datastore: Datastore):
        ids = datastore.list_images() if request.get("all") else datastore.get_unlabeled_images()
        scores = score_images(self.service, datastore, sorted(ids), force=bool(request.get("force", False)))
        logger.info("UniMed uncertainty stored for %d images", len(scores))
        return {"scored": len(scores), "scores": scores}
