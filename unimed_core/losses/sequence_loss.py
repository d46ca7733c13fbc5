"""Losses of the composed (sequence) decoder under teacher forcing.

- ``loss_sequence``: next-token cross-entropy (position t predicts token t + 1), PAD targets ignored;
- ``loss_sequence_mask_bce`` / ``loss_sequence_mask_dice``: at each MASK position of a ``BOS SEG (c MASK)* EOS``
  sequence, the mask decoded from the MASK hidden state against the semantic mask of class ``c`` (the class
  token just before the MASK), compared at the embedding grid like the set loss's masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unimed_core.losses.mask_losses import MaskSampler, dice_loss, sigmoid_bce_loss
from unimed_core.model.outputs import ComposedOutput
from unimed_core.model.targets import Target

__all__ = ["SequenceMaskTargets", "sequence_mask_targets", "sequence_loss"]


@dataclass
class SequenceMaskTargets:
    """Target masks of the MASK slots of a batch of sequences.

    Attributes:
        positions: (M, 2) long (batch index, sequence position) of each MASK slot that has a target.
        masks: (M, D, H, W) bool target masks on the patch grid.
    """

    positions: torch.Tensor
    masks: torch.Tensor


def sequence_mask_targets(
    sequences: torch.Tensor,
    targets: Sequence[Target],
    mask_token: int,
    class_of_token: Callable[[int], int | None],
    mask_id_of_class: Callable[[int], int | None],
) -> SequenceMaskTargets | None:
    """Find every MASK slot and its target mask: ``semantic == mask_id(class of the token before it)``.

    When the sample has no semantic mask (or the class no label id) but has instance masks, the union of its
    objects of that class is the target instead. A slot gets no target (and no loss) when the token before it
    is not a class token, or the sample has neither kind of mask (nor an object of that class).

    Args:
        sequences: (B, T) long input sequences.
        targets: B targets.
        mask_token: the MASK token id.
        class_of_token: token id → class index, or None for a token that is not a class token.
        mask_id_of_class: class index → label id in ``Target.semantic``, or None (class without a mask label).

    Returns:
        The slots with targets, or None when there are none.
    """
    if sequences.ndim != 2 or sequences.shape[0] != len(targets):
        raise ValueError(f"sequences must be (B, T) with B = {len(targets)}, got {tuple(sequences.shape)}")
    positions, masks = [], []
    for b, t in (sequences == mask_token).nonzero().tolist():
        if t == 0:
            continue
        cls = class_of_token(int(sequences[b, t - 1]))
        if cls is None:
            continue
        target = targets[b]
        mask_id = mask_id_of_class(cls)
        if target.semantic is not None and mask_id is not None:
            mask = target.semantic == mask_id
        elif (
            target.instance_masks is not None
            and target.instance_labels is not None
            and bool((target.instance_labels == cls).any())
        ):
            mask = target.instance_masks[target.instance_labels == cls].any(0)
        else:
            continue
        positions.append((b, t))
        masks.append(mask.bool())
    if not positions:
        return None
    return SequenceMaskTargets(torch.as_tensor(positions, dtype=torch.long), torch.stack(masks))


def sequence_loss(
    composed: ComposedOutput,
    sequences: torch.Tensor,
    mask_targets: SequenceMaskTargets | None,
    pad_token: int = 0,
    mask_sampler: MaskSampler | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Named sequence losses; a term without any contributing token or slot is absent.

    Args:
        composed: the composed decoder's teacher-forced output.
        sequences: (B, T) the input sequences the output was computed from.
        mask_targets: targets of the MASK slots (:func:`sequence_mask_targets`), or None.
        pad_token: the PAD id (targets equal to it are ignored).
        mask_sampler: how masks are compared (dense embedding grid by default).
        generator: random generator for point sampling.
    """
    logits = composed.token_logits
    if logits.shape[:2] != sequences.shape:
        raise ValueError(f"token_logits {tuple(logits.shape)} do not match sequences {tuple(sequences.shape)}")
    losses: dict[str, torch.Tensor] = {}
    nxt = sequences[:, 1:].to(logits.device)
    if (nxt != pad_token).any():
        losses["loss_sequence"] = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), nxt.reshape(-1), ignore_index=pad_token
        )
    if mask_targets is not None and composed.mask_logits is not None and len(mask_targets.positions):
        sampler = mask_sampler if mask_sampler is not None else MaskSampler()
        pos = mask_targets.positions.to(composed.mask_logits.device)
        pred = composed.mask_logits[pos[:, 0], pos[:, 1]].float()
        p, t = sampler.for_loss(pred, mask_targets.masks.to(pred.device), generator)
        n = float(pred.shape[0])
        losses["loss_sequence_mask_bce"] = sigmoid_bce_loss(p, t, n)
        losses["loss_sequence_mask_dice"] = dice_loss(p, t, n)
    return losses
