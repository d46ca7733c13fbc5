"""Medical Segmentation Decathlon task folder → datalist.

Layout (``Task03_Liver/``): ``dataset.json`` (``labels`` id → name, ``modality``, ``training`` image/label
pairs, ``test`` images), ``imagesTr/``, ``labelsTr/``, ``imagesTs/``. Every training study is fully labelled,
so it gets its mask, one box per connected component of each finding class (world RAS mm) and the image label
"finding present" — ``"class": []`` when it has none (a known negative, not a missing label). A task without
finding classes (Spleen, Heart, Hippocampus) gives masks only: it annotates no lesions, so claims none absent. ``imagesTs``
become unlabeled items. Multi-modal tasks (BrainTumour, Prostate) store 4-D images; ``channel`` picks one
modality, written as 3-D NIfTI to the output folder.

Download: :func:`download_task` fetches a task through MONAI (``monai.apps.download_and_extract`` with
``DecathlonDataset``'s address and checksum).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unimed_core.data.atomic import atomic_write
from unimed_core.data.image_io import read_label
from unimed_core.datasets.common import (
    LESION_PATTERN,
    canonical_name,
    check_same_grid,
    extend_label_map,
    lesion_annotation,
    relabel,
    split_validation,
    write_converted_datalist,
    write_relabelled,
)
from unimed_core.label_map import LabelMap

__all__ = ["convert_msd", "download_task", "domain_of"]


def domain_of(modality: str) -> str:
    """UniMed's domain name of a dataset modality ("CT" → "ct"; "MRI", "T2", "FLAIR", "ADC" … → "mr")."""
    m = str(modality).strip().lower()
    if m in ("ct", "cta", "pet/ct"):
        return "ct"
    if m.startswith(("mr", "t1", "t2", "flair", "adc", "dwi", "pd")) or m in ("mri", "mp-mri", "nonenhanced"):
        return "mr"
    return m


def download_task(task: str, root: str | Path) -> Path:
    """Download and extract MSD ``task`` (e.g. "Task09_Spleen") into ``root`` through MONAI; the task folder."""
    from monai.apps import DecathlonDataset, download_and_extract

    if task not in DecathlonDataset.resource:
        raise ValueError(f"unknown MSD task {task!r}; MONAI knows {sorted(DecathlonDataset.resource)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    download_and_extract(
        DecathlonDataset.resource[task],
        root / f"{task}.tar",
        root,
        hash_val=DecathlonDataset.md5[task],
        hash_type="md5",
    )
    return root / task


def _read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        labels = meta["labels"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an MSD dataset.json with 'labels' and 'training' ({e})") from e
    # MSD writes id → name; nnU-Net v2's dataset.json writes name → id: accept both.
    if all(str(k).isdigit() for k in labels):
        meta["labels"] = {int(k): str(v) for k, v in labels.items()}
    else:
        meta["labels"] = {int(v): str(k) for k, v in labels.items()}
    if 0 not in meta["labels"]:
        raise ValueError(f"{path}: 'labels' has no background id 0: {labels}")
    return meta


def _resolve(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_file():
        raise ValueError(f"{root / 'dataset.json'}: listed file {relative} does not exist ({path})")
    return path


def _one_channel(image: Path, channel: int | None, n_channels: int, out_dir: Path) -> Path:
    """The image itself when 3-D, else its ``channel`` as a 3-D NIfTI in ``out_dir/images`` (written once)."""
    if n_channels <= 1:
        return image
    if channel is None or not 0 <= channel < n_channels:
        raise ValueError(
            f"{image}: the task has {n_channels} modalities per image; choose one with --channel 0..{n_channels - 1}"
        )
    import nibabel as nib

    out = out_dir / "images" / image.name.replace(".nii", f"_ch{channel}.nii")
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    img = nib.load(str(image))
    data = np.asarray(img.dataobj[..., channel])
    with atomic_write(out, ".nii.gz") as tmp:
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(tmp))
    return out


def convert_msd(
    root: str | Path,
    out_dir: str | Path,
    *,
    label_map: LabelMap | None = None,
    findings: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
    channel: int | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """Convert one MSD task folder; returns the datalist path (``out_dir/datalist.json``).

    Args:
        root: the task folder (holding ``dataset.json``).
        out_dir: where the datalist and renumbered label volumes go (never inside ``root``'s files).
        label_map: the label map to map onto; default the bundle's. Classes it lacks are appended and the
            extended map is written into the datalist.
        findings: dataset class names that are findings (boxes, image labels); default: those whose name
            looks like one (:data:`~unimed_core.datasets.common.LESION_PATTERN`).
        rename: dataset class name → label-map name, over :func:`canonical_name`'s guess.
        channel: for multi-modal tasks, which modality to use.
        validation_fraction, seed: part of the training studies held out for validation, drawn by ``seed``.

    Example:
        >>> convert_msd("Task09_Spleen", "data/spleen")  # doctest: +SKIP
        PosixPath('data/spleen/datalist.json')
    """
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    meta = _read_dataset_json(root)
    rename = dict(rename or {})
    names = {i: rename.get(n, canonical_name(n)) for i, n in meta["labels"].items() if i != 0}
    finding_sources = [n for n in meta["labels"].values() if LESION_PATTERN.search(n)] if findings is None else findings
    unknown = sorted(set(finding_sources) - set(meta["labels"].values()))
    if unknown:
        raise ValueError(f"--lesion names {unknown} are not classes of {root} ({sorted(meta['labels'].values())})")
    finding_names = [rename.get(n, canonical_name(n)) for n in finding_sources]
    label_map = extend_label_map(label_map or LabelMap.default(), list(names.values()), finding_names)
    ids = label_map.mask_classes_by_name()
    mapping = {0: 0, **{i: ids[name] for i, name in names.items()}}
    finding_ids = {ids[n]: n for n in finding_names}
    modality = meta.get("modality", meta.get("channel_names", {"0": ""}))
    domain = domain_of(next(iter(modality.values()), ""))
    n_channels = len(modality)

    items = []
    for pair in meta.get("training", []):
        image = _one_channel(_resolve(root, pair["image"]), channel, n_channels, out_dir)
        label = read_label(_resolve(root, pair["label"]))
        check_same_grid(label, image)
        labels = relabel(label.array, mapping, label.path)
        label_path = str(label.path)
        if any(k != v for k, v in mapping.items()):
            label_path = write_relabelled(labels, label, out_dir / "labels" / label.path.name)
        item = {"image": str(image), "label": label_path, "domain": domain}
        if finding_ids:  # a task without finding classes (Spleen, Heart, ...) says nothing about lesions
            boxes, box_labels, present = lesion_annotation(labels, label.affine, finding_ids)
            item.update({"boxes": boxes, "box_labels": box_labels, "class": present})
        items.append(item)
    if not items:
        raise ValueError(f"{root / 'dataset.json'}: lists no training studies")
    training, validation = split_validation(items, validation_fraction, seed)
    test = meta.get("test", [])
    unlabeled = [
        {
            "image": str(
                _one_channel(_resolve(root, t if isinstance(t, str) else t["image"]), channel, n_channels, out_dir)
            ),
            "domain": domain,
        }
        for t in test
    ]
    source = {"dataset": "msd", "name": meta.get("name", root.name), "root": str(root), "findings": finding_names}
    return write_converted_datalist(
        out_dir, {"training": training, "validation": validation, "unlabeled": unlabeled}, label_map, source
    )
