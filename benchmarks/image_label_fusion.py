"""Image labels that read the rescored lesion candidates: the benchmark that chose the predictor's fusion rule.

The image head alone is near chance for tumours (bundle 0.5.0: tumour AUC 0.61 test, 0.56 fresh seed 7) while the
candidate rescorer (``benchmarks/candidate_rescorer.py``) gives each lesion candidate a calibrated probability of
being a true lesion. A class is present where one of its candidates is, so ``1 - prod(1 - p_i)`` over the class's
candidates (noisy-OR: at least one true, taken as independent) is an image probability too. Four rules per lesion
class, read on the same studies as the rescorer: the head's probability, the noisy-OR, their mean and their maximum.
The rule is chosen on the tuning studies (validation + fresh seed 8; highest mean AUC over the lesion classes) and
reported on the benchmark's test studies and fresh seed 7.

    OMP_NUM_THREADS=1 python -m benchmarks.image_label_fusion --weights bundle/models/model.pt

Writes ``benchmarks/results/image_label_fusion.json`` and ``.md``. The predictor applies the chosen rule whenever it
has a rescorer (``UniMedPredictor._with_lesion_evidence``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.candidate_rescorer import SETS, set_items
from benchmarks.learning_curve import RESULTS, benchmark_predictor, bundle_choices
from unimed_core.data.atomic import atomic_write_json, atomic_write_text
from unimed_core.data.image_io import read_image
from unimed_core.inference.candidate_rescorer import bundle_rescorer
from unimed_core.model.weights import sha256_of
from unimed_core.paths import DEFAULT_RESCORER, DEFAULT_WEIGHTS

__all__ = ["RULES", "noisy_or", "main"]


def noisy_or(probabilities) -> float:
    """Probability that at least one of independent events of these probabilities happens (0 for none)."""
    return 1.0 - float(np.prod(1.0 - np.asarray(probabilities, dtype=np.float64)))


RULES = {"image head": lambda head, found: head, "noisy-OR of the candidates": lambda head, found: found,
         "mean": lambda head, found: (head + found) / 2, "maximum": lambda head, found: np.maximum(head, found)}  # fmt: skip


def _studies(weights: Path, rescorer, items: list[dict], lesion_classes: list[str], label_map) -> dict:
    """Per study with image labels: the head's probability and the candidates' noisy-OR of each lesion class, and
    whether the class is present."""
    head_only = bundle_choices(benchmark_predictor(weights, label_map))
    rescored = bundle_choices(benchmark_predictor(weights, label_map))
    rescored.rescorer, rescored.score_threshold = rescorer, 0.0  # every candidate counts
    out = {"head": [], "found": [], "present": []}
    for item in (i for i in items if "class" in i):
        volume = read_image(item["image"])
        head = head_only.predict(volume).class_probabilities
        prediction = rescored.predict(volume)
        out["head"].append([head[c] for c in lesion_classes])
        out["found"].append([noisy_or([s for s, b in zip(prediction.box_scores, prediction.box_labels) if b == c])
                             for c in lesion_classes])  # fmt: skip
        out["present"].append([c in item["class"] for c in lesion_classes])
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--rescorer", type=Path, default=DEFAULT_RESCORER)
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"), help="the benchmark's studies")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rescorer = bundle_rescorer(args.rescorer, args.weights)
    if rescorer is None:
        raise SystemExit(
            f"{args.rescorer} was not fitted for {args.weights}: fit one first (benchmarks/candidate_rescorer.py)"
        )
    out = {"command": f"python -m benchmarks.image_label_fusion --weights {args.weights}",
           "weights_sha256": sha256_of(args.weights), "rescorer_sha256": sha256_of(args.rescorer), "sets": {}}  # fmt: skip
    for name, studies in SETS.items():
        label_map, items = set_items(args.data, studies)
        box_names = [n for n in label_map.box_classes if n in label_map.image_classes]
        found = _studies(args.weights, rescorer, items, box_names, label_map)
        rows = {}
        for rule, fuse in RULES.items():
            scores = fuse(found["head"], found["found"])
            per_class = {c: float(roc_auc_score(found["present"][:, k], scores[:, k])) for k, c in enumerate(box_names)}
            rows[rule] = {"mean": float(np.mean(list(per_class.values()))), **per_class}
        out["sets"][name] = {"studies": len(found["present"]), "rows": rows}
        print(name, json.dumps(rows), flush=True)
    tuning = next(iter(out["sets"].values()))["rows"]
    out["chosen"] = max(tuning, key=lambda rule: tuning[rule]["mean"])
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "image_label_fusion.json", out)
    classes = [k for k in next(iter(tuning.values())) if k != "mean"]
    lines = [f"Chosen on the tuning studies: **{out['chosen']}** (weights `{out['weights_sha256'][:8]}…`, rescorer "
             f"`{out['rescorer_sha256'][:8]}…`; image-label AUC of the lesion classes)", "",
             "| studies | rule | mean AUC | " + " | ".join(f"AUC {c}" for c in classes) + " |",
             "|---|---|---|" + "---|" * len(classes)]  # fmt: skip
    for name, result in out["sets"].items():
        for rule, row in result["rows"].items():
            lines.append(f"| {name} ({result['studies']}) | {rule} | {row['mean']:.3f} | "
                         + " | ".join(f"{row[c]:.3f}" for c in classes) + " |")  # fmt: skip
    atomic_write_text(args.results / "image_label_fusion.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
