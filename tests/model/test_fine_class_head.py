"""FineClassHead: class-token masks on the input grid, starting from the coarse masks upsampled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_tiny
from unimed_core.model.fine_class_head import FineClassHead


def _inputs(b=2, k=3, d=16, coarse=4, fine=8):
    return (torch.randn(b, k, coarse, coarse, coarse), torch.randn(b, k, d), torch.randn(b, d, coarse, coarse, coarse),
            torch.randn(b, 1, fine, fine, fine))  # fmt: skip


def test_shape_and_untrained_head_is_the_coarse_masks_upsampled():
    head = FineClassHead(16)
    coarse, hidden, embeddings, image = _inputs()
    fine = head(coarse, hidden, embeddings, image)
    assert fine.shape == (2, 3, 8, 8, 8)
    expected = F.interpolate(coarse, size=(8, 8, 8), mode="trilinear", align_corners=False)
    assert torch.allclose(fine, expected)


def test_the_image_reaches_the_fine_masks_once_trained():
    head = FineClassHead(16)
    torch.nn.init.normal_(head.weights.weight)
    coarse, hidden, embeddings, image = _inputs()
    image.requires_grad_(True)
    head(coarse, hidden, embeddings, image).sum().backward()
    assert image.grad.abs().sum() > 0  # the voxels themselves, not only E, shape the fine masks


def test_bad_inputs_are_refused():
    head = FineClassHead(16)
    coarse, hidden, embeddings, image = _inputs()
    with pytest.raises(ValueError, match="image must be"):
        head(coarse, hidden, embeddings, image[:1])
    with pytest.raises(ValueError, match="disagree"):
        head(coarse, hidden[:, :2], embeddings, image)
    with pytest.raises(ValueError):
        FineClassHead(0)


def test_unimed_class_masks_are_on_the_input_grid_with_the_image():
    model = unimed_tiny(LabelMap.default()).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    embeddings, _ = model.encode(image)
    n = len(model.vocab.class_names)
    assert model.class_masks(embeddings).shape == (1, n, 16, 16, 16)  # E's grid without the image
    assert model.class_masks(embeddings, image).shape == (1, n, 32, 32, 32)
    out = model(image)
    assert out.class_mask_logits.shape == (1, n, 32, 32, 32)
    model.fine_class_head = None
    assert model(image).class_mask_logits.shape == (1, n, 16, 16, 16)


def test_refinement_units_start_as_identities_and_learn_from_the_image():
    plain, refined = FineClassHead(16), FineClassHead(16, refine_units=2)
    refined.load_state_dict(plain.state_dict(), strict=False)
    for head in (plain, refined):
        torch.nn.init.normal_(head.weights.weight)
    refined.weights.load_state_dict(plain.weights.state_dict())
    coarse, hidden, embeddings, image = _inputs()
    assert torch.allclose(plain(coarse, hidden, embeddings, image), refined(coarse, hidden, embeddings, image))
    refined(coarse, hidden, embeddings, image).sum().backward()
    assert refined.refine[0][1].weight.grad.abs().sum() > 0  # the zero convolution is trained, not frozen
    with pytest.raises(ValueError, match="refine_units"):
        FineClassHead(16, refine_units=-1)
