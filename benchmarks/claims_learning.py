"""The paper's claims at the learning benchmark's scale: one arm per process, a fixed number of steps each.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.claims_learning --arm joint --steps 800
    ...  (every arm of ARMS; ``finetuned`` after ``ct_only``, from its weights)
    .venv/bin/python -m benchmarks.claims_learning --assemble

``make bench`` measures the claims (``benchmarks/claims.py``) after 45 CPU-seconds per run, too short for anything
to be learned: its claim rows compare zeros. This script trains each arm of those claims with the settings of
``benchmarks/learning.py`` (its data, 6 mm working grid, 64³ patches, batch 2, AdamW at 1e-3, augmentation) for the
same fixed number of steps, so that every arm does the same work whatever else shares the machine, and scores it on
the same held-out studies (all 16, and the MR-like and CT-like halves apart) with the bundle's predictor settings.
``--assemble`` turns the arms' files into ``claims_learning.json``, shaped like ``claims.json``, which
``benchmarks/report.py`` puts into ``docs/benchmarks.md``. The rows use seed 0; runs with another ``--seed`` are kept
as ``<arm>_s<seed>`` and listed beside them in the arms' table.

The training data has 96 items, 72 of them annotated, and 24 unlabeled ones; so "100 labeled" is every annotated
item here (``mvm_all``), and "100 shots" are the 47 annotated MR-like items.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.claims import arm_items, claim_row
from benchmarks.common import labeled
from benchmarks.learning import PATCH, SPACING, json_safe, make_data
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.datalist import load_datalist
from unimed_core.evaluation import evaluate
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights, save_weights
from unimed_core.training.fit import fit

__all__ = ["ARMS", "METRICS", "run_arm", "assemble", "main"]

RESULTS = Path("benchmarks/results")
ARMS = ("joint", "only_segmentation", "only_detection", "only_classification", "mvm_10", "no_mvm_10",
        "no_mvm_all", "ct_only", "finetuned", "scratch")  # fmt: skip
# Organ Dice rather than quick mode's all-class mean: at this scale the lesion classes are near 0 in every arm.
METRICS = {"segmentation": "dice/organs_mean", "detection": "mAP@0.10", "classification": "AUC"}


def run_arm(args) -> dict:
    if args.arm == "finetuned" and not args.init_weights:
        raise ValueError("the finetuned arm starts from the ct_only arm's weights: pass --init-weights")
    label_map = LabelMap.default()
    items = load_datalist(make_data(args.data, args.cases, args.seed), label_map)
    data, weights = arm_items(args.arm, items["training"], items["unlabeled"], args.shots)
    model = unimed_small(label_map)
    if args.init_weights:
        load_weights(model, args.init_weights)
    wall, cpu = time.monotonic(), time.process_time()
    history = fit(
        model, data, label_map, patch_size=PATCH, spacing=SPACING, batch_size=2, lr=1e-3, max_steps=args.steps,
        weights=weights, seed=args.seed, log_every=50,
    )  # fmt: skip
    train = {"steps": history[-1]["step"] if history else 0, "items": len(data),
             "annotated_items": len(labeled(data)),
             "cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.monotonic() - wall, 1),
             "final_loss": history[-1].get("loss") if history else None}  # fmt: skip
    if args.save_weights:
        save_weights(model, args.save_weights)
    # The bundle's settings (bundle/configs/inference.json), with mAP's low-score detections kept as learning.py does.
    predictor = UniMedPredictor(model, label_map, spacing=SPACING, roi_size=PATCH, semantic_source="both",
                                score_threshold=args.score_threshold)  # fmt: skip
    start = time.monotonic()
    summary, rows = evaluate(predictor, items["test"], label_map)
    by_domain = {}
    for domain in ("mr", "ct"):
        subset = [i for i in items["test"] if i.get("domain") == domain]
        if subset:
            by_domain[domain], _ = evaluate(predictor, subset, label_map, click_classes=[])
    return {
        "command": "python " + " ".join(sys.argv), "arm": args.arm, "seed": args.seed,
        "init_weights": str(args.init_weights) if args.init_weights else None,
        "loss_weights": weights, "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads()},
        "score_threshold": args.score_threshold, "train": train, "eval_s": round(time.monotonic() - start, 1),
        "summary": summary, "summary_by_domain": by_domain, "per_case": rows, "history": history,
    }  # fmt: skip


def assemble(arms: dict[str, dict]) -> dict:
    """The claim rows (``claims.json``'s shape) from the arms that ran; a missing arm's rows say n/a."""

    def value(arm: str, metric: str, domain: str | None = None) -> float | None:
        run = arms.get(arm)
        if run is None:
            return None
        return (run["summary_by_domain"].get(domain, {}) if domain else run["summary"]).get(metric)

    def items(arm: str, key: str = "items") -> str:
        return str(arms[arm]["train"][key]) if arm in arms else "n/a"

    rows = []
    for task, metric in METRICS.items():
        rows.append(claim_row("tasks help each other", metric, "joint", value("joint", metric),
                         f"{task} only", value(f"only_{task}", metric)))  # fmt: skip
    rows.append(claim_row("tasks help each other", "click_dice/mean", "joint", value("joint", "click_dice/mean"),
                     "segmentation only", value("only_segmentation", "click_dice/mean")))  # fmt: skip
    for n, with_arm in (("10", "mvm_10"), ("all", "joint")):
        note = f"{items(with_arm, 'annotated_items')} labeled of {items(with_arm)} items"
        for metric in METRICS.values():
            rows.append(claim_row("unlabeled data helps", metric, "with MVM", value(with_arm, metric),
                             "without (loss_mvm 0)", value(f"no_mvm_{n}", metric), note))  # fmt: skip
    for metric in METRICS.values():
        rows.append(claim_row("zero-shot CT -> MR", metric, "CT-only model on MR test", value("ct_only", metric, "mr"),
                         "same model on CT test", value("ct_only", metric, "ct"),
                         f"{items('ct_only')} CT training items"))  # fmt: skip
        rows.append(claim_row("zero-shot CT -> MR", metric, "CT-only model on MR test", value("ct_only", metric, "mr"),
                         "mixed-domain (joint) model on MR test", value("joint", metric, "mr")))  # fmt: skip
    for metric in METRICS.values():
        rows.append(claim_row("few-shot fine-tuning on MR", metric, "fine-tuned from CT", value("finetuned", metric, "mr"),
                         "scratch", value("scratch", metric, "mr"),
                         f"{items('scratch' if 'scratch' in arms else 'finetuned')} MR-like shots (the paper uses 100)"))  # fmt: skip
    steps = sorted({run["train"]["steps"] for run in arms.values()})
    return json_safe({"mode": "learning", "steps": steps, "arms": sorted(arms),
                      "runs": {name: {k: run[k] for k in ("command", "train", "summary", "summary_by_domain")}
                               for name, run in arms.items()},
                      "rows": rows})  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument("--assemble", action="store_true", help="write claims_learning.json from the arms' files")
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--cases", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800, help="training steps of every arm (the same work each)")
    parser.add_argument("--shots", type=int, default=100, help="annotated MR-like items of the few-shot arms")
    parser.add_argument("--init-weights", type=Path, help="the finetuned arm's start: the ct_only arm's weights")
    parser.add_argument("--save-weights", type=Path, help="where to keep this arm's weights (ct_only's for finetuned)")
    parser.add_argument("--score-threshold", type=float, default=0.05, help="as benchmarks/learning.py's")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folder = args.results / "claims_learning"
    if args.assemble:
        arms = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}
        if not arms:
            parser.error(f"no arm has run: {folder} has no results")
        atomic_write_json(args.results / "claims_learning.json", assemble(arms))
        print(f"wrote {args.results / 'claims_learning.json'} from {sorted(arms)}")
        return 0
    if not args.arm:
        parser.error("give --arm (or --assemble)")
    result = run_arm(args)
    folder.mkdir(parents=True, exist_ok=True)
    # Seed 0 makes the claim rows; another seed's run is kept beside it (``<arm>_s<seed>``) for the arms' table.
    atomic_write_json(folder / f"{args.arm if args.seed == 0 else f'{args.arm}_s{args.seed}'}.json", json_safe(result))
    print(json.dumps({k: result[k] for k in ("arm", "train", "eval_s")}), flush=True)
    print(json.dumps({k: v for k, v in result["summary"].items() if k != "cases"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
