"""The baselines at the learning benchmark's scale: one task trains and is scored, and the table sets it beside UniMed."""

from __future__ import annotations

import json

from benchmarks.baseline_learning import main
from benchmarks.report import build_report
from unimed_core.synthetic.dataset import generate_dataset


def test_a_baseline_trains_and_is_scored_on_the_test_split(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, 4, seed=2, shape=(40, 40, 36), spacing=(9.6, 9.6, 10.0), n_validation=0, n_test=2)
    out = tmp_path / "results"
    assert main(["--task", "segmentation", "--max-steps", "2", "--data", str(data), "--results", str(out)]) == 0
    result = json.loads((out / "baseline_learning_segmentation.json").read_text())
    assert result["network"] == "SegResNet" and result["train"]["steps"] == 2
    assert result["summary"]["cases"] == 2 and len(result["per_case"]) == 2
    assert 0.0 <= result["summary"]["dice/liver"] <= 1.0


def test_the_report_puts_each_baseline_next_to_unimed(tmp_path):
    def baseline(task, network, summary):
        run = {"network": network, "command": f"python -m benchmarks.baseline_learning --task {task}",
               "train": {"steps": 10, "items": 5}, "summary": summary}  # fmt: skip
        (tmp_path / f"baseline_learning_{task}.json").write_text(json.dumps(run))

    baseline("segmentation", "SegResNet", {"dice/liver": 0.8, "dice/organs_mean": 0.9})
    baseline("classification", "DenseNet121", {"AUC": 0.9})
    (tmp_path / "learning.json").write_text(json.dumps({"command": "python benchmarks/learning.py", "steps": 7,
        "summary": {"dice/liver": 0.4, "dice/organs_mean": 0.5, "AUC": 0.95}}))  # fmt: skip
    text = build_report(tmp_path, tmp_path / "benchmarks.md", plots=False)
    section = text.split("## Quality at the learning benchmark's scale")[1].split("## Verdict")[0]
    assert "| dice/liver (segmentation) | 0.400 | 0.800 | 0.50 |" in section
    assert "| AUC (classification) | 0.950 | 0.900 | 1.06 |" in section
    # no detection baseline was run: its rows say so instead of inventing a number
    assert "| mAP@0.10 (detection) | n/a | n/a | n/a |" in section
    wins, losses = text.split("UniMed wins:")[1].split("UniMed loses")
    assert "classification (AUC, learning benchmark): UniMed 0.950 vs baseline 0.900" in wins
    assert "segmentation (dice/organs_mean, learning benchmark): UniMed 0.500 vs baseline 0.900" in losses
