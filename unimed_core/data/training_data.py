"""Training samples: a datalist item becomes a patch on the working grid plus a :class:`Target`.

Each item keeps whatever annotation it has (DESIGN.md §4): a mask, boxes, image labels, several or none.
Loading (read, reorient, resample, normalise) is done once per item and cached; random cropping happens
per draw. Instances for the set loss come from the annotation: a mask class that is not a box class
(an organ) is one object per class; a box class (a lesion) is one object per connected component of its
mask, or per box when only boxes are annotated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from unimed_core.data.augmentation import DEFAULT_AUGMENTATION, Augmentation
from unimed_core.data.boxes import boxes_from_mask, world_to_voxel_boxes
from unimed_core.data.image_io import read_image, read_label
from unimed_core.data.loaded_case import LoadedCase
from unimed_core.data.preprocess import prepare_image, resample_label_to
from unimed_core.errors import ImageReadError
from unimed_core.label_map import LabelMap
from unimed_core.model.targets import Target
from unimed_core.tokenizer import Tokenizer

__all__ = [
    "LoadedCase",
    "load_case",
    "crop_case",
    "crop_case_at",
    "build_target",
    "UniMedTrainingDataset",
    "collate_samples",
]


def load_case(item: dict, label_map: LabelMap, spacing: Sequence[float]) -> LoadedCase:
    """Read one datalist item (absolute paths, as ``load_datalist`` returns them) onto the working grid.

    Raises:
        ValueError: naming the file: an unreadable image or label (``ImageReadError``), a label off the image's
            grid or with ids outside the label map, a box lying entirely outside the image.
    """
    volume = read_image(item["image"])
    prepared = prepare_image(volume, tuple(float(s) for s in spacing))
    semantic = None
    if item.get("label"):
        label = read_label(item["label"], reference=volume)
        unknown = sorted(set(np.unique(label.array).tolist()) - set(label_map.mask_classes))
        if unknown:
            raise ImageReadError(
                item["label"], f"label ids {unknown} are not in the label map {label_map.mask_classes}"
            )
        semantic = resample_label_to(label.array, label.affine, prepared)
    boxes = box_labels = None
    if item.get("boxes") is not None:
        world = np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 6)
        boxes = world_to_voxel_boxes(world, prepared.affine) if len(world) else np.zeros((0, 6))
        # corner convention: the image spans [0, shape] voxels; a box partly outside is clipped when cropped
        outside = np.any((boxes[:, 3:] <= 0) | (boxes[:, :3] >= np.asarray(prepared.shape)), axis=1)
        if outside.any():
            j = int(np.argmax(outside))
            raise ValueError(f"{item['image']}: box {j} {world[j].tolist()} (world RAS mm) lies outside the image")
        box_labels = np.asarray([label_map.class_index(n) for n in item.get("box_labels", [])], dtype=np.int64)
    image_classes = None
    if item.get("class") is not None:
        names = item["class"] if isinstance(item["class"], list) else [item["class"]]
        image_classes = sorted(label_map.class_index(n) for n in names)
    return LoadedCase(prepared.image, semantic, boxes, box_labels, image_classes)


def _crop_window(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random start/stop per axis; the patch may be larger than the volume (then it is padded)."""
    out = []
    for size, p in zip(shape, patch):
        start = int(rng.integers(0, size - p + 1)) if size > p else (size - p) // 2
        out.append((start, start + p))
    return out


def crop_case(case: LoadedCase, patch: Sequence[int], rng: np.random.Generator) -> LoadedCase:
    """Crop (or centre-pad) a case to ``patch``; boxes are shifted and clipped, image labels kept only if valid.

    Image labels describe the whole image: after a crop that cuts the volume they stay valid only when they
    are all negative, or when a mask or boxes tell what the crop still contains.
    """
    return crop_case_at(case, patch, _crop_window(case.image.shape[1:], patch, rng))


def crop_case_at(case: LoadedCase, patch: Sequence[int], window: Sequence[tuple[int, int]]) -> LoadedCase:
    """:func:`crop_case` at a given ``window`` (start, stop per axis, ``stop - start == patch``; may reach past the
    volume, which is then padded)."""
    shape = case.image.shape[1:]
    src = tuple(slice(max(a, 0), min(b, s)) for (a, b), s in zip(window, shape))
    dst = tuple(slice(max(a, 0) - a, min(b, s) - a) for (a, b), s in zip(window, shape))
    image = torch.full((1, *patch), float(case.image.min()), dtype=case.image.dtype)
    image[(slice(None), *dst)] = case.image[(slice(None), *src)]
    semantic = None
    if case.semantic is not None:
        semantic = torch.zeros(tuple(patch), dtype=torch.long)
        semantic[dst] = case.semantic[src]
    boxes, box_labels = case.boxes, case.box_labels
    if boxes is not None and len(boxes):
        offset = np.array([a for a, _ in window] * 2, dtype=np.float64)
        shifted = boxes - offset
        clipped = np.concatenate([np.maximum(shifted[:, :3], 0), np.minimum(shifted[:, 3:], patch)], axis=1)
        full = np.prod(boxes[:, 3:] - boxes[:, :3], axis=1)
        kept = np.prod(np.clip(clipped[:, 3:] - clipped[:, :3], 0, None), axis=1)
        keep = kept >= 0.5 * np.maximum(full, 1e-6)  # a box mostly cut away is no longer a target
        boxes, box_labels = clipped[keep], case.box_labels[keep]
    cut = any(a > 0 or b < s for (a, b), s in zip(window, shape))
    image_classes = case.image_classes
    if cut and image_classes:
        image_classes = None  # positives may have been cropped away and nothing says which
    return LoadedCase(image, semantic, boxes, box_labels, image_classes)


def _instances_from_mask(semantic: torch.Tensor, label_map: LabelMap) -> tuple[list[int], list[torch.Tensor]]:
    box_classes = set(label_map.box_class_indices())
    labels, masks = [], []
    for mask_id in range(1, label_map.num_mask_classes):
        binary = (semantic == mask_id).numpy()
        if not binary.any():
            continue
        cls = label_map.mask_id_to_class_index(mask_id)
        if cls in box_classes:
            components, n = ndimage.label(binary)
            for k in range(1, n + 1):
                labels.append(cls)
                masks.append(torch.from_numpy(components == k))
        else:
            labels.append(cls)
            masks.append(torch.from_numpy(binary))
    return labels, masks


def build_target(case: LoadedCase, label_map: LabelMap, tokenizer: Tokenizer) -> Target:
    """Turn a (cropped) case into the training :class:`Target` with its token sequences."""
    patch = np.array(case.image.shape[1:], dtype=np.float64)
    num_classes = len(label_map.class_names)
    box_classes = set(label_map.box_class_indices())
    target = Target()
    sequences: list[list[int]] = []
    if case.semantic is not None:
        labels, masks = _instances_from_mask(case.semantic, label_map)
        target.semantic = case.semantic
        target.instance_labels = torch.tensor(labels, dtype=torch.long)
        target.instance_masks = torch.stack(masks) if masks else torch.zeros((0, *case.semantic.shape), dtype=bool)
        boxes = np.array([boxes_from_mask(m.numpy())[1][0] for m in masks], dtype=np.float64).reshape(-1, 6)
        target.instance_boxes = torch.from_numpy(boxes / np.tile(patch, 2)).float()
        present = sorted(set(labels))
        sequences.append(tokenizer.encode_segmentation(present))
        lesion = [i for i, c in enumerate(labels) if c in box_classes]
        sequences.append(tokenizer.encode_detection(boxes[lesion] / np.tile(patch, 2), [labels[i] for i in lesion]))
        if case.image_classes is None:  # a mask says which findings the patch holds
            case = LoadedCase(case.image, case.semantic, case.boxes, case.box_labels, sorted(set(labels) & box_classes))
    elif case.boxes is not None:
        normalised = np.clip(case.boxes / np.tile(patch, 2), 0.0, 1.0)
        target.instance_labels = torch.as_tensor(case.box_labels, dtype=torch.long)
        target.instance_boxes = torch.from_numpy(normalised).float()
        target.annotated_classes = torch.tensor(label_map.box_class_indices(), dtype=torch.long)
        sequences.append(tokenizer.encode_detection(normalised, case.box_labels.tolist()))
        if case.image_classes is None:
            case = LoadedCase(case.image, None, case.boxes, case.box_labels, sorted(set(case.box_labels.tolist())))
    if case.image_classes is not None:
        multi_hot = torch.zeros(num_classes)
        multi_hot[list(case.image_classes)] = 1.0
        target.image_labels = multi_hot
        image_class_set = set(label_map.image_class_indices())
        sequences.append(tokenizer.encode_classification([c for c in case.image_classes if c in image_class_set]))
    target.sequences = tuple(torch.tensor(s, dtype=torch.long) for s in sequences)
    return target


class UniMedTrainingDataset(torch.utils.data.Dataset):
    """Datalist items → (image patch, Target), loading each item once and cropping per draw.

    Args:
        items: datalist items with absolute paths (``unimed_core.data.datalist.load_datalist``).
        label_map: the label map.
        tokenizer: the tokenizer of the model's vocabulary.
        patch_size: training patch (each a multiple of 16).
        spacing: working spacing in mm.
        seed: base seed; draw ``i`` of epoch ``e`` is deterministic given ``set_epoch(e)``.
        augmentation: applied to each draw before cropping; None for none. The default is
            :class:`~unimed_core.data.augmentation.Augmentation`'s.
    """

    def __init__(
        self,
        items: Sequence[dict],
        label_map: LabelMap,
        tokenizer: Tokenizer,
        patch_size: Sequence[int] = (64, 64, 64),
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
        seed: int = 0,
        augmentation: Augmentation | None = DEFAULT_AUGMENTATION,
    ) -> None:
        if len(patch_size) != 3 or any(int(p) <= 0 or int(p) % 16 for p in patch_size):
            raise ValueError(f"patch_size must be three positive multiples of 16, got {patch_size}")
        self.items = list(items)
        self.label_map, self.tokenizer = label_map, tokenizer
        self.patch_size = tuple(int(p) for p in patch_size)
        self.spacing = tuple(float(s) for s in spacing)
        self.seed, self.epoch = seed, 0
        self.augmentation = augmentation
        self._cache: dict[int, LoadedCase] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def case(self, index: int) -> LoadedCase:
        if index not in self._cache:
            self._cache[index] = load_case(self.items[index], self.label_map, self.spacing)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case = self.case(index)
        if self.augmentation is not None:
            case = self.augmentation(case, rng)
        case = crop_case(case, self.patch_size, rng)
        return {"image": case.image, "target": build_target(case, self.label_map, self.tokenizer)}


def collate_samples(batch: Sequence[dict]) -> dict:
    """Stack images; keep targets as a list (their sizes differ)."""
    return {"image": torch.stack([b["image"] for b in batch]), "targets": [b["target"] for b in batch]}
