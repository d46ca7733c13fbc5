"""The one label map (DESIGN.md §2).

Every list of classes in UniMed — token ranges, Slicer segment names and colours, MONAI Label ``labels`` —
is derived from a :class:`LabelMap`, and the label map itself is read from the bundle's
``configs/metadata.json`` (``network_data_format.outputs``). Nothing else retypes class names.

Three levels of annotation share one namespace of class names:

- ``mask_classes``: id → name of the label volume (``outputs.pred.channel_def``), 0 is background;
- ``box_classes``: the names a detection box may carry (``outputs.boxes.labels``);
- ``image_classes``: multi-label image-level classes (``outputs.classes.labels``).

A name that appears at several levels (e.g. "tumor": a mask label, a box label and "the image contains a
tumor") is one class token in the vocabulary, which is what lets tasks help each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LabelMap", "DEFAULT_METADATA", "TERMINOLOGY_FIELDS"]

# The bundle's metadata is the source of truth; this path is where the package finds it in a checkout.
DEFAULT_METADATA = Path(__file__).resolve().parent.parent / "bundle" / "configs" / "metadata.json"
# A class's coded terminology (``unimed_terminology`` in metadata.json): field → (scheme, code, meaning), the order
# of Slicer's terminology strings. DICOM SEG, DICOM SR and ``.seg.nrrd`` all read it from here.
TERMINOLOGY_FIELDS = ("category", "type", "typeModifier")


@dataclass(frozen=True)
class LabelMap:
    """Class names at the three annotation levels, plus display colours.

    Args:
        mask_classes: label id → name; must contain 0 (background) and ids ``0..K-1`` without gaps.
        box_classes: names a detection may carry; each must be a mask class name or new.
        image_classes: image-level (multi-label) class names.
        colors: optional name → (r, g, b) in 0..255 for display (Slicer, ``.seg.nrrd``).
        terminology: optional name → ``{"category": (scheme, code, meaning), "type": ..., "typeModifier": ...}``
            (``typeModifier`` optional): the class's SNOMED CT (or other) codes for DICOM SEG / SR and Slicer.

    Example:
        >>> lm = LabelMap({0: "background", 1: "liver", 2: "tumor"}, ["tumor"], ["tumor"])
        >>> lm.class_names
        ('liver', 'tumor')
        >>> lm.class_index("tumor")
        1
    """

    mask_classes: dict[int, str]
    box_classes: tuple[str, ...] = ()
    image_classes: tuple[str, ...] = ()
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # codes describe classes, they do not make another label map: a datalist's own label map (no codes) equals the bundle's
    terminology: dict[str, dict[str, tuple[str, str, str]]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        ids = sorted(self.mask_classes)
        if not ids or ids != list(range(len(ids))):
            raise ValueError(f"mask_classes ids must be 0..K-1 without gaps, got {ids}")
        names = list(self.mask_classes.values())
        if len(set(names)) != len(names):
            raise ValueError(f"mask class names must be unique, got {names}")
        for level, values in (("box_classes", self.box_classes), ("image_classes", self.image_classes)):
            if len(set(values)) != len(values):
                raise ValueError(f"{level} must be unique, got {list(values)}")
        for name, entry in self.terminology.items():
            if name not in self.class_names:
                raise ValueError(f"terminology names {name!r}, which is not a class of the label map")
            codes = {k: tuple(str(v) for v in entry.get(k) or ()) for k in TERMINOLOGY_FIELDS}
            if set(entry) - set(TERMINOLOGY_FIELDS) or any(len(c) not in (0, 3) for c in codes.values()):
                raise ValueError(f"terminology of {name!r} must give {TERMINOLOGY_FIELDS} as (scheme, code, meaning)")
            if not codes["category"] or not codes["type"]:
                raise ValueError(f"terminology of {name!r} needs a category and a type")
        object.__setattr__(self, "box_classes", tuple(self.box_classes))
        object.__setattr__(self, "image_classes", tuple(self.image_classes))

    @property
    def num_mask_classes(self) -> int:
        """Number of label ids including background."""
        return len(self.mask_classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """All foreground class names, each once: mask classes in id order, then new box, then new image names.

        This order defines the class-token range of the vocabulary and the class index used everywhere
        (``class_index``): index ``i`` is ``class_names[i]``.
        """
        out: list[str] = [self.mask_classes[i] for i in range(1, self.num_mask_classes)]
        for name in (*self.box_classes, *self.image_classes):
            if name not in out:
                out.append(name)
        return tuple(out)

    def class_index(self, name: str) -> int:
        """Index of ``name`` in :attr:`class_names`; ``ValueError`` naming the known classes if unknown."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ValueError(f"unknown class {name!r}; known classes: {list(self.class_names)}") from None

    def mask_classes_by_name(self) -> dict[str, int]:
        """Name → label id of the mask classes (background included)."""
        return {name: i for i, name in self.mask_classes.items()}

    def mask_id_to_class_index(self, mask_id: int) -> int:
        """Class index of label id ``mask_id`` (>0)."""
        if mask_id <= 0 or mask_id >= self.num_mask_classes:
            raise ValueError(f"mask id {mask_id} is not a foreground label id of {self.mask_classes}")
        return mask_id - 1

    def class_index_to_mask_id(self, index: int) -> int | None:
        """Label id of class ``index``, or None when that class has no mask label."""
        return index + 1 if index < self.num_mask_classes - 1 else None

    def image_class_indices(self) -> list[int]:
        """Class indices of the image-level classes, in ``image_classes`` order."""
        return [self.class_index(n) for n in self.image_classes]

    def box_class_indices(self) -> list[int]:
        """Class indices of the box classes, in ``box_classes`` order."""
        return [self.class_index(n) for n in self.box_classes]

    def color(self, name: str) -> tuple[int, int, int]:
        """Display colour of ``name``: the declared one, else a fixed, distinct colour from a palette."""
        if name in self.colors:
            return self.colors[name]
        palette = [
            (230, 25, 75),
            (60, 180, 75),
            (255, 225, 25),
            (0, 130, 200),
            (245, 130, 48),
            (145, 30, 180),
            (70, 240, 240),
            (240, 50, 230),
            (210, 245, 60),
            (250, 190, 212),
        ]
        return palette[self.class_names.index(name) % len(palette)] if name in self.class_names else (128, 128, 128)

    def codes(self, name: str) -> dict[str, tuple[str, str, str]] | None:
        """The coded terminology of class ``name`` (field → (scheme, code, meaning), ``typeModifier`` only when
        declared), or None when the label map has none for it."""
        entry = self.terminology.get(name)
        if entry is None:
            return None
        return {k: tuple(str(v) for v in entry[k]) for k in TERMINOLOGY_FIELDS if entry.get(k)}

    @classmethod
    def from_metadata(cls, path: str | Path = DEFAULT_METADATA) -> LabelMap:
        """Read the label map from a MONAI bundle ``metadata.json`` (``network_data_format.outputs``)."""
        path = Path(path)
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            outputs = meta["network_data_format"]["outputs"]
            channel_def = outputs["pred"]["channel_def"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: cannot read the label map from network_data_format.outputs: {e}") from e
        mask_classes = {int(k): str(v) for k, v in channel_def.items()}
        boxes = outputs.get("boxes", {}).get("labels", [])
        images = outputs.get("classes", {}).get("labels", [])
        colors = {k: tuple(v) for k, v in meta.get("unimed_colors", {}).items()}
        terminology = meta.get("unimed_terminology", {})
        if not isinstance(terminology, dict) or not all(isinstance(v, dict) for v in terminology.values()):
            raise ValueError(f"{path}: unimed_terminology must map class names to objects")
        return cls(mask_classes, tuple(boxes), tuple(images), colors, terminology)

    @classmethod
    def default(cls) -> LabelMap:
        """The label map of the shipped bundle (and of the synthetic benchmark data)."""
        return cls.from_metadata(DEFAULT_METADATA)
