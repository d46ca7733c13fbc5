"""train.json, evaluate.json and finetune_fewshot.json through MONAI's ConfigWorkflow, one small epoch each."""

from __future__ import annotations

import csv
import json

from monai.bundle import ConfigWorkflow

from tests.bundle.conftest import LOGGING, META, SMALL, config
from tests.bundle.test_engine_units import MAPPING, _user_datalist
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights


def _run(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


def test_train_one_epoch_validates_logs_and_saves(train_overrides, tmp_path):
    workflow = ConfigWorkflow(
        config_file=config("train"), meta_file=META, logging_file=LOGGING, workflow_type="train", **train_overrides
    )
    _run(workflow)
    out = tmp_path / "train"
    models = out / "models"
    # best (key metric) and last checkpoints, each with the sha256 that load_weights checks
    load_weights(unimed_small(), models / "model.pt")
    assert (models / "checkpoint_last.pt.sha256").is_file()
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard log"
    metrics = json.loads((out / "val_metrics.json").read_text())
    for key in ("dice/all_mean", "mAP@0.10", "AUC", "val_mean_dice"):
        assert key in metrics
    assert workflow.trainer.state.epoch == 1


def test_train_resumes_from_the_last_checkpoint(train_overrides, tmp_path):
    first = ConfigWorkflow(
        config_file=config("train"), meta_file=META, logging_file=LOGGING, workflow_type="train", **train_overrides
    )
    _run(first)
    last = tmp_path / "train" / "models" / "checkpoint_last.pt"
    resumed = ConfigWorkflow(
        config_file=config("train"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="train",
        **{**train_overrides, "max_epochs": 2, "resume_from": str(last), "output_dir": str(tmp_path / "again")},
    )
    resumed.initialize()
    resumed.run()
    # the trainer state came back: epoch 1 was skipped, only epoch 2 ran
    assert resumed.trainer.state.epoch == 2
    assert resumed.trainer.state.iteration == 2 * first.trainer.state.iteration


def test_evaluate_writes_metrics_json_and_per_case_csv(weights, tiny_data, tmp_path):
    workflow = ConfigWorkflow(
        config_file=config("inference", "evaluate"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="infer",
        ckpt_path=str(weights),
        dataset_dir=str(tiny_data.parent),
        output_dir=str(tmp_path / "eval"),
        click_classes=["liver"],
        **SMALL,
    )
    _run(workflow)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["cases"] == 1.0 and "mAP@0.10" in metrics and "AUC" in metrics
    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["image"].endswith(".nii.gz")
    assert 0.0 <= float(rows[0]["dice/liver"]) <= 1.0 and "click_dice/liver" in rows[0]


def test_fewshot_finetunes_from_shipped_weights_on_mapped_classes(weights, tiny_data, train_overrides, tmp_path):
    user = _user_datalist(tiny_data, tmp_path)
    workflow = ConfigWorkflow(
        config_file=config("train", "finetune_fewshot"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="train",
        **{**train_overrides, "datalist": str(user), "pretrained_path": str(weights), "class_mapping": MAPPING},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    start = {k: v.clone() for k, v in workflow.network_def.state_dict().items()}
    reference = load_weights(unimed_small(), weights).state_dict()
    assert all((start[k] == reference[k]).all() for k in reference)  # it starts from the given weights
    workflow.run()
    assert (tmp_path / "train" / "data" / "datalist_mapped.json").is_file()
    assert any((workflow.network_def.state_dict()[k] != start[k]).any() for k in start)  # and it trained
