"""Prompt input contract: prompts are tokens of the shared vocabulary (DESIGN.md §1.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PromptBatch"]


@dataclass
class PromptBatch:
    """P prompts per sample, each a short token sequence that becomes one prompt query.

    A prompt is one of (tokens of ``unimed_core.tokenizer``'s vocabulary, right-padded with PAD):
    - ``[c]``: segment / detect class c (a class token);
    - ``[POINT_POS x y z, POINT_NEG x y z, ...]``: clicks, positive and negative, on one object;
    - ``[BOX x1 y1 z1 x2 y2 z2]``: a box around one object.
    Coordinates are coordinate-bin tokens of normalised voxel coordinates of the input patch.

    Attributes:
        tokens: (B, P, L) long, PAD-padded; a row of only PAD is an absent prompt.
    """

    tokens: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"prompt tokens must be (B, P, L), got shape {tuple(self.tokens.shape)}")

    @property
    def num_prompts(self) -> int:
        return self.tokens.shape[1]
