"""The cached training data of highres.json: preprocessing written once and reused, foreground-aware crops,
image labels that stay true in a crop, reproducible draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.data.test_training_data import items  # noqa: F401 (the fixture: one study at every annotation level)
from unimed_core.data import training_data
from unimed_core.data.cached_dataset import CachedTrainingDataset, foreground_centre
from unimed_core.data.training_data import load_case
from unimed_core.label_map import LabelMap
from unimed_core.tokenizer import Tokenizer, Vocabulary

LM = LabelMap.default()
SPACING = (6.0, 6.0, 6.0)  # 320 x 320 x 320 mm of the fixture -> about 53 x 53 x 53 voxels
PATCH = (32, 32, 32)


@pytest.fixture
def tokenizer():
    return Tokenizer(Vocabulary.from_label_map(LM, num_bins=32))


@pytest.fixture
def reads(monkeypatch):
    """Counts the source images read (``load_case`` reads through ``training_data.read_image``)."""
    seen = []
    original = training_data.read_image

    def counting(path, *args, **kwargs):
        seen.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(training_data, "read_image", counting)
    return seen


def _dataset(by_level, tokenizer, cache, **kwargs) -> CachedTrainingDataset:
    ordered = [by_level[k] for k in ("mask", "boxes", "class", "none")]
    return CachedTrainingDataset(ordered, LM, tokenizer, cache, PATCH, SPACING, **kwargs)


def test_the_cache_is_written_once_and_reused(items, tokenizer, reads, tmp_path):  # noqa: F811
    dataset = _dataset(items, tokenizer, tmp_path / "cache")
    for index in range(len(dataset)):
        assert dataset[index]["image"].shape == (1, *PATCH)
    files = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(reads) == 4 and len(files) == 4  # one preprocessing per study
    written = {f: f.stat().st_mtime_ns for f in files}
    dataset.set_epoch(1)
    second = [dataset[i] for i in range(len(dataset))]
    again = _dataset(items, tokenizer, tmp_path / "cache")  # a new run on the same cache
    again.set_epoch(1)
    torch.testing.assert_close(again[0]["image"], second[0]["image"])  # the same draw from the cache
    assert len(reads) == 4, "a later epoch or run read a source image"
    assert {f: f.stat().st_mtime_ns for f in sorted((tmp_path / "cache").glob("*.pt"))} == written
    other = CachedTrainingDataset([items["mask"]], LM, tokenizer, tmp_path / "cache", PATCH, (8.0, 8.0, 8.0))
    other[0]  # another working grid is another entry, not a stale one
    assert len(reads) == 5 and len(list((tmp_path / "cache").glob("*.pt"))) == 5


def test_cached_case_equals_the_fresh_one(items, tokenizer, tmp_path):  # noqa: F811
    dataset = _dataset(items, tokenizer, tmp_path / "cache")
    cached, fresh = dataset.case(0), load_case(items["mask"], LM, SPACING)
    torch.testing.assert_close(cached.image, fresh.image)
    assert cached.semantic.dtype == torch.int16 and torch.equal(cached.semantic.long(), fresh.semantic)
    np.testing.assert_allclose(cached.boxes, fresh.boxes)
    assert cached.image_classes == fresh.image_classes


def test_foreground_crops_hold_a_lesion(items):  # noqa: F811
    case = load_case(items["mask"], LM, SPACING)
    lesion_ids = [LM.class_index_to_mask_id(c) for c in LM.box_class_indices()]
    for seed in range(10):
        centre = foreground_centre(case, LM, np.random.default_rng(seed), pos=1.0, neg=0.0)
        assert int(case.semantic[tuple(centre)]) in lesion_ids
    boxes = load_case(items["boxes"], LM, SPACING)
    for seed in range(10):
        centre = foreground_centre(boxes, LM, np.random.default_rng(seed), pos=1.0, neg=0.0)
        assert any(np.all((centre >= b[:3] - 1) & (centre <= b[3:])) for b in boxes.boxes)


def test_image_labels_in_crops_and_reproducible_draws(items, tokenizer, tmp_path):  # noqa: F811
    dataset = _dataset(items, tokenizer, tmp_path / "cache", augmentation=None)
    class_only = dataset[2]["target"]  # a positive study known only by its image label, cut by the crop
    assert class_only.image_labels is None
    negative = CachedTrainingDataset(
        [{**items["class"], "class": []}], LM, tokenizer, tmp_path / "cache", PATCH, SPACING
    )[0]["target"]
    assert negative.image_labels is not None and negative.image_labels.sum() == 0  # a negative stays negative
    masked = dataset[0]["target"]  # the mask says what the crop holds
    assert masked.image_labels is not None
    present = set(masked.instance_labels.tolist()) & set(LM.box_class_indices())
    assert set(torch.nonzero(masked.image_labels).flatten().tolist()) == present
    again = _dataset(items, tokenizer, tmp_path / "cache", augmentation=None)
    torch.testing.assert_close(again[0]["image"], dataset[0]["image"])
    dataset.set_epoch(3)
    assert not torch.equal(dataset[0]["image"], again[0]["image"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_size": (30, 32, 32)}, "multiples of 16"),
        ({"pos": 0, "neg": 0}, "not both 0"),
        ({"margin": 2}, "margin"),
    ],
)
def test_bad_arguments(items, tokenizer, tmp_path, kwargs, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        CachedTrainingDataset([items["mask"]], LM, tokenizer, tmp_path, **kwargs)
