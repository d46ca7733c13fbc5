"""TotalSegmentator dataset → datalist: the chosen structures merged into one label volume per subject.

Layout: one folder per subject (``s0000/``) with ``ct.nii.gz`` and ``segmentations/<structure>.nii.gz`` (one
binary mask per structure, all on the CT's grid), and ``meta.csv`` (``;``-separated, columns ``image_id`` and
``split`` = train / val / test). The structures asked for are merged, in the order given, into one label
volume written to the output folder (a voxel claimed by two masks keeps the first one's id; the datalist's
``source`` counts such voxels). Structure names that are mask classes of the label map keep their ids
(TotalSegmentator's ``liver``, ``spleen``, ``kidney_left``, ``kidney_right`` are UniMed's); others are appended.
TotalSegmentator marks no findings, so items carry no ``boxes`` or ``class`` (not annotated, not negative).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unimed_core.data.image_io import Volume, read_label
from unimed_core.datasets.common import (
    check_same_grid,
    extend_label_map,
    header_geometry,
    split_validation,
    write_converted_datalist,
    write_relabelled,
)
from unimed_core.errors import ImageReadError
from unimed_core.label_map import LabelMap

__all__ = ["convert_totalsegmentator", "read_meta"]

_SPLITS = {"train": "training", "val": "validation", "validation": "validation", "test": "test"}


def read_meta(path: str | Path) -> dict[str, str]:
    """``meta.csv`` → image_id → datalist split ("training", "validation", "test")."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    delimiter = ";" if text.split("\n", 1)[0].count(";") >= text.split("\n", 1)[0].count(",") else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if rows and not {"image_id", "split"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns image_id and split, got {list(rows[0])}")
    out = {}
    for line, row in enumerate(rows, start=2):
        split = _SPLITS.get(str(row["split"]).strip().lower())
        if split is None:
            raise ValueError(f"{path}:{line}: split {row['split']!r} is not one of {sorted(_SPLITS)}")
        out[str(row["image_id"]).strip()] = split
    return out


def _merge(subject: Path, structures: Sequence[str], ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray, int]:
    ct = subject / "ct.nii.gz"
    shape, affine = header_geometry(ct)
    merged = np.zeros(shape[:3], dtype=np.int16)
    overlap = 0
    for name in structures:
        path = subject / "segmentations" / f"{name}.nii.gz"
        if not path.is_file():
            raise ImageReadError(path, f"structure {name!r} has no mask in {subject / 'segmentations'}")
        mask = read_label(path)
        check_same_grid(mask, ct)
        inside = mask.array > 0
        overlap += int(np.count_nonzero(inside & (merged > 0)))
        merged[inside & (merged == 0)] = ids[name]
    return merged, affine, overlap


def convert_totalsegmentator(
    root: str | Path,
    out_dir: str | Path,
    *,
    structures: Sequence[str] | None = None,
    label_map: LabelMap | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """Convert a TotalSegmentator dataset folder; returns the datalist path.

    Args:
        root: the folder of subject folders (and ``meta.csv``).
        out_dir: where ``datalist.json`` and the merged ``labels/<subject>.nii.gz`` go.
        structures: TotalSegmentator structure names to merge; default the label map's mask classes that the
            dataset has (liver, spleen, kidneys).
        label_map: the label map to map onto / extend; default the bundle's.
        validation_fraction, seed: without ``meta.csv``, part of the subjects held out for validation.
    """
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    subjects = sorted(p for p in root.iterdir() if (p / "ct.nii.gz").is_file())
    if not subjects:
        raise ValueError(f"{root}: no subject folders with ct.nii.gz")
    base = label_map or LabelMap.default()
    available = sorted(p.name[: -len(".nii.gz")] for p in (subjects[0] / "segmentations").glob("*.nii.gz"))
    if structures is None:
        structures = [n for n in base.mask_classes.values() if n in available]
        if not structures:
            raise ValueError(f"{root}: none of the label map's classes is a structure here; choose --structures")
    unknown = sorted(set(structures) - set(available))
    if unknown:
        raise ValueError(f"{subjects[0] / 'segmentations'}: no structures {unknown}; it has {available}")
    label_map = extend_label_map(base, list(structures))
    ids = label_map.mask_classes_by_name()
    meta = read_meta(root / "meta.csv") if (root / "meta.csv").is_file() else None
    splits: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    overlaps = {}
    for subject in subjects:
        merged, affine, overlap = _merge(subject, structures, ids)
        if overlap:
            overlaps[subject.name] = overlap
        ct = subject / "ct.nii.gz"
        label = write_relabelled(merged, Volume(merged, affine, ct), out_dir / "labels" / f"{subject.name}.nii.gz")
        split = "training" if meta is None else meta.get(subject.name)
        if split is None:
            raise ValueError(f"{root / 'meta.csv'}: subject {subject.name} has no row")
        splits[split].append({"image": str(ct), "label": label, "domain": "ct"})
    if meta is None:
        splits["training"], splits["validation"] = split_validation(splits["training"], validation_fraction, seed)
    source = {
        "dataset": "totalsegmentator",
        "root": str(root),
        "structures": list(structures),
        "overlap_voxels": overlaps,
    }
    return write_converted_datalist(out_dir, splits, label_map, source)
