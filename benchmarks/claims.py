"""The paper's claims, one table row each, measured with UniMed on the benchmark data under one CPU budget.

    .venv/bin/python -m benchmarks.claims --mode quick

1. Tasks help each other: the joint model vs UniMed trained on one task at a time (the other annotation keys
   stripped from every item, so every run sees the same images).
2. Unlabeled data helps: with vs without the unsupervised term (``loss_mvm`` 0) when only N training items
   keep their annotation and the rest are unlabeled.
3. Zero-shot transfer: trained on CT-like items only, tested on the MR-like test cases (and the CT-like ones).
4. Few-shot transfer: the CT-only model fine-tuned on K labeled MR-like items vs the same K from scratch.

Every row reports the metric values of both arms, their difference and ratio. Writes
``benchmarks/results/claims.json``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import MODES, RESULTS, Mode, evaluate_unimed, json_safe, labeled, load_items, train_unimed
from benchmarks.quality import HEADLINE
from unimed_core.data.atomic import atomic_write_json
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.training.fit import DEFAULT_LOSS_WEIGHTS

__all__ = ["TASK_KEYS", "only_task", "strip", "arm_items", "claim_row", "run_claims", "main"]

# The datalist keys that carry each task's annotation.
TASK_KEYS = {"segmentation": ("label",), "detection": ("boxes", "box_labels"), "classification": ("class",)}
_ANNOTATION = tuple(k for keys in TASK_KEYS.values() for k in keys)


def only_task(item: dict, task: str) -> dict:
    """``item`` with every annotation key of the other tasks removed (it may become unlabeled)."""
    return {k: v for k, v in item.items() if k not in _ANNOTATION or k in TASK_KEYS[task]}


def strip(item: dict) -> dict:
    """``item`` without any annotation: an unlabeled volume."""
    return {k: v for k, v in item.items() if k not in _ANNOTATION}


def arm_items(arm: str, training: list[dict], unlabeled: list[dict], shots: int) -> tuple[list[dict], dict | None]:
    """The training items and loss weights (None: ``fit``'s defaults) of one claim's arm.

    Arms: ``joint``; ``only_<task>``; ``mvm_<n>`` / ``no_mvm_<n>`` (only the first ``n`` annotated training items
    keep their annotation, ``all`` keeps every one; ``no_`` sets ``loss_mvm`` to 0); ``ct_only`` (the annotated
    CT-like items: unlabeled items carry no domain); ``finetuned`` / ``scratch`` (the first ``shots`` annotated
    MR-like items; the caller starts ``finetuned`` from the CT-only model).
    """
    annotated = labeled(training)
    if arm == "joint":
        return training + unlabeled, None
    if arm.startswith("only_") and arm[5:] in TASK_KEYS:
        return [only_task(i, arm[5:]) for i in training] + unlabeled, None
    if arm.startswith(("mvm_", "no_mvm_")):
        count = arm.rsplit("_", 1)[1]
        kept = annotated if count == "all" else annotated[: int(count)]
        data = kept + [strip(i) for i in training if i not in kept] + unlabeled
        return data, ({**DEFAULT_LOSS_WEIGHTS, "loss_mvm": 0.0} if arm.startswith("no_") else None)
    if arm == "ct_only":
        return [i for i in annotated if i.get("domain") == "ct"], None
    if arm in ("finetuned", "scratch"):
        return [i for i in annotated if i.get("domain") == "mr"][:shots], None
    raise ValueError(f"unknown claim arm {arm!r}")


def claim_row(
    claim: str, metric: str, arm_a: str, a: float | None, arm_b: str, b: float | None, note: str = ""
) -> dict:
    diff = None if a is None or b is None else a - b
    ratio = None if diff is None or not b else a / b
    return {"claim": claim, "metric": metric, "a": arm_a, "a_value": a, "b": arm_b, "b_value": b,
            "difference": diff, "ratio": ratio, "note": note}  # fmt: skip


def run_claims(mode: Mode, label_map: LabelMap, joint: tuple[dict, dict, dict] | None = None) -> dict:
    """Measure every claim; ``joint`` = (test summary, run facts, state dict) of the joint model when the caller
    has trained it already (``benchmarks.quality``) under the same mode."""
    items = load_items(mode, label_map)
    train, unlabeled, test = items["training"], items["unlabeled"], items["test"]
    rows, runs = [], {}

    def trained(name: str, test_items: list[dict] = test, init: dict | None = None) -> tuple[dict, dict]:
        data, weights = arm_items(name, train, unlabeled, mode.shots)
        model, facts = train_unimed(data, label_map, mode, weights=weights, init=init)
        summary, _, _ = evaluate_unimed(model, test_items, label_map)
        runs[name] = {**facts, "summary": summary}
        return summary, model.state_dict()

    if joint is None:
        joint_summary, joint_state = trained("joint")
    else:
        joint_summary, joint_state = joint[0], joint[2]
        runs["joint"] = {**joint[1], "summary": joint_summary}
    for task, metric in HEADLINE.items():
        single, _ = trained(f"only_{task}")
        rows.append(claim_row("tasks help each other", metric, "joint", joint_summary.get(metric),
                         f"{task} only", single.get(metric)))  # fmt: skip

    for n in mode.labeled_counts:
        with_mvm, _ = trained(f"mvm_{n}")
        without, _ = trained(f"no_mvm_{n}")
        kept = min(n, len(labeled(train)))
        note = f"{kept} labeled + {runs[f'mvm_{n}']['items'] - kept} unlabeled items"
        for metric in HEADLINE.values():
            rows.append(claim_row("unlabeled data helps", metric, "with MVM", with_mvm.get(metric),
                             "without (loss_mvm 0)", without.get(metric), note))  # fmt: skip

    mr_test = [i for i in test if i.get("domain") == "mr"]
    ct_test = [i for i in test if i.get("domain") == "ct"]
    zero_mr, ct_state = trained("ct_only", mr_test)
    zero_ct, _, _ = evaluate_unimed(_load(ct_state, label_map), ct_test, label_map)
    runs["ct_only"]["summary_ct_test"] = zero_ct
    joint_mr, _, _ = evaluate_unimed(_load(joint_state, label_map), mr_test, label_map)
    runs["joint"]["summary_mr_test"] = joint_mr
    ct_items = runs["ct_only"]["items"]
    for metric in HEADLINE.values():
        rows.append(claim_row("zero-shot CT -> MR", metric, "CT-only model on MR test", zero_mr.get(metric),
                         "same model on CT test", zero_ct.get(metric), f"{ct_items} CT training items"))  # fmt: skip
        rows.append(claim_row("zero-shot CT -> MR", metric, "CT-only model on MR test", zero_mr.get(metric),
                         "mixed-domain (joint) model on MR test", joint_mr.get(metric)))  # fmt: skip

    tuned, _ = trained("finetuned", mr_test, init=ct_state)
    scratch, _ = trained("scratch", mr_test)
    shots = runs["scratch"]["items"]
    note = f"{shots} MR-like shots" + ("" if shots == 100 else " (the paper uses 100)")
    for metric in HEADLINE.values():
        rows.append(claim_row("few-shot fine-tuning on MR", metric, "fine-tuned from CT", tuned.get(metric),
                         "scratch", scratch.get(metric), note))  # fmt: skip
    return json_safe({"mode": mode.name, "budget_cpu_s": mode.budget_s, "threads": torch.get_num_threads(),
                      "rows": rows, "runs": runs})  # fmt: skip


def _load(state: dict, label_map: LabelMap) -> torch.nn.Module:
    model = unimed_small(label_map)
    model.load_state_dict(state)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    mode = MODES[args.mode]
    torch.set_num_threads(args.threads or mode.threads)
    result = run_claims(mode, LabelMap.default())
    atomic_write_json(RESULTS / "claims.json", result)
    for row in result["rows"]:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
