"""Tests of unimed_core.losses.mask_losses: resizing, point sampling, batched and pairwise BCE / Dice."""

import pytest
import torch

from unimed_core.losses.mask_losses import (
    MaskSampler,
    dice_loss,
    pairwise_dice,
    pairwise_sigmoid_bce,
    point_sample,
    resize_masks,
    sigmoid_bce_loss,
    uncertain_point_coords,
)


def test_resize_masks_area_gives_covered_fraction():
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, 0] = True  # one voxel of the first 2x2x2 cell
    mask[0, 2:4, 2:4, 2:4] = True  # a whole cell
    out = resize_masks(mask, (2, 2, 2))
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0, 0, 0].item() == pytest.approx(1 / 8)
    assert out[0, 1, 1, 1].item() == pytest.approx(1.0)
    assert out.sum().item() == pytest.approx(mask.sum().item() / 8)


def test_resize_masks_rejects_bad_shape():
    with pytest.raises(ValueError, match="M, D, H, W"):
        resize_masks(torch.zeros(4, 4, 4), (2, 2, 2))


def test_point_sample_reads_voxel_centres():
    vol = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    idx = torch.tensor([[0, 0, 0], [2, 3, 4], [1, 2, 3]])
    coords = (idx.float() + 0.5) / torch.tensor([3.0, 4.0, 5.0])
    out = point_sample(vol, coords[None].expand(2, -1, -1))
    expected = vol[:, idx[:, 0], idx[:, 1], idx[:, 2]]
    assert torch.allclose(out, expected, atol=1e-4)


def test_uncertain_points_prefer_uncertain_region():
    logits = torch.full((1, 8, 8, 8), 10.0)
    logits[0, :, :, :4] = 0.0  # uncertain half along the last axis
    g = torch.Generator().manual_seed(0)
    coords = uncertain_point_coords(logits, 100, oversample_ratio=3, importance_sample_ratio=1.0, generator=g)
    assert coords.shape == (1, 100, 3)
    assert (coords[0, :, 2] < 0.5).float().mean() > 0.95


def test_sampler_dense_is_exact_and_points_rank_predictions():
    target = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    target[0, :4] = True
    target[1, :, 2:6, 2:6] = True
    logits = resize_masks(target, (4, 4, 4)) * 40 - 20  # +20 inside, -20 outside
    p, t = MaskSampler().for_loss(logits, target)
    assert p.shape == t.shape == (2, 64)
    assert sigmoid_bce_loss(p, t, 2) < 1e-3
    assert dice_loss(p, t, 2) < 1e-3
    # Points interpolate across boundaries (soft values there), so compare right against inverted predictions.
    sampler = MaskSampler(num_points=64)
    p, t = sampler.for_loss(logits, target, torch.Generator().manual_seed(1))
    q, u = sampler.for_loss(-logits, target, torch.Generator().manual_seed(1))
    assert p.shape == t.shape == (2, 64)
    assert dice_loss(p, t, 2) < 0.5 * dice_loss(q, u, 2)
    assert sigmoid_bce_loss(p, t, 2) < 0.5 * sigmoid_bce_loss(q, u, 2)


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        MaskSampler(num_points=0)
    with pytest.raises(ValueError):
        MaskSampler(importance_sample_ratio=1.5)
    with pytest.raises(ValueError):
        MaskSampler().for_loss(torch.zeros(2, 2, 2, 2), torch.zeros(3, 4, 4, 4))


def test_pairwise_losses_match_batched_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    targets = torch.rand(4, 50, generator=g)
    bce = pairwise_sigmoid_bce(logits, targets)
    dice = pairwise_dice(logits, targets)
    assert bce.shape == dice.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert bce[i, j] == pytest.approx(
                sigmoid_bce_loss(logits[i : i + 1], targets[j : j + 1], 1).item(), rel=1e-5
            )
            assert dice[i, j] == pytest.approx(dice_loss(logits[i : i + 1], targets[j : j + 1], 1).item(), rel=1e-5)


def test_dice_is_high_for_disjoint_masks():
    t = torch.zeros(1, 100)
    t[0, :50] = 1
    logits = torch.full((1, 100), -20.0)
    logits[0, 50:] = 20.0
    assert dice_loss(logits, t, 1) > 0.95


def test_bce_positive_weight_lifts_a_small_foreground():
    # a 4-cell "lesion" in 4096 cells, predicted absent everywhere
    logits = torch.full((1, 4096), -4.0)
    targets = torch.zeros(1, 4096)
    targets[0, :4] = 1.0
    plain = sigmoid_bce_loss(logits, targets, 1)
    assert sigmoid_bce_loss(logits, targets, 1, max_pos_weight=1.0) == plain
    weighted = sigmoid_bce_loss(logits, targets, 1, max_pos_weight=30.0)
    # sqrt(4092 / 4) = 32 → capped at 30: the foreground's share of the loss grows 30-fold
    fg = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :4], targets[0, :4], reduction="sum") / 4096
    torch.testing.assert_close(weighted, plain + 29.0 * fg)
    # the gradient on the foreground cells grows accordingly, the background's is unchanged
    logits.requires_grad_(True)
    g_plain = torch.autograd.grad(sigmoid_bce_loss(logits, targets, 1), logits)[0]
    g_weighted = torch.autograd.grad(sigmoid_bce_loss(logits, targets, 1, max_pos_weight=30.0), logits)[0]
    torch.testing.assert_close(g_weighted[0, :4], 30.0 * g_plain[0, :4])
    torch.testing.assert_close(g_weighted[0, 4:], g_plain[0, 4:])
