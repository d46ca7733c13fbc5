"""The one label map: read from the bundle's metadata, class order, lookups and their errors, colours."""

from __future__ import annotations

import json

import pytest

from unimed_core.label_map import DEFAULT_METADATA, LabelMap


def test_from_metadata_reads_the_bundle_outputs():
    meta = json.loads(DEFAULT_METADATA.read_text(encoding="utf-8"))
    outputs = meta["network_data_format"]["outputs"]
    lm = LabelMap.from_metadata(DEFAULT_METADATA)
    assert lm.mask_classes == {int(k): v for k, v in outputs["pred"]["channel_def"].items()}
    assert lm.box_classes == tuple(outputs["boxes"]["labels"])
    assert lm.image_classes == tuple(outputs["classes"]["labels"])
    assert lm == LabelMap.default()
    assert lm.num_mask_classes == len(outputs["pred"]["channel_def"])


def test_class_names_order_mask_then_new_box_then_new_image():
    lm = LabelMap({0: "background", 1: "liver", 2: "tumor"}, ("lymph_node", "tumor"), ("tumor", "ascites"))
    assert lm.class_names == ("liver", "tumor", "lymph_node", "ascites")
    assert [lm.class_index(n) for n in lm.class_names] == [0, 1, 2, 3]
    assert lm.box_class_indices() == [2, 1]
    assert lm.image_class_indices() == [1, 3]
    # mask id ↔ class index round trip, and a class without a mask label has none
    for mask_id in range(1, lm.num_mask_classes):
        assert lm.class_index_to_mask_id(lm.mask_id_to_class_index(mask_id)) == mask_id
    assert lm.class_index_to_mask_id(lm.class_index("ascites")) is None
    assert lm.mask_classes_by_name() == {"background": 0, "liver": 1, "tumor": 2}


def test_default_label_map_class_names():
    lm = LabelMap.default()
    assert lm.class_names == ("liver", "spleen", "kidney_left", "kidney_right", "cyst", "tumor")
    assert lm.box_class_indices() == [4, 5]


def test_class_index_unknown_lists_known_classes():
    lm = LabelMap.default()
    with pytest.raises(ValueError, match="unknown class 'pancreas'") as info:
        lm.class_index("pancreas")
    for name in lm.class_names:
        assert name in str(info.value)


@pytest.mark.parametrize("mask_classes", [{0: "background", 2: "liver"}, {1: "liver"}, {}])
def test_gaps_in_ids_are_refused(mask_classes):
    with pytest.raises(ValueError, match="without gaps"):
        LabelMap(mask_classes)


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        LabelMap({0: "background", 1: "liver", 2: "liver"})
    with pytest.raises(ValueError, match="box_classes must be unique"):
        LabelMap({0: "background", 1: "liver"}, ("tumor", "tumor"))


def test_mask_id_out_of_range_is_refused():
    with pytest.raises(ValueError, match="not a foreground label id"):
        LabelMap.default().mask_id_to_class_index(0)


def test_color_declared_palette_and_fallback():
    lm = LabelMap({0: "background", 1: "liver", 2: "spleen"}, colors={"liver": (1, 2, 3)})
    assert lm.color("liver") == (1, 2, 3)
    spleen = lm.color("spleen")
    assert spleen != (128, 128, 128) and all(0 <= c <= 255 for c in spleen)
    assert lm.color("not_a_class") == (128, 128, 128)
    # the bundle declares a colour for every class
    default = LabelMap.default()
    meta = json.loads(DEFAULT_METADATA.read_text(encoding="utf-8"))
    for name, rgb in meta["unimed_colors"].items():
        assert default.color(name) == tuple(rgb)


def test_from_metadata_bad_file(tmp_path):
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps({"network_data_format": {"outputs": {}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read the label map") as info:
        LabelMap.from_metadata(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(ValueError, match="cannot read the label map"):
        LabelMap.from_metadata(tmp_path / "missing.json")


def test_from_metadata_round_trip(tmp_path):
    lm = LabelMap({0: "background", 1: "liver", 2: "tumor"}, ("tumor",), ("tumor",), {"liver": (9, 8, 7)})
    meta = {
        "network_data_format": {
            "outputs": {
                "pred": {"channel_def": {str(k): v for k, v in lm.mask_classes.items()}},
                "boxes": {"labels": list(lm.box_classes)},
                "classes": {"labels": list(lm.image_classes)},
            }
        },
        "unimed_colors": {k: list(v) for k, v in lm.colors.items()},
    }
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta), encoding="utf-8")
    assert LabelMap.from_metadata(path) == lm


def test_every_class_of_the_shipped_label_map_has_snomed_codes():
    default = LabelMap.default()
    for name in default.class_names:
        codes = default.codes(name)
        assert codes is not None, name
        assert codes["category"][0] == codes["type"][0] == "SCT"
        assert all(len(c) == 3 and c[1].isdigit() for c in codes.values())
    assert default.codes("kidney_left")["type"] == default.codes("kidney_right")["type"]  # Kidney, two modifiers
    assert default.codes("kidney_left")["typeModifier"] != default.codes("kidney_right")["typeModifier"]
    assert default.codes("no such class") is None


@pytest.mark.parametrize(
    "terminology, message",
    [
        ({"spleen": {"category": ["SCT", "1", "a"], "type": ["SCT", "2", "b"]}}, "not a class"),
        ({"liver": {"type": ["SCT", "2", "b"]}}, "needs a category and a type"),
        ({"liver": {"category": ["SCT", "1"], "type": ["SCT", "2", "b"]}}, r"as \(scheme, code, meaning\)"),
        ({"liver": {"category": ["SCT", "1", "a"], "type": ["SCT", "2", "b"], "colour": []}}, "scheme, code"),
    ],
)
def test_bad_terminology_is_refused(terminology, message):
    with pytest.raises(ValueError, match=message):
        LabelMap({0: "background", 1: "liver"}, terminology=terminology)
