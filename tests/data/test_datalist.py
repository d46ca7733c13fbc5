"""Tests of the datalist reader (unimed_core.data.datalist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unimed_core.data.datalist import (
    label_map_from_datalist,
    label_map_from_dict,
    label_map_to_dict,
    load_datalist,
    write_datalist,
)
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.dataset import generate_dataset

LM = LabelMap.default()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("imagesTr/a.nii.gz", "imagesTr/b.nii.gz", "labelsTr/a.nii.gz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _write(folder: Path, **splits) -> Path:
    return write_datalist(folder / "datalist.json", {"label_map": label_map_to_dict(LM), **splits})


def test_resolves_paths_and_keeps_missing_keys_missing(folder):
    path = _write(
        folder,
        training=[
            {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "boxes": [[0, 0, 0, 1, 2, 3]],
             "box_labels": ["cyst"], "class": "cyst", "domain": "ct"},
            {"image": "imagesTr/b.nii.gz", "class": []},
        ],
        unlabeled=[{"image": str(folder / "imagesTr/b.nii.gz")}],
    )  # fmt: skip
    out = load_datalist(path, LM)
    assert sorted(out) == ["test", "training", "unlabeled", "validation"]
    assert out["validation"] == [] and out["test"] == []
    first, second = out["training"]
    assert first["image"] == str(folder / "imagesTr/a.nii.gz") and Path(first["label"]).is_absolute()
    assert first["class"] == ["cyst"] and first["boxes"] == [[0.0, 0.0, 0.0, 1.0, 2.0, 3.0]]
    assert second == {"image": str(folder / "imagesTr/b.nii.gz"), "class": []}  # [] = annotated, none present
    assert out["unlabeled"][0]["image"] == str(folder / "imagesTr/b.nii.gz")


def test_accepts_a_generated_dataset(tmp_path):
    path = generate_dataset(tmp_path, 6, seed=2, shape=(24, 24, 20), spacing=(16.0, 16.0, 18.0), n_validation=1,
                            n_test=1, levels={"mask": 0.5, "boxes": 0.25, "none": 0.25})  # fmt: skip
    out = load_datalist(path)  # the datalist's own label map
    assert len(out["training"]) + len(out["unlabeled"]) == 4 and len(out["validation"]) == len(out["test"]) == 1
    assert all(Path(item["image"]).is_file() for items in out.values() for item in items)
    assert label_map_from_datalist(path) == LM


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"image": "imagesTr/missing.nii.gz"}, r"validation\[0\]: image file .*missing\.nii\.gz.* does not exist"),
        ({"image": "imagesTr/a.nii.gz", "label": "labelsTr/b.nii.gz"}, r"label file .*labelsTr/b\.nii\.gz"),
        (
            {"image": "imagesTr/a.nii.gz", "class": ["polyp"]},
            r"unknown image class \['polyp'\]; known image classes: \['cyst', 'tumor'\]",
        ),
        (
            {"image": "imagesTr/a.nii.gz", "boxes": [[0, 0, 0, 1, 1, 1]], "box_labels": ["liver"]},
            r"unknown class 'liver'; known box classes: \['cyst', 'tumor'\]",
        ),
        (
            {"image": "imagesTr/a.nii.gz", "boxes": [[0, 0, 0, 1, 1]], "box_labels": ["cyst"]},
            r"box 0 must be 6 finite numbers",
        ),
        (
            {"image": "imagesTr/a.nii.gz", "boxes": [[0, 0, 5, 1, 1, 1]], "box_labels": ["cyst"]},
            r"box 0 .* must have x1<=x2, y1<=y2, z1<=z2",
        ),
        ({"image": "imagesTr/a.nii.gz", "boxes": [[0, 0, 0, 1, 1, "a"]], "box_labels": ["cyst"]}, r"6 finite numbers"),
        ({"image": "imagesTr/a.nii.gz", "boxes": [[0, 0, 0, 1, 1, 1]], "box_labels": []}, r"1 boxes but 0 box_labels"),
        ({"image": "imagesTr/a.nii.gz", "boxes": []}, r"'boxes' and 'box_labels' go together"),
        ({"image": "imagesTr/a.nii.gz", "mask": "labelsTr/a.nii.gz"}, r"unknown keys \['mask'\]; known keys"),
        ({"label": "labelsTr/a.nii.gz"}, r"missing 'image'"),
        ("imagesTr/a.nii.gz", r"an item must be an object"),
    ],
)
def test_rejects_bad_items_naming_datalist_and_index(folder, item, match):
    path = _write(folder, training=[{"image": "imagesTr/b.nii.gz"}], validation=[item])
    with pytest.raises(ValueError, match=match) as info:
        load_datalist(path, LM)
    assert str(path) in str(info.value) and "validation[0]" in str(info.value)


def test_check_files_false_skips_existence(folder):
    path = _write(folder, training=[{"image": "imagesTr/missing.nii.gz"}])
    assert load_datalist(path, LM, check_files=False)["training"][0]["image"].endswith("missing.nii.gz")


def test_unlabeled_items_carry_no_annotation(folder):
    path = _write(folder, unlabeled=[{"image": "imagesTr/a.nii.gz", "class": ["cyst"]}])
    with pytest.raises(ValueError, match=r"unlabeled\[0\]: an unlabeled item carries only 'image'"):
        load_datalist(path, LM)


def test_rejects_malformed_files_and_mismatched_label_map(folder):
    bad = folder / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_datalist(bad, LM)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the datalist"):
        load_datalist(bad, LM)
    bad.write_text(json.dumps({"training": {"image": "x"}}))
    with pytest.raises(ValueError, match="'training' must be a list"):
        load_datalist(bad, LM)
    other = LabelMap({0: "background", 1: "lesion"}, ("lesion",), ("lesion",))
    path = _write(folder, training=[])
    with pytest.raises(ValueError, match="differs from the given one"):
        load_datalist(path, other)


def test_label_map_dict_round_trip():
    assert label_map_from_dict(label_map_to_dict(LM)) == LM
    with pytest.raises(ValueError, match="malformed label_map"):
        label_map_from_dict({"box_classes": []})
