"""DenseClassHead: per-voxel class logits from E and the image, added to the class tokens' masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unimed_core.label_map import LabelMap
from unimed_core.model.dense_class_head import DenseClassHead, local_statistics
from unimed_core.model.factory import unimed_small, unimed_tiny


def test_untrained_head_leaves_the_class_masks_as_they_were():
    torch.manual_seed(0)
    model = unimed_tiny(LabelMap.default()).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    embeddings, _ = model.encode(image)
    before = model.class_masks(embeddings, image)
    model.dense_class_head = DenseClassHead(model.embed_dim, len(model.vocab.class_names), width=8)
    assert torch.equal(model.class_masks(embeddings, image), before)
    assert model(image).class_mask_logits.shape == before.shape


def test_trained_head_changes_the_masks_on_the_input_grid_even_without_the_fine_head():
    torch.manual_seed(0)
    model = unimed_tiny(LabelMap.default()).eval()
    n = len(model.vocab.class_names)
    model.fine_class_head = None
    model.dense_class_head = DenseClassHead(model.embed_dim, n, width=8)
    torch.nn.init.normal_(model.dense_class_head.out.weight)
    image = torch.randn(1, 1, 32, 32, 32, requires_grad=True)
    embeddings, _ = model.encode(image)
    masks = model.class_masks(embeddings, image)
    assert masks.shape == (1, n, 32, 32, 32)
    coarse = F.interpolate(model.class_masks(embeddings), size=(32, 32, 32), mode="trilinear", align_corners=False)
    assert not torch.allclose(masks, coarse)
    masks.sum().backward()
    assert image.grad.abs().sum() > 0


def test_head_draws_a_conjunction_that_a_linear_read_of_e_cannot():
    """The reason for the head: a tumour is "this intensity *and* inside an organ". A class whose voxels are where
    exactly one of (E's first channel > 0, the image > 0) holds (XOR) is fitted by the head; the best linear read
    of E and the image is not (its accuracy stays near the majority class's)."""
    torch.manual_seed(0)
    embeddings = torch.randn(8, 4, 6, 6, 6)
    image = torch.randn(8, 1, 6, 6, 6)  # the same grid as E: the head's pooling keeps it as it is
    target = ((embeddings[:, :1] > 0) ^ (image > 0)).float()

    head = DenseClassHead(4, 1, width=16, radii=(1,), norm=None)
    linear = torch.nn.Conv3d(5, 1, kernel_size=1)
    assert _fitted_accuracy(head, target, embeddings, image) > 0.95
    assert _fitted_accuracy(linear, target, torch.cat([embeddings, image], 1)) < 0.75


def _fitted_accuracy(model, target, *inputs) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.binary_cross_entropy_with_logits(model(*inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((model(*inputs) > 0).float() == target).float().mean())


def test_local_statistics_are_the_image_and_its_mean_and_sd_per_radius():
    image = torch.zeros(1, 1, 5, 5, 5)
    image[0, 0, 2, 2, 2] = 27.0
    stats = local_statistics(image, (1,))
    assert stats.shape == (1, 3, 5, 5, 5)
    assert torch.equal(stats[:, 0], image[:, 0])
    assert stats[0, 1, 2, 2, 2] == pytest.approx(1.0)  # 27 over the 27 voxels of the 3³ cube
    assert stats[0, 2, 2, 2, 2] == pytest.approx((27.0 - 1.0) ** 0.5, rel=1e-4)  # sd: sqrt(E[x²] - E[x]²)
    assert stats[0, 1, 0, 0, 0] == 0.0
    # maps smaller than the cube (a small input on E's grid) are edge-replicated, not refused
    assert local_statistics(torch.randn(1, 1, 1, 2, 1), (3,)).shape == (1, 3, 1, 2, 1)


def test_bad_inputs_are_refused():
    head = DenseClassHead(4, 2, width=8)
    with pytest.raises(ValueError, match="image must be"):
        head(torch.randn(2, 4, 2, 2, 2), torch.randn(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="radii"):
        DenseClassHead(4, 2, radii=(0,))
    with pytest.raises(ValueError):
        DenseClassHead(0, 2)


def test_the_small_model_has_the_head_as_the_shipped_weights_do_and_drops_it_when_asked():
    model = unimed_small()  # bundle 0.5.0's weights hold the head
    assert model.dense_class_head.out.out_channels == len(model.vocab.class_names)
    assert unimed_small(dense_class_head=False).dense_class_head is None  # the runs from before it
