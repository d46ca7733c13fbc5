"""The written output contract between the networks, the matcher/criterion and inference (STYLE.md §4).

Shapes use: B batch, Q queries in the input queue (N latent + P prompt + 1 image query, in that order),
C = ``len(LabelMap.class_names)`` class tokens, NB coordinate bins, d embedding width,
(D', H', W') the spatial grid of the per-voxel embeddings ``E`` (a fixed stride of the input patch),
T sequence length, V vocabulary size, M number of MASK slots in a batch of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["QueryLayout", "DecomposedOutput", "ComposedOutput", "UniMedOutput"]


@dataclass(frozen=True)
class QueryLayout:
    """Where each kind of query sits in the input queue (same for every sample of a batch)."""

    num_latent: int
    num_prompt: int

    @property
    def latent(self) -> slice:
        return slice(0, self.num_latent)

    @property
    def prompt(self) -> slice:
        return slice(self.num_latent, self.num_latent + self.num_prompt)

    @property
    def image(self) -> int:
        """Index of the single image query (the last one)."""
        return self.num_latent + self.num_prompt


@dataclass
class DecomposedOutput:
    """Per-query pixel and semantic outputs of the decomposed decoder (the last layer, plus ``aux``).

    Attributes:
        class_logits: (B, Q, C + 1) logits over the class tokens, last column "no object". Scored with the
            shared token embedding table (tied weights), so class c's logit is ``<h_q, emb[class_token(c)]>``.
        mask_logits: (B, Q, D', H', W') mask logits, ``MLP(h_q) · E`` at the embedding grid.
        box_logits: (B, Q, 6, NB) logits over coordinate bins for (x1, y1, z1, x2, y2, z2) in normalised
            voxel coordinates of the input patch (MONAI ``XYZXYZ`` corner mode, axes in array order).
        image_logits: (B, C) multi-label logits read from the image query (sigmoid → probability).
        queries: (B, Q, d) final hidden state of every query (the composed decoder's memory).
        layout: where latent / prompt / image queries sit.
        aux: the same fields (without ``queries``/``aux``) for every intermediate decoder layer, for deep
            supervision; each entry a dict with keys ``class_logits``, ``mask_logits``, ``box_logits``.
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    box_logits: torch.Tensor
    image_logits: torch.Tensor
    queries: torch.Tensor
    layout: QueryLayout
    aux: list[dict[str, torch.Tensor]] = field(default_factory=list)


@dataclass
class ComposedOutput:
    """Outputs of the composed (sequence) decoder under teacher forcing.

    Attributes:
        token_logits: (B, T, V) next-token logits (tied with the token embedding table); position t
            predicts token t + 1 of the input sequence.
        mask_logits: (B, T, D', H', W') or None: for every position holding a MASK token, the mask
            decoded from its hidden state through the decomposed decoder's pixel path; other positions
            are zeros. None when the batch has no MASK token.
        mask_positions: (B, T) bool, True where the input token is MASK.
    """

    token_logits: torch.Tensor
    mask_logits: torch.Tensor | None
    mask_positions: torch.Tensor


@dataclass
class UniMedOutput:
    """Everything one training forward pass gives; a field is None when its input was not given.

    Attributes:
        decomposed: the decomposed decoder's per-query outputs.
        composed: teacher-forced sequence outputs, when target sequences were given.
        reconstruction: (B, 1, D, H, W) reconstruction of the input from the *masked* input's encoder
            features (masked volume modelling), when a volume mask was given.
        class_mask_logits: (B, C, D', H', W') the mask of every class token through the shared pixel path,
            ``mask_embed(emb[class_token(c)]) · E``: what the vocabulary's class c looks like in this volume.
        embedding_stride: the stride of ``E`` relative to the input (masks are upsampled by it).
    """

    decomposed: DecomposedOutput
    composed: ComposedOutput | None = None
    reconstruction: torch.Tensor | None = None
    embedding_stride: int = 1
    class_mask_logits: torch.Tensor | None = None
