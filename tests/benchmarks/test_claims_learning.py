"""The claims at the learning benchmark's scale: each arm gets the data its claim says, arms train and are scored,
and the report's verdict does not read a one-seed gap as evidence."""

from __future__ import annotations

import json

import pytest

from benchmarks.claims import arm_items
from benchmarks.claims_learning import main
from benchmarks.report import build_report, verdict
from unimed_core.synthetic.dataset import generate_dataset


def _items():
    full = [{"image": f"f{i}", "domain": "ct" if i % 2 else "mr", "label": "l", "boxes": [], "box_labels": [],
             "class": [0]} for i in range(12)]  # fmt: skip
    boxes = [{"image": f"b{i}", "domain": "mr", "boxes": [], "box_labels": []} for i in range(3)]
    return full + boxes, [{"image": "u0"}]


def test_each_arm_gets_the_annotations_its_claim_allows():
    training, unlabeled = _items()
    only_det, weights = arm_items("only_detection", training, unlabeled, shots=100)
    assert weights is None and len(only_det) == 16
    assert all("label" not in i and "class" not in i for i in only_det)
    assert sum("boxes" in i for i in only_det) == 15

    with_mvm, w_with = arm_items("mvm_10", training, unlabeled, shots=100)
    without, w_without = arm_items("no_mvm_10", training, unlabeled, shots=100)
    assert [i["image"] for i in with_mvm] == [i["image"] for i in without]
    assert sum(any(k in i for k in ("label", "boxes", "class")) for i in with_mvm) == 10
    assert w_with is None and w_without["loss_mvm"] == 0.0 and w_without["loss_mask_dice"] > 0
    everything, _ = arm_items("no_mvm_all", training, unlabeled, shots=100)
    assert sum("boxes" in i for i in everything) == 15

    ct, _ = arm_items("ct_only", training, unlabeled, shots=100)
    assert len(ct) == 6 and all(i["domain"] == "ct" and "label" in i for i in ct)
    shots, _ = arm_items("finetuned", training, unlabeled, shots=4)
    assert len(shots) == 4 and all(i["domain"] == "mr" for i in shots)
    assert arm_items("scratch", training, unlabeled, shots=4)[0] == shots
    with pytest.raises(ValueError, match="unknown claim arm"):
        arm_items("only_magic", training, unlabeled, shots=4)


def test_arms_train_are_scored_per_domain_and_assembled_into_the_report(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, 8, seed=2, shape=(40, 40, 36), spacing=(9.6, 9.6, 10.0), domains="mixed", n_validation=0,
                     n_test=2)  # fmt: skip
    results, weights = tmp_path / "results", tmp_path / "ct.pt"
    common = ["--steps", "2", "--data", str(data), "--results", str(results)]
    with pytest.raises(ValueError, match="ct_only arm's weights"):
        main(["--arm", "finetuned", *common])
    assert main(["--arm", "ct_only", "--save-weights", str(weights), *common]) == 0
    assert main(["--arm", "finetuned", "--init-weights", str(weights), *common]) == 0
    ct_only = json.loads((results / "claims_learning" / "ct_only.json").read_text())
    assert ct_only["train"]["steps"] == 2 and ct_only["train"]["items"] == ct_only["train"]["annotated_items"]
    assert set(ct_only["summary_by_domain"]) == {"mr", "ct"}
    assert ct_only["summary"]["cases"] == 2 and "click_dice/mean" in ct_only["summary"]

    assert main(["--arm", "ct_only", "--seed", "1", "--steps", "1", *common[2:]]) == 0
    assert main(["--assemble", "--results", str(results)]) == 0
    claims = json.loads((results / "claims_learning.json").read_text())
    assert claims["mode"] == "learning" and claims["arms"] == ["ct_only", "ct_only_s1", "finetuned"]
    assert claims["steps"] == [1, 2]  # another seed's run is listed, and the rows stay seed 0's
    zero_shot = next(
        r for r in claims["rows"] if r["claim"] == "zero-shot CT -> MR" and r["b"] == "same model on CT test"
    )
    assert zero_shot["a_value"] == ct_only["summary_by_domain"]["mr"][zero_shot["metric"]]
    # arms that did not run leave their rows empty rather than inventing a number
    joint_rows = [r for r in claims["rows"] if r["a"] == "joint"]
    assert joint_rows and all(r["a_value"] is None and r["difference"] is None for r in joint_rows)
    text = build_report(results, tmp_path / "benchmarks.md", plots=False)
    assert "## The paper's claims at the learning benchmark's scale" in text
    assert "every arm trained for 1 or 2 steps" in text
    ct_row = next(line for line in text.splitlines() if line.startswith("| ct_only |"))
    assert ct_row.startswith(f"| ct_only | {ct_only['train']['items']} of {ct_only['train']['items']} | 2 |")


def test_the_verdict_reads_a_one_seed_gap_as_no_evidence():
    def row(claim, a, b):
        return {"claim": claim, "metric": "dice/organs_mean", "a": "joint", "a_value": a, "b": "segmentation only",
                "b_value": b, "difference": a - b, "ratio": a / b, "note": ""}  # fmt: skip

    at_chance = {**row("few-shot fine-tuning on MR", 0.35, 0.50), "metric": "AUC"}
    learning = {"mode": "learning", "steps": [800],
                "rows": [row("tasks help each other", 0.75, 0.70), row("unlabeled data helps", 0.70, 0.50), at_chance]}  # fmt: skip
    text = "\n".join(verdict(None, None, None, None, learning))
    wins, rest = text.split("UniMed wins:")[1].split("UniMed loses")
    assert "claim 'unlabeled data helps' on dice/organs_mean, learning benchmark: joint 0.700" in wins
    assert "tasks help each other" not in wins and "tasks help each other" not in rest.split("No measurable")[0]
    assert "claim 'tasks help each other' on dice/organs_mean, learning benchmark" in rest.split("No measurable")[1]
    assert "a gap under one seed's spread" in text
    # two AUCs at chance: neither a win nor a loss, whatever the gap
    assert "claim 'few-shot fine-tuning on MR' on AUC" in rest.split("No measurable")[1] and "both at chance" in text
