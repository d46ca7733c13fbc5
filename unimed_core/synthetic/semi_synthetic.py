"""Semi-synthetic studies on real anatomy: lesions inserted into real brain MR volumes that registries ship.

The real tissue labels of the source are kept as segmentation targets; lesions ("cyst": dark, round,
homogeneous; "tumor": irregular, enhancing rim, often a necrotic core) are drawn inside the brain and override
the tissue label where they lie. Every case of a dataset shares the source anatomy; lesions, intensity scale,
bias field and noise vary with the seed. Sources (install what you want to use):

- ``mni152``: nilearn's MNI152 2009 T1 template with its grey/white matter maps (PyPI ``nilearn``; the
  volumes ship inside the wheel, nothing is downloaded). Labels: csf, gray_matter, white_matter.
- ``colin27``: the Colin27 T1 ("ch2") with the AAL atlas (Debian ``mricron-data``, files under
  ``/usr/share/mricron/templates``). Labels: gray_matter_left, gray_matter_right, cerebellum, other_brain.

Example:
    >>> available_sources()  # doctest: +SKIP
    {'mni152': None, 'colin27': 'Debian package mricron-data is not installed (no .../ch2.nii.gz)'}
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from unimed_core.data.datalist import COORDINATES, annotation_item, label_map_to_dict, write_datalist
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.case import (
    LESION_KINDS,
    SyntheticCase,
    SyntheticLesion,
    _Blob,
    _grid_coords,
    _index_box,
    _rotation,
    _slices,
    _waves,
    _world_box,
)
from unimed_core.synthetic.dataset import plan_splits
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible

__all__ = [
    "SOURCES",
    "MRICRON_TEMPLATES",
    "RealVolume",
    "available_sources",
    "load_source",
    "semi_synthetic_label_map",
    "make_semi_synthetic_case",
    "make_semi_synthetic_dataset",
    "main",
]

SOURCES = {
    "mni152": "nilearn's MNI152 2009 T1 template + grey/white matter maps (PyPI: nilearn)",
    "colin27": "Colin27 T1 + AAL atlas (Debian: mricron-data)",
}
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")


@dataclass(frozen=True)
class RealVolume:
    """A real volume and its labels.

    Attributes:
        image: float32 T1 intensities scaled so that the brain's median is 1000.
        tissue: int16 real labels, 0 outside, ``i`` for ``tissue_names[i - 1]``.
        tissue_names: names of the labels 1..T.
        brain: bool brain mask (where lesions may go).
        affine: voxel→world (RAS mm).
    """

    image: np.ndarray
    tissue: np.ndarray
    tissue_names: tuple[str, ...]
    brain: np.ndarray
    affine: np.ndarray


def available_sources() -> dict[str, str | None]:
    """Each source → None when it can be loaded here, else why not (and what to install)."""
    out: dict[str, str | None] = {}
    out["mni152"] = None if importlib.util.find_spec("nilearn") else "PyPI package nilearn is not installed"
    needed = [MRICRON_TEMPLATES / f for f in ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")]
    missing = [str(p) for p in needed if not p.is_file()]
    out["colin27"] = f"Debian package mricron-data is not installed (no {missing[0]})" if missing else None
    return out


def _scaled(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return image * np.float32(1000.0 / max(float(np.median(image[brain])), 1e-6))


def _load_mni152() -> RealVolume:
    from nilearn import datasets  # optional dependency: imported only when this source is used

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    # The shipped GM/WM masks overlap; the probability maps give one label per voxel (most probable tissue).
    csf = np.clip(1 - gm - wm, 0, 1)
    tissue = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.int16)
    tissue[~brain] = 0
    return RealVolume(_scaled(np.asarray(t1.dataobj), brain), tissue, ("csf", "gray_matter", "white_matter"),
                      brain, t1.affine.copy())  # fmt: skip


def _load_colin27() -> RealVolume:
    t1 = nib.load(MRICRON_TEMPLATES / "ch2.nii.gz")
    aal_img = nib.load(MRICRON_TEMPLATES / "aal.nii.gz")
    bet = np.asarray(nib.load(MRICRON_TEMPLATES / "ch2bet.nii.gz").dataobj)
    if not np.allclose(aal_img.affine, t1.affine) or aal_img.shape != t1.shape:
        raise ValueError("mricron-data: aal.nii.gz and ch2.nii.gz are not on the same grid")
    aal = np.asarray(aal_img.dataobj).astype(np.int16)
    names = {}
    for line in (MRICRON_TEMPLATES / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    # AAL's 116 regions grouped into four labels: a modest target, and every group has many voxels.
    group = np.zeros(int(aal.max()) + 1, dtype=np.int16)
    for idx, name in names.items():
        if idx < len(group):
            group[idx] = 3 if name.startswith(("Cerebelum", "Vermis")) else 1 if name.endswith("_L") else 2
    brain = ndimage.binary_fill_holes((bet > 0) | (aal > 0))
    tissue = group[aal]
    tissue[brain & (tissue == 0)] = 4
    names_out = ("gray_matter_left", "gray_matter_right", "cerebellum", "other_brain")
    return RealVolume(_scaled(np.asarray(t1.dataobj), brain), tissue, names_out, brain, t1.affine.copy())


@functools.lru_cache(maxsize=4)
def load_source(name: str, stride: int = 1) -> RealVolume:
    """Load source ``name`` (see :data:`SOURCES`), keeping every ``stride``-th voxel along each axis.

    Raises:
        ValueError: unknown source, or one that is not installed here (the message says what to install).
    """
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known sources: {list(SOURCES)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    reason = available_sources()[name]
    if reason is not None:
        raise ValueError(f"source {name!r} is not available: {reason}")
    vol = _load_mni152() if name == "mni152" else _load_colin27()
    if stride == 1:
        return vol
    sl = (slice(None, None, stride),) * 3
    affine = vol.affine.copy()
    affine[:3, :3] *= stride
    return RealVolume(np.ascontiguousarray(vol.image[sl]), np.ascontiguousarray(vol.tissue[sl]), vol.tissue_names,
                      np.ascontiguousarray(vol.brain[sl]), affine)  # fmt: skip


def semi_synthetic_label_map(tissue_names: Sequence[str]) -> LabelMap:
    """The real tissue labels (ids 1..T) followed by the lesion classes; boxes and image classes are lesions."""
    names = ["background", *tissue_names, *LESION_KINDS]
    return LabelMap(dict(enumerate(names)), LESION_KINDS, LESION_KINDS)


@functools.lru_cache(maxsize=4)
def _depth_mm(source: str, stride: int) -> np.ndarray:
    vol = load_source(source, stride)
    return ndimage.distance_transform_edt(vol.brain, sampling=np.linalg.norm(vol.affine[:3, :3], axis=0))


def make_semi_synthetic_case(
    seed: int | Sequence[int],
    source: str = "mni152",
    *,
    stride: int = 1,
    lesion_presence: float = 0.5,
    lesions_per_kind: tuple[int, int] = (1, 2),
    lesion_radius_mm: tuple[float, float] = (4.0, 18.0),
    noise: float = 15.0,
) -> SyntheticCase:
    """One study: the source's anatomy with seeded lesions, intensity scale, bias field and Rician noise.

    Args:
        seed: lesions and appearance are a function of it.
        source: a name of :data:`SOURCES`.
        stride: keep every ``stride``-th voxel (2 or 3 for quick experiments).
        lesion_presence: probability that each lesion kind is present.
        lesions_per_kind: (min, max) count of a present kind.
        lesion_radius_mm: (min, max) radius, drawn log-uniformly.
        noise: Rician noise sd (the brain's median is 1000).

    Returns:
        A :class:`SyntheticCase` whose label ids follow :func:`semi_synthetic_label_map`.
    """
    if not 0 <= lesion_presence <= 1 or not 0 < lesion_radius_mm[0] <= lesion_radius_mm[1]:
        raise ValueError(f"bad lesion settings: presence {lesion_presence}, radius {lesion_radius_mm}")
    vol = load_source(source, stride)
    depth = _depth_mm(source, stride)
    first_lesion = len(vol.tissue_names) + 1
    lesion_rng, render_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    label = vol.tissue.copy()
    image = vol.image.copy()
    ref = 1000.0
    lesions: list[SyntheticLesion] = []
    for kind_index, kind in enumerate(LESION_KINDS):
        present = lesion_rng.random() < lesion_presence
        count = int(lesion_rng.integers(lesions_per_kind[0], lesions_per_kind[1] + 1)) if present else 0
        for _ in range(count):
            radius = float(np.exp(lesion_rng.uniform(*np.log(lesion_radius_mm))))
            candidates = np.flatnonzero((depth > radius + 3).ravel())
            if not len(candidates):
                continue
            ijk = np.array(np.unravel_index(candidates[lesion_rng.integers(len(candidates))], label.shape))
            center = vol.affine[:3, :3] @ ijk + vol.affine[:3, 3]
            if any(np.linalg.norm(center - np.array(les.center_mm)) < radius + les.radius_mm + 3 for les in lesions):
                continue
            irregular = kind == "tumor"
            blob = _Blob(center, radius * lesion_rng.uniform(0.75 if irregular else 0.85, 1.25 if irregular else 1.15, 3),
                         _rotation(lesion_rng, (180, 90, 180)),
                         waves=_waves(lesion_rng, 4, (3.0, 6.0), (0.05, 0.12)) if irregular
                         else _waves(lesion_rng, 2, (1.0, 2.0), (0.01, 0.03)))  # fmt: skip
            box = _index_box(vol.affine, center, blob.half_extent(), label.shape)
            if box is None:
                continue
            sl = _slices(*box)
            level = blob.level(*_grid_coords(vol.affine, *box))
            inside = vol.brain[sl] & (level <= 1) & (label[sl] < first_lesion)
            if inside.sum() < 3:
                continue
            mask_id = first_lesion + kind_index
            label[sl][inside] = mask_id
            sub = image[sl]
            if irregular:  # enhancing, heterogeneous rim; necrotic core in larger ones
                tex = ndimage.gaussian_filter(lesion_rng.standard_normal(sub.shape).astype(np.float32), 1.0)
                tex /= max(float(tex.std()), 1e-6)
                values = np.float32(ref * lesion_rng.uniform(1.25, 1.45)) * (1 + np.float32(0.1) * tex)
                if radius >= 8 and lesion_rng.random() < 0.7:
                    core = level <= lesion_rng.uniform(0.4, 0.65)
                    values[core] = np.float32(ref * lesion_rng.uniform(0.3, 0.45)) * (1 + np.float32(0.1) * tex[core])
                sub[inside] = values[inside]
            else:  # fluid: dark on T1, homogeneous
                sub[inside] = np.float32(ref * lesion_rng.uniform(0.2, 0.3))
            lesions.append(SyntheticLesion(
                class_name=kind, mask_id=mask_id, organ="brain",
                center_mm=tuple(round(float(v), 3) for v in center), radius_mm=round(radius, 3),
                box_mm=_world_box(vol.affine, np.stack(np.nonzero(inside)) + box[0][:, None]),
                num_voxels=int(inside.sum()),
            ))  # fmt: skip
    image = _appearance(image, vol.affine, render_rng, noise)
    kinds = {les.class_name for les in lesions}
    return SyntheticCase(image, label, vol.affine.copy(), lesions, [k for k in LESION_KINDS if k in kinds], "mr")


def _appearance(image: np.ndarray, affine: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Per-case gain, smooth bias field (exp of a random linear + quadratic term) and Rician noise."""
    x, y, z = _grid_coords(affine, (0, 0, 0), image.shape)
    k = rng.uniform(-0.2, 0.2, size=5).astype(np.float32)
    u, v, w = x / 150, y / 150, z / 150
    bias = np.exp((k[0] * u + k[3] * u * u) + (k[1] * v + k[4] * v * v) + k[2] * w)
    image = image * (np.float32(rng.uniform(0.8, 1.2)) * bias)
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise)
    imag = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def make_semi_synthetic_dataset(
    out_dir: str | Path,
    n_cases: int,
    seed: int = 0,
    *,
    source: str = "mni152",
    stride: int = 1,
    levels: Mapping[str, float] | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    include_derived: bool = True,
) -> Path:
    """Write ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` (same format as
    :func:`unimed_core.synthetic.dataset.generate_dataset`, with this source's label map); return the datalist.

    Args:
        out_dir: output folder.
        n_cases: number of cases.
        seed: the same seed gives byte-identical files.
        source: a name of :data:`SOURCES`; ``ValueError`` saying what to install when it is missing.
        stride: keep every ``stride``-th voxel.
        levels, n_validation, n_test: annotation levels and held-out sizes (see
            :func:`unimed_core.synthetic.dataset.plan_splits`).
        include_derived: mask-level items also carry boxes and classes.
    """
    vol = load_source(source, stride)
    label_map = semi_synthetic_label_map(vol.tissue_names)
    plan = plan_splits(n_cases, np.random.default_rng(np.random.SeedSequence([seed, 7919])), levels=levels,
                       n_validation=n_validation, n_test=n_test)  # fmt: skip
    out_dir = Path(out_dir)
    datalist: dict = {
        "name": f"unimed-semi-synthetic-{source}",
        "description": f"lesions inserted into {SOURCES[source]}, seed {seed}, {n_cases} cases",
        "coordinates": COORDINATES,
        "label_map": label_map_to_dict(label_map),
        "training": [], "validation": [], "test": [], "unlabeled": [],
    }  # fmt: skip
    for i, (split, level) in enumerate(plan):
        case = make_semi_synthetic_case([seed, i], source, stride=stride)
        image_rel, label_rel = f"imagesTr/case_{i:04d}.nii.gz", f"labelsTr/case_{i:04d}.nii.gz"
        save_nifti_reproducible(case.image, case.affine, out_dir / image_rel)
        save_nifti_reproducible(case.label, case.affine, out_dir / label_rel)
        item = annotation_item(
            level, image=image_rel, label=label_rel, boxes=[les.box_mm for les in case.lesions],
            box_labels=case.box_labels, classes=case.image_labels, domain=case.domain, include_derived=include_derived,
        )  # fmt: skip
        datalist["unlabeled" if level == "none" else split].append(item)
    return write_datalist(out_dir / "datalist.json", datalist)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``unimed-make-semisynthetic``."""
    parser = argparse.ArgumentParser(prog="unimed-make-semisynthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default="mni152", choices=list(SOURCES))
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th voxel (default 1)")
    parser.add_argument("--list", action="store_true", help="list the sources and whether each is installed")
    args = parser.parse_args(argv)
    if args.list:
        for name, reason in available_sources().items():
            print(f"{name}: {'available' if reason is None else reason} — {SOURCES[name]}")
        return 0
    if args.out is None:
        parser.error("--out is required")
    reason = available_sources()[args.source]
    if reason is not None:
        print(f"skipping source {args.source!r}: {reason}")
        return 2
    print(make_semi_synthetic_dataset(args.out, args.cases, args.seed, source=args.source, stride=args.stride))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
