"""unimed-prepare-dataset msd on a miniature Decathlon task."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tests.datasets.conftest import component_boxes, inside_image, msd_labels
from unimed_core.cli.prepare_dataset import main
from unimed_core.data.datalist import label_map_from_datalist, load_datalist
from unimed_core.data.image_io import read_image, read_label
from unimed_core.datasets.common import canonical_name
from unimed_core.datasets.msd import convert_msd, domain_of


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_msd_task_gives_masks_boxes_known_negatives_and_unlabeled_tests(msd_task, tmp_path, capsys):
    before = _digest(msd_task)
    assert main(["msd", str(msd_task), "--out", str(tmp_path / "out"), "--validation-fraction", "0.25"]) == 0
    assert "3 training, 1 validation, 0 test, 2 unlabeled" in capsys.readouterr().out
    datalist = tmp_path / "out" / "datalist.json"
    label_map = label_map_from_datalist(datalist)
    # "liver" keeps the label map's id, "cancer" is its "tumor"; nothing new was needed
    assert label_map.mask_classes == {0: "background", **{i: n for i, n in label_map.mask_classes.items() if i}}
    assert label_map.mask_classes_by_name()["liver"] == 1 and "cancer" not in label_map.class_names
    splits = load_datalist(datalist)
    items = splits["training"] + splits["validation"]
    assert len(items) == 4 and all(it["domain"] == "ct" for it in items)
    negatives = 0
    for item in items:
        label = read_label(item["label"], reference=read_image(item["image"]))
        source = read_label(msd_task / "labelsTr" / label.path.name)
        tumor = label_map.mask_classes_by_name()["tumor"]
        np.testing.assert_array_equal(label.array == tumor, source.array == 2)
        np.testing.assert_array_equal(label.array == 1, source.array == 1)
        expected = component_boxes(source.array, source.affine, 2)
        np.testing.assert_allclose(sorted(item["boxes"]), expected, atol=1e-6)
        assert item["box_labels"] == ["tumor"] * len(expected)
        assert all(inside_image(b, label.shape, label.affine) for b in item["boxes"])
        assert item["class"] == (["tumor"] if expected else [])
        negatives += not expected
    assert negatives == 1  # synth_3 has no lesion: a known negative, "class": []
    assert [it["image"].rsplit("/", 1)[-1] for it in splits["unlabeled"]] == ["synth_10.nii.gz", "synth_11.nii.gz"]
    assert set(splits["unlabeled"][0]) == {"image", "domain"}
    assert _digest(msd_task) == before  # the dataset's own files are only read
    assert json.loads(datalist.read_text())["source"]["dataset"] == "msd"


def test_msd_new_classes_are_appended_to_the_label_map(msd_task, tmp_path):
    path = convert_msd(msd_task, tmp_path, rename={"liver": "hepar", "cancer": "hcc"}, findings=["cancer"])
    lm = label_map_from_datalist(path)
    assert lm.mask_classes[7] == "hepar" and lm.mask_classes[8] == "hcc"
    assert lm.box_classes[-1] == "hcc" and lm.image_classes[-1] == "hcc"
    item = load_datalist(path)["training"][0]
    assert set(np.unique(read_label(item["label"]).array)) <= {0, 7, 8}


def test_msd_bad_input_names_the_file(msd_task, tmp_path, capsys):
    assert main(["msd", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "dataset.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--lesion names \\['edema'\\]"):
        convert_msd(msd_task, tmp_path / "o", findings=["edema"])
    broken = tmp_path / "Task98"
    broken.mkdir()
    meta = json.loads((msd_task / "dataset.json").read_text())
    meta["training"] = [{"image": "./imagesTr/missing.nii.gz", "label": "./labelsTr/missing.nii.gz"}]
    (broken / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="listed file ./imagesTr/missing.nii.gz does not exist"):
        convert_msd(broken, tmp_path / "o")


def test_msd_undeclared_label_value_is_refused(msd_task, tmp_path):
    from tests.datasets.conftest import case, save_nifti

    root = tmp_path / "Task97"
    c = case(0)
    save_nifti(c.image, c.affine, root / "imagesTr" / "a.nii.gz")
    save_nifti(msd_labels(c.label) * 2, c.affine, root / "labelsTr" / "a.nii.gz")  # values 0, 2, 4
    meta = {"labels": {"0": "background", "1": "liver", "2": "cancer"}, "modality": {"0": "CT"}}
    meta["training"] = [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="label values \\[4\\] are not declared"):
        convert_msd(root, tmp_path / "o")


def test_names_and_domains():
    assert canonical_name("Enhancing Tumour") == "enhancing_tumor"
    assert canonical_name("cancer") == "tumor" and canonical_name("Left-Kidney") == "left_kidney"
    assert domain_of("CT") == "ct" and domain_of("FLAIR") == "mr" and domain_of("T2") == "mr"
    with pytest.raises(ValueError, match="no letters"):
        canonical_name("  ")


def test_a_task_without_finding_classes_claims_no_negatives(msd_task, tmp_path):
    items = load_datalist(convert_msd(msd_task, tmp_path, findings=[]))["training"]
    assert all("label" in it and "class" not in it and "boxes" not in it for it in items)
