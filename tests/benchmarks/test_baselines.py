"""Each MONAI baseline builds and runs forward on a tiny input; the combined predictor keeps UniMed's conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.baselines import (
    BUILDERS,
    BaselinePredictor,
    baseline_loss,
    build_densenet,
    build_retinanet,
    build_segresnet,
    items_for,
)
from unimed_core.data.image_io import Volume
from unimed_core.data.training_data import LoadedCase
from unimed_core.label_map import LabelMap

LABEL_MAP = LabelMap.default()


pytestmark = pytest.mark.usefixtures("one_thread")


def _case(size: int = 32) -> LoadedCase:
    semantic = torch.zeros((size,) * 3, dtype=torch.long)
    semantic[4:12, 4:12, 4:12] = 1
    semantic[20:24, 20:24, 20:24] = LABEL_MAP.mask_classes_by_name()["cyst"]
    boxes = np.array([[20.0, 20, 20, 24, 24, 24]])
    return LoadedCase(torch.randn(1, size, size, size), semantic, boxes,
                      np.array([LABEL_MAP.class_index("cyst")]), [LABEL_MAP.class_index("cyst")])  # fmt: skip


@pytest.mark.parametrize("task", sorted(BUILDERS))
def test_each_baseline_trains_one_step_on_a_tiny_batch(task):
    torch.manual_seed(0)
    model = BUILDERS[task](LABEL_MAP).train()
    loss = baseline_loss(task, model, [_case(), _case()], LABEL_MAP)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_baselines_see_only_their_annotation():
    items = [{"image": "a", "label": "l"}, {"image": "b", "boxes": [], "box_labels": []}, {"image": "c", "class": []}]
    assert [i["image"] for i in items_for("segmentation", items)] == ["a"]
    assert [i["image"] for i in items_for("detection", items)] == ["b"]
    assert [i["image"] for i in items_for("classification", items)] == ["c"]
    with pytest.raises(ValueError, match="task must be one of"):
        items_for("registration", items)


def test_predictor_returns_input_grid_labels_and_world_boxes():
    torch.manual_seed(0)
    affine = np.diag([-8.0, -8.0, 8.0, 1.0])  # LPS-like input: the output must come back on this grid
    volume = Volume(np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32), affine)
    predictor = BaselinePredictor(build_segresnet(LABEL_MAP), build_retinanet(LABEL_MAP), build_densenet(LABEL_MAP),
                                  LABEL_MAP, spacing=(8.0, 8.0, 8.0), roi_size=(32, 32, 32), score_threshold=0.0)  # fmt: skip
    prediction = predictor.predict(volume)
    assert prediction.labels.shape == volume.shape and np.allclose(prediction.affine, affine)
    assert set(np.unique(prediction.labels)) <= set(LABEL_MAP.mask_classes)
    assert prediction.boxes.shape[1] == 6 and len(prediction.box_labels) == len(prediction.box_scores)
    assert set(prediction.box_labels) <= set(LABEL_MAP.box_classes)
    lo, hi = affine[:3, :3] @ np.zeros(3) + affine[:3, 3], affine[:3, :3] @ np.array(volume.shape) + affine[:3, 3]
    extent_lo, extent_hi = np.minimum(lo, hi) - 8, np.maximum(lo, hi) + 8
    assert (prediction.boxes[:, :3] >= extent_lo).all() and (prediction.boxes[:, 3:] <= extent_hi).all()
    assert set(prediction.class_probabilities) == set(LABEL_MAP.image_classes)
    assert set(predictor.timings) == {"prepare", "segmentation", "detection", "classification"}
