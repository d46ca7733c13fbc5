"""Tests of unimed_core.losses.box_losses: bin convention, expectation, the bin loss."""

import pytest
import torch

from unimed_core.losses.box_losses import bin_centers, box_bin_loss, expected_boxes, target_bins
from unimed_core.tokenizer.vocabulary import Vocabulary


def test_bins_follow_the_tokenizer_convention():
    vocab = Vocabulary(["a"], num_bins=16)
    x = torch.tensor([0.0, 0.03, 0.5, 0.99, 1.0])
    assert torch.equal(target_bins(x, 16), vocab.quantize(x))
    assert torch.allclose(bin_centers(16), vocab.dequantize(torch.arange(16)))


def test_expected_box_of_peaked_logits_is_bin_centre():
    logits = torch.full((2, 6, 10), -30.0)
    bins = torch.tensor([[0, 1, 2, 5, 6, 9], [3, 3, 3, 4, 4, 4]])
    logits.scatter_(-1, bins[..., None], 30.0)
    assert torch.allclose(expected_boxes(logits), (bins.float() + 0.5) / 10, atol=1e-6)


def test_box_loss_small_when_right_large_when_wrong():
    nb = 20
    boxes = (torch.tensor([[1, 2, 3, 10, 11, 12]]).float() + 0.5) / nb
    right = torch.zeros(1, 6, nb).scatter_(-1, target_bins(boxes, nb)[..., None], 30.0)
    wrong = torch.zeros(1, 6, nb).scatter_(-1, (nb - 1 - target_bins(boxes, nb))[..., None], 30.0)
    assert box_bin_loss(right, boxes, 1) < 1e-4
    assert box_bin_loss(wrong, boxes, 1) > 10


def test_smoothing_keeps_a_distribution_at_the_edges():
    nb = 8
    boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])  # bins 0 and 7: the edges
    logits = torch.zeros(1, 6, nb, requires_grad=True)
    loss = box_bin_loss(logits, boxes, 1, smoothing=0.2, l1_weight=0.0)
    # With uniform logits, CE equals log(nb) whatever the (normalised) target distribution.
    assert loss.item() == pytest.approx(torch.log(torch.tensor(float(nb))).item(), rel=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        box_bin_loss(logits, boxes, 1, smoothing=1.0)
