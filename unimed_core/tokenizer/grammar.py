"""Grammar-constrained decoding: which tokens may come next in a UniMed sequence (DESIGN.md §1.3).

The grammar is the one :class:`~unimed_core.tokenizer.tokenizer.Tokenizer` writes:

- ``BOS``, then a task token (CLS / DET / SEG, restricted to ``allowed_tasks``);
- CLS: class tokens in strictly increasing order, then EOS;
- DET: objects ``x1 y1 z1 x2 y2 z2 c`` with ``x2 >= x1``, ``y2 >= y1``, ``z2 >= z1`` (bins), then EOS;
- SEG: ``c MASK`` pairs, classes strictly increasing, then EOS;
- after EOS only PAD. At ``max_objects`` objects only EOS may follow; EOS is always open between objects, so a
  constrained walk can never get stuck.

Use :meth:`SequenceGrammar.allowed_next` for a whole prefix, or the incremental ``start`` / ``step`` / ``mask``
in a KV-cached greedy decoder so each step costs O(V) without re-reading the prefix::

    grammar = SequenceGrammar(vocab, allowed_tasks=[vocab.seg])
    states = [grammar.start() for _ in range(batch)]
    ...
    logits = logits.masked_fill(~grammar.mask_batch(states, device=logits.device), float("-inf"))
    next_tokens = logits.argmax(-1)
    states = [grammar.step(s, int(t)) for s, t in zip(states, next_tokens)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unimed_core.tokenizer.vocabulary import Vocabulary

__all__ = ["GrammarState", "SequenceGrammar"]

# Phases of the state machine.
_START, _TASK, _CLS, _DET, _SEG_CLASS, _SEG_MASK, _DONE = range(7)


@dataclass(frozen=True)
class GrammarState:
    """Where a sequence stands; immutable, so a beam or a batch can share and branch states.

    Attributes:
        phase: one of the module's phases (start, task, CLS body, DET body, SEG class, SEG mask, done).
        num_objects: objects completed so far (classes for CLS, boxes for DET, ``c MASK`` pairs for SEG).
        last_class: last class index emitted in CLS / SEG (-1 before any), for the strictly increasing rule.
        coords: coordinate bins of the DET object under construction (0 to 6 of them).
    """

    phase: int = _START
    num_objects: int = 0
    last_class: int = -1
    coords: tuple[int, ...] = ()


class SequenceGrammar:
    """Masks of valid next tokens for greedy, grammar-constrained decoding.

    Args:
        vocab: the vocabulary.
        max_objects: most objects (classes, boxes or mask slots) in one sequence, >= 0.
        allowed_tasks: task token ids allowed after BOS (subset of ``vocab.task_tokens``); default all three.
        allowed_classes: class indices that may be emitted; default all.

    Example:
        >>> vocab = Vocabulary(["liver", "tumor"], num_bins=4)
        >>> g = SequenceGrammar(vocab, allowed_tasks=[vocab.cls])
        >>> g.allowed_next([vocab.bos, vocab.cls, vocab.class_token(0)]).nonzero().flatten().tolist()
        [2, 11]
    """

    def __init__(
        self,
        vocab: Vocabulary,
        max_objects: int = 32,
        allowed_tasks: Sequence[int] | None = None,
        allowed_classes: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(vocab, Vocabulary):
            raise ValueError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 0:
            raise ValueError(f"max_objects must be an integer >= 0, got {max_objects!r}")
        tasks = tuple(vocab.task_tokens) if allowed_tasks is None else tuple(int(t) for t in allowed_tasks)
        if not tasks or any(t not in vocab.task_tokens for t in tasks):
            raise ValueError(f"allowed_tasks must be a non-empty subset of {vocab.task_tokens}, got {list(tasks)}")
        classes = range(vocab.num_classes) if allowed_classes is None else [int(c) for c in allowed_classes]
        if any(not 0 <= c < vocab.num_classes for c in classes):
            raise ValueError(f"allowed_classes must lie in [0, {vocab.num_classes}), got {list(classes)}")
        self.vocab = vocab
        self.max_objects = max_objects
        self.allowed_tasks = tasks
        self.allowed_classes = tuple(sorted(set(classes)))

        size = vocab.size
        self._only: dict[int, torch.Tensor] = {}
        for t in (vocab.bos, vocab.eos, vocab.pad, vocab.mask):
            self._only[t] = self._one_hot([t])
        self._tasks = self._one_hot(tasks)
        self._class_ok = self._one_hot([vocab.class_token(c) for c in self.allowed_classes])
        self._all_coords = self._one_hot(range(vocab.coord_offset, size))
        # Per-token class index and coordinate bin, so "class > last" and "bin >= x1" are one comparison each.
        ids = torch.arange(size)
        self._class_index = ids - vocab.class_offset  # only meaningful where _class_ok is True
        self._coord_bin = ids - vocab.coord_offset  # only meaningful where _all_coords is True

    def _one_hot(self, tokens) -> torch.Tensor:
        m = torch.zeros(self.vocab.size, dtype=torch.bool)
        idx = list(tokens)
        if idx:
            m[torch.as_tensor(idx, dtype=torch.long)] = True
        return m

    @property
    def max_length(self) -> int:
        """Longest sequence the grammar allows for the allowed tasks, BOS and EOS included (no PAD)."""
        v = self.vocab
        lengths = {
            v.cls: min(self.max_objects, len(self.allowed_classes)),
            v.det: 7 * self.max_objects if self.allowed_classes else 0,
            v.seg: 2 * min(self.max_objects, len(self.allowed_classes)),
        }
        return 3 + max(lengths[t] for t in self.allowed_tasks)

    # ------------------------------------------------------------------ incremental API
    def start(self) -> GrammarState:
        """The state of the empty prefix (only BOS may come)."""
        return GrammarState()

    def step(self, state: GrammarState, token: int) -> GrammarState:
        """The state after appending ``token``; ``ValueError`` if the grammar does not allow it."""
        token = int(token)
        if not (0 <= token < self.vocab.size and bool(self.mask(state)[token])):
            raise ValueError(f"token {token} ({self.vocab.token_name(token)}) is not allowed in state {state}")
        v = self.vocab
        p = state.phase
        if p == _START:
            return GrammarState(phase=_TASK)
        if token == v.eos or p == _DONE:
            return GrammarState(phase=_DONE, num_objects=state.num_objects)
        if p == _TASK:
            return GrammarState(phase={v.cls: _CLS, v.det: _DET, v.seg: _SEG_CLASS}[token])
        if p == _CLS:
            return GrammarState(_CLS, state.num_objects + 1, v.class_index(token))
        if p == _SEG_CLASS:
            return GrammarState(_SEG_MASK, state.num_objects, v.class_index(token))
        if p == _SEG_MASK:
            return GrammarState(_SEG_CLASS, state.num_objects + 1, state.last_class)
        # DET body: six coordinates, then a class closes the object.
        if len(state.coords) < 6:
            return GrammarState(_DET, state.num_objects, -1, (*state.coords, v.coord_bin(token)))
        return GrammarState(_DET, state.num_objects + 1, -1, ())

    def mask(self, state: GrammarState, device: torch.device | str | None = None) -> torch.Tensor:
        """(V,) bool mask of the tokens allowed after ``state``."""
        v = self.vocab
        p = state.phase
        full = state.num_objects >= self.max_objects
        if p == _START:
            m = self._only[v.bos]
        elif p == _TASK:
            m = self._tasks
        elif p == _DONE:
            m = self._only[v.pad]
        elif p == _SEG_MASK:
            m = self._only[v.mask]
        elif p in (_CLS, _SEG_CLASS):
            m = self._only[v.eos]
            if not full:
                m = m | (self._class_ok & (self._class_index > state.last_class))
        else:  # _DET
            k = len(state.coords)
            if k == 0:
                m = self._only[v.eos]
                if not full and self.allowed_classes:  # an object needs a class to close it
                    m = m | self._all_coords
            elif k < 3:
                m = self._all_coords
            elif k < 6:
                m = self._all_coords & (self._coord_bin >= state.coords[k - 3])
            else:
                m = self._class_ok
        # Copy: callers may edit the mask in place, and the cached ones must stay intact.
        return m.to(device=device, copy=True) if device is not None else m.clone()

    def mask_batch(self, states: Sequence[GrammarState], device: torch.device | str | None = None) -> torch.Tensor:
        """(B, V) bool masks of a batch of states."""
        if not states:
            return torch.zeros((0, self.vocab.size), dtype=torch.bool, device=device)
        return torch.stack([self.mask(s) for s in states]).to(device)

    # ------------------------------------------------------------------ whole-prefix API
    def state_of(self, prefix: Sequence[int]) -> GrammarState:
        """The state after ``prefix``; ``ValueError`` naming the position if the prefix breaks the grammar."""
        s = self.start()
        for i, t in enumerate(prefix):
            try:
                s = self.step(s, t)
            except ValueError as e:
                raise ValueError(f"prefix breaks the grammar at position {i}: {e}") from None
        return s

    def allowed_next(self, prefix: Sequence[int]) -> torch.Tensor:
        """(V,) bool mask of the valid next tokens after ``prefix`` (which starts with BOS; empty → BOS)."""
        return self.mask(self.state_of(prefix))
