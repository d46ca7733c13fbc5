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
are generated the same way.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.image_io import Volume, read_image
from unimed_core.inference.familiarity import FamiliarityReference, familiarity_warnings, volume_features
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
    reference = FamiliarityReference(features, limits, source=str(args.datalist))
    reference.save(args.statistics)

    def row(kind: str, name: str, volume: Volume) -> dict:
        warnings = familiarity_warnings(volume, reference)
        scores = reference.scores(volume_features(volume))
        return {"kind": kind, "name": name, "scores": scores, "warned": [w["signal"] for w in warnings]}

    familiar = [row("held_out_generated", p.name, read_image(p)) for p in test]
    unfamiliar = [row(*item) for item in unfamiliar_volumes(test)]
    kinds = sorted({r["kind"] for r in unfamiliar})
    result = {
        "command": "python -m benchmarks.familiarity_calibration --datalist " + str(args.datalist),
        "training_scans": len(training),
        "validation_scans": len(validation),
        "limits": limits,
        "false_warning_rate": sum(bool(r["warned"]) for r in familiar) / len(familiar),
        "familiar_scans": len(familiar),
        "missed_warning_rate": {
            k: sum(not r["warned"] for r in unfamiliar if r["kind"] == k) / sum(r["kind"] == k for r in unfamiliar)
            for k in kinds
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
