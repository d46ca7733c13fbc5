"""A baseline's curve: train in a piece with snapshots, evaluate each snapshot once, assemble beside UniMed's rows."""

from __future__ import annotations

import json

import pytest

from benchmarks.baseline_curve import main
from benchmarks.report import build_report, curve_comparison
from unimed_core.synthetic.dataset import generate_dataset


def test_train_evaluate_assemble_a_baseline_curve(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, 4, seed=2, shape=(40, 40, 36), spacing=(9.6, 9.6, 10.0), n_validation=0, n_test=2)
    run = tmp_path / "runs" / "baseline_densenet_s0"
    args = ["--model", "densenet", "--run", str(run), "--data", str(data), "--total-steps", "4"]
    assert main(["train", *args, "--stop-at-step", "2", "--snapshot-steps", "1", "2"]) == 0
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_1.pt", "step_2.pt"]
    with pytest.raises(SystemExit, match="other settings"):  # a run resumes only with the settings it began with
        main(["train", *args[:-1], "8"])
    assert main(["evaluate", "--run", str(run)]) == 0
    first = json.loads((run / "eval_step_2_test.json").read_text())
    assert first["task"] == "classification" and first["summary"]["cases"] == 2 and len(first["per_case"]) == 2
    unimed = tmp_path / "learning_curve.json"
    unimed.write_text(json.dumps({"rows": [{"run": "curve_s0", "seed": 0, "step": 2, "image AUC": 0.9,
                                            "organ Dice": 0.5}]}))  # fmt: skip
    results, plot = tmp_path / "results", tmp_path / "docs" / "figures" / "learning_curve_baselines.png"
    assert main(["assemble", str(run), "--unimed", str(unimed), "--results", str(results), "--plot", str(plot)]) == 0
    curve = json.loads((results / "baseline_curve.json").read_text())
    assert [(r["model"], r["step"]) for r in curve["rows"]] == [("densenet", 1), ("densenet", 2)]
    assert 0.0 <= curve["rows"][1]["image AUC"] <= 1.0 and "AUC/cyst" in curve["rows"][1]
    assert plot.stat().st_size > 1000
    # the report sets each snapshot beside UniMed's at the same step, and judges the gap in the verdict
    (results / "learning_curve.json").write_text(unimed.read_text())
    pairs = curve_comparison(curve, json.loads(unimed.read_text()))
    assert [at for at, _ in pairs] == ["step 2"]
    text = build_report(results, tmp_path / "docs" / "benchmarks.md", plots=False)
    assert "## Learning curve: MONAI's baselines trained with their own recipes" in text
    assert "![learning curve](figures/learning_curve_baselines.png)" in text
    assert "| densenet | 2 |" in text and "curve_s0 0.900" in text
    assert "classification, densenet vs UniMed curve_s0 (AUC, learning curve at step 2)" in text


def test_a_snapshot_evaluated_before_its_run_ended_takes_its_cpu_time_from_the_history(tmp_path):
    """``history.json`` is written when a training piece ends: a snapshot evaluated mid-run records no CPU time,
    and the curve must not lose it once the history is there."""
    from benchmarks.baseline_curve import rows_of

    run = tmp_path / "baseline_segresnet_s0"
    run.mkdir()
    config = {"model": "segresnet", "task": "segmentation", "seed": 0, "total_steps": 8, "recipe": "r"}
    (run / "config.json").write_text(json.dumps(config))
    for step, cpu in ((2, None), (4, 40.0)):
        (run / f"eval_step_{step}_test.json").write_text(
            json.dumps({"step": step, "cpu_seconds": cpu, "summary": {"dice/organs_mean": 0.5}})
        )
    assert [r["cpu_seconds"] for r in rows_of(run)] == [None, 40.0]  # no history yet
    (run / "history.json").write_text(json.dumps([{"step": 1, "cpu_seconds": 9.0}, {"step": 3, "cpu_seconds": 21.0}]))
    assert [r["cpu_seconds"] for r in rows_of(run)] == [21.0, 40.0]  # the first logged step at or after 2
