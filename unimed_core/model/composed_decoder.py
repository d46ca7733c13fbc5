"""Composed decoder: a small causal transformer over the one vocabulary (DESIGN.md §1.3).

It reads and writes sequences such as ``BOS SEG (c MASK)* EOS``, cross-attending to the decomposed decoder's
query states (its memory). Tokens are embedded with the model's shared table plus learned positions, and the
output logits are scored against the same table (tied weights). Layers are pre-norm and written out (rather than
``nn.TransformerDecoder``) so that generation can keep an explicit key/value cache: each new token costs one
query against the cached keys, and the memory's keys and values are projected once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unimed_core.model.checks import require_heads_divide, require_positive_ints

__all__ = ["ComposedDecoder"]


class _Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` with keys/values projected separately."""

    def __init__(self, d: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.reshape(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, heads, S, d / heads) keys and values of ``x`` (B, S, d)."""
        k, v = self.kv(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        q = self._split(self.q(x))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class _Layer(nn.Module):
    """Pre-norm causal self-attention → cross-attention to the memory → FFN."""

    def __init__(self, d: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = _Attention(d, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(d)
        self.cross_attn = _Attention(d, num_heads, dropout)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d))

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor | None,
        cache: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        y = self.norm_self(x)
        k, v = self.self_attn.keys_values(y)
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if past and x.shape[1] > 1:
            raise ValueError("with a non-empty cache, feed one token at a time")
        # Causal within the new tokens; a single new token may see everything cached.
        x = x + self.self_attn(y, k, v, is_causal=past == 0 and x.shape[1] > 1)
        x = x + self.cross_attn(self.norm_cross(x), *memory_kv, attn_mask=memory_mask)
        return x + self.ffn(self.norm_ffn(x))


class ComposedDecoder(nn.Module):
    """Causal token decoder with tied output logits and a KV-cached, grammar-constrained greedy generator.

    Args:
        vocab: the shared vocabulary (special token ids and size V).
        embed_dim: width d (equals the shared token table's width and the memory's width).
        num_layers: decoder layers.
        num_heads: attention heads.
        max_length: longest sequence T (size of the learned position table).
        ffn_dim: FFN hidden width; default ``4 * embed_dim``.
        dropout: attention and FFN dropout.

    Example:
        >>> from unimed_core.tokenizer import SequenceGrammar, Vocabulary
        >>> vocab = Vocabulary(["liver", "tumor"], num_bins=8)
        >>> table = nn.Embedding(vocab.size, 16)
        >>> dec = ComposedDecoder(vocab, embed_dim=16, num_layers=1, num_heads=2)
        >>> hidden, logits = dec(torch.tensor([[vocab.bos, vocab.cls]]), torch.zeros(1, 5, 16), table)
        >>> tuple(logits.shape)
        (1, 2, 20)
        >>> tokens, hidden, probs = dec.generate(torch.zeros(1, 5, 16), table, SequenceGrammar(vocab), vocab.seg, 8)
        >>> tokens[0, :2].tolist()
        [1, 5]
    """

    def __init__(
        self,
        vocab,
        embed_dim: int,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = 256,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        ffn_dim = 4 * embed_dim if ffn_dim is None else ffn_dim
        require_positive_ints(
            embed_dim=embed_dim, num_layers=num_layers, num_heads=num_heads, max_length=max_length, ffn_dim=ffn_dim
        )
        require_heads_divide(embed_dim, num_heads)
        self.vocab = vocab
        self.embed_dim = embed_dim
        self.max_length = max_length
        self.position = nn.Embedding(max_length, embed_dim)
        self.layers = nn.ModuleList(_Layer(embed_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _check(self, memory: torch.Tensor, token_embedding: nn.Embedding, memory_mask: torch.Tensor | None) -> None:
        if memory.ndim != 3 or memory.shape[2] != self.embed_dim:
            raise ValueError(f"memory must be (B, Q, {self.embed_dim}), got {tuple(memory.shape)}")
        if token_embedding.num_embeddings != self.vocab.size or token_embedding.embedding_dim != self.embed_dim:
            raise ValueError(
                f"token_embedding must be ({self.vocab.size}, {self.embed_dim}), got "
                f"({token_embedding.num_embeddings}, {token_embedding.embedding_dim})"
            )
        if memory_mask is not None and memory_mask.shape != memory.shape[:2]:
            raise ValueError(f"memory_mask must be {tuple(memory.shape[:2])}, got {tuple(memory_mask.shape)}")

    def _run(
        self,
        tokens: torch.Tensor,
        start: int,
        token_embedding: nn.Embedding,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        memory_mask: torch.Tensor | None,
        caches: list[dict[str, torch.Tensor]] | None,
    ) -> torch.Tensor:
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = token_embedding(tokens) + self.position(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory_kv[i], memory_mask, None if caches is None else caches[i])
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor, token_embedding: nn.Embedding) -> torch.Tensor:
        """(…, V) next-token logits of hidden states, scored against the shared table (tied weights)."""
        return self.out_proj(hidden) @ token_embedding.weight.t() / math.sqrt(self.embed_dim)

    @staticmethod
    def _sdpa_mask(memory_mask: torch.Tensor | None) -> torch.Tensor | None:
        # (B, Q) True = present → (B, 1, 1, Q), SDPA's boolean convention (True takes part).
        return None if memory_mask is None else memory_mask.to(torch.bool)[:, None, None, :]

    def forward(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor,
        token_embedding: nn.Embedding,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing.

        Args:
            tokens: (B, T) long input sequences (``BOS ...``, PAD-padded on the right).
            memory: (B, Q) × d decomposed query states.
            token_embedding: the shared (V, d) token table.
            memory_mask: (B, Q) bool, False for memory entries to ignore (absent prompts); default all.

        Returns:
            ``hidden`` (B, T, d) and ``logits`` (B, T, V); position t predicts token t + 1.
        """
        self._check(memory, token_embedding, memory_mask)
        if tokens.ndim != 2 or tokens.shape[0] != memory.shape[0]:
            raise ValueError(f"tokens must be (B={memory.shape[0]}, T), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_length={self.max_length}")
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.layers]
        hidden = self._run(tokens, 0, token_embedding, memory_kv, self._sdpa_mask(memory_mask), None)
        return hidden, self.logits(hidden, token_embedding)

    @torch.no_grad()
    def generate(
        self,
        memory: torch.Tensor,
        token_embedding: nn.Embedding,
        grammar,
        task_token: int,
        max_length: int,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Greedy, grammar-constrained generation with a KV cache.

        The sequence starts ``BOS task``; at each step the logits of tokens the grammar forbids are ``-inf`` and
        the most likely allowed token is taken. A finished sample (after EOS) gets PAD. On the last step EOS is
        forced where the grammar allows it, so that a sequence cut by ``max_length`` still ends cleanly when it can.

        Args:
            memory: (B, Q, d) decomposed query states.
            token_embedding: the shared (V, d) token table.
            grammar: a ``SequenceGrammar`` (``start`` / ``step`` / ``mask``) of the same vocabulary.
            task_token: the task token (CLS, DET or SEG) to generate for.
            max_length: most tokens per sequence, BOS and task included (>= 3, <= ``self.max_length``).
            memory_mask: (B, Q) bool, False for memory entries to ignore.

        Returns:
            ``tokens`` (B, T') long; ``hidden`` (B, T', d), the state at which each token was *input* (the
            state at a MASK token is that object's mask query); ``probs`` (B, T'), the probability the model
            gave each generated token under the grammar mask (1 for BOS, the task token and PAD).
        """
        self._check(memory, token_embedding, memory_mask)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 3 <= max_length <= self.max_length:
            raise ValueError(f"max_length must be an integer in [3, {self.max_length}], got {max_length!r}")
        v = self.vocab
        b, device = memory.shape[0], memory.device
        state = grammar.step(grammar.start(), v.bos)
        state = grammar.step(state, int(task_token))  # ValueError if the grammar does not allow this task
        states = [state] * b
        tokens = torch.tensor([[v.bos, int(task_token)]], device=device).expand(b, 2)
        probs = torch.ones(b, 2, device=device, dtype=memory.dtype)
        caches: list[dict[str, torch.Tensor]] = [{} for _ in self.layers]
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.layers]
        mask = self._sdpa_mask(memory_mask)
        hidden = self._run(tokens, 0, token_embedding, memory_kv, mask, caches)
        out_tokens, out_hidden, out_probs = [tokens], [hidden], [probs]
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for t in range(2, max_length):
            logits = self.logits(hidden[:, -1], token_embedding)
            allowed = torch.stack([grammar.mask(s) for s in states]).to(device)
            if t == max_length - 1:
                can_end = allowed[:, v.eos : v.eos + 1]
                allowed = torch.where(can_end, F.one_hot(torch.tensor(v.eos), v.size).bool().to(device), allowed)
            p = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
            prob, nxt = p.max(-1)
            states = [grammar.step(s, int(tok)) for s, tok in zip(states, nxt.tolist())]
            hidden = self._run(nxt[:, None], t, token_embedding, memory_kv, mask, caches)
            out_tokens.append(nxt[:, None])
            out_hidden.append(hidden)
            out_probs.append(prob[:, None])
            done |= (nxt == v.eos) | (nxt == v.pad)
            if bool(done.all()):
                break
        return torch.cat(out_tokens, 1), torch.cat(out_hidden, 1), torch.cat(out_probs, 1)
