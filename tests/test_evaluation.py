"""Held-out evaluation with a "perfect predictor" that answers with the ground truth: every score must be ideal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unimed_core.data.boxes import world_to_voxel_points
from unimed_core.data.datalist import load_datalist
from unimed_core.data.image_io import Volume, read_label
from unimed_core.evaluation import evaluate, interior_point
from unimed_core.inference.predictor import Prediction, UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.case import SyntheticConfig
from unimed_core.synthetic.dataset import generate_dataset

LM = LabelMap.default()


class PerfectPredictor(UniMedPredictor):
    """Answers with the datalist's truth: labels from the label file, boxes from the item, class probs = truth."""

    def __init__(self, items: list[dict], label_map: LabelMap) -> None:  # no model: nothing is inferred
        self.items = {str(Path(item["image"])): item for item in items}
        self.label_map = label_map
        self.clicks: list[np.ndarray] = []

    def prepare(self, volume: Volume) -> None:  # the truth needs no working grid
        return None

    def _truth(self, volume: Volume) -> np.ndarray:
        return read_label(self.items[str(volume.path)]["label"], reference=volume).array.astype(np.int16)

    def predict(self, volume: Volume, classes=None, prepared=None) -> Prediction:
        item = self.items[str(volume.path)]
        boxes = np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 6)
        return Prediction(
            labels=self._truth(volume),
            affine=volume.affine.copy(),
            boxes=boxes,
            box_labels=list(item["box_labels"]),
            box_scores=np.ones(len(boxes)),
            class_probabilities={c: float(c in item["class"]) for c in self.label_map.image_classes},
        )

    def segment_clicks(
        self, volume: Volume, positive: np.ndarray, negative: np.ndarray | None = None, prepared=None
    ) -> np.ndarray:
        labels = self._truth(volume)
        voxel = tuple(np.round(world_to_voxel_points(positive, volume.affine)[0]).astype(int))
        self.clicks.append(np.asarray(voxel))
        return (labels == labels[voxel]).astype(np.uint8) if labels[voxel] else np.zeros_like(labels, np.uint8)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    config = SyntheticConfig(lesion_presence=1.0, lesion_radius_mm=(12.0, 25.0))
    path = generate_dataset(root, 2, seed=4, shape=(40, 40, 32), spacing=(8.0, 8.0, 10.0), orientations=("LPS",),
                            n_validation=0, n_test=2, base_config=config)  # fmt: skip
    test = load_datalist(path, LM)["test"]
    assert len(test) == 2 and all(item["boxes"] for item in test)
    return test


def test_perfect_predictor_scores_perfectly(items):
    done = []
    predictor = PerfectPredictor(items, LM)
    summary, rows = evaluate(predictor, items, LM, progress=lambda n, total: done.append((n, total)))
    assert done == [(1, 2), (2, 2)]
    assert summary["cases"] == 2 and len(rows) == 2
    for i in range(1, LM.num_mask_classes):
        dice = summary[f"dice/{LM.mask_classes[i]}"]
        assert dice == pytest.approx(1.0) or math.isnan(dice)
    assert summary["dice/organs_mean"] == pytest.approx(1.0)
    assert summary["dice/all_mean"] == pytest.approx(1.0)
    assert summary["mAP@0.10"] == pytest.approx(1.0)
    assert summary["recall@0.50"] == pytest.approx(1.0)
    assert math.isnan(summary["AUC"]) or summary["AUC"] == pytest.approx(1.0)
    assert summary["accuracy"] == pytest.approx(1.0)
    organs = ["liver", "spleen", "kidney_left", "kidney_right"]
    assert {k for k in summary if k.startswith("click_dice/")} == {f"click_dice/{n}" for n in organs} | {
        "click_dice/mean"
    }
    assert summary["click_dice/mean"] == pytest.approx(1.0)
    assert len(predictor.clicks) == 2 * len(organs)


def test_a_wrong_answer_lowers_the_scores(items):
    class Shifted(PerfectPredictor):
        def predict(self, volume, classes=None, prepared=None):
            prediction = super().predict(volume, classes)
            prediction.labels = np.roll(prediction.labels, 3, axis=0)
            prediction.boxes = prediction.boxes + 200.0
            return prediction

    summary, _ = evaluate(Shifted(items, LM), items, LM, click_classes=["liver"])
    assert summary["dice/organs_mean"] < 0.99
    assert summary["mAP@0.10"] == pytest.approx(0.0)
    assert set(k for k in summary if k.startswith("click_dice/")) == {"click_dice/liver", "click_dice/mean"}


def test_unknown_click_class_is_refused(items):
    with pytest.raises(ValueError, match=r"click_classes must be foreground mask classes .* unknown \['pancreas'\]"):
        evaluate(PerfectPredictor(items, LM), items, LM, click_classes=["pancreas"])


def test_interior_point_is_the_deepest_voxel():
    mask = np.zeros((20, 16, 12), dtype=bool)
    mask[2:11, 3:12, 1:10] = True  # a 9³ cube: its centre (6, 7, 5) is the one deepest voxel
    mask[14:19, 12:15, 8:11] = True  # a smaller second blob
    point = interior_point(mask)
    assert point.shape == (3,) and point.tolist() == [6.0, 7.0, 5.0]
    assert mask[tuple(point.astype(int))]
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    assert distance[tuple(point.astype(int))] == distance.max()
    # the volume's border counts as boundary: a mask filling the volume is clicked at its centre
    assert interior_point(np.ones((7, 7, 7), dtype=bool)).tolist() == [3.0, 3.0, 3.0]
