"""Synthetic datasets on disk: many generated studies, their split and annotation level, and a datalist.

:func:`generate_dataset` draws each study with :func:`unimed_core.synthetic.case.generate_case`, writes the image
and label as NIfTI, and lists the study in a datalist at the annotation level the plan gave it (mask, boxes,
image labels or none); ``unimed-make-synthetic`` is its command line.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from unimed_core.data.datalist import COORDINATES, LEVELS, annotation_item, label_map_to_dict, write_datalist
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.case import DOMAINS, SyntheticConfig, generate_case
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible

__all__ = ["DEFAULT_LEVELS", "allocate", "plan_splits", "generate_dataset", "main"]

# Fractions of the training studies per annotation level (mask, boxes, image labels, none).
DEFAULT_LEVELS = dict(zip(LEVELS, (0.4, 0.2, 0.2, 0.2)))


def allocate(n: int, weights: Mapping[str, float], rng: np.random.Generator) -> list[str]:
    """``n`` names in proportion to ``weights`` (largest remainder, so the counts are exact), shuffled."""
    names = [k for k, w in weights.items() if w > 0]
    if not names or min(weights.values()) < 0:
        raise ValueError(f"weights must be >= 0 with some > 0, got {dict(weights)}")
    total = sum(weights[k] for k in names)
    exact = [n * weights[k] / total for k in names]
    counts = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(names)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    out = [k for k, c in zip(names, counts) for _ in range(c)]
    return [out[i] for i in rng.permutation(len(out))]


def plan_splits(
    n_cases: int,
    rng: np.random.Generator,
    *,
    levels: Mapping[str, float] | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
) -> list[tuple[str, str]]:
    """(split, annotation level) of each case: training first, then validation, then test.

    Args:
        n_cases: number of cases.
        rng: draws which training case gets which level (the counts are exact, see :func:`allocate`).
        levels: fractions of the training cases per level in ``LEVELS``; default :data:`DEFAULT_LEVELS`.
            A "none" case belongs in the "unlabeled" list.
        n_validation, n_test: held-out sizes (fully annotated: level "mask"); default 10 % each, at least 1
            each when ``n_cases >= 5``.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    levels = dict(DEFAULT_LEVELS if levels is None else levels)
    if set(levels) - set(LEVELS):
        raise ValueError(f"levels must use {list(LEVELS)}, got {sorted(levels)}")
    default_held = max(1, round(0.1 * n_cases)) if n_cases >= 5 else 0
    n_validation = default_held if n_validation is None else n_validation
    n_test = default_held if n_test is None else n_test
    n_train = n_cases - n_validation - n_test
    if n_validation < 0 or n_test < 0 or n_train < 0:
        raise ValueError(f"n_validation={n_validation} + n_test={n_test} must be within n_cases={n_cases}")
    train = [("training", level) for level in (allocate(n_train, levels, rng) if n_train else [])]
    return train + [("validation", "mask")] * n_validation + [("test", "mask")] * n_test


def generate_dataset(
    out_dir: str | Path,
    n_cases: int,
    seed: int = 0,
    *,
    domains: str | Mapping[str, float] = "ct",
    shape: Sequence[int] | None = (64, 64, 48),
    spacing: Sequence[float] = (6.0, 6.0, 7.5),
    spacing_max: Sequence[float] | None = None,
    fov_mm: Sequence[float] = (384.0, 384.0, 360.0),
    orientations: Sequence[str] = ("RAS",),
    levels: Mapping[str, float] | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    include_derived: bool = True,
    base_config: SyntheticConfig | None = None,
    label_map: LabelMap | None = None,
) -> Path:
    """Write a synthetic dataset and its datalist; return the datalist's path.

    Args:
        out_dir: folder for ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` (paths in it are relative).
        n_cases: total number of cases (training + validation + test).
        seed: everything written is a function of it; the same seed gives byte-identical files.
        domains: "ct", "mr", "mixed" (half each) or weights like ``{"ct": 0.7, "mr": 0.3}``; allocated
            exactly within each split.
        shape: grid size of every case; None: ``ceil(fov_mm / spacing)`` per case.
        spacing: voxel size (mm), or the lower end of a per-case uniform draw when ``spacing_max`` is given.
        spacing_max: upper end of the spacing draw.
        fov_mm: field of view used when ``shape`` is None.
        orientations: axis codes drawn per case (e.g. ``("RAS", "LPS")``).
        levels: annotation levels of the training cases, as fractions of "mask" (label + boxes + class when
            ``include_derived``), "boxes" (boxes + box_labels), "class" (image labels) and "none" (listed under
            "unlabeled" with only ``image``). Default 0.4/0.2/0.2/0.2. Validation and test are fully annotated.
        n_validation, n_test: split sizes; default 10 % each (at least 1 each when ``n_cases >= 5``).
        include_derived: mask-level items also carry the boxes and classes derived from the mask.
        base_config: lesion and noise settings (its domain, shape, spacing, orientation are replaced per case).
        label_map: label ids and class names; default the bundle's. Written into the datalist.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    label_map = label_map or LabelMap.default()
    if isinstance(domains, str):
        domains = {"ct": 0.5, "mr": 0.5} if domains == "mixed" else {domains: 1.0}
    if set(domains) - set(DOMAINS):
        raise ValueError(f"domains must be among {sorted(DOMAINS)} or 'mixed', got {sorted(domains)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    plan = plan_splits(n_cases, rng, levels=levels, n_validation=n_validation, n_test=n_test)
    splits = [split for split, _ in plan]
    domain_of = []
    for split in ("training", "validation", "test"):
        n = splits.count(split)
        domain_of += allocate(n, domains, rng) if n else []
    out_dir = Path(out_dir)
    base = base_config or SyntheticConfig()
    datalist: dict = {
        "name": "unimed-synthetic",
        "description": f"synthetic abdominal studies, seed {seed}, {n_cases} cases "
                       "(unimed_core.synthetic.dataset)",
        "coordinates": COORDINATES,
        "label_map": label_map_to_dict(label_map),
        "training": [], "validation": [], "test": [], "unlabeled": [],
    }  # fmt: skip
    for i in range(n_cases):
        sp = np.asarray(spacing, dtype=float)
        if spacing_max is not None:
            sp = rng.uniform(sp, np.asarray(spacing_max, dtype=float))
        sp = np.round(sp, 3)
        grid = tuple(shape) if shape is not None else tuple(int(math.ceil(f / s)) for f, s in zip(fov_mm, sp))
        orientation = orientations[int(rng.integers(len(orientations)))]
        config = SyntheticConfig(**{**base.__dict__, "domain": domain_of[i], "shape": grid,
                                    "spacing": tuple(sp), "orientation": orientation})  # fmt: skip
        case_seed = [seed, i]
        case = generate_case(case_seed, config, label_map)
        image_rel, label_rel = f"imagesTr/case_{i:04d}.nii.gz", f"labelsTr/case_{i:04d}.nii.gz"
        save_nifti_reproducible(case.image, case.affine, out_dir / image_rel)
        save_nifti_reproducible(case.label, case.affine, out_dir / label_rel)
        level = plan[i][1]
        item = annotation_item(
            level, image=image_rel, label=label_rel, boxes=[les.box_mm for les in case.lesions],
            box_labels=case.box_labels, classes=case.image_labels, domain=case.domain, include_derived=include_derived,
        )  # fmt: skip
        datalist["unlabeled" if level == "none" else splits[i]].append(item)
    return write_datalist(out_dir / "datalist.json", datalist)


def _floats(text: str, n: int = 3) -> tuple[float, ...]:
    parts = [float(v) for v in text.replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= n
    if len(parts) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
    return tuple(parts)


def _levels(text: str) -> dict[str, float]:
    try:
        out = {k.strip(): float(v) for k, v in (p.split("=") for p in text.split(",") if p.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"levels must look like mask=0.4,boxes=0.2,class=0.2,none=0.2, got {text!r}"
        ) from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``unimed-make-synthetic``."""
    parser = argparse.ArgumentParser(prog="unimed-make-synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domain", default="ct", choices=["ct", "mr", "mixed"])
    parser.add_argument("--shape", type=lambda t: tuple(int(v) for v in _floats(t)), default=(64, 64, 48),
                        help="grid X,Y,Z (default 64,64,48); 0 for field-of-view based shapes")  # fmt: skip
    parser.add_argument("--spacing", type=_floats, default=(6.0, 6.0, 7.5), help="voxel size mm X,Y,Z")
    parser.add_argument("--spacing-max", type=_floats, default=None, help="draw spacing per case up to this")
    parser.add_argument("--fov", type=_floats, default=(384.0, 384.0, 360.0), help="field of view mm (--shape 0)")
    parser.add_argument("--orientations", default="RAS", help="comma-separated axis codes drawn per case")
    parser.add_argument("--levels", type=_levels, default=None, help="e.g. mask=0.4,boxes=0.2,class=0.2,none=0.2")
    parser.add_argument("--validation", type=int, default=None, help="validation cases (default 10%%)")
    parser.add_argument("--test", type=int, default=None, help="test cases (default 10%%)")
    parser.add_argument(
        "--lesion-radius", type=lambda t: _floats(t, 2), default=SyntheticConfig.lesion_radius_mm,
        help="lesion radius range mm MIN,MAX (default %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        path = generate_dataset(
            args.out, args.cases, args.seed, domains=args.domain,
            shape=None if min(args.shape) == 0 else args.shape, spacing=args.spacing, spacing_max=args.spacing_max,
            fov_mm=args.fov, orientations=tuple(args.orientations.split(",")), levels=args.levels,
            n_validation=args.validation, n_test=args.test,
            base_config=SyntheticConfig(lesion_radius_mm=tuple(args.lesion_radius)),
        )  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
