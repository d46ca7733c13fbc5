"""Few-shot fine-tuning data: a user's datalist whose class names are mapped onto the bundle's vocabulary.

A user's datalist may name classes its own way ("hepatic_lesion") and number its masks its own way (its
``label_map`` entry). :func:`fewshot_splits` renames every box label and image class through the config's
``class_mapping``, rewrites label volumes whose ids differ into ``work_dir``, writes the mapped datalist
there and returns its splits, checked by ``load_datalist`` against the bundle's label map.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from unimed_core.data.datalist import SPLITS, label_map_from_dict, label_map_to_dict, load_datalist, write_datalist
from unimed_core.data.image_io import read_label, write_label
from unimed_core.inference.writers import case_name
from unimed_core.label_map import LabelMap

__all__ = ["map_class_name", "fewshot_splits"]


def map_class_name(name: str, class_mapping: Mapping[str, str], label_map: LabelMap) -> str:
    """``class_mapping[name]`` (or ``name`` itself), checked to be a class of ``label_map``."""
    mapped = class_mapping.get(name, name)
    known = set(label_map.class_names) | {label_map.mask_classes[0]}
    if mapped not in known:
        raise ValueError(
            f"class {name!r} maps to {mapped!r}, which is not in the vocabulary {sorted(known)}; "
            f"add it to class_mapping"
        )
    return mapped


def _label_lut(user: LabelMap, class_mapping: Mapping[str, str], label_map: LabelMap) -> np.ndarray | None:
    """user mask id → bundle mask id, or None when the ids already agree."""
    ids = label_map.mask_classes_by_name()
    lut = np.zeros(max(user.mask_classes) + 1, dtype=np.int16)
    for user_id, name in user.mask_classes.items():
        lut[user_id] = 0 if user_id == 0 else ids[map_class_name(name, class_mapping, label_map)]
    identity = all(int(lut[i]) == i for i in user.mask_classes)
    return None if identity else lut


def fewshot_splits(
    datalist: str | Path,
    class_mapping: Mapping[str, str],
    label_map: LabelMap,
    work_dir: str | Path,
    max_cases: int = 100,
) -> dict[str, list[dict]]:
    """Map a user's datalist onto the vocabulary; returns its splits (absolute paths) like ``load_datalist``.

    Args:
        datalist: the user's datalist JSON (names and, optionally, its own ``label_map`` entry).
        class_mapping: user class name → bundle class name (names already in the vocabulary may be omitted).
        label_map: the bundle's label map.
        work_dir: where remapped label volumes and ``datalist_mapped.json`` are written.
        max_cases: most training + unlabeled cases allowed (few-shot means few; use train.json for more).

    Raises:
        ValueError: an unmapped or unknown class, more than ``max_cases`` cases, or a malformed datalist.
    """
    if max_cases < 1:
        raise ValueError(f"max_cases must be >= 1, got {max_cases}")
    path = Path(datalist).resolve()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the datalist: {e}") from e
    n_train = len(data.get("training", [])) + len(data.get("unlabeled", []))
    if n_train > max_cases:
        raise ValueError(
            f"{path}: {n_train} training + unlabeled cases exceed max_cases={max_cases}; few-shot fine-tuning is "
            f"for small sets, use train.json (from the shipped weights) for more"
        )
    user = label_map_from_dict(data["label_map"]) if "label_map" in data else None
    lut = None if user is None else _label_lut(user, class_mapping, label_map)
    work_dir = Path(work_dir)
    mapped: dict = {"label_map": label_map_to_dict(label_map)}
    for split in SPLITS:
        out = []
        for item in data.get(split, []):
            item = dict(item)
            for key in ("image", "label"):
                if key in item and not Path(item[key]).is_absolute():
                    item[key] = str(path.parent / item[key])
            if "box_labels" in item:
                item["box_labels"] = [map_class_name(n, class_mapping, label_map) for n in item["box_labels"]]
            if "class" in item:
                names = [item["class"]] if isinstance(item["class"], str) else item["class"]
                item["class"] = [map_class_name(n, class_mapping, label_map) for n in names]
            if "label" in item and lut is not None:
                volume = read_label(item["label"])
                remapped = lut[np.clip(volume.array.astype(np.int64), 0, len(lut) - 1)]
                target = work_dir / "labels" / f"{case_name(item['label'])}.nii.gz"
                target.parent.mkdir(parents=True, exist_ok=True)
                item["label"] = str(write_label(remapped, volume, target))
            out.append(item)
        mapped[split] = out
    written = write_datalist(work_dir / "datalist_mapped.json", mapped)
    return load_datalist(written, label_map, check_files=True)
