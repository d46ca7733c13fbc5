"""One-stage joint training objective: one forward pass, a weighted sum of named loss terms (DESIGN.md §1.4).

Every batch mixes samples with whatever annotation they have. The objective draws prompts and picks one
target sequence per sample, calls the model ONCE, and adds up the terms the batch's annotations allow:

==============================  ==========================================================================
term                            computed from
==============================  ==========================================================================
``loss_class``, ``loss_mask_*``  the injected :class:`SetCriterion` (latent queries; plus ``_i`` aux layers)
``loss_box``
``loss_image``                  image logits, samples with image labels, image-class entries only
``loss_prompt_mask_bce/dice``   prompt queries' masks against the masks their prompts target
``loss_prompt_class``           prompt queries' class logits against their prompts' classes (never "no object")
``loss_sequence``               next-token CE of the composed decoder
``loss_sequence_mask_bce/dice`` masks decoded at MASK tokens against their class's semantic mask
``loss_class_mask_bce/dice``    every class token's mask against its class's semantic mask (samples with masks)
``loss_class_mask_balanced``    lesion classes present in a masked sample, foreground and background alike
                                (only with ``lesion_balanced_bce``)
``loss_mvm``                    masked volume modelling, every volume (only when its weight is > 0)
==============================  ==========================================================================

``total = Σ weight(name) · term``. ``weights`` is keyed by term names, with or without the ``loss_`` prefix
(``{"mvm": 0.5}`` is ``{"loss_mvm": 0.5}``). An aux term ``loss_class_0`` uses its own key if present, else
its group's aux key (``loss_class_aux``), else its group's (``loss_class``). A term missing from ``weights`` gets
weight 1.0 — except ``loss_mvm``, which is opt-in: its mask is built and its term computed only when its weight
is above 0. A volume without any annotation therefore contributes only ``loss_mvm``. No task string reaches the
model (STYLE.md §5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unimed_core.label_map import LabelMap
from unimed_core.losses.mask_losses import balanced_bce_loss, dice_loss, sigmoid_bce_loss
from unimed_core.losses.mvm import mvm_loss, random_volume_mask
from unimed_core.losses.sequence_loss import sequence_loss, sequence_mask_targets
from unimed_core.losses.set_criterion import SetCriterion, image_loss
from unimed_core.model.inputs import PromptBatch
from unimed_core.model.outputs import UniMedOutput
from unimed_core.model.targets import Target
from unimed_core.training.prompt_sampling import sample_prompts

__all__ = ["JointObjective"]

_AUX_SUFFIX = re.compile(r"_\d+$")


def _canonical(name: str) -> str:
    return name if name.startswith("loss_") else f"loss_{name}"


class JointObjective:
    """The training loss of UniMed: ``(model, images, targets, generator) -> (total, terms)``.

    Args:
        criterion: the set criterion (with its matcher); its ``mask_sampler`` is reused for every mask term.
        tokenizer: the ``unimed_core.tokenizer.Tokenizer`` whose vocabulary the model uses.
        weights: term name → weight (see the module docstring for the lookup rules); weights must be >= 0.
        num_prompts: P prompts drawn per sample (0: no prompt queries are trained).
        mvm_patch: edge in voxels of the hidden patches of masked volume modelling.
        mvm_ratio: share of patches hidden.
        image_class_indices: class indices scored by ``loss_image``; default ``label_map.image_class_indices()``.
        label_map: the label map (class index → mask id for the sequence mask targets); default the bundle's.
        prompt_probs: relative frequencies of (class, point, box) prompts.
        mvm_kind: ``"mse"`` or ``"smooth_l1"``.
        class_mask_pos_weight: largest foreground weight of the class-token masks' BCE (see ``sigmoid_bce_loss``);
            1 weighs foreground and background alike.
        lesion_balanced_bce: adds ``loss_class_mask_balanced``: for each lesion class (box class) present in a
            masked sample, the mean BCE of its mask over the lesion's voxels plus that over the others, halved.

    Example:
        >>> objective = JointObjective(criterion, tokenizer, {"mvm": 0.5, "sequence": 0.5})  # doctest: +SKIP
        >>> total, terms = objective(model, images, targets, torch.Generator().manual_seed(step))  # doctest: +SKIP
        >>> total.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        criterion: SetCriterion,
        tokenizer,
        weights: Mapping[str, float] | None = None,
        num_prompts: int = 4,
        mvm_patch: int = 8,
        mvm_ratio: float = 0.4,
        image_class_indices: Sequence[int] | None = None,
        label_map: LabelMap | None = None,
        prompt_probs: tuple[float, float, float] = (0.25, 0.5, 0.25),
        mvm_kind: str = "mse",
        class_mask_pos_weight: float = 1.0,
        lesion_balanced_bce: bool = False,
    ) -> None:
        if not isinstance(criterion, SetCriterion):
            raise ValueError(f"criterion must be a SetCriterion, got {type(criterion).__name__}")
        weights = dict(weights or {})
        for name, w in weights.items():
            if not isinstance(name, str) or float(w) < 0:
                raise ValueError(f"weights must map term names to numbers >= 0, got {name!r}: {w!r}")
        if isinstance(num_prompts, bool) or int(num_prompts) < 0:
            raise ValueError(f"num_prompts must be an integer >= 0, got {num_prompts!r}")
        if int(mvm_patch) < 1 or not 0 <= mvm_ratio < 1:
            raise ValueError(f"need mvm_patch >= 1 and mvm_ratio in [0, 1), got {mvm_patch}, {mvm_ratio}")
        if len(prompt_probs) != 3:
            raise ValueError(f"prompt_probs must be (class, point, box), got {prompt_probs!r}")
        if mvm_kind not in ("mse", "smooth_l1"):
            raise ValueError(f"mvm_kind must be 'mse' or 'smooth_l1', got {mvm_kind!r}")
        self.criterion = criterion
        self.tokenizer = tokenizer
        self.vocab = tokenizer.vocab
        self.label_map = label_map if label_map is not None else LabelMap.default()
        if tuple(self.label_map.class_names) != tuple(self.vocab.class_names):
            raise ValueError(
                f"label map classes {list(self.label_map.class_names)} differ from the vocabulary's "
                f"{list(self.vocab.class_names)}"
            )
        if criterion.num_classes != self.vocab.num_classes:
            raise ValueError(f"criterion has {criterion.num_classes} classes, vocabulary {self.vocab.num_classes}")
        self.weights = {_canonical(k): float(v) for k, v in weights.items()}
        self.num_prompts = int(num_prompts)
        self.mvm_patch = int(mvm_patch)
        self.mvm_ratio = float(mvm_ratio)
        self.image_class_indices = list(
            self.label_map.image_class_indices() if image_class_indices is None else image_class_indices
        )
        self.prompt_probs = tuple(float(p) for p in prompt_probs)
        self.mvm_kind = mvm_kind
        if not class_mask_pos_weight >= 1.0:
            raise ValueError(f"class_mask_pos_weight must be >= 1, got {class_mask_pos_weight!r}")
        self.class_mask_pos_weight = float(class_mask_pos_weight)
        self.lesion_balanced_bce = bool(lesion_balanced_bce)

    def weight(self, name: str) -> float:
        """Weight of term ``name``: its own key, else (an aux term) its group's ``_aux`` key, else its group's
        (aux suffix removed), else 1.0 (mvm: 0.0)."""
        if name in self.weights:
            return self.weights[name]
        group = _AUX_SUFFIX.sub("", name)
        if group != name and f"{group}_aux" in self.weights:
            return self.weights[f"{group}_aux"]
        if group in self.weights:
            return self.weights[group]
        return 0.0 if group == "loss_mvm" else 1.0

    def _pick_sequences(self, targets: Sequence[Target], generator: torch.Generator | None) -> torch.Tensor | None:
        rows: list[list[int]] = []
        for t in targets:
            if t.sequences:
                i = int(torch.randint(len(t.sequences), (1,), generator=generator))
                rows.append([int(x) for x in t.sequences[i].tolist()])
            else:
                rows.append([])
        if not any(rows):
            return None
        return self.tokenizer.pad_batch(rows)

    def _class_of_token(self, token: int) -> int | None:
        return self.vocab.class_index(token) if self.vocab.is_class(token) else None

    def _class_mask_terms(
        self, logits: torch.Tensor, targets: Sequence[Target], generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """BCE + Dice of each class token's mask against that class's semantic mask, on samples with masks.

        A class absent from a fully annotated sample is a real negative (an empty target), so every class of
        every masked sample counts in the BCE. The Dice term only takes the non-empty targets (as Mask2Former's
        matched masks are): against an empty target, soft Dice ``1 - 1/(Σp + 1)`` pushes every voxel's
        probability down with a gradient near 1 — thousands of times the BCE's per-voxel gradient — so the
        samples without a lesion would teach the lesion masks "never" faster than the few with one teach "here".
        """
        rows = [i for i, t in enumerate(targets) if t.has_mask]
        if not rows:
            return {}
        # A class without a mask label (image-level only) gets id -1, which no voxel has: an empty target.
        ids = [self.label_map.class_index_to_mask_id(c) for c in range(logits.shape[1])]
        ids = torch.tensor([-1 if i is None else i for i in ids])
        semantic = torch.stack([targets[i].semantic for i in rows]).to(logits.device)  # (R, D, H, W)
        tgt = (semantic.unsqueeze(1) == ids.to(logits.device).view(1, -1, 1, 1, 1)).flatten(0, 1)
        pred = logits[rows].flatten(0, 1).float()
        p, t = self.criterion.mask_sampler.for_loss(pred, tgt, generator)
        n = float(pred.shape[0])
        present = t.sum(1) > 0
        terms = {
            "loss_class_mask_bce": sigmoid_bce_loss(p, t, n, self.class_mask_pos_weight),
            "loss_class_mask_dice": dice_loss(p[present], t[present], max(1.0, float(present.sum()))),
        }
        if self.lesion_balanced_bce:
            lesion = torch.zeros(logits.shape[1], dtype=torch.bool)
            lesion[self.label_map.box_class_indices()] = True
            rows_lesion = present & lesion.repeat(len(rows)).to(present.device)
            if bool(rows_lesion.any()):
                terms["loss_class_mask_balanced"] = balanced_bce_loss(p[rows_lesion], t[rows_lesion])
        return terms

    def _prompt_mask_terms(
        self, dec, prompt_masks: torch.Tensor, prompt_valid: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """BCE + Dice of the prompt queries' masks against what their prompts target, at the last layer and at
        every earlier one (suffix ``_i``), as the set criterion does for the latent queries.

        The earlier layers matter because of the masked attention: a query attends only where its previous
        mask is, so an unsupervised first mask can keep a prompt from ever seeing its object. Supervised at the
        last layer only, the class prompts of both kidneys learned to return the liver or the spleen, and a click
        in the right kidney the spleen.
        """
        valid = prompt_valid.to(dec.mask_logits.device)
        tgt = prompt_masks[prompt_valid].to(dec.mask_logits.device)
        n = float(tgt.shape[0])
        layers = [("", dec.mask_logits)] + [(f"_{i}", aux["mask_logits"]) for i, aux in enumerate(dec.aux)]
        terms = {}
        for suffix, logits in layers:
            p, t = self.criterion.mask_sampler.for_loss(logits[:, dec.layout.prompt][valid].float(), tgt, generator)
            terms[f"loss_prompt_mask_bce{suffix}"] = sigmoid_bce_loss(p, t, n)
            terms[f"loss_prompt_mask_dice{suffix}"] = dice_loss(p, t, n)
        return terms

    def _prompt_class_terms(self, dec, prompt_classes: torch.Tensor, prompt_valid: torch.Tensor) -> dict:
        """Cross-entropy of the prompt queries' class logits against the class their prompt refers to, at the last
        layer and every earlier one (suffix ``_i``).

        Why: a prompt always points at an object, but the class head is shared with the latent queries, most of
        which learn "no object". Without this term nothing held the prompt queries away from that answer, and
        at step 8640 of the learning curve a click at the liver's centre came back empty in 3 of 4 studies of one
        seed: the prompt query's layer-0 mask was the liver (Dice 0.90), then from layer 1 on its class was "no
        object" (0.92-0.99) and every mask logit below -5. SEEM and X-Decoder likewise give their prompt
        (visual-referring) queries a class target. Measured, it did not help here (``fit.DEFAULT_LOSS_WEIGHTS``
        leaves it off): the failing prompts became lesions instead. The predictor's fallback to an earlier
        layer's mask (``UniMedPredictor._prompt_logits``) is what recovers those clicks.
        """
        valid = prompt_valid.to(dec.class_logits.device)
        target = prompt_classes.to(dec.class_logits.device)[valid]
        layers = [("", dec.class_logits)] + [(f"_{i}", aux["class_logits"]) for i, aux in enumerate(dec.aux)]
        return {
            f"loss_prompt_class{suffix}": F.cross_entropy(logits[:, dec.layout.prompt][valid].float(), target)
            for suffix, logits in layers
        }

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: Sequence[Target],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step's loss.

        Args:
            model: the network, ``model(image, prompts, sequences, volume_mask) -> UniMedOutput``.
            images: (B, 1, D, H, W) patches.
            targets: B targets (any annotation, or none).
            generator: CPU random generator for prompts, sequence choice and the MVM mask.

        Returns:
            ``(total, terms)``: the weighted sum to back-propagate, and the unweighted terms that were present
            (still attached to the graph).
        """
        targets = list(targets)
        if images.ndim != 5 or images.shape[0] != len(targets):
            raise ValueError(f"images must be (B, C, D, H, W) with B = {len(targets)}, got {tuple(images.shape)}")
        device = images.device

        prompts, prompt_masks, prompt_valid = None, None, None
        if self.num_prompts > 0:
            cls_p, point_p, box_p = self.prompt_probs
            batch, prompt_masks, prompt_valid, prompt_classes = sample_prompts(
                targets,
                self.tokenizer,
                self.num_prompts,
                images.shape[2:],
                generator,
                point_prob=point_p,
                class_prob=cls_p,
                box_prob=box_p,
                with_classes=True,
            )
            if prompt_valid.any():
                prompts = PromptBatch(batch.tokens.to(device))
        sequences = self._pick_sequences(targets, generator)
        if sequences is not None:
            sequences = sequences.to(device)
        volume_mask = None
        if self.weight("loss_mvm") > 0:
            volume_mask = random_volume_mask(images.shape, self.mvm_patch, self.mvm_ratio, generator, device)

        out: UniMedOutput = model(images, prompts, sequences, volume_mask)
        dec = out.decomposed

        terms: dict[str, torch.Tensor] = dict(self.criterion(dec, targets, generator))
        terms.update(image_loss(dec, targets, self.image_class_indices))
        if prompts is not None:
            terms.update(self._prompt_mask_terms(dec, prompt_masks, prompt_valid, generator))
            terms.update(self._prompt_class_terms(dec, prompt_classes, prompt_valid))
        if sequences is not None and out.composed is not None:
            slots = sequence_mask_targets(
                sequences, targets, self.vocab.mask, self._class_of_token, self.label_map.class_index_to_mask_id
            )
            terms.update(
                sequence_loss(out.composed, sequences, slots, self.vocab.pad, self.criterion.mask_sampler, generator)
            )
        if out.class_mask_logits is not None:
            terms.update(self._class_mask_terms(out.class_mask_logits, targets, generator))
        if volume_mask is not None and out.reconstruction is not None:
            terms.update(mvm_loss(out.reconstruction, images, volume_mask, self.mvm_kind))

        total = _zero_touch(out, device)
        for name, value in terms.items():
            w = self.weight(name)
            if w != 0:
                total = total + w * value
        return total, terms


def _zero_touch(out: UniMedOutput, device: torch.device) -> torch.Tensor:
    """0 × (sum of every output), so every head gets a (zero) gradient even when its terms are absent.

    Without it a batch with, say, no boxes leaves the box head out of the graph, and DistributedDataParallel
    (without ``find_unused_parameters``) waits forever for that head's gradients.
    """
    dec = out.decomposed
    parts = [dec.class_logits, dec.mask_logits, dec.box_logits, dec.image_logits, out.reconstruction]
    parts.append(out.class_mask_logits)
    if out.composed is not None:
        parts += [out.composed.token_logits, out.composed.mask_logits]
    for aux in dec.aux:
        parts += list(aux.values())
    total = torch.zeros((), device=device)
    for p in parts:
        if isinstance(p, torch.Tensor) and p.requires_grad:
            total = total + 0.0 * p.float().sum()
    return total
