"""The app's pure parts, without a server: label files of each level, and the level suggestion rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monailabel_helpers import app_module

from unimed_core.label_map import LabelMap

LABEL_MAP = LabelMap.default()


annotations = app_module("annotations")
uncertainty = app_module("uncertainty")


def _roi(center, size, system="RAS", **extra):
    return {"type": "ROI", "coordinateSystem": system, "center": center, "size": size, **extra}


def test_markups_in_lps_become_ras_corner_boxes():
    doc = {"markups": [_roi([10.0, -20.0, 5.0], [4.0, 6.0, 8.0], "LPS", label={"value": "cyst"})]}
    boxes, names = annotations.markups_to_boxes(doc, LABEL_MAP)
    np.testing.assert_allclose(boxes, [[-12.0, 17.0, 1.0, -8.0, 23.0, 9.0]])
    assert names == ["cyst"]


def test_rotated_roi_gives_its_axis_aligned_bounds():
    quarter_turn = [0, -1, 0, 1, 0, 0, 0, 0, 1]  # x and y swapped
    doc = {"markups": [_roi([0.0, 0.0, 0.0], [2.0, 4.0, 6.0], orientation=quarter_turn, name="tumor 0.9")]}
    boxes, names = annotations.markups_to_boxes(doc, LABEL_MAP)
    np.testing.assert_allclose(boxes, [[-2.0, -1.0, -3.0, 2.0, 1.0, 3.0]])
    assert names == ["tumor"]


def test_roi_class_falls_back_to_box_labels_and_refuses_unknown():
    doc = {"markups": [_roi([0, 0, 0], [1, 1, 1], name="Detection ROI - 0")]}
    assert annotations.markups_to_boxes(doc, LABEL_MAP, ["tumor"])[1] == ["tumor"]
    with pytest.raises(ValueError, match="names no box class"):
        annotations.markups_to_boxes(doc, LABEL_MAP)
    with pytest.raises(ValueError, match="coordinateSystem"):
        annotations.markups_to_boxes({"markups": [_roi([0, 0, 0], [1, 1, 1], "IJK")]}, LABEL_MAP, ["cyst"])


def test_label_files_give_items_of_their_level(tmp_path):
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({"markups": [_roi([0, 0, 0], [2, 2, 2], name="cyst")], "classes": ["cyst"]}))
    both = annotations.label_item("img.nii.gz", boxes, LABEL_MAP)
    assert annotations.item_levels(both) == ["class", "boxes"]
    assert both["class"] == ["cyst"] and both["box_labels"] == ["cyst"]
    mask = annotations.label_item("img.nii.gz", tmp_path / "m.nii.gz", LABEL_MAP)
    assert annotations.item_levels(mask) == ["mask"]
    (tmp_path / "c.json").write_text(json.dumps({"classes": ["liver"]}))  # not an image class
    with pytest.raises(ValueError, match="unknown image classes"):
        annotations.label_item("img.nii.gz", tmp_path / "c.json", LABEL_MAP)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="markups"):
        annotations.label_item("img.nii.gz", tmp_path / "x.json", LABEL_MAP)
    with pytest.raises(ValueError, match="a label is a volume"):
        annotations.label_item("img.nii.gz", tmp_path / "x.txt", LABEL_MAP)
    counts = annotations.count_levels([both, mask], [{"image": "u.nii.gz"}])
    assert counts == {"class": 1, "boxes": 1, "mask": 1, "unlabeled": 1}


def test_suggested_level_is_the_term_that_stands_out_and_ties_go_cheapest():
    scores = {
        "a": {"class": 0.9, "boxes": 0.5, "mask": 0.1},  # image classes unusually unsure → an image label
        "b": {"class": 0.3, "boxes": 0.5, "mask": 0.3},  # masks unusually unsure relative to the others
        "c": {"class": 0.3, "boxes": 0.5, "mask": 0.2},  # boxes and mask both at their mean: the cheaper wins
    }
    levels = uncertainty.suggest_levels(scores)
    assert levels["a"] == "class"
    assert levels["b"] == "mask"
    assert levels["c"] == "boxes"
    tie = uncertainty.suggest_levels({"x": {"class": 0.2, "boxes": 0.2, "mask": 0.2}})
    assert tie == {"x": "class"}
    assert uncertainty.rank({"p": 0.2, "q": 0.7, "r": 0.7}) == ["q", "r", "p"]
    u = uncertainty.Uncertainty(mask=0.3, boxes=0.6, image=0.9)
    assert u.combined == pytest.approx(0.6) and u.terms() == {"class": 0.9, "boxes": 0.6, "mask": 0.3}
