"""LUNA16 → datalist: nodule boxes and image labels from ``annotations.csv``, no masks.

Layout: ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``) beside ``subset0/`` …
``subset9/`` holding one MetaImage per scan (``<seriesuid>.mhd`` + ``.raw``). LUNA16's coordinates are world
millimetres in the MetaImage's own space, which is ITK's **LPS** (its evaluation script subtracts the ``Offset``
of the ``.mhd``); here they become RAS (x and y negated) like every box in UniMed. Each nodule becomes the
axis-aligned box of its sphere, centre ± diameter / 2. LUNA16 annotates every nodule >= 3 mm that the readers
agreed on, so a scan without a row is a known negative (``"class": []``, no boxes).
"""

from __future__ import annotations

import csv
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from unimed_core.data.boxes import world_to_voxel_points
from unimed_core.datasets.common import extend_label_map, header_geometry, split_validation, write_converted_datalist
from unimed_core.label_map import LabelMap

__all__ = ["convert_luna16", "read_annotations", "NODULE"]

NODULE = "nodule"
_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


def read_annotations(path: str | Path) -> dict[str, list[tuple[np.ndarray, float]]]:
    """``annotations.csv`` → seriesuid → [(centre in world **RAS** mm, diameter mm)]."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"{path}: cannot read LUNA16 annotations ({e})") from e
    if rows and not set(_COLUMNS) <= set(rows[0]):
        raise ValueError(f"{path}: expected columns {list(_COLUMNS)}, got {list(rows[0])}")
    out: dict[str, list[tuple[np.ndarray, float]]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        try:
            lps = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
            diameter = float(row["diameter_mm"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{line}: not a number in {dict(row)} ({e})") from e
        if not (np.all(np.isfinite(lps)) and np.isfinite(diameter) and diameter > 0):
            raise ValueError(f"{path}:{line}: coordinates must be finite and the diameter > 0, got {dict(row)}")
        out[row["seriesuid"].strip()].append((lps * np.array([-1.0, -1.0, 1.0]), diameter))
    return dict(out)


def convert_luna16(
    root: str | Path,
    out_dir: str | Path,
    *,
    label_map: LabelMap | None = None,
    finding: str = NODULE,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """Convert a LUNA16 folder (``annotations.csv`` and ``subset*/*.mhd``); returns the datalist path.

    Args:
        root: the folder holding ``annotations.csv`` and the subsets (scans are found at any depth).
        out_dir: where ``datalist.json`` goes.
        label_map: the label map to extend with the ``finding`` class (box and image level); default the bundle's.
        finding: the class name of a nodule.
        validation_fraction, seed: part of the scans held out for validation, drawn by ``seed``.

    Raises:
        ValueError: no scans, a malformed CSV, or a nodule centre outside its scan (naming the scan).
    """
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    annotations = read_annotations(root / "annotations.csv")
    scans = sorted(root.rglob("*.mhd"), key=lambda p: p.name)
    if not scans:
        raise ValueError(f"{root}: no .mhd scans found (expected subset0/ ... subset9/ with <seriesuid>.mhd)")
    label_map = extend_label_map(label_map or LabelMap.default(), (), [finding])
    items = []
    for scan in scans:
        nodules = annotations.get(scan.name[: -len(".mhd")], [])
        shape, affine = header_geometry(scan)
        boxes = []
        for centre, diameter in nodules:
            voxel = world_to_voxel_points(centre[None], affine)[0]
            if np.any(voxel < -0.5) or np.any(voxel > np.asarray(shape[:3]) - 0.5):
                raise ValueError(
                    f"{root / 'annotations.csv'}: nodule at RAS {centre.round(2).tolist()} mm lies outside scan {scan} "
                    f"(voxel {voxel.round(1).tolist()}, shape {list(shape[:3])}); are the coordinates LPS as LUNA16 writes them?"
                )
            boxes.append((np.concatenate([centre - diameter / 2, centre + diameter / 2])).tolist())
        items.append(
            {
                "image": str(scan),
                "boxes": boxes,
                "box_labels": [finding] * len(boxes),
                "class": [finding] if boxes else [],
                "domain": "ct",
            }
        )
    missing = sorted(set(annotations) - {s.name[: -len(".mhd")] for s in scans})
    if missing:
        warnings.warn(
            f"{root}: {sum(len(annotations[m]) for m in missing)} annotations of {len(missing)} scans that are not in "
            "the folder were skipped (subsets not downloaded?)",
            stacklevel=2,
        )
    training, validation = split_validation(items, validation_fraction, seed)
    source = {"dataset": "luna16", "root": str(root), "coordinates": "annotations.csv LPS, converted to RAS"}
    return write_converted_datalist(out_dir, {"training": training, "validation": validation}, label_map, source)
