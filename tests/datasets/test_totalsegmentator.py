"""unimed-prepare-dataset totalsegmentator: per-structure masks merged into one label volume."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.datasets.conftest import ID
from unimed_core.cli.prepare_dataset import main
from unimed_core.data.datalist import label_map_from_datalist, load_datalist
from unimed_core.data.image_io import read_image, read_label
from unimed_core.datasets.totalsegmentator import convert_totalsegmentator


def test_default_structures_keep_the_label_maps_ids_and_splits_follow_meta_csv(totalseg_root, tmp_path):
    root, cases = totalseg_root
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.nii.gz")}
    path = convert_totalsegmentator(root, tmp_path)
    assert label_map_from_datalist(path).mask_classes == {
        i: n for i, n in label_map_from_datalist(path).mask_classes.items() if i < 7
    }
    splits = load_datalist(path)
    assert [len(splits[s]) for s in ("training", "validation", "test", "unlabeled")] == [2, 1, 1, 0]
    for item in splits["training"] + splits["validation"] + splits["test"]:
        assert "class" not in item and "boxes" not in item  # no findings annotated: not "negative"
        name = item["image"].rsplit("/", 2)[-2]
        label = read_label(item["label"], reference=read_image(item["image"]))
        organs = np.isin(cases[name].label, [ID[n] for n in ("liver", "spleen", "kidney_left", "kidney_right")])
        np.testing.assert_array_equal(label.array, np.where(organs, cases[name].label, 0))
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.nii.gz")} == before


def test_new_structure_is_appended_and_overlaps_keep_the_first(totalseg_root, tmp_path, capsys):
    root, cases = totalseg_root
    assert main(["totalsegmentator", str(root), "--out", str(tmp_path), "--structures", "liver", "aorta"]) == 0
    lm = label_map_from_datalist(tmp_path / "datalist.json")
    assert lm.mask_classes[7] == "aorta"
    item = load_datalist(tmp_path / "datalist.json")["training"][0]
    label = read_label(item["label"]).array
    liver = cases["s0000"].label == ID["liver"]
    np.testing.assert_array_equal(label == 1, liver)
    bar = np.zeros(label.shape, bool)
    bar[14:17, 14:17, :] = True
    np.testing.assert_array_equal(label == 7, bar & ~liver)


def test_unknown_structure_and_missing_meta_row(totalseg_root, tmp_path):
    root, _ = totalseg_root
    with pytest.raises(ValueError, match="no structures \\['pancreas'\\]"):
        convert_totalsegmentator(root, tmp_path, structures=["pancreas"])
    import shutil

    copy = tmp_path / "ts"
    shutil.copytree(root, copy)
    (copy / "meta.csv").write_text("image_id;split\ns0000;train\n")
    with pytest.raises(ValueError, match="subject s0001 has no row"):
        convert_totalsegmentator(copy, tmp_path / "o")
