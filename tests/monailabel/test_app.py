"""The UniMed MONAI Label app, driven through a real server with MONAI Label's own client.

Tests run in file order on one server (module fixture): inference first, then labels, active learning on the
images left unlabeled, training (which swaps the weights), and last a clean stop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel_helpers import NOISE, STUDIES, app_module

from unimed_core.cli.infer import FAMILIARITY, build_predictor
from unimed_core.data.image_io import read_image
from unimed_core.evaluation import interior_point
from unimed_core.inference.familiarity import FamiliarityReference
from unimed_core.label_map import LabelMap
from unimed_core.paths import BUNDLE_DIR, DEFAULT_WEIGHTS

LABEL_MAP = LabelMap.default()


def _params(params) -> dict:
    # MONAILabelClient.infer hands back the raw body when the answer has no file
    return json.loads(params) if isinstance(params, (bytes, str)) else params


def _input(server, name: str):
    return nib.load(server.studies / f"{name}.nii.gz")


def _assert_on_input_grid(path: str, server, name: str) -> np.ndarray:
    out, ref = nib.load(path), _input(server, name)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    return np.asarray(out.dataobj)


def test_info_lists_models_with_labels_from_metadata(server):
    info = server.client().info()
    models = info["models"]
    assert set(models) == {"unimed", "unimed_detection", "unimed_classification", "unimed_interactive"}
    assert models["unimed"]["labels"] == {name: i for i, name in LABEL_MAP.mask_classes.items()}
    assert models["unimed"]["type"] == "segmentation"
    assert models["unimed_detection"]["type"] == "detection"
    assert models["unimed_detection"]["labels"] == list(LABEL_MAP.box_classes)
    assert models["unimed_classification"]["labels"] == list(LABEL_MAP.image_classes)
    assert models["unimed_interactive"]["type"] == "deepgrow"
    assert info["labels"] == [LABEL_MAP.mask_classes[i] for i in sorted(LABEL_MAP.mask_classes)]
    assert "unimed" in info["trainers"]
    assert {"unimed_uncertainty", "random"} <= set(info["strategies"])
    assert "unimed_uncertainty" in info["scoring"]
    assert info["weights"]["sha256"] == server.weights.with_name(server.weights.name + ".sha256").read_text().split()[0]
    assert info["version"] == json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())["version"]


def test_segmentation_gives_label_volume_boxes_and_probabilities(server):
    path, params = server.client().infer("unimed", "case_a", {})
    labels = _assert_on_input_grid(path, server, "case_a")
    assert set(np.unique(labels).tolist()) <= set(LABEL_MAP.mask_classes)
    params = _params(params)
    assert set(params["probabilities"]) == set(LABEL_MAP.image_classes)
    assert all(0.0 <= p <= 1.0 for p in params["probabilities"].values())
    assert "RAS" in params["coordinates"]
    assert all(d["label"] in LABEL_MAP.box_classes and len(d["box"]) == 6 for d in params["detections"])


def test_detection_gives_slicer_roi_markups_in_ras(server):
    annotations = app_module("annotations")
    path, params = server.client().infer("unimed_detection", "case_a", {})
    assert path.endswith(".json")
    document = json.loads(Path(path).read_text())
    detections = _params(params)["detections"]
    assert len(document["markups"]) == len(detections) > 0  # the server keeps every box (score_threshold 0)
    assert all(m["type"] == "ROI" and m["coordinateSystem"] == "RAS" for m in document["markups"])
    # the file reads back (as a box label would) to the boxes in the JSON answer
    boxes, names = annotations.markups_to_boxes(document, LABEL_MAP)
    np.testing.assert_allclose(boxes, [d["box"] for d in detections], atol=1e-3)
    assert names == [d["label"] for d in detections]


def test_classification_gives_probabilities_only(server):
    path, params = server.client().infer("unimed_classification", "case_a", {})
    params = _params(params)
    assert path is None
    assert list(params["probabilities"]) == list(LABEL_MAP.image_classes)
    expected = [n for n, p in params["probabilities"].items() if p >= params["threshold"]]
    assert params["prediction"] == expected


def test_interactive_clicks_in_voxels_and_in_ras_agree(server):
    truth = nib.load(server.truth / "case_b_label.nii.gz")
    # where a user would click (and where the evaluation clicks): the liver's most interior voxel. A click near the
    # liver's edge (the middle voxel of its list, (29, 28, 39) in case_b) gets an empty mask from the 2026-12-03
    # weights: the shipped model's click Dice is 0.78, not 1, and its failures are clicks far from the centre.
    voxel = [int(v) for v in interior_point(np.asarray(truth.dataobj) == LABEL_MAP.mask_classes_by_name()["liver"])]
    world = (truth.affine @ np.append(voxel, 1.0))[:3].tolist()
    client = server.client()
    by_voxel, params = client.infer("unimed_interactive", "case_b", {"foreground": [voxel], "background": []})
    mask_voxel = _assert_on_input_grid(by_voxel, server, "case_b")
    assert set(np.unique(mask_voxel).tolist()) <= {0, 1}
    assert _params(params)["voxels"] == int(mask_voxel.sum())
    if server.weights == DEFAULT_WEIGHTS:
        assert mask_voxel.sum() > 0  # trained weights find the liver under the click
    by_world, _ = client.infer("unimed_interactive", "case_b", {"foreground": [world], "coordinates": "RAS mm"})
    np.testing.assert_array_equal(_assert_on_input_grid(by_world, server, "case_b"), mask_voxel)
    # the UniMed Slicer extension's server mode: the "unimed" model with clicks in RAS mm
    by_unimed, params = client.infer("unimed", "case_b", {"foreground": [world], "coordinates": "RAS mm"})
    np.testing.assert_array_equal(_assert_on_input_grid(by_unimed, server, "case_b"), mask_voxel)
    assert _params(params)["mode"] == "clicks"


def test_interactive_box_in_voxels_and_in_ras_agree(server):
    """A box (``roi``) around case_b's liver: the model's box prompt, as voxel indices or world RAS mm."""
    from unimed_core.data.boxes import voxel_to_world_boxes

    truth = nib.load(server.truth / "case_b_label.nii.gz")
    liver = np.asarray(truth.dataobj) == LABEL_MAP.mask_classes_by_name()["liver"]
    idx = np.argwhere(liver)
    voxels = [*idx.min(0).tolist(), *(idx.max(0) + 1).tolist()]  # MONAI's box convention: the end is exclusive
    world = voxel_to_world_boxes(np.array([voxels], float), truth.affine)[0].tolist()
    client = server.client()
    by_voxel, params = client.infer("unimed_interactive", "case_b", {"roi": voxels})
    mask = _assert_on_input_grid(by_voxel, server, "case_b")
    assert _params(params)["mode"] == "box" and _params(params)["voxels"] == int(mask.sum())
    inside = np.zeros_like(liver)
    inside[voxels[0] : voxels[3], voxels[1] : voxels[4], voxels[2] : voxels[5]] = True
    assert not np.any(mask[~inside])  # only what lies in the box
    by_world, _ = client.infer("unimed_interactive", "case_b", {"roi": world, "coordinates": "RAS mm"})
    np.testing.assert_array_equal(_assert_on_input_grid(by_world, server, "case_b"), mask)
    by_unimed, params = client.infer("unimed", "case_b", {"roi": world, "coordinates": "RAS mm"})
    np.testing.assert_array_equal(_assert_on_input_grid(by_unimed, server, "case_b"), mask)
    assert _params(params)["mode"] == "box"
    if server.weights == DEFAULT_WEIGHTS:  # a loose bound: the value of the day is in docs/reliability.md
        dice = 2 * np.logical_and(mask > 0, liver).sum() / ((mask > 0).sum() + liver.sum())
        assert dice >= 0.5, f"box Dice {dice:.2f}"
    with pytest.raises(Exception, match="400|roi"):
        client.infer("unimed_interactive", "case_b", {"roi": [1, 2, 3]})


def test_results_warn_about_a_scan_unlike_the_training_data(server):
    """Pure noise is not an abdomen: every model answers, and says so; a generated abdomen gets no warning."""
    client = server.client()
    _, params = client.infer("unimed", NOISE, {})
    signals = {w["signal"] for w in _params(params)["warnings"]}
    assert signals & {"region", "intensity"} and signals <= {"region", "intensity", "uncertainty"}
    assert all(w["message"] for w in _params(params)["warnings"])
    _, params = client.infer("unimed_classification", NOISE, {})
    assert _params(params)["warnings"] and "probabilities" in _params(params)
    _, params = client.infer("unimed", "case_a", {})
    assert _params(params)["warnings"] == []
    # the model's own uncertainty is checked when the statistics were calibrated for the weights being served
    reference = FamiliarityReference.load(FAMILIARITY)
    served = server.weights.with_name(server.weights.name + ".sha256").read_text().split()[0]
    if "uncertainty" in reference.limits and reference.weights_sha256 == served:
        assert set(_params(params)["uncertainty"]) == {"mask", "boxes", "image", "combined"}
    else:
        assert "uncertainty" not in _params(params)


def _save_labels(server, root: Path) -> None:
    """case_a: mask; case_b: boxes (Slicer markups, LPS, class in label.value); case_c: image label."""
    annotations = app_module("annotations")
    client = server.client()
    client.save_label("case_a", str(server.truth / "case_a_label.nii.gz"))
    boxes = np.load(server.truth / "case_b_boxes.npy")
    markups = []
    for box, name in zip(boxes, [LABEL_MAP.box_classes[i % 2] for i in range(len(boxes))]):
        lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
        centre_lps = ((lo + hi) / 2 * [-1, -1, 1]).tolist()
        markups.append({"type": "ROI", "coordinateSystem": "LPS", "center": centre_lps, "size": (hi - lo).tolist(),
                        "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1], "name": "Detection ROI", "label": {"value": name}})  # fmt: skip
    (root / "case_b.json").write_text(json.dumps({"markups": markups}))
    client.save_label("case_b", str(root / "case_b.json"))
    (root / "case_c.json").write_text(json.dumps(annotations.image_label_document(["tumor"], LABEL_MAP)))
    client.save_label("case_c", str(root / "case_c.json"))


def test_saved_labels_of_each_level_are_stored_and_counted(server, tmp_path):
    _save_labels(server, tmp_path)
    client = server.client()
    info = client.info()
    assert info["annotation_levels"] == {"class": 1, "boxes": 1, "mask": 1, "unlabeled": len(STUDIES) - 2}
    objects = client.datastore()["objects"]
    assert {i: objects[i]["labels"]["final"]["info"]["levels"] for i in ("case_a", "case_b", "case_c")} == {
        "case_a": ["mask"],
        "case_b": ["boxes"],
        "case_c": ["class"],
    }
    # a label naming a class the label map does not have is refused and not stored
    (tmp_path / "bad.json").write_text(json.dumps({"classes": ["not_a_class"]}))
    with pytest.raises(Exception, match="not_a_class"):
        client.save_label("case_d", str(tmp_path / "bad.json"))
    assert client.info()["annotation_levels"]["unlabeled"] == len(STUDIES) - 2


def test_active_learning_picks_the_least_certain_image(server):
    uncertainty = app_module("uncertainty")
    unlabeled = sorted(["case_d", "case_e", NOISE])
    predictor = build_predictor(server.weights, "cpu")
    reference = {
        i: uncertainty.volume_uncertainty(predictor, read_image(server.studies / f"{i}.nii.gz")) for i in unlabeled
    }
    best = max(reference[i].combined for i in unlabeled)
    client = server.client()
    picks = [client.next_sample("unimed_uncertainty", {})["id"] for _ in range(3)]
    assert len(set(picks)) == 1  # deterministic: the same least certain image every time
    assert reference[picks[0]].combined == pytest.approx(best, abs=1e-4)
    # MONAI Label's random strategy avoids what it just gave, so it cannot keep pointing at that image
    random_picks = {client.next_sample("random", {})["id"] for _ in range(2)}
    assert len(random_picks) > 1
    # the scoring method stores each unlabeled image's scores (and a level) in the datastore
    response = requests.post(f"{server.url}/scoring/unimed_uncertainty?run_sync=true", json={}, timeout=300)
    assert response.status_code == 200, response.text
    objects = client.datastore()["objects"]
    for image_id in unlabeled:
        stored = objects[image_id]["image"]["info"][uncertainty.SCORE_KEY]
        assert stored["combined"] == pytest.approx(reference[image_id].combined, abs=1e-4)
        assert stored["suggested_level"] in ("class", "boxes", "mask")
    levels = uncertainty.suggest_levels({i: reference[i].terms() for i in unlabeled})
    assert {i: objects[i]["image"]["info"][uncertainty.SCORE_KEY]["suggested_level"] for i in unlabeled} == levels


def _wait_for_training(client, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.train_status()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        assert time.monotonic() < deadline, "training did not finish in time"
        time.sleep(2.0)


def test_training_swaps_in_new_weights_that_serve_the_next_inference(server, tmp_path):
    _save_labels(server, tmp_path)
    client = server.client()
    before = _params(client.infer("unimed_classification", "case_a", {})[1])["weights_sha256"]
    client.train_start("unimed", {"max_steps": 2, "batch_size": 1, "val_split": 0.0})
    status = _wait_for_training(client)
    assert status["status"] == "DONE", status
    served = server.model_dir / "unimed.pt"
    assert served.is_file() and served.with_name("unimed.pt.sha256").is_file()
    assert not list(server.model_dir.glob(".*.tmp*"))  # the temporary file was renamed, not left behind
    after = _params(client.infer("unimed_classification", "case_a", {})[1])["weights_sha256"]
    assert after != before
    assert after == served.with_name("unimed.pt.sha256").read_text().split()[0]
    stats = client.info()["train_stats"]["unimed"]
    assert stats["swapped"] is True and stats["items"]["mask"] == 1 and stats["items"]["unlabeled"] >= 2


def test_server_stops_cleanly_without_leftover_processes(server):
    alive = server.stop()
    assert server.process.returncode is not None
    assert alive == [], f"processes left behind: {alive}"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/info/", timeout=5)
