"""Read what ``unimed-infer`` (or the MONAI Label server) wrote for one volume, as plain Python.

Label volumes are only *located* here: inside Slicer the Logic reads them with Slicer's own readers (so
their geometry is Slicer's), outside Slicer :func:`read_label_array` uses nibabel when available.
Class names and colours come from the one label map (``unimed_core.label_map``), never retyped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

LABEL_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd")

__all__ = [
    "LABEL_SUFFIXES",
    "Detection",
    "InferenceOutputs",
    "LabelEntry",
    "label_entries",
    "read_outputs",
    "read_label_array",
]


@dataclass(frozen=True)
class Detection:
    """One detected box in world RAS millimetres (corners ``x1, y1, z1, x2, y2, z2``)."""

    label: str
    score: float
    box: tuple[float, float, float, float, float, float]

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 6 or any(lo > hi for lo, hi in zip(box[:3], box[3:])):
            raise ValueError(f"box must be x1, y1, z1, x2, y2, z2 with x1 <= x2 etc., got {self.box}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))

    @property
    def center(self) -> tuple[float, float, float]:
        return tuple((lo + hi) / 2 for lo, hi in zip(self.box[:3], self.box[3:]))

    @property
    def size(self) -> tuple[float, float, float]:
        return tuple(hi - lo for lo, hi in zip(self.box[:3], self.box[3:]))

    @property
    def name(self) -> str:
        """Display name of its ROI and table row: "label score"."""
        return f"{self.label} {self.score:.2f}"


@dataclass
class InferenceOutputs:
    """Paths and parsed JSON of one volume's results.

    Attributes:
        name: the case name (file stem) the outputs are named after.
        labels_path: label volume on the input grid (None in prompted mode or when not written).
        click_path: mask of the click-prompted structure (prompted mode only).
        box_path: mask of the structure in a box prompt (prompted mode only).
        detections: boxes with label and score.
        class_probabilities: image class → probability.
        warnings: why the scan looks unlike the model's training data (``summary.json``'s ``warnings``), each with
            its ``signal`` and ``message``; the results are there all the same.
    """

    name: str
    labels_path: Path | None = None
    click_path: Path | None = None
    box_path: Path | None = None
    detections: list[Detection] = field(default_factory=list)
    class_probabilities: dict[str, float] = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)

    @property
    def prompt_path(self) -> Path | None:
        """The mask of a prompted run (box or clicks), None in automatic mode."""
        return self.box_path or self.click_path


@dataclass(frozen=True)
class LabelEntry:
    """A label id of the label volume with its display name and colour (r, g, b in 0..1)."""

    value: int
    name: str
    color: tuple[float, float, float]


def label_entries(metadata: str | Path | None = None) -> list[LabelEntry]:
    """Foreground labels of the label map (bundle ``metadata.json``; default: the installed bundle's)."""
    from unimed_core.label_map import LabelMap  # stdlib only: safe in the GUI process

    label_map = LabelMap.default() if metadata is None else LabelMap.from_metadata(metadata)
    return [
        LabelEntry(i, name, tuple(c / 255.0 for c in label_map.color(name)))
        for i, name in sorted(label_map.mask_classes.items())
        if i > 0
    ]


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read inference output: {e}") from e


def read_outputs(out_dir: str | Path, name: str) -> InferenceOutputs:
    """Collect the outputs named ``name`` in ``out_dir`` (missing optional files are simply absent)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output folder does not exist")
    outputs = InferenceOutputs(name)
    for attr, kind in (("labels_path", "seg"), ("click_path", "click"), ("box_path", "box")):
        # unimed-infer writes NIfTI; a MONAI Label server may answer in another format
        found = [out_dir / f"{name}_{kind}{suffix}" for suffix in LABEL_SUFFIXES]
        setattr(outputs, attr, next((p for p in found if p.is_file()), None))
    boxes = out_dir / f"{name}_boxes.json"
    if boxes.is_file():
        doc = _json(boxes)
        if "RAS" not in str(doc.get("coordinates", "RAS")):
            raise ValueError(f"{boxes}: boxes are not in RAS coordinates: {doc.get('coordinates')!r}")
        outputs.detections = [Detection(d["label"], d["score"], d["box"]) for d in doc.get("detections", [])]
    classes = out_dir / f"{name}_classes.json"
    if classes.is_file():
        outputs.class_probabilities = {str(k): float(v) for k, v in _json(classes).get("probabilities", {}).items()}
    summary = out_dir / "summary.json"
    if summary.is_file():
        rows = _json(summary)
        rows = rows if isinstance(rows, list) else []
        # the row of this case: the one whose input has this name (a folder of one run holds one row)
        mine = [r for r in rows if isinstance(r, dict) and _stem(str(r.get("input", ""))) == name] or rows[:1]
        outputs.warnings = [dict(w) for w in (mine[0].get("warnings") or [])] if mine else []
    if outputs.labels_path is None and outputs.prompt_path is None:
        raise ValueError(f"{out_dir}: no label volume named {name}_seg.*, {name}_click.* or {name}_box.*")
    return outputs


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in sorted((*LABEL_SUFFIXES, ".nhdr", ".mha"), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_label_array(path: str | Path):
    """``(array, affine)``: a label volume indexed ``[i, j, k]`` with its voxel → RAS affine (nibabel)."""
    import nibabel as nib
    import numpy as np

    image = nib.load(str(path))
    return np.asarray(image.dataobj).astype(np.int16), image.affine.astype(np.float64)
