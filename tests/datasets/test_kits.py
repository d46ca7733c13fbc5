"""unimed-prepare-dataset kits: kidney, tumour and cyst case folders."""

from __future__ import annotations

import numpy as np

from tests.datasets.conftest import ID, component_boxes, inside_image
from unimed_core.cli.prepare_dataset import main
from unimed_core.data.datalist import label_map_from_datalist, load_datalist
from unimed_core.data.image_io import read_image, read_label


def test_kits_cases_become_masks_boxes_and_labels(kits_root, tmp_path, capsys):
    root, cases = kits_root
    assert main(["kits", str(root), "--out", str(tmp_path), "--validation-fraction", "0"]) == 0
    assert "3 training, 0 validation, 0 test, 1 unlabeled" in capsys.readouterr().out
    lm = label_map_from_datalist(tmp_path / "datalist.json")
    ids = lm.mask_classes_by_name()
    assert ids["kidney"] == 7 and ids["tumor"] == ID["tumor"] and ids["cyst"] == ID["cyst"]
    splits = load_datalist(tmp_path / "datalist.json")
    assert splits["unlabeled"][0]["image"].endswith("case_00003/imaging.nii.gz")
    for item in splits["training"]:
        c = cases[item["image"].rsplit("/", 2)[-2]]
        label = read_label(item["label"], reference=read_image(item["image"]))
        kidney = (c.label == ID["kidney_left"]) | (c.label == ID["kidney_right"])
        np.testing.assert_array_equal(label.array == 7, kidney)
        expected = sorted(
            component_boxes(c.label, c.affine, ID["tumor"]) + component_boxes(c.label, c.affine, ID["cyst"])
        )
        np.testing.assert_allclose(sorted(item["boxes"]), expected, atol=1e-6)
        assert all(inside_image(b, label.shape, label.affine) for b in item["boxes"])
        assert item["class"] == [n for n in ("tumor", "cyst") if n in item["box_labels"]]
    assert [it["class"] for it in splits["training"]].count([]) == 1  # case 2: a known negative
