"""The datalist: MONAI decathlon-style JSON listing volumes and whatever annotation each has (DESIGN.md §4).

Layout::

    {"training": [...], "validation": [...], "test": [...], "unlabeled": [...],
     "label_map": {"mask_classes": {"0": "background", ...}, "box_classes": [...], "image_classes": [...]},
     "coordinates": "boxes in world millimetres, RAS, corner mode XYZXYZ"}

An item has ``image`` and any of ``label`` (mask file), ``boxes`` (list of ``[x1, y1, z1, x2, y2, z2]`` in
world RAS millimetres) with ``box_labels`` (one name per box), ``class`` (image-level class names; ``[]`` means
"annotated: none present") and ``domain`` (e.g. "ct", "mr"). A missing key means "not annotated", never
"negative". Paths are relative to the datalist's folder unless absolute.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unimed_core.label_map import LabelMap

__all__ = [
    "SPLITS",
    "ITEM_KEYS",
    "COORDINATES",
    "load_datalist",
    "label_map_to_dict",
    "label_map_from_dict",
    "label_map_from_datalist",
    "write_datalist",
    "LEVELS",
    "annotation_item",
]

SPLITS = ("training", "validation", "test", "unlabeled")
ITEM_KEYS = ("image", "label", "boxes", "box_labels", "class", "domain")
# Written next to every box list that leaves the program (DESIGN.md §3).
COORDINATES = "boxes in world millimetres, RAS, corner mode XYZXYZ"
# Annotation levels a generated training case may have; "none" cases go to the "unlabeled" split.
LEVELS = ("mask", "boxes", "class", "none")


def label_map_to_dict(label_map: LabelMap) -> dict[str, Any]:
    """JSON-ready form of a label map (the datalist's ``label_map`` entry)."""
    out: dict[str, Any] = {
        "mask_classes": {str(k): v for k, v in sorted(label_map.mask_classes.items())},
        "box_classes": list(label_map.box_classes),
        "image_classes": list(label_map.image_classes),
    }
    if label_map.colors:
        out["colors"] = {k: list(v) for k, v in label_map.colors.items()}
    if label_map.terminology:  # the coded segments (SNOMED CT) travel with the classes they code
        out["terminology"] = {k: {f: list(c) for f, c in v.items()} for k, v in label_map.terminology.items()}
    return out


def label_map_from_dict(data: Mapping[str, Any]) -> LabelMap:
    """Inverse of :func:`label_map_to_dict`; ``ValueError`` when the entry is malformed."""
    if not isinstance(data, Mapping):
        raise ValueError(f"malformed label_map entry {data!r}: must be an object with 'mask_classes'")
    try:
        mask = {int(k): str(v) for k, v in data["mask_classes"].items()}
        colors = {str(k): tuple(int(c) for c in v) for k, v in data.get("colors", {}).items()}
        terminology = {
            str(k): {str(f): [str(x) for x in c] for f, c in v.items()} for k, v in data.get("terminology", {}).items()
        }
        return LabelMap(
            mask, tuple(data.get("box_classes", ())), tuple(data.get("image_classes", ())), colors, terminology
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed label_map entry {dict(data)!r}: {e}") from e


def label_map_from_datalist(path: str | Path) -> LabelMap | None:
    """The label map a datalist declares under ``label_map``, or None when it declares none."""
    data = _read_json(Path(path))
    return label_map_from_dict(data["label_map"]) if "label_map" in data else None


def write_datalist(path: str | Path, datalist: Mapping[str, Any]) -> Path:
    """Write ``datalist`` as indented JSON atomically (temp file + ``os.replace``), byte-stable across runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(datalist, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def annotation_item(
    level: str,
    *,
    image: str,
    label: str | None = None,
    boxes: Sequence[Sequence[float]] = (),
    box_labels: Sequence[str] = (),
    classes: Sequence[str] = (),
    domain: str | None = None,
    include_derived: bool = True,
) -> dict[str, Any]:
    """The datalist item of a fully known case, keeping only what annotation level ``level`` gives.

    Args:
        level: "mask" (``label``; plus boxes and classes when ``include_derived``), "boxes" (boxes and
            box_labels), "class" (image classes) or "none" (only ``image``: an unlabeled item).
        image, label: paths as they should appear in the datalist.
        boxes, box_labels, classes: the case's full annotation (an empty list means "none present").
        domain: written on annotated items when given.
        include_derived: see ``level``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {list(LEVELS)}, got {level!r}")
    if level == "mask" and label is None:
        raise ValueError("a mask-level item needs a label path")
    if level == "none":
        return {"image": image}
    item: dict[str, Any] = {"image": image}
    if level == "mask":
        item["label"] = label
    if level == "boxes" or (level == "mask" and include_derived):
        item["boxes"] = [[float(v) for v in box] for box in boxes]
        item["box_labels"] = list(box_labels)
    if level == "class" or (level == "mask" and include_derived):
        item["class"] = list(classes)
    if domain is not None:
        item["domain"] = domain
    return item


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the datalist: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a datalist must be a JSON object with {list(SPLITS)}, got {type(data).__name__}")
    return data


def load_datalist(
    path: str | Path, label_map: LabelMap | None = None, check_files: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Read and validate a datalist; return its four splits with absolute paths.

    Args:
        path: the datalist JSON file.
        label_map: classes that ``box_labels`` and ``class`` may name. None: the datalist's own ``label_map``
            entry, else :meth:`LabelMap.default`. When both are present their mask classes must agree.
        check_files: also check that every ``image`` and ``label`` file exists.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "unlabeled": [...]}`` (absent splits are
        empty). Items are copies with ``image``/``label`` made absolute, ``class`` always a list and
        ``boxes`` lists of 6 floats; absent keys stay absent ("not annotated").

    Raises:
        ValueError: naming the datalist, the split and item index, and what is wrong.

    Example:
        >>> splits = load_datalist("data/datalist.json")  # doctest: +SKIP
        >>> splits["training"][0]["image"]  # doctest: +SKIP
        '/abs/path/data/imagesTr/case_0000.nii.gz'
    """
    path = Path(path).resolve()
    data = _read_json(path)
    try:
        declared = label_map_from_dict(data["label_map"]) if "label_map" in data else None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if label_map is None:
        label_map = declared if declared is not None else LabelMap.default()
    elif declared is not None and declared.mask_classes != label_map.mask_classes:
        raise ValueError(
            f"{path}: the datalist's label_map {declared.mask_classes} differs from the given one "
            f"{label_map.mask_classes}"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        items = data.get(split, [])
        if not isinstance(items, list):
            raise ValueError(f"{path}: {split!r} must be a list of items, got {type(items).__name__}")
        out[split] = [
            _check_item(
                item,
                where=f"{path}: {split}[{i}]",
                root=path.parent,
                label_map=label_map,
                check_files=check_files,
                unlabeled=split == "unlabeled",
            )
            for i, item in enumerate(items)
        ]
    return out


def _check_item(
    item: Any, *, where: str, root: Path, label_map: LabelMap, check_files: bool, unlabeled: bool
) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: an item must be an object with 'image', got {item!r}")
    unknown = sorted(set(item) - set(ITEM_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {list(ITEM_KEYS)}")
    if "image" not in item:
        raise ValueError(f"{where}: missing 'image'")
    if unlabeled and set(item) - {"image", "domain"}:
        raise ValueError(f"{where}: an unlabeled item carries only 'image' (and 'domain'), got {sorted(item)}")
    out = dict(item)
    for key in ("image", "label"):
        if key in item:
            if not isinstance(item[key], str) or not item[key]:
                raise ValueError(f"{where}: {key!r} must be a file path string, got {item[key]!r}")
            resolved = Path(item[key]) if os.path.isabs(item[key]) else root / item[key]
            if check_files and not resolved.is_file():
                raise ValueError(f"{where}: {key} file {str(resolved)!r} does not exist")
            out[key] = str(resolved)
    if ("boxes" in item) != ("box_labels" in item):
        raise ValueError(f"{where}: 'boxes' and 'box_labels' go together, got only one of them")
    if "boxes" in item:
        out["boxes"], out["box_labels"] = _check_boxes(item["boxes"], item["box_labels"], where, label_map)
    if "class" in item:
        names = [item["class"]] if isinstance(item["class"], str) else item["class"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}: 'class' must be a class name or a list of names, got {item['class']!r}")
        bad = [n for n in names if n not in label_map.image_classes]
        if bad:
            raise ValueError(
                f"{where}: unknown image class {bad}; known image classes: {list(label_map.image_classes)}"
            )
        out["class"] = list(names)
    if "domain" in item and not isinstance(item["domain"], str):
        raise ValueError(f"{where}: 'domain' must be a string, got {item['domain']!r}")
    return out


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer beyond float range
        return False


def _check_boxes(boxes: Any, labels: Any, where: str, label_map: LabelMap) -> tuple[list[list[float]], list[str]]:
    if not isinstance(boxes, list) or not isinstance(labels, list):
        raise ValueError(f"{where}: 'boxes' and 'box_labels' must be lists, got {boxes!r} and {labels!r}")
    if len(boxes) != len(labels):
        raise ValueError(f"{where}: {len(boxes)} boxes but {len(labels)} box_labels")
    checked = []
    for j, box in enumerate(boxes):
        ok = (
            isinstance(box, list)
            and len(box) == 6
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        )
        if not ok or not all(_finite(v) for v in box):
            raise ValueError(f"{where}: box {j} must be 6 finite numbers [x1, y1, z1, x2, y2, z2], got {box!r}")
        if not all(box[d] <= box[d + 3] for d in range(3)):
            raise ValueError(f"{where}: box {j} {box} must have x1<=x2, y1<=y2, z1<=z2 (corner mode XYZXYZ)")
        checked.append([float(v) for v in box])
    for j, name in enumerate(labels):
        if name not in label_map.box_classes:
            raise ValueError(
                f"{where}: box {j} has unknown class {name!r}; known box classes: {list(label_map.box_classes)}"
            )
    return checked, list(labels)
