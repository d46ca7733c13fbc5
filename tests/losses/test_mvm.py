"""Tests of unimed_core.losses.mvm: random patch masks and the masked reconstruction loss."""

import pytest
import torch

from unimed_core.losses.mvm import mvm_loss, random_volume_mask


def test_mask_hides_exactly_the_ratio_in_aligned_patches():
    g = torch.Generator().manual_seed(0)
    mask = random_volume_mask((3, 1, 16, 16, 24), patch_size=4, ratio=0.25, generator=g)
    assert mask.shape == (3, 1, 16, 16, 24) and mask.dtype == torch.bool
    patches = mask.view(3, 4, 4, 4, 4, 6, 4)  # (B, gd, p, gh, p, gw, p)
    per_patch = patches.float().mean(dim=(2, 4, 6))
    assert set(per_patch.unique().tolist()) <= {0.0, 1.0}  # whole patches only
    assert (per_patch.sum(dim=(1, 2, 3)) == round(0.25 * 96)).all()
    assert not torch.equal(mask[0], mask[1])  # independent per sample


def test_mask_is_deterministic_and_crops_partial_patches():
    a = random_volume_mask((2, 1, 10, 12, 9), 8, 0.5, torch.Generator().manual_seed(5))
    b = random_volume_mask((2, 1, 10, 12, 9), 8, 0.5, torch.Generator().manual_seed(5))
    assert a.shape == (2, 1, 10, 12, 9) and torch.equal(a, b)
    assert not random_volume_mask((1, 1, 8, 8, 8), 4, 0.0).any()


def test_mask_bad_arguments():
    with pytest.raises(ValueError, match="ratio"):
        random_volume_mask((1, 1, 8, 8, 8), ratio=1.0)
    with pytest.raises(ValueError, match="patch_size"):
        random_volume_mask((1, 1, 8, 8, 8), patch_size=0)
    with pytest.raises(ValueError, match="shape"):
        random_volume_mask((8, 8, 8))


@pytest.mark.parametrize("kind", ["mse", "smooth_l1"])
def test_loss_only_on_hidden_voxels(kind):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, 8, 8, 8, generator=g)
    mask = random_volume_mask(image.shape, 4, 0.5, g)
    recon = image + 0.5 * mask  # error exactly 0.5 on hidden voxels, 0 elsewhere
    loss = mvm_loss(recon, image, mask, kind)["loss_mvm"]
    expected = 0.25 if kind == "mse" else 0.5 * 0.5**2  # smooth L1 (beta 1) of 0.5
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    visible_changed = recon + 10.0 * ~mask
    assert mvm_loss(visible_changed, image, mask, kind)["loss_mvm"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert mvm_loss(recon, image, torch.zeros_like(mask), kind) == {}


def test_loss_bad_arguments():
    image = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="differ"):
        mvm_loss(torch.zeros(1, 1, 4, 4, 2), image, torch.ones_like(image, dtype=torch.bool))
    with pytest.raises(ValueError, match="kind"):
        mvm_loss(image, image, torch.ones_like(image, dtype=torch.bool), "l3")
