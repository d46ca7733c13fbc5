"""Units of unimed_core.engine that the configs wire: inputs, handlers, the net_in_out wrapper, few-shot mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unimed_core.data.datalist import load_datalist
from unimed_core.data.image_io import read_label, write_label
from unimed_core.engine import (
    NetInOut,
    WeightHashes,
    bundle_root,
    fewshot_splits,
    inference_items,
    map_class_name,
    rank_handlers,
)
from unimed_core.engine.inputs import LoadVolumed
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights


def test_inference_items_file_folder_dicom_and_errors(tiny_data, tmp_path):
    images = sorted((tiny_data.parent / "imagesTr").iterdir())
    assert inference_items(images[0]) == [{"image": str(images[0].resolve())}]
    # a folder of volumes: each is an input; earlier outputs beside them are not
    (images[0].parent / "old_seg.nii.gz").write_bytes(b"")
    folder = inference_items(images[0].parent)
    assert [Path(i["image"]) for i in folder] == [p.resolve() for p in images]
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"\0")
    assert inference_items(dicom) == [{"image": str(dicom.resolve())}]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty folder"):
        inference_items(tmp_path / "empty")
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        inference_items(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match="input_path"):
        inference_items(None)


def test_inference_items_from_datalist(tiny_data):
    items = inference_items(datalist=tiny_data, section="test")
    expected = load_datalist(tiny_data)["test"]
    assert [i["image"] for i in items] == [e["image"] for e in expected]
    with pytest.raises(ValueError, match="section"):
        inference_items(datalist=tiny_data, section="nope")


def test_load_volumed_keeps_geometry(tiny_data):
    image = load_datalist(tiny_data)["test"][0]["image"]
    volume = LoadVolumed(keys="image")({"image": image})["image"]
    assert volume.shape == (32, 32, 32)
    np.testing.assert_allclose(volume.spacing, [10.0, 10.0, 10.0])


def test_bundle_root_from_repo_root_and_bundle(monkeypatch, tmp_path):
    from tests.bundle.conftest import BUNDLE

    monkeypatch.chdir(BUNDLE.parent)
    assert Path(bundle_root()) == BUNDLE
    monkeypatch.chdir(BUNDLE)
    assert Path(bundle_root()) == BUNDLE


def test_net_in_out_returns_label_patches():
    predictor = UniMedPredictor(unimed_small(), LabelMap.default(), spacing=(10, 10, 10), roi_size=(32, 32, 32))
    net = NetInOut(predictor)
    out = net(torch.rand(2, 1, 32, 32, 32))
    assert out.shape == (2, 1, 32, 32, 32) and out.dtype == torch.int16
    assert int(out.min()) >= 0 and int(out.max()) < LabelMap.default().num_mask_classes
    with pytest.raises(ValueError, match="B, 1, D, H, W"):
        net(torch.rand(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="UniMedPredictor"):
        NetInOut(unimed_small())


def test_weight_hashes_written_refreshed_and_pruned(weights, tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(weights.read_bytes())
    (tmp_path / "gone.pt.sha256").write_text("0  gone.pt\n")
    WeightHashes(tmp_path)()
    assert not (tmp_path / "gone.pt.sha256").exists()
    load_weights(unimed_small(), target)  # the sidecar is what load_weights checks
    with pytest.raises(ValueError, match="Events"):
        WeightHashes(tmp_path, event="NOT_AN_EVENT")


def test_rank_handlers_without_distributed_keeps_all():
    handlers = [object(), object()]
    assert rank_handlers(handlers) == handlers


def _user_datalist(tiny_data: Path, tmp_path: Path) -> Path:
    """The tiny datalist in a user's own words: other class names and other mask ids (liver 1 <-> spleen 2)."""
    data = json.loads(tiny_data.read_text())
    names = {"cyst": "renal_cyst", "tumor": "hepatic_lesion", "liver": "liver_parenchyma"}
    swap = {1: 2, 2: 1}
    (tmp_path / "user_labels").mkdir()
    for split in ("training", "validation", "test", "unlabeled"):
        for item in data[split]:
            item["image"] = str(tiny_data.parent / item["image"])
            if "box_labels" in item:
                item["box_labels"] = [names.get(n, n) for n in item["box_labels"]]
            if "class" in item:
                item["class"] = [names.get(n, n) for n in item["class"]]
            if "label" in item:
                source = tiny_data.parent / item["label"]
                label = read_label(source)
                array = label.array.copy()
                for a, b in swap.items():
                    array[label.array == a] = b
                item["label"] = str(write_label(array, label, tmp_path / "user_labels" / source.name))
    mask = {str(k): v for k, v in LabelMap.default().mask_classes.items()}
    mask["1"], mask["2"] = mask["2"], mask["1"]
    mask = {k: names.get(v, v) for k, v in mask.items()}
    data["label_map"] = {
        "mask_classes": mask,
        "box_classes": ["renal_cyst", "hepatic_lesion"],
        "image_classes": ["renal_cyst", "hepatic_lesion"],
    }
    path = tmp_path / "user_datalist.json"
    path.write_text(json.dumps(data))
    return path


MAPPING = {"renal_cyst": "cyst", "hepatic_lesion": "tumor", "liver_parenchyma": "liver"}


def test_fewshot_splits_maps_names_and_mask_ids(tiny_data, tmp_path):
    user = _user_datalist(tiny_data, tmp_path)
    label_map = LabelMap.default()
    splits = fewshot_splits(user, MAPPING, label_map, tmp_path / "work")
    original = load_datalist(tiny_data)
    for split in ("training", "validation", "test"):
        for mapped, ref in zip(splits[split], original[split]):
            assert mapped.get("box_labels") == ref.get("box_labels")
            assert mapped.get("class") == ref.get("class")
            if "label" in ref:  # the ids are back to the bundle's
                np.testing.assert_array_equal(read_label(mapped["label"]).array, read_label(ref["label"]).array)


def test_fewshot_splits_refuses_unknown_names_and_too_many_cases(tiny_data, tmp_path):
    user = _user_datalist(tiny_data, tmp_path)
    with pytest.raises(ValueError, match="hepatic_lesion"):
        fewshot_splits(user, {"renal_cyst": "cyst", "liver_parenchyma": "liver"}, LabelMap.default(), tmp_path / "w")
    with pytest.raises(ValueError, match="max_cases"):
        fewshot_splits(user, MAPPING, LabelMap.default(), tmp_path / "w", max_cases=2)
    with pytest.raises(ValueError, match="vocabulary"):
        map_class_name("lung", {}, LabelMap.default())
