"""highres.json through MONAI's ConfigWorkflow: it composes with train, multi_gpu_train, inference and evaluate;
two training iterations and one inference at a tiny size (sizes overridden, the code path as on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.bundle.conftest import LOGGING, META, config
from unimed_core.data.cached_dataset import CachedTrainingDataset
from unimed_core.data.image_io import read_label
from unimed_core.data.training_data import UniMedTrainingDataset
from unimed_core.model.encoder import SwinEncoder3D
from unimed_core.model.factory import unimed_base
from unimed_core.model.weights import load_weights, save_weights

# The sizes of a CPU test: a 10 mm grid (32^3 covers the generated study), 32^3 patches, the smallest Swin width.
TINY = {"spacing": [10.0, 10.0, 10.0], "patch_size": [32, 32, 32], "roi_size": [32, 32, 32]}
TINY_NET = {"network_def#feature_size": 12}


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base_weights") / "model.pt"
    save_weights(unimed_base(feature_size=12), path)
    return path


def _workflow(names: tuple[str, ...], kind: str, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=config(*names), meta_file=META, logging_file=LOGGING, workflow_type=kind, **overrides
    )


def _train_overrides(tiny_data, tmp_path) -> dict:
    return {
        **TINY,
        **TINY_NET,
        "dataset_dir": str(tiny_data.parent),
        "output_dir": str(tmp_path / "train"),
        "cache_dir": str(tmp_path / "cache"),
        "num_workers": 2,
        "max_epochs": 1,
        "val_interval": 1,
        "validate#click_classes": [],
    }


@pytest.mark.parametrize(
    "names",
    [
        ("train", "highres"),
        ("train", "multi_gpu_train", "highres"),
        ("inference", "highres"),
        ("inference", "evaluate", "highres"),
    ],
    ids=["train", "multi_gpu_train", "inference", "evaluate"],
)
def test_highres_composes_with_each_config(names, tiny_data, base_weights, tmp_path, monkeypatch):
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", "29517")
    training = names[0] == "train"
    overrides = (
        _train_overrides(tiny_data, tmp_path) if training else {**TINY, **TINY_NET, "ckpt_path": str(base_weights)}
    )
    if "evaluate" in names:
        overrides["dataset_dir"] = str(tiny_data.parent)
    workflow = _workflow(names, "train" if training else "infer", **overrides)
    workflow.initialize()
    try:
        assert workflow.check_properties() == []
        parser = workflow.parser
        assert parser["network_def"]["_target_"].endswith("unimed_base")
        assert isinstance(parser.get_parsed_content("network_def").encoder, SwinEncoder3D)
        if training:
            assert isinstance(parser.get_parsed_content("train#dataset"), CachedTrainingDataset)
            assert parser.get_parsed_content("train#dataloader").num_workers == 2
    finally:
        workflow.finalize()  # multi_gpu_train's destroys the process group it made
        idist.sync()  # and ignite forgets it, or later checkpoint savers in this process ask for a rank


def test_highres_sets_the_clinical_recipe():
    raw = json.loads(Path(config("highres")[0]).read_text())
    assert raw["spacing"] == [1.5, 1.5, 1.5] and min(raw["patch_size"]) >= 96 and min(raw["roi_size"]) >= 96
    assert raw["num_workers"] > 0 and raw["cache_dir"] and raw["network_def"]["_target_"].endswith("unimed_base")
    assert all("#" not in key for key in raw)  # top-level ids only: what lets it compose with every config


def test_without_highres_the_dataset_stays_in_memory(tiny_data, tmp_path):
    workflow = _workflow(("train",), "train", **TINY, dataset_dir=str(tiny_data.parent), output_dir=str(tmp_path))
    workflow.initialize()
    assert isinstance(workflow.parser.get_parsed_content("train#dataset"), UniMedTrainingDataset)


def test_highres_trains_two_iterations_then_infers(tiny_data, tmp_path):
    workflow = _workflow(("train", "highres"), "train", **_train_overrides(tiny_data, tmp_path))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert workflow.trainer.state.iteration == 2  # 4 training items (3 annotated, 1 unlabeled), batch 2
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # each study preprocessed once, on disk
    steps = [json.loads(line) for line in (tmp_path / "train" / "step_times.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in steps] == [1, 2] and all(s["data_s"] >= 0 < s["compute_s"] for s in steps)
    weights = tmp_path / "train" / "models" / "model.pt"
    base = unimed_base(feature_size=12)
    load_weights(base, weights)  # the base variant's weights, with their sha256

    out = tmp_path / "infer"
    overrides = {**TINY, **TINY_NET, "ckpt_path": str(weights), "output_dir": str(out)}
    infer = _workflow(("inference", "highres"), "infer", **overrides, datalist=str(tiny_data), datalist_section="test")
    infer.initialize()
    assert infer.check_properties() == []
    infer.run()
    infer.finalize()
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 1
    labels = read_label(out / summary[0]["outputs"]["label_nifti"])
    assert labels.shape == (32, 32, 32)


@pytest.mark.parametrize("names", [("train", "cpu_3mm"), ("inference", "cpu_3mm")], ids=["train", "inference"])
def test_the_cpu_3mm_preset_composes(names, tiny_data, weights, tmp_path):
    training = names[0] == "train"
    overrides = {"dataset_dir": str(tiny_data.parent), "output_dir": str(tmp_path), "cache_dir": str(tmp_path / "c")}
    workflow = _workflow(names, "train" if training else "infer", **overrides, ckpt_path=str(weights))
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.parser.get_parsed_content("spacing") == [3.0, 3.0, 3.0]
    assert workflow.parser["network_def"]["_target_"].endswith("unimed_small")  # the CPU variant
    if training:
        assert isinstance(workflow.parser.get_parsed_content("train#dataset"), CachedTrainingDataset)
