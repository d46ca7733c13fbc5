"""Active-learning strategy ``unimed_uncertainty``: the unlabeled image the model is least sure about.

Ranks every image without a ``final`` label by its combined uncertainty over the three tasks (mask, boxes,
image classes; see ``lib.uncertainty``), using the scores stored in the datastore by the
``unimed_uncertainty`` scoring method when they were computed with the weights served now, and computing
(and storing) the others. The answer names the image and adds its scores and the suggested annotation level
(``"class"``: an image label, ``"boxes"`` or ``"mask"``) for that image.
"""

from __future__ import annotations

import logging

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ..scoring.uncertainty import score_images
from ..service import ModelService
from ..uncertainty import rank

__all__ = ["UncertaintyStrategy"]

logger = logging.getLogger(__name__)


class UncertaintyStrategy(Strategy):
    """Picks the unlabeled image with the highest combined uncertainty.

    Args:
        service: the app's shared model.
    """

    def __init__(self, service: ModelService) -> None:
        super().__init__("UniMed: least certain unlabeled image over all three tasks, with the level to annotate")
        self.service = service

    def __call__(self, request, datastore: Datastore):
        if hasattr(datastore, "refresh"):
            datastore.refresh()  # scores may have been written by a scoring process
        unlabeled = sorted(datastore.get_unlabeled_images())
        if not unlabeled:
            logger.info("no unlabeled image left")
            return None
        scores = score_images(self.service, datastore, unlabeled)
        order = rank({i: s["combined"] for i, s in scores.items()})
        best = order[0]
        logger.info("UniMed next sample: %s (combined uncertainty %.4f)", best, scores[best]["combined"])
        return {
            "id": best,
            "uncertainty": scores[best],
            "suggested_level": scores[best]["suggested_level"],
            "ranking": order,
        }
