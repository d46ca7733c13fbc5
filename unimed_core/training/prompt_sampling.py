"""Random prompts for training the prompt queries, with the mask each prompt asks for.

For a sample with instance masks, each of the P prompt slots draws one kind:

- a class prompt ``[c]`` → the union of the sample's objects of class c (its semantic mask);
- a click prompt → 1..``max_positive`` positive clicks inside ONE object, drawn with probability proportional
  to the squared distance from the object's border (so clicks prefer the interior, as a user's would), and
  0..``max_negative`` negative clicks outside it — in another object when there is one (the confusion a
  negative click usually corrects), else in a thin ring around it; target: that object;
- a box prompt ``[BOX ...]`` → that object; the box is ``instance_boxes[k]`` when given, else the object's
  bounding box computed from its mask.

Samples without instance masks get all-PAD prompts, marked invalid. Coordinates are normalised by the patch
shape at voxel centres, ``(i + 0.5) / D``. Every random choice uses the given generator, so the result is
deterministic given its state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from unimed_core.model.inputs import PromptBatch
from unimed_core.model.targets import Target

__all__ = ["sample_prompts", "mask_to_box"]

_KINDS = ("class", "point", "box")


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """(6,) normalised ``XYZXYZ`` box (array axis order) enclosing the voxels of a non-empty (D, H, W) mask."""
    idx = mask.nonzero()
    if idx.numel() == 0:
        raise ValueError("cannot box an empty mask")
    shape = torch.tensor(mask.shape, dtype=torch.float32)
    lo = idx.min(0).values.float() / shape
    hi = (idx.max(0).values.float() + 1) / shape
    return torch.cat([lo, hi])


def _draw(weights: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n flat indices drawn ∝ weights (without replacement while possible)."""
    available = int((weights > 0).sum())
    return torch.multinomial(weights, n, replacement=n > available, generator=generator)


def _interior_weights(mask: torch.Tensor) -> torch.Tensor:
    """Flat weights ∝ squared distance to the object's border (0 outside), computed on its bounding crop.

    Squared, so the preference for the interior holds in small objects too (a lesion a few voxels wide has
    distances 1..3, which a linear weighting would barely separate).
    """
    idx = mask.nonzero()
    lo = (idx.min(0).values - 1).clamp(min=0)
    hi = torch.minimum(idx.max(0).values + 2, torch.tensor(mask.shape))
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    # Pad by one voxel so an object touching the patch edge still has a border there.
    dist = ndimage.distance_transform_edt(np.pad(mask[crop].cpu().numpy(), 1))[1:-1, 1:-1, 1:-1]
    out = torch.zeros(mask.shape, dtype=torch.float64)
    out[crop] = torch.from_numpy(dist) ** 2
    return out.flatten()


def _negative_weights(mask: torch.Tensor, others: torch.Tensor | None, ring: int) -> torch.Tensor:
    """Flat weights of the voxels where negative clicks go: another object, else a ring, else anywhere outside."""
    outside = ~mask
    if others is not None:
        cand = others & outside
        if cand.any():
            return cand.flatten().double()
    dilated = torch.from_numpy(ndimage.binary_dilation(mask.cpu().numpy(), iterations=ring))
    cand = dilated & outside
    if not cand.any():
        cand = outside
    return cand.flatten().double()


def _centres(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(n, 3) normalised voxel-centre coordinates of flat indices into ``shape``."""
    coords = torch.stack(torch.unravel_index(flat, tuple(shape)), dim=-1).double()
    return (coords + 0.5) / torch.tensor(shape, dtype=torch.float64)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """An int in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def sample_prompts(
    targets: Sequence[Target],
    tokenizer,
    num_prompts: int,
    patch_shape: Sequence[int],
    generator: torch.Generator | None = None,
    point_prob: float = 0.5,
    class_prob: float = 0.25,
    box_prob: float = 0.25,
    max_positive: int = 3,
    max_negative: int = 2,
    negative_ring: int = 2,
    with_classes: bool = False,
) -> tuple[PromptBatch, torch.Tensor, torch.Tensor] | tuple[PromptBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw P prompts per sample and the masks they target.

    Args:
        targets: B targets.
        tokenizer: a ``unimed_core.tokenizer.Tokenizer`` (``encode_class_prompt``, ``encode_point_prompt``,
            ``encode_box_prompt``, ``pad_batch``).
        num_prompts: P, at least 1.
        patch_shape: (D, H, W) of the patch (the targets' grid; coordinates are normalised by it).
        generator: random generator (CPU) that makes the draw deterministic.
        point_prob, class_prob, box_prob: relative frequencies of the three prompt kinds (normalised).
        max_positive: most positive clicks per click prompt (at least 1 is always drawn).
        max_negative: most negative clicks per click prompt (0 is allowed).
        negative_ring: width in voxels of the ring around an object where negatives go when no other object is.
        with_classes: also return each prompt's class index (the prompted class, or the clicked or boxed
            object's class; -1 where no prompt was drawn), which the prompt queries' class term learns.

    Returns:
        ``(PromptBatch (B, P, L), prompt_masks (B, P, D, H, W) bool, prompt_valid (B, P) bool)``, and
        ``prompt_classes (B, P) long`` last with ``with_classes``.

    Example:
        >>> prompts, masks, valid = sample_prompts(targets, tok, 4, (32, 32, 32), torch.Generator().manual_seed(0))  # doctest: +SKIP
    """
    if isinstance(num_prompts, bool) or int(num_prompts) < 1:
        raise ValueError(f"num_prompts must be a positive integer, got {num_prompts!r}")
    shape = tuple(int(s) for s in patch_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"patch_shape must be 3 positive ints (D, H, W), got {tuple(patch_shape)}")
    probs = torch.tensor([class_prob, point_prob, box_prob], dtype=torch.float64)
    if (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"prompt kind probabilities must be >= 0 and not all 0, got {probs.tolist()}")
    if max_positive < 1 or max_negative < 0 or negative_ring < 1:
        raise ValueError("need max_positive >= 1, max_negative >= 0 and negative_ring >= 1")
    p_count = int(num_prompts)
    b_count = len(targets)
    masks = torch.zeros((b_count, p_count, *shape), dtype=torch.bool)
    valid = torch.zeros((b_count, p_count), dtype=torch.bool)
    prompt_classes = torch.full((b_count, p_count), -1, dtype=torch.long)
    tokens: list[list[int]] = [[] for _ in range(b_count * p_count)]

    for b, target in enumerate(targets):
        if target.instance_masks is None or target.instance_labels is None:
            continue
        inst = target.instance_masks.bool().cpu()
        if tuple(inst.shape[1:]) != shape:
            raise ValueError(f"sample {b}: instance masks {tuple(inst.shape[1:])} do not match patch_shape {shape}")
        labels = target.instance_labels.long().cpu()
        objects = [k for k in range(inst.shape[0]) if inst[k].any()]
        if not objects:
            continue
        classes = sorted({int(labels[k]) for k in objects})
        for p in range(p_count):
            kind = _KINDS[int(torch.multinomial(probs, 1, generator=generator))]
            if kind == "class":
                c = classes[_randint(0, len(classes) - 1, generator)]
                target_mask = inst[labels == c].any(0)
                seq = tokenizer.encode_class_prompt(c)
            else:
                k = objects[_randint(0, len(objects) - 1, generator)]
                target_mask, c = inst[k], int(labels[k])
                if kind == "box":
                    box = target.instance_boxes[k].float().cpu() if target.instance_boxes is not None else None
                    seq = tokenizer.encode_box_prompt(box if box is not None else mask_to_box(target_mask))
                else:
                    seq = _click_prompt(inst, k, tokenizer, shape, generator, max_positive, max_negative, negative_ring)
            masks[b, p] = target_mask
            valid[b, p] = True
            prompt_classes[b, p] = c
            tokens[b * p_count + p] = [int(t) for t in seq]

    longest = max(1, max(len(t) for t in tokens))
    padded = tokenizer.pad_batch(tokens, pad_to=longest).view(b_count, p_count, longest)
    if with_classes:
        return PromptBatch(padded), masks, valid, prompt_classes
    return PromptBatch(padded), masks, valid


def _click_prompt(
    inst: torch.Tensor,
    k: int,
    tokenizer,
    shape: tuple[int, int, int],
    generator: torch.Generator | None,
    max_positive: int,
    max_negative: int,
    ring: int,
) -> list[int]:
    """Tokens of 1..max_positive positive clicks in object k and 0..max_negative negatives outside it."""
    mask = inst[k]
    n_pos = _randint(1, max_positive, generator)
    n_neg = _randint(0, max_negative, generator)
    flat = [_draw(_interior_weights(mask), n_pos, generator)]
    flags = [True] * n_pos
    if n_neg:
        others = torch.cat([inst[:k], inst[k + 1 :]]).any(0) if inst.shape[0] > 1 else None
        flat.append(_draw(_negative_weights(mask, others, ring), n_neg, generator))
        flags += [False] * n_neg
    points = _centres(torch.cat(flat), shape)
    # Shuffle so the model cannot learn "positives come first".
    order = torch.randperm(len(flags), generator=generator)
    return list(tokenizer.encode_point_prompt(points[order].numpy(), [flags[i] for i in order.tolist()]))
