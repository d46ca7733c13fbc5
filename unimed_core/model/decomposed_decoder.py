"""Decomposed decoder: a Mask2Former-style masked-attention transformer decoder in 3-D (DESIGN.md §1.2).

The input queue is N learned latent queries, P prompt queries and one learned image query, in that order
(:class:`~unimed_core.model.outputs.QueryLayout`). Each layer does, as in Mask2Former
(facebookresearch/Mask2Former ``mask2former_transformer_decoder.py``):

1. masked cross-attention to one level of the pixel decoder (round robin, coarsest first); a query attends only
   where its previous mask prediction, resized to that level, is above 0.5; a query whose mask is empty attends
   everywhere, and so does the image query (it answers for the whole volume);
2. self-attention among the queries (absent prompt queries are masked out as keys, so they change nothing);
3. a feed-forward network.

Heads run on the initial queries and after every layer (deep supervision): class logits scored against the
shared class-token embeddings (tied) plus a learned "no object" vector, 6 coordinate-bin distributions for the
box, and mask logits ``mask_embed(h) · E``. The image query also gives multi-label image logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unimed_core.model.checks import require_heads_divide, require_positive_ints
from unimed_core.model.outputs import DecomposedOutput, QueryLayout
from unimed_core.model.position import FourierEncoding

__all__ = ["DecomposedDecoder", "mlp"]


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """A ``num_layers``-layer perceptron with ReLU between layers (Mask2Former's ``MLP``)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < num_layers - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _DecoderLayer(nn.Module):
    """Masked cross-attention → self-attention → FFN, each with residual and post-norm (as Mask2Former)."""

    def __init__(self, d: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d, num_heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, num_heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d))
        self.norm_ffn = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        attn_mask: torch.Tensor,
        query_padding: torch.Tensor | None,
    ) -> torch.Tensor:
        a = self.cross_attn(x + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        x = self.norm_cross(x + self.dropout(a))
        q = x + query_pos
        a = self.self_attn(q, q, x, key_padding_mask=query_padding, need_weights=False)[0]
        x = self.norm_self(x + self.dropout(a))
        return self.norm_ffn(x + self.dropout(self.ffn(x)))


class DecomposedDecoder(nn.Module):
    """Masked-attention decoder over latent, prompt and image queries.

    Args:
        vocab: the shared vocabulary (gives C classes and NB coordinate bins).
        embed_dim: width d (of the pixel decoder's levels and ``E``, and of the token table).
        num_layers: decoder layers.
        num_heads: attention heads.
        num_latent_queries: N learned latent queries (automatic mode).
        num_levels: pixel-decoder levels attended round robin (coarsest first).
        ffn_dim: hidden width of the FFN; default ``4 * embed_dim``.
        dropout: attention and FFN dropout.
        mask_threshold: a voxel is inside a query's attention region where its mask probability exceeds this.

    Example:
        >>> from unimed_core.tokenizer import Vocabulary
        >>> vocab = Vocabulary(["liver", "tumor"], num_bins=8)
        >>> dec = DecomposedDecoder(vocab, embed_dim=16, num_layers=2, num_heads=2, num_latent_queries=4)
        >>> levels = [torch.zeros(1, 16, s, s, s) for s in (2, 4, 8)]
        >>> out = dec(levels, torch.zeros(1, 16, 16, 16, 16), class_embed=torch.randn(2, 16))
        >>> tuple(out.class_logits.shape), tuple(out.mask_logits.shape), tuple(out.box_logits.shape)
        ((1, 5, 3), (1, 5, 16, 16, 16), (1, 5, 6, 8))
    """

    def __init__(
        self,
        vocab,
        embed_dim: int,
        num_layers: int = 6,
        num_heads: int = 8,
        num_latent_queries: int = 16,
        num_levels: int = 3,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        ffn_dim = 4 * embed_dim if ffn_dim is None else ffn_dim
        require_positive_ints(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            num_latent_queries=num_latent_queries,
            num_levels=num_levels,
            ffn_dim=ffn_dim,
        )
        require_heads_divide(embed_dim, num_heads)
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold!r}")
        self.vocab = vocab
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_latent_queries = num_latent_queries
        self.num_levels = num_levels
        self.num_classes = vocab.num_classes
        self.num_bins = vocab.num_bins
        self.mask_threshold = mask_threshold

        self.latent_feat = nn.Parameter(torch.randn(num_latent_queries, embed_dim) * 0.02)
        self.latent_pos = nn.Parameter(torch.randn(num_latent_queries, embed_dim) * 0.02)
        self.prompt_pos = nn.Parameter(torch.randn(embed_dim) * 0.02)
        self.image_feat = nn.Parameter(torch.randn(embed_dim) * 0.02)
        self.image_pos = nn.Parameter(torch.randn(embed_dim) * 0.02)
        self.level_embed = nn.Embedding(num_levels, embed_dim)
        self.position = FourierEncoding(embed_dim)
        self.layers = nn.ModuleList(_DecoderLayer(embed_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(embed_dim)
        self.class_proj = nn.Linear(embed_dim, embed_dim)
        self.no_object = nn.Parameter(torch.randn(embed_dim))  # scored like a class-token embedding
        self.image_proj = nn.Linear(embed_dim, embed_dim)
        self.box_head = mlp(embed_dim, embed_dim, 6 * vocab.num_bins, 3)
        self.mask_embed = mlp(embed_dim, embed_dim, embed_dim, 3)

    # ------------------------------------------------------------------ pixel path
    def masks_from_hidden(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Mask logits of any hidden states through the shared pixel path: ``mask_embed(h) · E``.

        Args:
            hidden: (B, K, d) query states (decomposed queries, or the composed decoder's MASK states).
            embeddings: (B, d, D', H', W') per-voxel embeddings ``E``.

        Returns:
            (B, K, D', H', W') mask logits.
        """
        if hidden.ndim != 3 or embeddings.ndim != 5 or hidden.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"expected hidden (B, K, d) and embeddings (B, d, D, H, W), got {tuple(hidden.shape)} and "
                f"{tuple(embeddings.shape)}"
            )
        return torch.einsum("bkc,bcdhw->bkdhw", self.mask_embed(hidden), embeddings)

    # ------------------------------------------------------------------ heads
    def _heads(
        self, x: torch.Tensor, embeddings: torch.Tensor, class_embed: torch.Tensor, image_index: int
    ) -> dict[str, torch.Tensor]:
        h = self.decoder_norm(x)
        scale = 1.0 / math.sqrt(self.embed_dim)
        targets = torch.cat([class_embed, self.no_object.unsqueeze(0)], dim=0)  # (C + 1, d)
        b, q, _ = h.shape
        return {
            "class_logits": self.class_proj(h) @ targets.t() * scale,
            "mask_logits": self.masks_from_hidden(h, embeddings),
            "box_logits": self.box_head(h).reshape(b, q, 6, self.num_bins),
            "image_logits": self.image_proj(h[:, image_index]) @ class_embed.t() * scale,
        }

    def _attention_mask(self, mask_logits: torch.Tensor, size: Sequence[int], image_index: int) -> torch.Tensor:
        """(B * heads, Q, S) bool, True where a query may NOT attend (``nn.MultiheadAttention`` convention)."""
        m = F.interpolate(mask_logits.detach(), size=tuple(size), mode="trilinear", align_corners=False)
        blocked = (m.sigmoid() < self.mask_threshold).flatten(2)
        blocked[:, image_index] = False
        # Mask2Former: a query with an empty mask attends everywhere (else its softmax has no keys).
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return blocked.repeat_interleave(self.num_heads, dim=0)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        levels: Sequence[torch.Tensor],
        embeddings: torch.Tensor,
        class_embed: torch.Tensor,
        prompt_queries: torch.Tensor | None = None,
        prompt_present: torch.Tensor | None = None,
        prompt_anchors: torch.Tensor | None = None,
        prompt_anchored: torch.Tensor | None = None,
    ) -> DecomposedOutput:
        """Decode the input queue against the pixel decoder's outputs.

        Args:
            levels: ``num_levels`` feature maps (B, d, ·, ·, ·), coarsest first.
            embeddings: per-voxel embeddings ``E`` (B, d, D', H', W').
            class_embed: (C, d) shared embeddings of the class tokens (``token_embedding(vocab.class_token_ids)``).
            prompt_queries: (B, P, d) prompt queries, or None for none.
            prompt_present: (B, P) bool, False for absent prompts (masked out of self-attention); default all
                present.
            prompt_anchors: (B, P, 3) normalised points the prompts refer to (``PromptEncoder.ground``), or None.
                An anchored prompt's positional encoding is the memory's own encoding at that point, so its
                cross-attention starts out looking near the click.
            prompt_anchored: (B, P) bool, which prompts have an anchor; default all when anchors are given.

        Returns:
            the :class:`DecomposedOutput` of the last layer, with the earlier predictions in ``aux``.
        """
        if len(levels) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got {len(levels)}")
        if embeddings.ndim != 5 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must be (B, {self.embed_dim}, D, H, W), got {tuple(embeddings.shape)}")
        b = embeddings.shape[0]
        for lvl in levels:
            if lvl.ndim != 5 or lvl.shape[:2] != (b, self.embed_dim):
                raise ValueError(f"levels must be (B={b}, {self.embed_dim}, ·, ·, ·), got {tuple(lvl.shape)}")
        if class_embed.shape != (self.num_classes, self.embed_dim):
            raise ValueError(
                f"class_embed must be ({self.num_classes}, {self.embed_dim}), got {tuple(class_embed.shape)}"
            )

        d = self.embed_dim
        num_prompt = 0 if prompt_queries is None else prompt_queries.shape[1]
        layout = QueryLayout(self.num_latent_queries, num_prompt)
        feats = [self.latent_feat.expand(b, -1, -1)]
        pos = [self.latent_pos.expand(b, -1, -1)]
        padding = None
        if prompt_queries is not None:
            if prompt_queries.ndim != 3 or prompt_queries.shape[0] != b or prompt_queries.shape[2] != d:
                raise ValueError(f"prompt_queries must be (B={b}, P, {d}), got {tuple(prompt_queries.shape)}")
            feats.append(prompt_queries)
            prompt_pos = self.prompt_pos.expand(b, num_prompt, -1)
            if prompt_anchors is not None:
                if prompt_anchors.shape != (b, num_prompt, 3):
                    raise ValueError(
                        f"prompt_anchors must be (B={b}, P={num_prompt}, 3), got {tuple(prompt_anchors.shape)}"
                    )
                anchored = torch.ones(b, num_prompt, 1) if prompt_anchored is None else prompt_anchored.unsqueeze(-1)
                pe = self.position(prompt_anchors.float()).to(prompt_pos.dtype)
                prompt_pos = prompt_pos + pe * anchored.to(device=pe.device, dtype=pe.dtype)
            pos.append(prompt_pos)
            if prompt_present is not None:
                if prompt_present.shape != prompt_queries.shape[:2]:
                    raise ValueError(
                        f"prompt_present must be {tuple(prompt_queries.shape[:2])}, got {tuple(prompt_present.shape)}"
                    )
                padding = torch.zeros(b, layout.image + 1, dtype=torch.bool, device=embeddings.device)
                padding[:, layout.prompt] = ~prompt_present.to(torch.bool)
        feats.append(self.image_feat.expand(b, 1, -1))
        pos.append(self.image_pos.expand(b, 1, -1))
        x, query_pos = torch.cat(feats, dim=1), torch.cat(pos, dim=1)

        memories, memory_pos = [], []
        for i, lvl in enumerate(levels):
            memories.append(lvl.flatten(2).transpose(1, 2))
            # float32 angles: up to 2π·64 rad, which bf16 / fp16 would round to useless values under autocast.
            pe = self.position.grid(lvl.shape[2:]).flatten(1).t().to(lvl.dtype) + self.level_embed.weight[i]
            memory_pos.append(pe.unsqueeze(0))

        preds = [self._heads(x, embeddings, class_embed, layout.image)]
        for i, layer in enumerate(self.layers):
            k = i % self.num_levels
            attn_mask = self._attention_mask(preds[-1]["mask_logits"], levels[k].shape[2:], layout.image)
            x = layer(x, query_pos, memories[k], memory_pos[k], attn_mask, padding)
            preds.append(self._heads(x, embeddings, class_embed, layout.image))

        last = preds[-1]
        aux = [{key: p[key] for key in ("class_logits", "mask_logits", "box_logits")} for p in preds[:-1]]
        return DecomposedOutput(
            class_logits=last["class_logits"],
            mask_logits=last["mask_logits"],
            box_logits=last["box_logits"],
            image_logits=last["image_logits"],
            queries=self.decoder_norm(x),
            layout=layout,
            aux=aux,
        )
