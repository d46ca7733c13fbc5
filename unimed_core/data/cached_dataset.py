"""Training data built for a GPU (``bundle/configs/highres.json``): each study is preprocessed once and cached on
disk; foreground-aware crops and augmentation are drawn per sample from the cache.

At a 1.5 mm working grid a study is about 15 M voxels, and reading, reorienting, resampling and normalising it
(``load_case``, the same preprocessing as inference's ``prepare_image``) takes seconds, far longer than a training
step on a GPU. MONAI's ``PersistentDataset`` runs that deterministic part once per study and keeps its output on
disk (``torch.save``; ``torch.load(weights_only=True)`` reads it back); what changes per draw — the crop, the
augmentation, the training target — comes after the cache, in :class:`CachedTrainingDataset`, with the same
per-draw generator (seed, epoch, index) as :class:`~unimed_core.data.training_data.UniMedTrainingDataset`, so a
draw is the same in the main process and in any ``DataLoader`` worker.

Crops are foreground-aware, as MONAI's ``RandCropByPosNegLabeld`` draws them: with probability
``pos / (pos + neg)`` the patch is centred on an annotated voxel (a lesion's when the study has any, since a 96³
patch of a 1.5 mm grid would seldom hold one by chance; else any structure's; for box-only studies a point in a
box), otherwise anywhere. MONAI's transform is not used as such because it wants background indices of the whole
study (15 M of them here) and a label for every study; this draws the background centre uniformly instead.

Image-level labels follow :func:`~unimed_core.data.training_data.crop_case`: a crop that cuts the study keeps
them only where they keep their meaning (an all-negative study stays negative in every crop; positives are read
from the crop's own mask or boxes, and dropped where the study has only an image label).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Transform

from unimed_core.data.augmentation import DEFAULT_AUGMENTATION, Augmentation
from unimed_core.data.training_data import LoadedCase, build_target, crop_case_at, load_case
from unimed_core.label_map import LabelMap
from unimed_core.tokenizer import Tokenizer

__all__ = ["CACHE_FORMAT", "PrepareCase", "CaseKey", "foreground_centre", "CachedTrainingDataset"]

# Part of every cache key: raise it when load_case's output changes meaning (preprocessing, record layout).
CACHE_FORMAT = 1


def _record(case: LoadedCase) -> dict:
    """A case as what ``torch.load(weights_only=True)`` reads back: tensors, lists, None; the mask as int16."""

    def tensor(value, dtype):
        return None if value is None else torch.as_tensor(np.asarray(value), dtype=dtype)

    return {
        "image": case.image.float().contiguous(),
        "semantic": None if case.semantic is None else case.semantic.to(torch.int16),
        "boxes": tensor(case.boxes, torch.float64),
        "box_labels": tensor(case.box_labels, torch.int64),
        "image_classes": None if case.image_classes is None else [int(c) for c in case.image_classes],
    }


def _case(record: dict) -> LoadedCase:
    boxes, labels = record["boxes"], record["box_labels"]
    return LoadedCase(
        record["image"],
        record["semantic"],
        None if boxes is None else boxes.numpy(),
        None if labels is None else labels.numpy(),
        record["image_classes"],
    )


class PrepareCase(Transform):
    """The deterministic part that ``PersistentDataset`` caches: a datalist item → its working-grid record.

    Args:
        label_map: the label map.
        spacing: working spacing in mm.
    """

    def __init__(self, label_map: LabelMap, spacing: Sequence[float]) -> None:
        self.label_map = label_map
        self.spacing = tuple(float(s) for s in spacing)

    def __call__(self, item: dict) -> dict:
        return _record(load_case(item, self.label_map, self.spacing))


class CaseKey:
    """Cache key of a datalist item: the item, its files' sizes and modification times, the working spacing, the
    label map and :data:`CACHE_FORMAT` (``PersistentDataset`` hashes the item alone by default, so a changed
    spacing or a rewritten file would silently reuse a stale entry)."""

    def __init__(self, label_map: LabelMap, spacing: Sequence[float]) -> None:
        self.context = {
            "spacing": [float(s) for s in spacing],
            "mask_classes": {int(k): v for k, v in label_map.mask_classes.items()},
            "class_names": list(label_map.class_names),
            "format": CACHE_FORMAT,
        }

    def __call__(self, item: dict) -> bytes:
        files = {}
        for key in ("image", "label"):
            if item.get(key) and os.path.exists(item[key]):
                stat = os.stat(item[key])
                files[key] = (stat.st_size, stat.st_mtime_ns)
        return pickle_hashing({"item": item, "files": files, **self.context})


def foreground_centre(case: LoadedCase, label_map: LabelMap, rng: np.random.Generator, pos: float, neg: float):
    """A crop centre (voxel index per axis): on an annotated voxel with probability ``pos / (pos + neg)`` (a
    lesion's when the case has any, see the module's docstring), else uniform over the volume."""
    shape = np.asarray(case.image.shape[1:])
    on_foreground = rng.uniform() * (pos + neg) < pos
    uniform = np.floor(rng.uniform(size=3) * shape).astype(int)  # drawn always: later draws do not depend on it
    if not on_foreground:
        return uniform
    if case.semantic is not None:
        semantic = case.semantic.numpy()
        lesion_ids = [label_map.class_index_to_mask_id(c) for c in label_map.box_class_indices()]
        lesion_ids = [m for m in lesion_ids if m is not None]
        where = np.flatnonzero(np.isin(semantic, lesion_ids))
        if not len(where):
            where = np.flatnonzero(semantic > 0)
        if len(where):
            return np.asarray(np.unravel_index(where[rng.integers(len(where))], semantic.shape))
    elif case.boxes is not None and len(case.boxes):
        box = case.boxes[rng.integers(len(case.boxes))]
        point = box[:3] + rng.uniform(size=3) * (box[3:] - box[:3])
        return np.clip(np.floor(point), 0, shape - 1).astype(int)
    return uniform


def _window(centre: np.ndarray, shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """The patch around ``centre``, moved to lie inside the volume where it fits (as MONAI's
    ``correct_crop_centers``), centred on the volume where it does not (then padded)."""
    out = []
    for c, size, p in zip(centre, shape, patch):
        start = int(np.clip(int(c) - p // 2, 0, size - p)) if size >= p else (size - p) // 2
        out.append((start, start + p))
    return out


class CachedTrainingDataset(torch.utils.data.Dataset):
    """Datalist items → (image patch, Target), preprocessed once into ``cache_dir`` (MONAI ``PersistentDataset``),
    then a foreground-aware crop and augmentation per draw.

    Args:
        items: datalist items with absolute paths (``unimed_core.data.datalist.load_datalist``).
        label_map: the label map.
        tokenizer: the tokenizer of the model's vocabulary.
        cache_dir: where the preprocessed studies are kept (created; shared by runs with the same settings).
        patch_size: training patch (each a multiple of 16).
        spacing: working spacing in mm.
        seed: base seed; draw ``i`` of epoch ``e`` is deterministic given ``set_epoch(e)``.
        augmentation: applied per draw; None for none.
        pos, neg: odds of a crop centred on annotated foreground against one centred anywhere.
        margin: the augmentation warps a crop this much larger than the patch (fraction per side), whose centre
            is then the patch, so a rotation brings in real neighbouring tissue at the patch's edges (not padding)
            while the whole study is never warped.

    Example:
        >>> dataset = CachedTrainingDataset(items, LabelMap.default(), tokenizer, "cache/")  # doctest: +SKIP
        >>> dataset[0]["image"].shape  # doctest: +SKIP
        torch.Size([1, 96, 96, 96])
    """

    def __init__(
        self,
        items: Sequence[dict],
        label_map: LabelMap,
        tokenizer: Tokenizer,
        cache_dir: str | Path,
        patch_size: Sequence[int] = (96, 96, 96),
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        seed: int = 0,
        augmentation: Augmentation | None = DEFAULT_AUGMENTATION,
        pos: float = 2.0,
        neg: float = 1.0,
        margin: float = 0.15,
    ) -> None:
        if len(patch_size) != 3 or any(int(p) <= 0 or int(p) % 16 for p in patch_size):
            raise ValueError(f"patch_size must be three positive multiples of 16, got {patch_size}")
        if pos < 0 or neg < 0 or pos + neg <= 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got {pos}, {neg}")
        if not 0 <= margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {margin}")
        if cache_dir is None or not str(cache_dir):
            raise ValueError("cache_dir is needed: the preprocessed studies are kept there")
        self.items = list(items)
        self.label_map, self.tokenizer = label_map, tokenizer
        self.patch_size = tuple(int(p) for p in patch_size)
        self.spacing = tuple(float(s) for s in spacing)
        self.seed, self.epoch = seed, 0
        self.augmentation, self.pos, self.neg, self.margin = augmentation, float(pos), float(neg), float(margin)
        self.cache = PersistentDataset(
            self.items,
            transform=PrepareCase(label_map, self.spacing),
            cache_dir=Path(cache_dir),
            hash_func=CaseKey(label_map, self.spacing),
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def case(self, index: int) -> LoadedCase:
        """The preprocessed study (from the cache; computed and written there on first use)."""
        return _case(self.cache[index])

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case = self.case(index)
        shape = case.image.shape[1:]
        centre = foreground_centre(case, self.label_map, rng, self.pos, self.neg)
        if self.augmentation is not None:
            outer = [p + 2 * int(round(self.margin * p)) for p in self.patch_size]
            case = self.augmentation(crop_case_at(case, outer, _window(centre, shape, outer)), rng)
            inner = [((o - p) // 2, (o - p) // 2 + p) for o, p in zip(outer, self.patch_size)]
            case = crop_case_at(case, self.patch_size, inner)
        else:
            case = crop_case_at(case, self.patch_size, _window(centre, shape, self.patch_size))
        return {"image": case.image, "target": build_target(case, self.label_map, self.tokenizer)}
