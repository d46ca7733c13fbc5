"""Image labels read the class tokens' masks as well as the image query."""

from __future__ import annotations

import pytest
import torch

from unimed_core.model.factory import unimed_tiny
from unimed_core.model.image_evidence import ImageEvidence


def test_a_hot_mask_raises_only_its_class_logit():
    fuse = ImageEvidence(3, k=4)
    masks = torch.full((2, 3, 8, 8, 8), -5.0)
    masks[1, 2, 2:4, 2:4, 2:4] = 5.0  # sample 1 shows class 2 in 8 voxels
    out = fuse(torch.zeros(2, 3), masks)
    assert out[1, 2] > out[0, 2] + 9.0
    torch.testing.assert_close(out[0], out[1, :] * torch.tensor([1.0, 1.0, 0.0]) + torch.tensor([0.0, 0.0, -5.0]))


def test_image_loss_gradient_reaches_the_class_masks():
    model = unimed_tiny()
    out = model(torch.randn(1, 1, 32, 32, 32))
    grad = torch.autograd.grad(out.decomposed.image_logits.sum(), out.class_mask_logits)[0]
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 4, 8, 8, 8), (1, 3, 8, 8, 8)])
def test_mismatched_masks_are_refused(shape):
    with pytest.raises(ValueError, match="class_mask_logits must be"):
        ImageEvidence(3)(torch.zeros(2, 3), torch.zeros(shape))


def test_bad_arguments():
    with pytest.raises(ValueError):
        ImageEvidence(0)
    with pytest.raises(ValueError):
        ImageEvidence(3, k=0)
