"""Boxes as coordinate-bin distributions: expected boxes, target bins, and the box loss.

The decomposed decoder scores each of a query's 6 box coordinates over the vocabulary's NB coordinate bins.
The bin convention is the tokenizer's (``unimed_core.tokenizer.vocabulary``): bin ``b`` covers
``[b / NB, (b + 1) / NB)`` and stands for its centre ``(b + 0.5) / NB``; a coordinate's target bin is
``floor(x * NB)`` clipped to ``[0, NB - 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bin_centers", "expected_boxes", "target_bins", "box_bin_loss"]


def bin_centers(num_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(NB,) centres ``(b + 0.5) / NB`` of the coordinate bins."""
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    return (torch.arange(num_bins, device=device, dtype=torch.float32) + 0.5) / num_bins


def expected_boxes(box_logits: torch.Tensor) -> torch.Tensor:
    """(..., 6) expected normalised boxes: softmax over bins (last axis) times the bin centres.

    Args:
        box_logits: (..., 6, NB) logits over coordinate bins.
    """
    centers = bin_centers(box_logits.shape[-1], box_logits.device).to(box_logits.dtype)
    return box_logits.softmax(-1) @ centers


def target_bins(boxes: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Long bins ``floor(x * NB)`` clipped to ``[0, NB - 1]`` of normalised coordinates (any shape)."""
    return torch.clamp(torch.floor(boxes.float() * num_bins), 0, num_bins - 1).long()


def box_bin_loss(
    box_logits: torch.Tensor,
    boxes: torch.Tensor,
    num_boxes: float | torch.Tensor,
    smoothing: float = 0.0,
    l1_weight: float = 5.0,
) -> torch.Tensor:
    """Cross-entropy over coordinate bins of the 6 coordinates plus L1 of the expected box.

    Args:
        box_logits: (M, 6, NB) logits of the matched queries.
        boxes: (M, 6) normalised target boxes.
        num_boxes: normaliser (number of boxes, possibly summed over processes).
        smoothing: share of the target's probability mass moved to the two neighbouring bins (half each;
            all of it to the one neighbour at an edge), so a prediction one bin off is not treated like one
            that is far off.
        l1_weight: weight of the L1 term against the cross-entropy term.

    Returns:
        A scalar: ``(Σ_boxes mean_coords CE + l1_weight * Σ_boxes mean_coords |E[x] - x|) / num_boxes``.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    nb = box_logits.shape[-1]
    bins = target_bins(boxes, nb).to(box_logits.device)  # (M, 6)
    soft = F.one_hot(bins, nb).to(box_logits.dtype) * (1 - smoothing)
    if smoothing > 0:
        left = F.one_hot((bins - 1).clamp(min=0), nb).to(soft.dtype)
        right = F.one_hot((bins + 1).clamp(max=nb - 1), nb).to(soft.dtype)
        # At an edge the clamped neighbour is the target bin itself; send that half to the inner neighbour.
        left = torch.where((bins == 0)[..., None], right, left)
        right = torch.where((bins == nb - 1)[..., None], left, right)
        soft = soft + smoothing / 2 * (left + right)
    ce = -(soft * box_logits.log_softmax(-1)).sum(-1).mean(-1)  # (M,)
    l1 = (expected_boxes(box_logits) - boxes.to(box_logits)).abs().mean(-1)  # (M,)
    return (ce.sum() + l1_weight * l1.sum()) / num_boxes
