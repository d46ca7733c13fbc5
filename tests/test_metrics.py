"""Tests of the metrics on small cases worked out by hand."""

import math

import numpy as np
import pytest
import torch
from monai.data.box_utils import box_iou

from unimed_core.metrics import classification_metrics, detection_metrics, dice_per_class, hd95_per_class

NAMES = ["cyst", "tumor"]


def cube_volume(shape=(10, 10, 10)) -> np.ndarray:
    v = np.zeros(shape, dtype=np.int64)
    v[2:5, 2:5, 2:5] = 1
    return v


# ---------------------------------------------------------------- segmentation
def test_dice_perfect_disjoint_and_absent():
    a = cube_volume()
    assert dice_per_class(a, a, 3)[1] == pytest.approx(1.0)
    b = np.zeros_like(a)
    b[6:9, 6:9, 6:9] = 1
    d = dice_per_class(a, b, 3)
    assert d[1] == pytest.approx(0.0)
    assert math.isnan(d[2])  # absent from both
    only_pred = a.copy()
    only_pred[8, 8, 8] = 2
    assert dice_per_class(only_pred, a, 3)[2] == 0.0  # a false positive class is 0, not NaN
    assert set(d) == {1, 2}


def test_dice_by_hand():
    pred = np.array([[0, 1, 1, 1]])
    target = np.array([[0, 0, 1, 1]])
    # 2 * |A ∩ B| / (|A| + |B|) = 2 * 2 / (3 + 2)
    assert dice_per_class(torch.as_tensor(pred), torch.as_tensor(target), 2)[1] == pytest.approx(0.8)


def test_hd95_known_cases():
    a = cube_volume()
    hd = hd95_per_class(a, a, 3)
    assert hd[1] == 0.0 and math.isnan(hd[2])
    shifted = np.roll(a, 2, axis=0)
    assert hd95_per_class(a, shifted, 2)[1] == pytest.approx(2.0)
    # Spacing scales the distance along its axis only.
    assert hd95_per_class(a, shifted, 2, spacing=(1.5, 9.0, 9.0))[1] == pytest.approx(3.0)
    assert hd95_per_class(a, shifted, 2, spacing=0.5)[1] == pytest.approx(1.0)
    assert hd95_per_class(a, np.zeros_like(a), 2)[1] == math.inf


@pytest.mark.parametrize(
    "pred, target, num_classes",
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), 2),  # shapes differ
        (np.full((4, 4), 3), np.zeros((4, 4)), 3),  # label out of range
        (np.full((4, 4), 0.5), np.zeros((4, 4)), 2),  # not integer labels
        (np.zeros((4, 4)), np.zeros((4, 4)), 1),  # no foreground class
    ],
)
def test_segmentation_metrics_bad_arguments_raise(pred, target, num_classes):
    with pytest.raises(ValueError):
        dice_per_class(pred, target, num_classes)
    with pytest.raises(ValueError):
        hd95_per_class(pred, target, num_classes, spacing=(1, 1))


def test_hd95_bad_spacing_raises():
    a = cube_volume()
    with pytest.raises(ValueError):
        hd95_per_class(a, a, 2, spacing=(1, 1))
    with pytest.raises(ValueError):
        hd95_per_class(a, a, 2, spacing=(1, 0, 1))


# ---------------------------------------------------------------- detection
BOX = np.array([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
# Shift along x by s with (1 - s) / (1 + s) = 0.3: IoU 0.3.
SHIFT = 0.7 / 1.3
SHIFTED = BOX + np.array([SHIFT, 0, 0, SHIFT, 0, 0])


def test_shifted_box_has_iou_03():
    assert box_iou(BOX, SHIFTED)[0, 0] == pytest.approx(0.3, abs=1e-5)


def test_perfect_detection_has_map_1():
    gt_boxes = [BOX, np.vstack([BOX * 2, BOX + 3])]
    gt_labels = [np.array([0]), np.array([1, 0])]
    scores = [np.array([0.9]), np.array([0.8, 0.7])]
    m = detection_metrics(gt_boxes, scores, gt_labels, gt_boxes, gt_labels, NAMES)
    for t in ("0.10", "0.25", "0.50"):
        assert m[f"mAP@{t}"] == pytest.approx(1.0)
        assert m[f"recall@{t}"] == pytest.approx(1.0)
        assert m[f"AP@{t}/cyst"] == pytest.approx(1.0) and m[f"AP@{t}/tumor"] == pytest.approx(1.0)


def test_disjoint_detection_has_map_0():
    m = detection_metrics([BOX + 5], [np.array([0.9])], [np.array([0])], [BOX], [np.array([0])], NAMES)
    assert m["mAP@0.10"] == 0.0 and m["recall@0.10"] == 0.0
    # Right box, wrong class: also a miss.
    m = detection_metrics([BOX], [np.array([0.9])], [np.array([1])], [BOX], [np.array([0])], NAMES)
    assert m["AP@0.10/cyst"] == 0.0


def test_iou_03_counts_at_01_and_025_but_not_05():
    m = detection_metrics([SHIFTED], [np.array([0.9])], [np.array([1])], [BOX], [np.array([1])], NAMES)
    assert m["AP@0.10/tumor"] == pytest.approx(1.0) and m["recall@0.10/tumor"] == pytest.approx(1.0)
    assert m["AP@0.25/tumor"] == pytest.approx(1.0)
    assert m["AP@0.50/tumor"] == 0.0 and m["recall@0.50/tumor"] == 0.0
    # No reference cyst: its AP is undefined and the mean skips it.
    assert math.isnan(m["AP@0.10/cyst"])
    assert m["mAP@0.10"] == pytest.approx(1.0)


def test_half_recall_with_a_missed_box_and_empty_predictions():
    gt = [np.vstack([BOX, BOX + 5]), BOX]
    preds = [BOX, np.zeros((0, 6))]
    m = detection_metrics(preds, [[0.9], []], [[0], []], gt, [[0, 0], [0]], NAMES)
    assert m["recall@0.50/cyst"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pred_scores": []},  # image count
        {"pred_boxes": [np.zeros((1, 4))]},  # 2D boxes
        {"pred_labels": [[2]]},  # label outside class_names
        {"pred_boxes": [BOX[:, [3, 1, 2, 0, 4, 5]]]},  # x2 < x1
        {"gt_labels": [[0, 1]]},  # count mismatch
        {"iou_thresholds": (0.0,)},
        {"class_names": ["a", "a"]},
    ],
)
def test_detection_bad_arguments_raise(kwargs):
    args = {
        "pred_boxes": [BOX],
        "pred_scores": [[0.5]],
        "pred_labels": [[0]],
        "gt_boxes": [BOX],
        "gt_labels": [[0]],
        "class_names": NAMES,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        detection_metrics(**args)


# ---------------------------------------------------------------- classification
def test_auc_perfect_and_inverted():
    labels = np.array([[0, 1], [0, 1], [1, 0], [1, 0]])
    probs = np.array([[0.1, 0.9], [0.2, 0.3], [0.7, 0.1], [0.6, 0.7]])
    m = classification_metrics(probs, labels, NAMES)
    assert m["AUC/cyst"] == pytest.approx(1.0)  # positives 0.7, 0.6 above negatives 0.1, 0.2
    # tumor positives 0.9, 0.3 vs negatives 0.1, 0.7: pairs 0.9>0.1, 0.9>0.7, 0.3>0.1 right, 0.3<0.7 wrong.
    assert m["AUC/tumor"] == pytest.approx(3 / 4)
    m = classification_metrics(1 - probs[:, :1], labels[:, :1], ["cyst"])
    assert m["AUC/cyst"] == pytest.approx(0.0) and m["AUC"] == pytest.approx(0.0)


def test_accuracy_and_macro_means_by_hand():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.6], [0.4, 0.1], [0.3, 0.2]])
    m = classification_metrics(torch.as_tensor(probs), torch.as_tensor(labels), NAMES)
    assert m["accuracy/cyst"] == pytest.approx(2 / 3)
    assert m["accuracy/tumor"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["AUC/cyst"] == pytest.approx(0.5)  # positives 0.9, 0.3 vs negative 0.4: one of two pairs right
    assert math.isnan(m["AUC/tumor"])  # one class only
    assert m["AUC"] == pytest.approx(0.5)  # the mean skips the undefined class


def test_not_annotated_labels_are_skipped():
    labels = np.array([[1.0], [0.0], [np.nan]])
    probs = np.array([[0.9], [0.1], [0.99]])
    m = classification_metrics(probs, labels, ["cyst"])
    assert m["AUC/cyst"] == pytest.approx(1.0) and m["accuracy/cyst"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "probs, labels, names",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), NAMES),
        (np.zeros((3, 2)), np.zeros((3, 2)), ["a"]),
        (np.zeros((3, 2)), np.full((3, 2), 2), NAMES),
        (np.full((3, 2), np.nan), np.zeros((3, 2)), NAMES),
    ],
)
def test_classification_bad_arguments_raise(probs, labels, names):
    with pytest.raises(ValueError):
        classification_metrics(probs, labels, names)
