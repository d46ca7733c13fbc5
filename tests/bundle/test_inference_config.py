"""inference.json through MONAI's own API: properties, a run on the shipped sample, verify_net_in_out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow, verify_net_in_out

from tests.bundle.conftest import BUNDLE, LOGGING, META, SMALL, config
from unimed_core.data.datalist import load_datalist
from unimed_core.data.image_io import read_image, read_label
from unimed_core.engine import SAMPLE_NAME
from unimed_core.label_map import LabelMap
from unimed_core.model.weights import WeightsError


def _workflow(weights, out_dir, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=config("inference"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="infer",
        ckpt_path=str(weights),
        output_dir=str(out_dir),
        **overrides,
    )


def _world_extent(volume) -> tuple[np.ndarray, np.ndarray]:
    """RAS bounds of the volume's voxel boxes (centres ± half a voxel)."""
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in volume.shape], indexing="ij")).reshape(3, -1).T
    world = (volume.affine @ np.c_[corners, np.ones(len(corners))].T)[:3].T
    return world.min(0), world.max(0)


def test_inference_on_the_shipped_sample_writes_every_output(weights, tmp_path):
    workflow = _workflow(weights, tmp_path / "out")  # the sample and the bundle's own working grid
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    sample = BUNDLE / "sample" / f"{SAMPLE_NAME}.nii.gz"
    volume = read_image(sample)
    out = tmp_path / "out"
    for name in ("_seg.nii.gz", ".seg.nrrd", "_boxes.json", "_boxes.mrk.json", "_classes.json"):
        assert (out / f"{SAMPLE_NAME}{name}").is_file(), name
    for label_file in (f"{SAMPLE_NAME}_seg.nii.gz", f"{SAMPLE_NAME}.seg.nrrd"):
        labels = read_label(out / label_file)
        assert labels.shape == volume.shape
        np.testing.assert_allclose(labels.affine, volume.affine, atol=1e-4)
    boxes = json.loads((out / f"{SAMPLE_NAME}_boxes.json").read_text())
    assert "RAS" in boxes["coordinates"]
    lo, hi = _world_extent(volume)
    for det in boxes["detections"]:
        box = np.asarray(det["box"])
        assert np.all(box[:3] <= box[3:])
        assert np.all(box[:3] >= lo - 1e-3) and np.all(box[3:] <= hi + 1e-3), det
        assert det["label"] in LabelMap.default().box_classes
    classes = json.loads((out / f"{SAMPLE_NAME}_classes.json").read_text())["probabilities"]
    assert set(classes) == set(LabelMap.default().image_classes)
    assert all(0.0 <= p <= 1.0 for p in classes.values())
    summary = json.loads((out / "summary.json").read_text())
    assert [row["input"] for row in summary] == [str(sample.resolve())]


def test_inference_on_a_datalist_section(weights, tiny_data, tmp_path):
    workflow = _workflow(weights, tmp_path / "out", datalist=str(tiny_data), datalist_section="validation", **SMALL)
    workflow.initialize()
    workflow.run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    expected = load_datalist(tiny_data)["validation"][0]["image"]
    assert [row["input"] for row in summary] == [expected]
    assert (tmp_path / "out" / summary[0]["outputs"]["label_nifti"]).is_file()


def test_inference_refuses_weights_without_their_hash(weights, tmp_path):
    copy = tmp_path / "model.pt"
    copy.write_bytes(weights.read_bytes())  # no .sha256 beside it
    workflow = _workflow(copy, tmp_path / "out")
    workflow.initialize()
    with pytest.raises(RuntimeError) as info:
        workflow.run()
    assert isinstance(info.value.__cause__, WeightsError) and "sha256" in str(info.value.__cause__)


def test_verify_net_in_out(weights):
    verify_net_in_out(
        net_id="net_in_out",
        meta_file=META,
        config_file=config("inference"),
        device="cpu",
        ckpt_path=str(weights),
        roi_size=[64, 64, 64],
    )


def test_warnings_on_an_unfamiliar_scan_reach_the_bundles_summary(weights, tmp_path, capsys):
    """A 100 mm slab of the sample is not the field of view the weights were trained on: results and a warning."""
    from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible

    sample = read_image(BUNDLE / "sample" / f"{SAMPLE_NAME}.nii.gz")
    k = sample.shape[2] // 2
    affine = sample.affine.copy()
    affine[:3, 3] = sample.affine[:3, :3] @ np.array([0, 0, k - 10]) + sample.affine[:3, 3]
    slab = save_nifti_reproducible(sample.array[:, :, k - 10 : k + 10].copy(), affine, tmp_path / "in" / "slab.nii.gz")
    workflow = _workflow(weights, tmp_path / "out", input_path=str(slab))
    workflow.initialize()
    workflow.run()
    (row,) = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (tmp_path / "out" / "slab_seg.nii.gz").is_file()
    assert [w["signal"] for w in row["warnings"]] == ["region"]
    assert "field of view along S 100 mm" in row["warnings"][0]["message"]
    logged = [line for line in capsys.readouterr().out.splitlines() if "warning (region)" in line]  # the bundle's log
    assert logged and " - WARNING - " in logged[0] and str(slab) in logged[0]


def test_the_shipped_sample_gets_no_warning(weights, tmp_path):
    workflow = _workflow(weights, tmp_path / "out")
    workflow.initialize()
    workflow.run()
    assert [row["warnings"] for row in json.loads((tmp_path / "out" / "summary.json").read_text())] == [[]]
