"""Encode annotations of every level into token sequences of the one vocabulary, and decode them back.

Sequences (DESIGN.md §1.3):

- classification: ``BOS CLS c… EOS`` (class indices sorted, unique);
- detection: ``BOS DET (x1 y1 z1 x2 y2 z2 c)* EOS``, boxes normalised MONAI ``XYZXYZ`` (``StandardMode``) in
  ``[0, 1]``, objects sorted by (label, quantised x1, y1, z1, x2, y2, z2) so one annotation has one sequence;
- segmentation: ``BOS SEG (c MASK)* EOS`` (class indices sorted, unique);
- prompts: ``[c]``, ``[POINT_POS x y z | POINT_NEG x y z]*``, ``[BOX x1 y1 z1 x2 y2 z2]``.

The tokenizer is deterministic; random corruption for training belongs to augmentation. ``decode`` never
raises: generated sequences may be garbage early in training, and evaluation must still run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unimed_core.tokenizer.vocabulary import Vocabulary

__all__ = ["DecodedSequence", "Tokenizer"]

_TASK_NAMES = ("classification", "detection", "segmentation")


@dataclass
class DecodedSequence:
    """What a token sequence says, keeping only well-formed objects.

    Attributes:
        task: ``"classification"``, ``"detection"``, ``"segmentation"`` or None (no task token found).
        classes: class indices, sorted and unique: the image classes (CLS), the classes of the kept mask slots
            (SEG) or of the kept boxes (DET).
        boxes: (N, 6) float boxes, normalised ``XYZXYZ`` bin centres with ``x1 <= x2, y1 <= y2, z1 <= z2``.
        box_labels: N class indices, one per box.
        mask_slots: ``(position of the MASK token in the input sequence, class index)`` per kept object; the
            decoder's hidden state at that position is the object's mask query.
    """

    task: str | None = None
    classes: list[int] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6), dtype=np.float64))
    box_labels: list[int] = field(default_factory=list)
    mask_slots: list[tuple[int, int]] = field(default_factory=list)


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}: {e}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    if (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{name} must be normalised to [0, 1], got range [{arr.min()}, {arr.max()}]")
    return arr


def _check_boxes(boxes: Any, name: str = "boxes") -> np.ndarray:
    arr = _as_numpy(boxes, name)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ValueError(f"{name} must have shape (N, 6) in XYZXYZ mode, got {arr.shape}")
    if (arr[:, 3:] < arr[:, :3]).any():
        raise ValueError(f"{name} must have x1 <= x2, y1 <= y2, z1 <= z2 (XYZXYZ mode)")
    return arr


class Tokenizer:
    """Turns annotations into token sequences of ``vocab`` and back.

    Args:
        vocab: the vocabulary (class and coordinate ranges).

    Example:
        >>> tok = Tokenizer(Vocabulary(["liver", "tumor"], num_bins=4))
        >>> tok.encode_classification([1, 0, 1])
        [1, 3, 10, 11, 2]
        >>> tok.decode(tok.encode_segmentation([1])).mask_slots
        [(3, 1)]
    """

    def __init__(self, vocab: Vocabulary) -> None:
        if not isinstance(vocab, Vocabulary):
            raise ValueError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
        self.vocab = vocab

    # ------------------------------------------------------------------ helpers
    def _class_indices(self, class_indices: Sequence[int], name: str = "class_indices") -> list[int]:
        out = []
        for c in class_indices:
            if isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_floating_point():
                c = int(c)
            if isinstance(c, bool) or not isinstance(c, int | np.integer):
                raise ValueError(f"{name} must hold integers, got {c!r}")
            c = int(c)
            if not 0 <= c < self.vocab.num_classes:
                raise ValueError(f"{name}: class index {c} outside [0, {self.vocab.num_classes})")
            out.append(c)
        return out

    def _coord_tokens(self, coords: np.ndarray) -> list[int]:
        return [self.vocab.coord_offset + int(b) for b in self.vocab.quantize(coords).reshape(-1)]

    # ------------------------------------------------------------------ annotations
    def encode_classification(self, class_indices: Sequence[int]) -> list[int]:
        """``BOS CLS c… EOS`` of image-level (multi-label) class indices; order and repeats do not matter."""
        classes = sorted(set(self._class_indices(class_indices)))
        v = self.vocab
        return [v.bos, v.cls, *(v.class_token(c) for c in classes), v.eos]

    def encode_detection(self, boxes: Any, labels: Sequence[int]) -> list[int]:
        """``BOS DET (x1 y1 z1 x2 y2 z2 c)* EOS``.

        Args:
            boxes: (N, 6) normalised ``XYZXYZ`` boxes in ``[0, 1]`` (numpy or tensor), ``x1 <= x2`` etc.
            labels: N class indices.
        """
        arr = _check_boxes(boxes)
        labs = self._class_indices(list(labels), "labels")
        if len(labs) != arr.shape[0]:
            raise ValueError(f"got {arr.shape[0]} boxes but {len(labs)} labels")
        bins = self.vocab.quantize(arr)
        # Fixed object order (label, then the quantised corners) so one annotation has exactly one target.
        order = sorted(range(len(labs)), key=lambda i: (labs[i], *bins[i].tolist()))
        v = self.vocab
        out = [v.bos, v.det]
        for i in order:
            out.extend(v.coord_offset + int(b) for b in bins[i])
            out.append(v.class_token(labs[i]))
        out.append(v.eos)
        return out

    def encode_segmentation(self, class_indices: Sequence[int]) -> list[int]:
        """``BOS SEG (c MASK)* EOS`` for the classes present in a mask (sorted, unique)."""
        classes = sorted(set(self._class_indices(class_indices)))
        v = self.vocab
        out = [v.bos, v.seg]
        for c in classes:
            out.extend((v.class_token(c), v.mask))
        out.append(v.eos)
        return out

    # ------------------------------------------------------------------ prompts
    def encode_class_prompt(self, class_index: int) -> list[int]:
        """``[c]``: segment / detect class ``class_index``."""
        return [self.vocab.class_token(self._class_indices([class_index], "class_index")[0])]

    def encode_point_prompt(self, points: Any, positive: Sequence[bool]) -> list[int]:
        """``[POINT_POS x y z | POINT_NEG x y z]*`` for K clicks on one object.

        Args:
            points: (K, 3) normalised voxel coordinates in ``[0, 1]``, K >= 1.
            positive: K flags, True for a click inside the object.
        """
        arr = _as_numpy(points, "points")
        if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
            raise ValueError(f"points must have shape (K, 3) with K >= 1, got {arr.shape}")
        flags = list(positive)
        if len(flags) != arr.shape[0]:
            raise ValueError(f"got {arr.shape[0]} points but {len(flags)} positive flags")
        out: list[int] = []
        for p, pos in zip(arr, flags):
            out.append(self.vocab.point_pos if bool(pos) else self.vocab.point_neg)
            out.extend(self._coord_tokens(p))
        return out

    def encode_box_prompt(self, box: Any) -> list[int]:
        """``[BOX x1 y1 z1 x2 y2 z2]`` for a (6,) normalised ``XYZXYZ`` box."""
        arr = _as_numpy(box, "box")
        if arr.shape != (6,):
            raise ValueError(f"box must have shape (6,), got {arr.shape}")
        _check_boxes(arr[None], "box")
        return [self.vocab.box, *self._coord_tokens(arr)]

    # ------------------------------------------------------------------ decoding
    def decode(self, tokens: Sequence[int]) -> DecodedSequence:
        """Read a (possibly malformed) sequence; never raises.

        The task is the first task token (anything before it, e.g. BOS, is skipped); the body ends at the first
        EOS or PAD after it. Malformed pieces are dropped: classes out of order are sorted and deduplicated,
        a box keeps the last six coordinates before its class token and its corners are sorted per axis, a
        segmentation class counts only when MASK follows it directly (first slot per class kept).
        """
        v = self.vocab
        toks = self._ints(tokens)
        result = DecodedSequence()
        start = next((i for i, t in enumerate(toks) if t in v.task_tokens), None)
        if start is None:
            return result
        task_token = toks[start]
        result.task = _TASK_NAMES[v.task_tokens.index(task_token)]
        body: list[tuple[int, int]] = []
        for pos in range(start + 1, len(toks)):
            if toks[pos] in (v.eos, v.pad):
                break
            body.append((pos, toks[pos]))

        if task_token == v.cls:
            result.classes = sorted({v.class_index(t) for _, t in body if v.is_class(t)})
        elif task_token == v.det:
            self._decode_boxes(body, result)
        else:
            seen: set[int] = set()
            for (_, t), (pos_next, t_next) in zip(body, body[1:]):
                if v.is_class(t) and t_next == v.mask and v.class_index(t) not in seen:
                    seen.add(v.class_index(t))
                    result.mask_slots.append((pos_next, v.class_index(t)))
            result.classes = sorted(seen)
        return result

    def _decode_boxes(self, body: list[tuple[int, int]], result: DecodedSequence) -> None:
        v = self.vocab
        coords: deque[int] = deque(maxlen=6)  # keeps the last six bins: recovers from one stray coordinate
        boxes, labels = [], []
        for _, t in body:
            if v.is_coord(t):
                coords.append(v.coord_bin(t))
            elif v.is_class(t) and len(coords) == 6:
                b = np.asarray(coords, dtype=np.int64)
                boxes.append(np.concatenate([np.minimum(b[:3], b[3:]), np.maximum(b[:3], b[3:])]))
                labels.append(v.class_index(t))
                coords.clear()
            else:
                coords.clear()
        if boxes:
            result.boxes = np.asarray(v.dequantize(np.stack(boxes)), dtype=np.float64)
        result.box_labels = labels
        result.classes = sorted(set(labels))

    def decode_prompt(self, tokens: Sequence[int]) -> dict[str, Any]:
        """Read a prompt; never raises.

        Returns:
            ``{"kind": None}`` when nothing valid is found, else one of
            ``{"kind": "class", "class_index": int}``,
            ``{"kind": "points", "points": (K, 3) float bin centres, "positive": list[bool]}``,
            ``{"kind": "box", "box": (6,) float bin centres, corners sorted per axis}``.
            PAD tokens are ignored; malformed point groups are dropped.
        """
        v = self.vocab
        toks = [t for t in self._ints(tokens) if t != v.pad]
        if not toks:
            return {"kind": None}
        head = toks[0]
        if v.is_class(head):
            return {"kind": "class", "class_index": v.class_index(head)}
        if head == v.box:
            bins = toks[1:7]
            if len(bins) == 6 and all(v.is_coord(t) for t in bins):
                b = np.asarray([v.coord_bin(t) for t in bins])
                b = np.concatenate([np.minimum(b[:3], b[3:]), np.maximum(b[:3], b[3:])])
                return {"kind": "box", "box": np.asarray(v.dequantize(b), dtype=np.float64)}
            return {"kind": None}
        if head in (v.point_pos, v.point_neg):
            points, flags = [], []
            for i, t in enumerate(toks):
                group = toks[i + 1 : i + 4]
                if t in (v.point_pos, v.point_neg) and len(group) == 3 and all(v.is_coord(g) for g in group):
                    points.append([v.coord_bin(g) for g in group])
                    flags.append(t == v.point_pos)
            if points:
                return {
                    "kind": "points",
                    "points": np.asarray(v.dequantize(np.asarray(points)), dtype=np.float64),
                    "positive": flags,
                }
        return {"kind": None}

    @staticmethod
    def _ints(tokens: Any) -> list[int]:
        """Token ids as Python ints; anything that is not an integer id becomes -1 (an unknown token)."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().reshape(-1).tolist()
        elif isinstance(tokens, np.ndarray):
            tokens = tokens.reshape(-1).tolist()
        out = []
        try:
            for t in tokens:
                try:
                    out.append(int(t))
                except (TypeError, ValueError, OverflowError):
                    out.append(-1)
        except TypeError:
            return []
        return out

    # ------------------------------------------------------------------ batching
    def pad_batch(self, sequences: Sequence[Sequence[int]], pad_to: int | None = None) -> torch.Tensor:
        """Right-pad sequences with PAD into a (B, T) long tensor.

        Args:
            sequences: B token sequences (lists, tuples or 1-D tensors).
            pad_to: T; default the longest sequence. ``ValueError`` if a sequence is longer.
        """
        rows = [self._ints(s) for s in sequences]
        longest = max((len(r) for r in rows), default=0)
        length = longest if pad_to is None else int(pad_to)
        if length < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest})")
        out = torch.full((len(rows), length), self.vocab.pad, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out
