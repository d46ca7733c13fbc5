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

:meth:`PromptEncoder.anchors` says *where* a prompt points (the mean of its positive clicks or its box's centre,
and the mean of its negative clicks). ``UniMed`` grounds the query there: it adds the per-voxel embedding sampled
at the anchor to the query's content and the decoder's positional encoding of the anchor to the query's position,
as SAM and SEEM do with their point prompts. Without it a click query must learn the map from coordinate tokens
to places from scratch; in the CPU benchmark it never did, and every click gave the same mask.
"""

from __future__ import annotations

import torch
from torch import nn

from unimed_core.model.checks import require_heads_divide, require_positive_ints
from unimed_core.model.position import FourierEncoding, sample_points

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
        # Grounding (see the module docstring): the voxel embedding under the positive / negative anchor.
        self.ground_positive = nn.Linear(embed_dim, embed_dim)
        self.ground_negative = nn.Linear(embed_dim, embed_dim)

    def _coordinate_layout(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per token of (N, L) prompts: bin centre (-1 if not a coordinate), is-coordinate, axis, heading token.

        The axis is a coordinate's slot in its run of coordinates (0, 1, 2, 0, 1, 2 for a box); the run's heading
        token (POINT_POS / POINT_NEG / BOX) is the last non-coordinate token before it.
        """
        centre = self.coord_centre[x]
        is_coord = centre >= 0
        pos = torch.arange(x.shape[1], device=x.device).expand_as(x)
        head = torch.where(is_coord, torch.full_like(pos, -1), pos).cummax(-1).values
        axis = (pos - head - 1).remainder(3)
        head_tok = torch.gather(x, 1, head.clamp(min=0))
        return centre, is_coord, axis, head_tok

    def anchors(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where each prompt points, in normalised patch coordinates (array axis order).

        Args:
            tokens: (B, P, L) long prompt tokens.

        Returns:
            ``(positive, has_positive, negative, has_negative)``: (B, P, 3) mean of the positive clicks, or the
            box's centre; (B, P) bool; the same for the negative clicks. Class prompts have neither.
        """
        b, p, length = tokens.shape
        x = tokens.reshape(b * p, length)
        centre, is_coord, axis, head_tok = self._coordinate_layout(x)
        one_hot = nn.functional.one_hot(axis, 3).to(centre.dtype)  # (N, L, 3)
        out = []
        for heads in ((self.vocab.point_pos, self.vocab.box), (self.vocab.point_neg,)):
            sel = is_coord & torch.isin(head_tok, torch.tensor(heads, device=x.device))
            w = one_hot * sel.unsqueeze(-1).to(centre.dtype)
            count = w.sum(1)
            mean = (w * centre.clamp(min=0).unsqueeze(-1)).sum(1) / count.clamp(min=1)
            out += [mean.reshape(b, p, 3), (count > 0).all(-1).reshape(b, p)]
        return out[0], out[1], out[2], out[3]

    def ground(
        self, queries: torch.Tensor, tokens: torch.Tensor, embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add to each query the per-voxel embedding at its anchors.

        Args:
            queries: (B, P, d) queries from :meth:`forward`.
            tokens: (B, P, L) the same prompts.
            embeddings: per-voxel embeddings ``E`` (B, d, D', H', W') covering the patch the prompts refer to.

        Returns:
            ``(queries, anchor, has_anchor)``: grounded queries, (B, P, 3) positive anchors and (B, P) bool, which
            the decomposed decoder turns into the queries' positional encodings.
        """
        positive, has_positive, negative, has_negative = self.anchors(tokens)
        for points, has, proj in ((positive, has_positive, self.ground_positive),
                                  (negative, has_negative, self.ground_negative)):  # fmt: skip
            if has.any():
                feat = sample_points(embeddings, points).transpose(1, 2).to(queries.dtype)  # (B, P, d)
                queries = queries + proj(feat) * has.unsqueeze(-1).to(queries.dtype)
        return queries, positive, has_positive

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
        centre, is_coord, axis, head_tok = self._coordinate_layout(x)
        if is_coord.any():
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
