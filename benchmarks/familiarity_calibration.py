"""Familiarity warnings: record the training scans' statistics, calibrate the limits, measure both error rates.

One command regenerates ``bundle/configs/familiarity.json`` (what the predictor reads) and
``benchmarks/results/familiarity.json`` (the rates that ``docs/reliability.md`` reports)::

    python -m benchmarks.familiarity_calibration --datalist data/learning-cpu/datalist.json

- statistics: the features (``unimed_core.inference.familiarity.volume_features``) of every ``training`` and
  ``unlabeled`` image of the datalist, the data the weights were trained on;
- limits: per signal, ``margin`` times the largest score of the ``validation`` images (held out, never warned
  about by construction), so the limit is set on familiar scans only and the unfamiliar ones below do not choose it;
- rates: false warnings on the ``test`` images (held out, generated like the training data), and missed warnings
  on volumes unlike them that this machine can provide: nilearn's MNI152 T1 brain, Debian's Colin27 T1
  (``mricron-data``, when installed), and the test studies changed to another body region (a 100 mm slab;
  the anatomy shrunk to half its size) or to intensities of no modality the model saw (inverted, so fluid is
  dark and fat bright; cubed, a histogram squeezed towards the bottom).

The features do not depend on the weights, so a retrained model keeps these limits as long as its training data
are generated the same way. With ``--weights``, the model's own uncertainty (the normalised entropies that MONAI
Label's active learning uses, ``monailabel_app/lib/uncertainty.py``, one extra pass per volume) is calibrated and
measured the same way; its limit is recorded with the weights' sha256 and applies to those weights only::

    python -m benchmarks.familiarity_calibration --datalist data/learning-cpu/datalist.json \
        --weights bundle/models/model.pt
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.image_io import Volume, read_image
from unimed_core.inference.familiarity import SIGNALS, FamiliarityReference, familiarity_warnings, volume_features
from unimed_core.paths import BUNDLE_DIR

__all__ = ["main", "unfamiliar_volumes", "VARIANTS"]

STATISTICS = BUNDLE_DIR / "configs" / "familiarity.json"
RESULTS = Path("benchmarks/results/familiarity.json")
MRICRON = Path("/usr/share/mricron/templates")


def _slab(v: Volume) -> Volume:
    """The central 100 mm along S: a partial scan of another region's extent."""
    k = v.shape[2]
    spacing = float(np.linalg.norm(v.affine[:3, 2]))
    half = max(1, int(round(50.0 / spacing)))
    lo = max(0, k // 2 - half)
    affine = v.affine.copy()
    affine[:3, 3] = v.affine[:3, :3] @ np.array([0, 0, lo]) + v.affine[:3, 3]
    return Volume(v.array[:, :, lo : k // 2 + half].copy(), affine, v.path)


def _shrunk(v: Volume) -> Volume:
    """The same voxels at half the spacing: an anatomy half the size (a small child's, or a head's extent)."""
    affine = v.affine.copy()
    affine[:3, :3] *= 0.5
    return Volume(v.array, affine, v.path)


def _inverted(v: Volume) -> Volume:
    return Volume(float(v.array.max()) - v.array, v.affine, v.path)


def _cubed(v: Volume) -> Volume:
    lo, hi = float(v.array.min()), float(v.array.max())
    return Volume((((v.array - lo) / (hi - lo)) ** 3 * 1000).astype(np.float32), v.affine, v.path)


VARIANTS: dict[str, Callable[[Volume], Volume]] = {
    "slab_100mm": _slab,
    "anatomy_half_size": _shrunk,
    "intensities_inverted": _inverted,
    "intensities_cubed": _cubed,
}


def unfamiliar_volumes(test_images: list[Path]) -> Iterator[tuple[str, str, Volume]]:
    """``(kind, name, volume)`` of every unfamiliar volume this machine can provide."""
    try:
        from nilearn import datasets

        t1 = datasets.load_mni152_template(resolution=1)
        yield "mni152_brain_mr", "MNI152 2009 T1", Volume(np.asarray(t1.dataobj, np.float32), t1.affine)
    except ImportError:
        pass
    if (MRICRON / "ch2.nii.gz").is_file():
        yield "colin27_brain_mr", "Colin27 T1", read_image(MRICRON / "ch2.nii.gz")
    for path in test_images:
        volume = read_image(path)
        for kind, change in VARIANTS.items():
            yield kind, path.name, change(volume)


def _uncertainty(weights: Path) -> Callable[[Volume], float]:
    """The combined uncertainty of a volume under ``weights`` (the MONAI Label app's own function, loaded by path:
    the app is not a package)."""
    from unimed_core.cli.infer import build_predictor
    from unimed_core.paths import REPO_ROOT

    spec = importlib.util.spec_from_file_location("_app_uncertainty", REPO_ROOT / "monailabel_app/lib/uncertainty.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    predictor = build_predictor(weights, device="cpu")
    return lambda volume: round(module.volume_uncertainty(predictor, volume).combined, 4)


def _images(datalist: Path, sections: tuple[str, ...]) -> list[Path]:
    doc = json.loads(datalist.read_text(encoding="utf-8"))
    return [(datalist.parent / item["image"]).resolve() for s in sections for item in doc.get(s, [])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", type=Path, required=True, help="the training datalist (decathlon style)")
    parser.add_argument("--margin", type=float, default=1.5, help="limit = margin x largest validation score")
    parser.add_argument("--floor", type=float, default=3.0, help="smallest limit, in spreads")
    parser.add_argument("--statistics", type=Path, default=STATISTICS, help="statistics file to write")
    parser.add_argument("--results", type=Path, default=RESULTS, help="rates file to write")
    parser.add_argument("--weights", type=Path, help="also calibrate the model's uncertainty for these weights")
    args = parser.parse_args(argv)
    training = _images(args.datalist, ("training", "unlabeled"))
    validation = _images(args.datalist, ("validation",))
    test = _images(args.datalist, ("test",))
    if not training or not validation or not test:
        parser.error(f"{args.datalist}: needs training (or unlabeled), validation and test images")
    features = [volume_features(read_image(p)) for p in training]
    reference = FamiliarityReference(features, source=str(args.datalist))
    held = [reference.scores(volume_features(read_image(p))) for p in validation]
    limits = {s: round(max(args.floor, args.margin * max(h[s] for h in held)), 3) for s in ("region", "intensity")}
    uncertainty, sha256 = None, None
    if args.weights is not None:
        uncertainty = _uncertainty(args.weights)
        limits["uncertainty"] = round(args.margin * max(uncertainty(read_image(p)) for p in validation), 4)
        sha256 = hashlib.sha256(args.weights.read_bytes()).hexdigest()
    reference = FamiliarityReference(features, limits, source=str(args.datalist), weights_sha256=sha256)
    reference.save(args.statistics)

    def row(kind: str, name: str, volume: Volume) -> dict:
        warned = [w["signal"] for w in familiarity_warnings(volume, reference)]
        scores = reference.scores(volume_features(volume))
        if uncertainty is not None:
            scores["uncertainty"] = uncertainty(volume)
            warned += ["uncertainty"] if scores["uncertainty"] > limits["uncertainty"] else []
        return {"kind": kind, "name": name, "scores": scores, "warned": warned}

    def rate(rows: list[dict], signals: tuple[str, ...] | None = None, missed: bool = False) -> float:
        hits = [any(s in r["warned"] for s in (signals or SIGNALS)) for r in rows]
        return sum(not h if missed else h for h in hits) / len(rows)

    familiar = [row("held_out_generated", p.name, read_image(p)) for p in test]
    unfamiliar = [row(*item) for item in unfamiliar_volumes(test)]
    kinds = sorted({r["kind"] for r in unfamiliar})
    result = {
        "command": " ".join(
            ["python -m benchmarks.familiarity_calibration", *map(str, sys.argv[1:] if argv is None else argv)]
        ),
        "training_scans": len(training),
        "validation_scans": len(validation),
        "limits": limits,
        "weights_sha256": sha256,
        "false_warning_rate": rate(familiar),
        "familiar_scans": len(familiar),
        "missed_warning_rate": {k: rate([r for r in unfamiliar if r["kind"] == k], missed=True) for k in kinds},
        "per_signal": {
            s: {
                "false_warning_rate": rate(familiar, (s,)),
                "missed_warning_rate": {
                    k: rate([r for r in unfamiliar if r["kind"] == k], (s,), missed=True) for k in kinds
                },
            }
            for s in limits
        },
        "unfamiliar_scans": {k: sum(r["kind"] == k for r in unfamiliar) for k in kinds},
        "rows": familiar + unfamiliar,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results, result)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
