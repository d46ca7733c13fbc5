"""KiTS (Kidney Tumor Segmentation challenge 2019/2021/2023) → datalist.

Layout: case folders ``case_00000/`` (directly in the folder given, or under its ``dataset/`` as the kits23
repository keeps them) with ``imaging.nii.gz`` and ``segmentation.nii.gz`` (KiTS21 also
``aggregated_MAJ_seg.nii.gz``): 0 background, 1 kidney, 2 tumour, 3 cyst (KiTS19 has no cysts). KiTS does not
tell left from right kidney, so "kidney" is its own class (appended to the label map); tumour and cyst are the
label map's ``tumor`` and ``cyst``, findings with one box per connected component and image labels (``[]`` when
a kidney has neither). Cases without a segmentation (KiTS19's test cases) become unlabeled items.
"""

from __future__ import annotations

from pathlib import Path

from unimed_core.data.image_io import read_label
from unimed_core.datasets.common import (
    check_same_grid,
    extend_label_map,
    lesion_annotation,
    relabel,
    split_validation,
    write_converted_datalist,
    write_relabelled,
)
from unimed_core.label_map import LabelMap

__all__ = ["convert_kits", "KITS_LABELS"]

KITS_LABELS = {1: "kidney", 2: "tumor", 3: "cyst"}
_FINDINGS = ("tumor", "cyst")
_LABEL_FILES = ("segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz")


def _cases(root: Path) -> list[Path]:
    for folder in (root, root / "dataset", root / "data"):
        cases = sorted(p for p in folder.glob("case_*") if (p / "imaging.nii.gz").is_file())
        if cases:
            return cases
    raise ValueError(f"{root}: no case_*/imaging.nii.gz folders (here, in dataset/ or in data/)")


def convert_kits(
    root: str | Path,
    out_dir: str | Path,
    *,
    label_map: LabelMap | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """Convert a KiTS folder; returns the datalist path (``out_dir/datalist.json``).

    Args:
        root: the KiTS folder (its case folders here, in ``dataset/`` or in ``data/``).
        out_dir: where ``datalist.json`` and the renumbered ``labels/case_*.nii.gz`` go.
        label_map: the label map to map onto / extend; default the bundle's.
        validation_fraction, seed: part of the labelled cases held out for validation, drawn by ``seed``.
    """
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    label_map = extend_label_map(label_map or LabelMap.default(), list(KITS_LABELS.values()), list(_FINDINGS))
    ids = label_map.mask_classes_by_name()
    mapping = {0: 0, **{k: ids[name] for k, name in KITS_LABELS.items()}}
    findings = {ids[name]: name for name in _FINDINGS}
    labelled, unlabeled = [], []
    for case in _cases(root):
        image = case / "imaging.nii.gz"
        source = next((case / n for n in _LABEL_FILES if (case / n).is_file()), None)
        if source is None:
            unlabeled.append({"image": str(image), "domain": "ct"})
            continue
        label = read_label(source)
        check_same_grid(label, image)
        labels = relabel(label.array, mapping, source)
        path = write_relabelled(labels, label, out_dir / "labels" / f"{case.name}.nii.gz")
        boxes, box_labels, present = lesion_annotation(labels, label.affine, findings)
        labelled.append(
            {
                "image": str(image),
                "label": path,
                "boxes": boxes,
                "box_labels": box_labels,
                "class": present,
                "domain": "ct",
            }
        )
    training, validation = split_validation(labelled, validation_fraction, seed)
    splits = {"training": training, "validation": validation, "unlabeled": unlabeled}
    return write_converted_datalist(out_dir, splits, label_map, {"dataset": "kits", "root": str(root)})
