"""Datastore labels of every level → datalist items (DESIGN.md §4); no MONAI Label import, so it is testable alone.

One label file per image (MONAI Label's ``final`` tag) says what was annotated:

- a label volume (``.nii.gz``, ``.nii``, ``.nrrd``, ``.seg.nrrd``, ``.mha``) on the image's grid → level ``mask``;
- a JSON file → its keys say the level(s):
  - ``"markups"``: Slicer markups ROIs → level ``boxes``. This is the file MONAI Label's Slicer plugin saves
    for a detection model and loads as ROIs, and the file the ``unimed_detection`` model returns. Each ROI's
    class is, in this order, its ``label.value`` (MONAI Label's detection writer), the first word of its
    ``name`` (UniMed's writer names ROIs ``"tumor 0.87"``), or ``box_labels[i]`` of the label info sent with
    the save request (the Slicer plugin renames ROIs, so a box drawn there names its class that way).
    ``coordinateSystem`` ``"LPS"`` (Slicer's default on save) or ``"RAS"``; boxes become world RAS mm corners.
  - ``"classes"``: image-level class names from the label map (``[]`` = "annotated: none present") → ``class``.
  Both keys may be in one file. Example image label: ``{"classes": ["tumor"]}``.

An image without a ``final`` label is unlabeled: training uses it through the unsupervised term only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unimed_core.label_map import LabelMap

__all__ = [
    "MASK_SUFFIXES",
    "LEVELS",
    "label_item",
    "check_mask_label",
    "item_levels",
    "markups_to_boxes",
    "image_label_document",
    "datastore_items",
    "count_levels",
]

MASK_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
# Annotation levels, cheapest first (the order ties are broken in when suggesting the next level).
LEVELS = ("class", "boxes", "mask")
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def _is_mask(path: Path) -> bool:
    return path.name.lower().endswith(MASK_SUFFIXES)


def _roi_class(markup: Mapping[str, Any], index: int, label_map: LabelMap, fallback: Sequence[str]) -> str:
    candidates = []
    label = markup.get("label")
    if isinstance(label, Mapping) and isinstance(label.get("value"), str):
        candidates.append(label["value"])
    name = markup.get("name")
    if isinstance(name, str) and name.split():
        candidates.append(name.split()[0])
    if index < len(fallback):
        candidates.append(str(fallback[index]))
    for candidate in candidates:
        if candidate in label_map.box_classes:
            return candidate
    raise ValueError(
        f"ROI {index} ({markup.get('name')!r}) names no box class; name it after one of "
        f"{list(label_map.box_classes)} or send box_labels with the label"
    )


def markups_to_boxes(
    document: Mapping[str, Any], label_map: LabelMap, box_labels: Sequence[str] = ()
) -> tuple[list[list[float]], list[str]]:
    """Slicer markups ROIs → (world RAS mm ``XYZXYZ`` corner boxes, class names).

    Args:
        document: a markups JSON document (``{"markups": [...]}``).
        label_map: the box classes the ROIs may name.
        box_labels: class of ROI ``i`` when the ROI itself names none.

    Raises:
        ValueError: a markup that is not an ROI, has no centre/size, or names no box class.
    """
    boxes, names = [], []
    for i, markup in enumerate(document.get("markups", [])):
        if markup.get("type", "ROI") != "ROI":
            raise ValueError(f"markup {i} is a {markup.get('type')!r}, only ROI markups are boxes")
        try:
            centre = np.asarray(markup["center"], dtype=np.float64).reshape(3)
            size = np.asarray(markup["size"], dtype=np.float64).reshape(3)
            axes = np.asarray(markup.get("orientation", np.eye(3).ravel()), dtype=np.float64).reshape(3, 3)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"ROI {i} needs 'center' and 'size' (3 numbers each): {e}") from e
        if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(size)) and np.all(size >= 0)):
            raise ValueError(f"ROI {i} has a non-finite centre or a negative size")
        # corners of the (possibly rotated) ROI, then their axis-aligned bounds
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        corners = centre + (signs * size / 2) @ axes.T
        system = str(markup.get("coordinateSystem", document.get("coordinateSystem", "LPS"))).upper()
        if system not in ("LPS", "RAS"):
            raise ValueError(f"ROI {i}: coordinateSystem must be 'LPS' or 'RAS', got {system!r}")
        if system == "LPS":
            corners = corners * _LPS_TO_RAS
        boxes.append([float(v) for v in (*corners.min(0), *corners.max(0))])
        names.append(_roi_class(markup, i, label_map, box_labels))
    return boxes, names


def image_label_document(classes: Iterable[str], label_map: LabelMap) -> dict[str, Any]:
    """The JSON label file of an image-level annotation (``classes`` must be image classes)."""
    classes = list(classes)
    unknown = [c for c in classes if c not in label_map.image_classes]
    if unknown:
        raise ValueError(f"unknown image classes {unknown}; known: {list(label_map.image_classes)}")
    return {"classes": classes}


def check_mask_label(item: Mapping[str, Any], label_map: LabelMap) -> None:
    """Read a mask item's label volume against its image, as training will.

    Raises:
        ValueError: naming the label file: unreadable or corrupt, not on the image's grid (shape or affine),
            or holding ids the label map does not have.
    """
    from unimed_core.data.image_io import read_image, read_label

    label = read_label(item["label"], reference=read_image(item["image"]), label_map=label_map)
    unknown = sorted(set(np.unique(label.array).tolist()) - set(label_map.mask_classes))
    if unknown:
        raise ValueError(f"{item['label']}: label ids {unknown} are not in the label map {label_map.mask_classes}")


def label_item(
    image: str | Path, label: str | Path, label_map: LabelMap, info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The datalist item of ``image`` annotated by the label file ``label``.

    Args:
        image: the image file (or DICOM folder).
        label: a label volume, or a JSON label (see the module docstring).
        label_map: the classes labels may name.
        info: the label's info in the datastore (``box_labels`` there names the classes of unnamed ROIs).

    Returns:
        ``{"image", "label"}`` for a mask, ``{"image", "boxes", "box_labels"}`` and/or ``{"image", "class"}``
        for a JSON label (boxes in world RAS mm, corner mode).

    Raises:
        ValueError: an unknown file type, unreadable JSON, or names outside the label map.
    """
    label = Path(label)
    item: dict[str, Any] = {"image": str(image)}
    if _is_mask(label):
        item["label"] = str(label)
        return item
    if not label.name.lower().endswith(".json"):
        raise ValueError(f"{label.name}: a label is a volume ({', '.join(MASK_SUFFIXES)}) or a JSON file")
    try:
        document = json.loads(label.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{label.name}: cannot read the JSON label: {e}") from e
    if not isinstance(document, dict) or not ({"markups", "classes"} & set(document)):
        raise ValueError(f"{label.name}: a JSON label has 'markups' (boxes) and/or 'classes' (image labels)")
    if "markups" in document:
        box_labels = list((info or {}).get("box_labels", []))
        item["boxes"], item["box_labels"] = markups_to_boxes(document, label_map, box_labels)
    if "classes" in document:
        names = document["classes"]
        names = [names] if isinstance(names, str) else names
        item["class"] = image_label_document(names, label_map)["classes"]
    return item


def item_levels(item: Mapping[str, Any]) -> list[str]:
    """Annotation levels an item carries, in :data:`LEVELS` order (empty: unlabeled)."""
    present = {"mask": "label" in item, "boxes": "boxes" in item, "class": "class" in item}
    return [level for level in LEVELS if present[level]]


def datastore_items(datastore, label_map: LabelMap, tag: str = "final") -> tuple[list[dict], list[dict]]:
    """(labelled items, unlabeled items) of a MONAI Label datastore, as datalist items with absolute paths.

    ``datastore`` is any object with MONAI Label's ``Datastore`` methods (``list_images``, ``get_image_uri``,
    ``get_labels_by_image_id``, ``get_label_uri``, ``get_label_info``).
    """
    labelled, unlabeled = [], []
    for image_id in sorted(datastore.list_images()):
        image = datastore.get_image_uri(image_id)
        label_id = datastore.get_labels_by_image_id(image_id).get(tag)
        if not label_id:
            unlabeled.append({"image": image})
            continue
        uri = datastore.get_label_uri(label_id, tag)
        labelled.append(label_item(image, uri, label_map, datastore.get_label_info(label_id, tag)))
    return labelled, unlabeled


def count_levels(labelled: Sequence[Mapping[str, Any]], unlabeled: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many images carry each level, plus ``unlabeled``."""
    counts = {level: 0 for level in LEVELS}
    for item in labelled:
        for level in item_levels(item):
            counts[level] += 1
    counts["unlabeled"] = len(unlabeled)
    return counts
