"""Hungarian matching of the latent queries to a sample's annotated objects (after Mask2Former's matcher.py).

Only what a sample has annotated enters its cost: the class cost always, the mask costs when the sample has
instance masks, the box costs when it has instance boxes. A sample without objects (``instance_labels is
None``) gets an empty match and takes no part in the set loss.
"""

from __future__ import annotations

import dataclasses

import torch
from monai.data.box_utils import box_giou
from scipy.optimize import linear_sum_assignment
from torch import nn

from unimed_core.losses.box_losses import expected_boxes
from unimed_core.losses.mask_losses import MaskSampler, pairwise_dice, pairwise_sigmoid_bce
from unimed_core.model.outputs import DecomposedOutput
from unimed_core.model.targets import Target

__all__ = ["HungarianMatcher", "MatchIndices", "aux_output"]

MatchIndices = tuple[torch.Tensor, torch.Tensor]
"""(query_idx, target_idx): long tensors of equal length; query_idx indexes the *latent* queries."""


def aux_output(decomposed: DecomposedOutput, layer: int) -> DecomposedOutput:
    """The intermediate decoder layer ``layer`` as a :class:`DecomposedOutput` (fields it lacks are kept)."""
    aux = decomposed.aux[layer]
    return dataclasses.replace(
        decomposed,
        class_logits=aux.get("class_logits", decomposed.class_logits),
        mask_logits=aux.get("mask_logits", decomposed.mask_logits),
        box_logits=aux.get("box_logits", decomposed.box_logits),
        aux=[],
    )


def _empty_match() -> MatchIndices:
    return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)


def _ordered(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes with each min/max corner pair sorted, so an expected box is always a valid XYZXYZ box."""
    lo = torch.minimum(boxes[:, :3], boxes[:, 3:])
    hi = torch.maximum(boxes[:, :3], boxes[:, 3:])
    return torch.cat([lo, hi], dim=1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment between latent queries and targets, minimising a weighted cost.

    Args:
        cost_class: weight of ``-p(target class)`` (softmax over the C + 1 class logits).
        cost_mask_bce: weight of the mean sigmoid BCE between predicted and target masks.
        cost_mask_dice: weight of the Dice loss between predicted and target masks.
        cost_box: weight of the L1 distance between the expected box (softmax over bins) and the target box.
        cost_giou: weight of ``-GIoU`` (``monai.data.box_utils.box_giou``) of the same boxes; 0 disables it.
        num_points: None to compare masks on the dense embedding grid (targets area-resized), else the number
            of uniformly sampled points per sample (Mask2Former's matcher), to bound memory on large grids.

    Example:
        >>> matcher = HungarianMatcher(cost_class=1.0)
        >>> matches = matcher(decomposed, targets)  # doctest: +SKIP
        >>> query_idx, target_idx = matches[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask_bce: float = 5.0,
        cost_mask_dice: float = 5.0,
        cost_box: float = 5.0,
        cost_giou: float = 0.0,
        num_points: int | None = None,
    ) -> None:
        super().__init__()
        costs = {
            "cost_class": cost_class,
            "cost_mask_bce": cost_mask_bce,
            "cost_mask_dice": cost_mask_dice,
            "cost_box": cost_box,
            "cost_giou": cost_giou,
        }
        for name, value in costs.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if all(v == 0 for v in costs.values()):
            raise ValueError("all matching costs are 0")
        self.cost_class = float(cost_class)
        self.cost_mask_bce = float(cost_mask_bce)
        self.cost_mask_dice = float(cost_mask_dice)
        self.cost_box = float(cost_box)
        self.cost_giou = float(cost_giou)
        self.sampler = MaskSampler(num_points=num_points)

    @torch.no_grad()
    def forward(
        self, decomposed: DecomposedOutput, targets: list[Target], generator: torch.Generator | None = None
    ) -> list[MatchIndices]:
        """Match every sample's latent queries to its objects.

        Args:
            decomposed: the decoder output (last layer, or an aux layer through :func:`aux_output`).
            targets: B targets.
            generator: random generator for point sampling (only with ``num_points``).

        Returns:
            B pairs (query_idx, target_idx) of CPU long tensors, sorted by query index; empty for a sample
            without objects.
        """
        if len(targets) != decomposed.class_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {decomposed.class_logits.shape[0]}")
        latent = decomposed.layout.latent
        out: list[MatchIndices] = []
        for b, target in enumerate(targets):
            if not target.has_objects or target.instance_labels.numel() == 0:
                out.append(_empty_match())
                continue
            cost = self._cost(
                decomposed.class_logits[b, latent],
                decomposed.mask_logits[b, latent],
                decomposed.box_logits[b, latent] if decomposed.box_logits is not None else None,
                target,
                generator,
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out

    def _cost(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        box_logits: torch.Tensor | None,
        target: Target,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        labels = target.instance_labels.to(class_logits.device).long()
        prob = class_logits.float().softmax(-1)
        # -p(class) approximates the class NLL and stays bounded, as in DETR / Mask2Former.
        cost = -self.cost_class * prob[:, labels]
        if target.instance_masks is not None and (self.cost_mask_bce > 0 or self.cost_mask_dice > 0):
            pred, tgt = self.sampler.for_matching(mask_logits.float(), target.instance_masks, generator)
            cost = cost + self.cost_mask_bce * pairwise_sigmoid_bce(pred, tgt)
            cost = cost + self.cost_mask_dice * pairwise_dice(pred, tgt)
        if target.instance_boxes is not None and box_logits is not None and (self.cost_box > 0 or self.cost_giou > 0):
            pred_boxes = expected_boxes(box_logits.float())
            tgt_boxes = target.instance_boxes.to(pred_boxes)
            cost = cost + self.cost_box * torch.cdist(pred_boxes, tgt_boxes, p=1) / 6
            if self.cost_giou > 0:
                cost = cost - self.cost_giou * box_giou(_ordered(pred_boxes), _ordered(tgt_boxes))
        if not torch.isfinite(cost).all():
            raise ValueError("matching cost is not finite (NaN or Inf in the predictions?)")
        return cost
