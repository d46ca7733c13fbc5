"""Prompt encoder: each prompt (a short token sequence of the shared vocabulary) → one decoder query.

A prompt is ``[c]``, ``[POINT_POS x y z POINT_NEG x y z ...]`` or ``[BOX x1 y1 z1 x2 y2 z2]`` (``PromptBatch``).
Each token is embedded with the model's *shared* token table (passed in at call time, owned by ``UniMed``), so a
class prompt and a predicted class live in one space (DESIGN.md §1.3). Coordinate tokens also get:

- a Fourier encoding of their bin centre, so that nearby clicks get nearby but distinct vectors;
- an axis embedding (x, y or z, from their slot in a run of coordinates: slot mod 3);
- the embedding of the token heading their run (POINT_POS, POINT_NEG or BOX), so a coordinate knows whether it
  belongs to a positive click, a negative click or a box.

One pre-norm self-attention layer mixes a prompt's tokens, then a masked mean over its non-PAD tokens gives the
query. A prompt of only PAD is absent: its query is zero and ``present`` is False, and the decoders mask it out.
"""

from __future__ import annotations

import torch
from torch import nn

from unimed_core.model.checks import require_heads_divide, require_positive_ints
from unimed_core.model.position import FourierEncoding

__all__ = ["PromptEncoder"]


class PromptEncoder(nn.Module):
    """Embed a batch of prompts into queries.

    Args:
        vocab: the shared vocabulary (a ``unimed_core.tokenizer.Vocabulary``).
        embed_dim: width d; must equal the shared embedding table's width.
        num_heads: heads of the self-attention over a prompt's tokens.
        max_prompt_length: longest prompt L accepted (size of the learned position table).
        max_frequency: highest frequency of the coordinate Fourier encoding (cycles per patch).

    Example:
        >>> from unimed_core.tokenizer import Vocabulary
        >>> vocab = Vocabulary(["liver", "tumor"], num_bins=8)
        >>> table = nn.Embedding(vocab.size, 16)
        >>> enc = PromptEncoder(vocab, embed_dim=16, num_heads=2)
        >>> tokens = torch.tensor([[[vocab.class_token(1), 0, 0, 0], [0, 0, 0, 0]]])
        >>> q, present = enc(tokens, table)
        >>> tuple(q.shape), present.tolist()
        ((1, 2, 16), [[True, False]])
    """

    def __init__(
        self,
        vocab,
        embed_dim: int,
        num_heads: int = 4,
        max_prompt_length: int = 32,
        max_frequency: float = 64.0,
    ) -> None:
        super().__init__()
        require_positive_ints(embed_dim=embed_dim, num_heads=num_heads, max_prompt_length=max_prompt_length)
        require_heads_divide(embed_dim, num_heads)
        self.vocab = vocab
        self.embed_dim = embed_dim
        self.max_prompt_length = max_prompt_length
        # token id → coordinate-bin centre in [0, 1], or -1 for non-coordinate tokens.
        centre = torch.full((vocab.size,), -1.0)
        centre[vocab.coord_token_ids] = (torch.arange(vocab.num_bins, dtype=torch.float32) + 0.5) / vocab.num_bins
        self.register_buffer("coord_centre", centre, persistent=False)
        self.position = nn.Embedding(max_prompt_length, embed_dim)
        self.axis = nn.Embedding(3, embed_dim)
        self.fourier = FourierEncoding(embed_dim, num_axes=1, max_frequency=max_frequency)
        self.coord_proj = nn.Linear(embed_dim, embed_dim)
        self.norm_attn = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(), nn.Linear(2 * embed_dim, embed_dim))
        self.out = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim))

    def forward(self, tokens: torch.Tensor, token_embedding: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries of a batch of prompts.

        Args:
            tokens: (B, P, L) long prompt tokens, PAD-padded (``PromptBatch.tokens``).
            token_embedding: the shared (V, d) token embedding table.

        Returns:
            ``queries`` (B, P, d), zero for absent prompts, and ``present`` (B, P) bool.
        """
        if tokens.ndim != 3:
            raise ValueError(f"prompt tokens must be (B, P, L), got shape {tuple(tokens.shape)}")
        if tokens.dtype != torch.long:
            raise ValueError(f"prompt tokens must be long, got {tokens.dtype}")
        b, p, length = tokens.shape
        if length > self.max_prompt_length:
            raise ValueError(f"prompts longer than max_prompt_length={self.max_prompt_length}: L={length}")
        if token_embedding.embedding_dim != self.embed_dim or token_embedding.num_embeddings != self.vocab.size:
            raise ValueError(
                f"token_embedding must be ({self.vocab.size}, {self.embed_dim}), got "
                f"({token_embedding.num_embeddings}, {token_embedding.embedding_dim})"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab.size):
            raise ValueError(f"prompt token ids must lie in [0, {self.vocab.size})")
        if b * p == 0 or length == 0:
            zeros = token_embedding.weight.new_zeros(b, p, self.embed_dim)
            return zeros, torch.zeros(b, p, dtype=torch.bool, device=tokens.device)
        x = tokens.reshape(b * p, length)
        valid = x != self.vocab.pad
        present = valid.any(-1)

        h = token_embedding(x) + self.position.weight[:length]
        centre = self.coord_centre[x]
        is_coord = centre >= 0
        if is_coord.any():
            # Slot of a coordinate in its run of coordinates (0, 1, 2, 0, 1, 2 for a box) → axis; the run's
            # heading token (POINT_POS / POINT_NEG / BOX) is the last non-coordinate token before it.
            pos = torch.arange(length, device=x.device).expand_as(x)
            head = torch.where(is_coord, torch.full_like(pos, -1), pos).cummax(-1).values
            axis = (pos - head - 1).remainder(3)
            head_tok = torch.gather(x, 1, head.clamp(min=0))
            coord_feat = (
                self.coord_proj(self.fourier(centre.clamp(min=0).unsqueeze(-1)))
                + self.axis(axis)
                + token_embedding(head_tok)
            )
            h = h + coord_feat * is_coord.unsqueeze(-1).to(h.dtype)

        # Absent prompts would have every key masked (NaN softmax): let them attend to themselves, then zero them.
        key_padding = ~valid & present.unsqueeze(-1)
        y = self.norm_attn(h)
        h = h + self.attn(y, y, y, key_padding_mask=key_padding, need_weights=False)[0]
        h = h + self.ffn(self.norm_ffn(h))
        w = valid.unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)
        queries = self.out(pooled) * present.unsqueeze(-1).to(h.dtype)
        return queries.reshape(b, p, self.embed_dim), present.reshape(b, p)
