"""Set loss of the decomposed decoder (after Mask2Former's criterion.py), and the image-label loss.

The criterion gets its matcher injected, matches the *latent* queries of the last layer and of every aux layer,
and returns NAMED, unweighted losses; weighting is the training objective's job. A term is computed only from
the samples whose annotations allow it, and a term no sample allows is absent from the result (not zero), so a
batch yields exactly the terms its annotations support:

- ``loss_class``: cross-entropy over C + 1 classes ("no object" down-weighted by ``eos_coef``), samples with
  objects (``instance_labels`` not None, possibly zero objects: then every query should say "no object");
- ``loss_mask_bce``, ``loss_mask_dice``: matched queries of samples with ``instance_masks``;
- ``loss_box``: matched queries of samples with ``instance_boxes`` (bin cross-entropy + L1 of the expectation);
- the same for aux layer ``i`` with suffix ``_i`` (``loss_class_0``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from unimed_core.losses.box_losses import box_bin_loss
from unimed_core.losses.mask_losses import MaskSampler, dice_loss, sigmoid_bce_loss
from unimed_core.losses.matcher import HungarianMatcher, MatchIndices, aux_output
from unimed_core.model.outputs import DecomposedOutput
from unimed_core.model.targets import Target

__all__ = ["SetCriterion", "image_loss", "average_count_across_processes"]


def average_count_across_processes(count: torch.Tensor) -> torch.Tensor:
    """Average an object count over processes (sum / world size) when torch.distributed is running.

    Mask2Former's normalisation: every process divides by the same (mean) count, so DDP's gradient averaging
    gives the gradient of the loss normalised by the global number of objects.
    """
    if dist.is_available() and dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count


class SetCriterion(nn.Module):
    """Named set losses of the latent queries against each sample's objects.

    Args:
        num_classes: C, the number of class tokens (``class_logits`` has C + 1 columns).
        matcher: the matcher (injected; e.g. :class:`HungarianMatcher`).
        eos_coef: class-loss weight of the "no object" column.
        box_smoothing: share of a box coordinate's target mass spread over the neighbouring bins.
        box_l1_weight: weight of the L1 term inside ``loss_box``.
        mask_sampler: how masks are compared (dense embedding grid by default, or point sampling).
        count_reducer: maps the local object count to the normaliser; the default averages it across
            processes under torch.distributed (a hook, so tests and other schemes can swap it).

    Example:
        >>> criterion = SetCriterion(num_classes=6, matcher=HungarianMatcher())
        >>> losses = criterion(output.decomposed, targets)  # doctest: +SKIP
        >>> sorted(losses)  # doctest: +SKIP
        ['loss_box', 'loss_class', 'loss_mask_bce', 'loss_mask_dice', ...]
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | Callable[..., list[MatchIndices]],
        eos_coef: float = 0.1,
        box_smoothing: float = 0.0,
        box_l1_weight: float = 5.0,
        mask_sampler: MaskSampler | None = None,
        count_reducer: Callable[[torch.Tensor], torch.Tensor] = average_count_across_processes,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not 0 < eos_coef <= 1:
            raise ValueError(f"eos_coef must be in (0, 1], got {eos_coef}")
        if not 0 <= box_smoothing < 1:
            raise ValueError(f"box_smoothing must be in [0, 1), got {box_smoothing}")
        if box_l1_weight < 0:
            raise ValueError(f"box_l1_weight must be >= 0, got {box_l1_weight}")
        if not callable(matcher):
            raise ValueError("matcher must be callable (decomposed, targets) -> list of (query_idx, target_idx)")
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.eos_coef = float(eos_coef)
        self.box_smoothing = float(box_smoothing)
        self.box_l1_weight = float(box_l1_weight)
        self.mask_sampler = mask_sampler if mask_sampler is not None else MaskSampler()
        self.count_reducer = count_reducer
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(
        self, decomposed: DecomposedOutput, targets: Sequence[Target], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Named set losses of the last layer and of every aux layer (suffix ``_i``).

        Args:
            decomposed: the decoder output.
            targets: B targets.
            generator: random generator for point sampling (matching and loss), for reproducibility.
        """
        targets = list(targets)
        if decomposed.class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"class_logits has {decomposed.class_logits.shape[-1]} columns, expected num_classes + 1 = "
                f"{self.num_classes + 1}"
            )
        losses = self._layer_losses(decomposed, targets, "", generator)
        for i in range(len(decomposed.aux)):
            losses.update(self._layer_losses(aux_output(decomposed, i), targets, f"_{i}", generator))
        return losses

    def _normalisers(self, targets: list[Target], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask objects, box objects) in the batch, averaged over processes, at least 1.

        Called on every layer of every step, whatever the batch holds: the all-reduce behind ``count_reducer``
        is a collective, and a process that skipped it (say, its batch had no boxes) would hang or break the
        others under DistributedDataParallel.
        """
        n_mask = sum(len(t.instance_labels) for t in targets if t.has_objects and t.instance_masks is not None)
        n_box = sum(len(t.instance_labels) for t in targets if t.has_objects and t.instance_boxes is not None)
        counts = self.count_reducer(torch.tensor([float(n_mask), float(n_box)], device=device))
        counts = torch.clamp(counts, min=1.0)
        return counts[0], counts[1]

    def _layer_losses(
        self, out: DecomposedOutput, targets: list[Target], suffix: str, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        num_masks, num_boxes = self._normalisers(targets, out.class_logits.device)
        with_objects = [b for b, t in enumerate(targets) if t.has_objects]
        if not with_objects:
            return losses
        matches = self.matcher(out, targets)
        latent = out.layout.latent
        device = out.class_logits.device

        # Class loss over every latent query of the samples with objects.
        logits = out.class_logits[with_objects, latent].float()  # (S, N, C + 1)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=device)
        for s, b in enumerate(with_objects):
            q, k = matches[b]
            if len(q):
                classes[s, q.to(device)] = targets[b].instance_labels.to(device).long()[k.to(device)]
        # Partial annotation: a sample that annotates only some classes (e.g. lesion boxes, organs unlabelled)
        # must not teach "no object" for the classes it does not annotate, so those logits are left out of
        # its softmax.
        unannotated = torch.zeros(logits.shape[0], logits.shape[2], dtype=torch.bool, device=device)
        for s, b in enumerate(with_objects):
            if targets[b].annotated_classes is not None:
                unannotated[s, : self.num_classes] = True
                unannotated[s, targets[b].annotated_classes.to(device).long()] = False
        logits = logits.masked_fill(unannotated[:, None, :], -1e4)
        losses[f"loss_class{suffix}"] = F.cross_entropy(
            logits.transpose(1, 2), classes, weight=self.empty_weight.to(device)
        )

        # Mask losses over the matched queries of samples with instance masks.
        pred_masks, tgt_masks = [], []
        for b in with_objects:
            q, k = matches[b]
            if targets[b].instance_masks is not None and len(q):
                pred_masks.append(out.mask_logits[b, latent][q.to(device)])
                tgt_masks.append(targets[b].instance_masks[k.to(targets[b].instance_masks.device)])
        if pred_masks:
            pred = torch.cat(pred_masks).float()
            num = num_masks
            p, t = self.mask_sampler.for_loss(pred, torch.cat([m.to(device) for m in tgt_masks]), generator)
            losses[f"loss_mask_bce{suffix}"] = sigmoid_bce_loss(p, t, num)
            losses[f"loss_mask_dice{suffix}"] = dice_loss(p, t, num)

        # Box loss over the matched queries of samples with instance boxes.
        pred_boxes, tgt_boxes = [], []
        if out.box_logits is not None:
            for b in with_objects:
                q, k = matches[b]
                if targets[b].instance_boxes is not None and len(q):
                    pred_boxes.append(out.box_logits[b, latent][q.to(device)])
                    tgt_boxes.append(targets[b].instance_boxes.to(device)[k.to(device)])
        if pred_boxes:
            pred = torch.cat(pred_boxes).float()
            num = num_boxes
            losses[f"loss_box{suffix}"] = box_bin_loss(
                pred, torch.cat(tgt_boxes).float(), num, smoothing=self.box_smoothing, l1_weight=self.box_l1_weight
            )
        return losses


def image_loss(
    decomposed: DecomposedOutput, targets: Sequence[Target], image_class_indices: Sequence[int]
) -> dict[str, torch.Tensor]:
    """``{"loss_image": BCE}`` of the image logits on the image-class entries, for samples with image labels.

    Only the entries in ``image_class_indices`` are meaningful image labels (the other classes are structures
    that are not labelled at image level), so only they are scored. Returns ``{}`` when no sample has image
    labels or the index list is empty.

    Args:
        decomposed: the decoder output (``image_logits`` (B, C)).
        targets: B targets; ``image_labels`` (C,) multi-hot or None.
        image_class_indices: class indices of the image-level classes (``LabelMap.image_class_indices()``).
    """
    indices = [int(i) for i in image_class_indices]
    b, c = decomposed.image_logits.shape
    if len(targets) != b:
        raise ValueError(f"{len(targets)} targets for a batch of {b}")
    if any(not 0 <= i < c for i in indices):
        raise ValueError(f"image_class_indices {indices} outside [0, {c})")
    rows = [b for b, t in enumerate(targets) if t.has_image_labels]
    if not rows or not indices:
        return {}
    device = decomposed.image_logits.device
    idx = torch.as_tensor(indices, dtype=torch.long, device=device)
    logits = decomposed.image_logits[rows][:, idx].float()
    labels = torch.stack([targets[b].image_labels.to(device).float() for b in rows])[:, idx]
    return {"loss_image": F.binary_cross_entropy_with_logits(logits, labels)}
