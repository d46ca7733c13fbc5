"""The training dataset ``train.json`` builds: in memory per process (the CPU default) or cached on disk.

``highres.json`` only sets top-level ids (``cache_dir``, ``spacing``, ``patch_size``, ...), so that the one
overlay composes with ``train.json``, ``inference.json``, ``evaluate.json`` and ``multi_gpu_train.json`` alike;
which dataset class serves follows from ``cache_dir`` here rather than from a ``train#dataset`` override that
the inference configs, having no ``train`` section, could not take.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from unimed_core.data.augmentation import Augmentation
from unimed_core.data.cached_dataset import CachedTrainingDataset
from unimed_core.data.training_data import UniMedTrainingDataset
from unimed_core.label_map import LabelMap
from unimed_core.tokenizer import Tokenizer

__all__ = ["training_dataset"]


def training_dataset(
    items: Sequence[dict],
    label_map: LabelMap,
    tokenizer: Tokenizer,
    patch_size: Sequence[int],
    spacing: Sequence[float],
    seed: int = 0,
    augmentation: Augmentation | None = None,
    cache_dir: str | Path | None = None,
    pos: float = 2.0,
    neg: float = 1.0,
) -> UniMedTrainingDataset | CachedTrainingDataset:
    """``UniMedTrainingDataset`` (each study loaded once per process, random crops) when ``cache_dir`` is None;
    else ``CachedTrainingDataset`` (preprocessed once into ``cache_dir``, foreground-aware crops with odds
    ``pos : neg``, augmentation after the cache)."""
    if cache_dir is None:
        return UniMedTrainingDataset(items, label_map, tokenizer, patch_size, spacing, seed, augmentation)
    return CachedTrainingDataset(
        items, label_map, tokenizer, cache_dir, patch_size, spacing, seed, augmentation, pos=pos, neg=neg
    )
