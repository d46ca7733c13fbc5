"""What every dataset converter shares: class names onto the label map, boxes from masks, splits, the datalist.

A converter reads a dataset in its own layout and never writes into it: label volumes it has to renumber or
merge go to the output folder (atomically, :func:`~unimed_core.data.image_io.write_label`), images are listed
where they are (absolute paths), and the datalist says which label map its ids and names belong to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unimed_core.data.boxes import boxes_from_mask, voxel_to_world_boxes
from unimed_core.data.datalist import COORDINATES, SPLITS, label_map_to_dict, write_datalist
from unimed_core.data.image_io import GEOMETRY_ATOL_MM, Volume, write_label
from unimed_core.errors import ImageReadError
from unimed_core.label_map import LabelMap

__all__ = [
    "LESION_PATTERN",
    "canonical_name",
    "extend_label_map",
    "header_geometry",
    "check_same_grid",
    "relabel",
    "lesion_annotation",
    "write_relabelled",
    "split_validation",
    "write_converted_datalist",
]

# Dataset class names that are findings (boxes and image labels), not anatomy. A converter's --lesion option
# overrides this guess.
LESION_PATTERN = re.compile(r"tumou?r|cancer|lesion|nodule|cyst|metasta|primar|mass|carcinoma", re.IGNORECASE)
# Datasets' spellings of the label map's own classes; every other name is kept (canonicalised) as a new class.
_SYNONYMS = {"cancer": "tumor", "tumour": "tumor", "tumors": "tumor", "cysts": "cyst", "masses": "mass"}


def canonical_name(name: str) -> str:
    """A dataset's class name as a label-map name: lower case, words joined by ``_``, "tumour" spelt "tumor",
    and the few synonyms of the label map's own classes ("cancer" → "tumor")."""
    words = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    words = words.replace("tumour", "tumor")
    if not words:
        raise ValueError(f"class name {name!r} has no letters or digits")
    return _SYNONYMS.get(words, words)


def extend_label_map(base: LabelMap, mask_names: Sequence[str] = (), finding_names: Sequence[str] = ()) -> LabelMap:
    """``base`` with every name it lacks appended: mask classes get the next ids, findings (box and image-level
    classes) are added to both finding lists. ``base``'s own ids, names and colours are kept unchanged."""
    mask = dict(base.mask_classes)
    for name in mask_names:
        if name not in mask.values():
            mask[len(mask)] = name
    boxes = list(base.box_classes) + [n for n in finding_names if n not in base.box_classes]
    images = list(base.image_classes) + [n for n in finding_names if n not in base.image_classes]
    return LabelMap(mask, tuple(boxes), tuple(images), dict(base.colors))


def header_geometry(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and voxel → RAS affine of an image file from its header alone (no voxels read).

    NIfTI through nibabel (its sform/qform rules, as :func:`~unimed_core.data.image_io.read_image`), other
    formats through SimpleITK's ``ReadImageInformation`` (LPS flipped to RAS).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file does not exist")
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except Exception as e:  # nibabel and ITK raise many types for damaged headers; one message for the user
        raise ImageReadError(path, f"unreadable image header ({type(e).__name__}: {e})") from e
    dim = reader.GetDimension()
    lps = np.eye(4)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps[:3, :3] = direction * np.asarray(reader.GetSpacing())[:3]
    lps[:3, 3] = np.asarray(reader.GetOrigin())[:3]
    return tuple(int(s) for s in reader.GetSize()), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def check_same_grid(label: Volume, image_path: str | Path) -> None:
    """Refuse a label volume that does not lie on its image's grid (shape, and affine within 1 µm)."""
    shape, affine = header_geometry(image_path)
    if tuple(shape[:3]) != label.shape or (len(shape) > 3 and int(np.prod(shape[3:])) != 1):
        raise ImageReadError(label.path, f"label shape {label.shape} does not match image {image_path} ({shape})")
    diff = float(np.abs(affine - label.affine).max())
    if diff > GEOMETRY_ATOL_MM:
        raise ImageReadError(
            label.path, f"label geometry does not match image {image_path} (affines differ by {diff:.3g} mm)"
        )


def relabel(labels: np.ndarray, mapping: Mapping[int, int], where: str | Path) -> np.ndarray:
    """Renumber a label volume: dataset id → label-map id; an id the dataset does not declare is an error."""
    values = np.unique(labels)
    unknown = sorted(int(v) for v in values if int(v) not in mapping)
    if unknown:
        raise ImageReadError(where, f"label values {unknown} are not declared by the dataset ({sorted(mapping)})")
    lut = np.zeros(int(values.max(initial=0)) + 1, dtype=np.int16)
    for source, target in mapping.items():
        if source < lut.size:
            lut[source] = target
    return lut[labels]


def lesion_annotation(
    labels: np.ndarray, affine: np.ndarray, findings: Mapping[int, str]
) -> tuple[list[list[float]], list[str], list[str]]:
    """Boxes, box labels and present classes of the findings in a label volume of label-map ids.

    One box per connected component (26-connectivity: voxels touching by a corner are one lesion) of each
    finding id, the physical extent of its voxels in world RAS mm (:mod:`unimed_core.data.boxes`); the classes
    are the findings present, in ``findings`` order. A volume without findings gives ``([], [], [])``: a
    fully annotated study with no finding (a known negative).
    """
    boxes: list[list[float]] = []
    names: list[str] = []
    for mask_id, name in findings.items():
        components, n = ndimage.label(labels == mask_id, structure=np.ones((3, 3, 3), dtype=bool))
        if n == 0:
            continue
        _, voxel_boxes = boxes_from_mask(components)
        boxes.extend(voxel_to_world_boxes(voxel_boxes, affine).tolist())
        names.extend([name] * n)
    present = [name for name in findings.values() if name in names]
    return boxes, names, present


def write_relabelled(labels: np.ndarray, reference: Volume, out: Path) -> str:
    """Write a converted label volume (int16 NIfTI on ``reference``'s grid) atomically; its path as a string."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return str(write_label(labels, reference, out))


def split_validation(
    items: Sequence[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``round(fraction * n)`` annotated items (at least one when ``fraction > 0`` and n >= 2) for
    validation, drawn by ``seed``; the rest stay in training, in their order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(items)
    n_val = max(1, round(fraction * n)) if fraction > 0 and n >= 2 else 0
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def write_converted_datalist(
    out_dir: str | Path, splits: Mapping[str, Sequence[dict[str, Any]]], label_map: LabelMap, source: Mapping[str, Any]
) -> Path:
    """Write ``OUT/datalist.json``: the splits, the label map their ids and names use, the box convention and
    where the data came from (``source``: dataset, folder, options)."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; a datalist has {list(SPLITS)}")
    data: dict[str, Any] = {split: list(splits.get(split, [])) for split in SPLITS}
    data.update({"label_map": label_map_to_dict(label_map), "coordinates": COORDINATES, "source": dict(source)})
    return write_datalist(Path(out_dir) / "datalist.json", data)
