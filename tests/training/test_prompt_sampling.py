"""Tests of unimed_core.training.prompt_sampling."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from unimed_core.label_map import LabelMap
from unimed_core.model.targets import Target
from unimed_core.tokenizer.tokenizer import Tokenizer
from unimed_core.tokenizer.vocabulary import Vocabulary
from unimed_core.training.prompt_sampling import mask_to_box, sample_prompts

S = 32
LABEL_MAP = LabelMap.default()
# One bin per voxel, so a click's coordinate bins are exactly its voxel indices.
VOCAB = Vocabulary(LABEL_MAP.class_names, num_bins=S)
TOK = Tokenizer(VOCAB)
LIVER, CYST, TUMOR = (LABEL_MAP.class_index(n) for n in ("liver", "cyst", "tumor"))


def _ellipsoid(centre, radii) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(S).float() + 0.5] * 3, indexing="ij"))
    c = torch.tensor(centre).view(3, 1, 1, 1)
    r = torch.tensor(radii).view(3, 1, 1, 1)
    return (((grid - c) / r) ** 2).sum(0) <= 1


def _target(with_boxes: bool = True) -> Target:
    liver = _ellipsoid((12, 14, 16), (9, 10, 11))
    t1 = _ellipsoid((12, 12, 12), (3, 3, 3))
    t2 = _ellipsoid((26, 26, 26), (4, 4, 4))
    cyst = _ellipsoid((5, 26, 6), (3, 4, 3))
    liver = liver & ~t1
    masks = torch.stack([liver, t1, t2, cyst])
    labels = torch.tensor([LIVER, TUMOR, TUMOR, CYST])
    boxes = torch.stack([mask_to_box(m) for m in masks]) if with_boxes else None
    return Target(instance_labels=labels, instance_masks=masks, instance_boxes=boxes)


def _clicks(tokens: torch.Tensor) -> list[tuple[bool, tuple[int, int, int]]]:
    out, t = [], tokens.tolist()
    for i, tok in enumerate(t):
        if tok in (VOCAB.point_pos, VOCAB.point_neg):
            out.append((tok == VOCAB.point_pos, tuple(VOCAB.coord_bin(x) for x in t[i + 1 : i + 4])))
    return out


def _sample(targets, seed=0, **kw):
    kw.setdefault("num_prompts", 12)
    return sample_prompts(targets, TOK, patch_shape=(S, S, S), generator=torch.Generator().manual_seed(seed), **kw)


def test_clicks_fall_inside_and_outside_their_object():
    target = _target()
    prompts, masks, valid = _sample([target], point_prob=1.0, class_prob=0.0, box_prob=0.0)
    assert prompts.tokens.shape[:2] == (1, 12) and valid.all()
    n_neg = 0
    for p in range(12):
        clicks = _clicks(prompts.tokens[0, p])
        pos = [c for ok, c in clicks if ok]
        neg = [c for ok, c in clicks if not ok]
        assert 1 <= len(pos) <= 3 and 0 <= len(neg) <= 2
        obj = masks[0, p]
        # The target is exactly one of the instances.
        assert any(torch.equal(obj, m) for m in target.instance_masks)
        assert all(obj[c] for c in pos)
        assert not any(obj[c] for c in neg)
        # With other objects present, negatives land in one of them.
        others = target.instance_masks.any(0) & ~obj
        assert all(others[c] for c in neg)
        n_neg += len(neg)
    assert n_neg > 0


def test_positive_clicks_prefer_the_interior():
    target = _target()
    prompts, masks, _ = _sample([target], num_prompts=40, point_prob=1.0, class_prob=0.0, box_prob=0.0)
    click_depth, mean_depth = [], []
    for p in range(40):
        obj = masks[0, p].numpy()
        dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1, 1:-1]
        click_depth += [dist[c] for ok, c in _clicks(prompts.tokens[0, p]) if ok]
        mean_depth.append(dist[obj].mean())
    assert np.mean(click_depth) > 1.2 * np.mean(mean_depth)


def test_class_and_box_prompts_target_their_masks():
    target = _target()
    prompts, masks, _ = _sample([target], num_prompts=8, point_prob=0.0, class_prob=1.0, box_prob=0.0)
    for p in range(8):
        row = [t for t in prompts.tokens[0, p].tolist() if t != VOCAB.pad]
        assert len(row) == 1 and VOCAB.is_class(row[0])
        c = VOCAB.class_index(row[0])
        assert torch.equal(masks[0, p], target.instance_masks[target.instance_labels == c].any(0))
    for boxes in (True, False):
        target = _target(with_boxes=boxes)
        prompts, masks, _ = _sample([target], num_prompts=8, point_prob=0.0, class_prob=0.0, box_prob=1.0)
        for p in range(8):
            row = prompts.tokens[0, p].tolist()
            assert row[0] == VOCAB.box
            bins = torch.tensor([VOCAB.coord_bin(t) for t in row[1:7]])
            assert torch.equal(bins, VOCAB.quantize(mask_to_box(masks[0, p])))


def test_samples_without_masks_get_invalid_pad_prompts():
    boxes_only = Target(
        instance_labels=torch.tensor([TUMOR]), instance_boxes=torch.tensor([[0.1, 0.1, 0.1, 0.3, 0.3, 0.3]])
    )
    prompts, masks, valid = _sample([Target(), _target(), boxes_only], num_prompts=3)
    assert valid.tolist() == [[False] * 3, [True] * 3, [False] * 3]
    assert (prompts.tokens[[0, 2]] == VOCAB.pad).all()
    assert (prompts.tokens[1] != VOCAB.pad).any(-1).all()
    assert not masks[[0, 2]].any() and masks[1].flatten(1).any(1).all()
    prompts, _, valid = _sample([Target()], num_prompts=2)
    assert prompts.tokens.shape == (1, 2, 1) and not valid.any()


def test_deterministic_given_the_generator():
    targets = [_target(), _target(with_boxes=False)]
    a = _sample(targets, seed=7)
    b = _sample(targets, seed=7)
    c = _sample(targets, seed=8)
    assert torch.equal(a[0].tokens, b[0].tokens) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0].tokens, c[0].tokens)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_prompts"):
        _sample([_target()], num_prompts=0)
    with pytest.raises(ValueError, match="probabilities"):
        _sample([_target()], point_prob=0.0, class_prob=0.0, box_prob=0.0)
    with pytest.raises(ValueError, match="patch_shape"):
        sample_prompts([_target()], TOK, 2, (S, S, S + 1))
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(torch.zeros(4, 4, 4, dtype=torch.bool))
