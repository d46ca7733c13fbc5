"""UniMed's one vocabulary: every token id range lives here (DESIGN.md §1.3, STYLE.md §3).

Layout, for ``C`` classes and ``NB`` coordinate bins (like pix2seq's ``vocab.py``, one place owns the ranges):

- ``[0, 10)``: special tokens, in :attr:`Vocabulary.SPECIAL_TOKENS` order (PAD is 0 so zero-padding is PAD);
- ``[10, 10 + C)``: class tokens, class index ``i`` (``LabelMap.class_names[i]``) is token ``10 + i``;
- ``[10 + C, 10 + C + NB)``: coordinate tokens, bin ``b`` is token ``10 + C + b``.

Coordinates are normalised voxel coordinates in ``[0, 1]``. Bin ``b`` covers ``[b / NB, (b + 1) / NB)`` (1.0 falls
into the last bin) and is read back as its centre ``(b + 0.5) / NB``, so a round trip moves a value by at most
half a bin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unimed_core.label_map import LabelMap

__all__ = ["Vocabulary"]

ArrayLike = np.ndarray | torch.Tensor


class Vocabulary:
    """Token ids of the special, class and coordinate tokens.

    Args:
        class_names: the class names, in class-index order (normally ``LabelMap.class_names``); non-empty, unique.
        num_bins: number of coordinate bins per axis, at least 2.

    Example:
        >>> vocab = Vocabulary(["liver", "tumor"], num_bins=4)
        >>> vocab.size, vocab.class_token(1), vocab.coord_token(0)
        (16, 11, 12)
        >>> vocab.quantize(np.array([0.0, 0.3, 1.0])).tolist()
        [0, 1, 3]
        >>> vocab.token_name(11)
        'tumor'
    """

    SPECIAL_TOKENS = ("PAD", "BOS", "EOS", "CLS", "DET", "SEG", "POINT_POS", "POINT_NEG", "BOX", "MASK")

    def __init__(self, class_names: Sequence[str], num_bins: int = 128) -> None:
        names = tuple(str(n) for n in class_names)
        if not names:
            raise ValueError("class_names must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique, got {list(names)}")
        if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
        self._class_names = names
        self._num_bins = int(num_bins)
        # Special token ids, in SPECIAL_TOKENS order.
        self.pad = 0
        self.bos = 1
        self.eos = 2
        self.cls = 3
        self.det = 4
        self.seg = 5
        self.point_pos = 6
        self.point_neg = 7
        self.box = 8
        self.mask = 9
        self.class_offset = len(self.SPECIAL_TOKENS)
        self.coord_offset = self.class_offset + len(names)

    @classmethod
    def from_label_map(cls, label_map: LabelMap, num_bins: int = 128) -> Vocabulary:
        """The vocabulary of ``label_map``: one class token per ``label_map.class_names`` entry."""
        return cls(label_map.class_names, num_bins=num_bins)

    # ------------------------------------------------------------------ sizes
    @property
    def size(self) -> int:
        """Total number of tokens V."""
        return self.coord_offset + self._num_bins

    def __len__(self) -> int:
        return self.size

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def num_bins(self) -> int:
        return self._num_bins

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def task_tokens(self) -> tuple[int, int, int]:
        """The task tokens (CLS, DET, SEG)."""
        return (self.cls, self.det, self.seg)

    # ------------------------------------------------------------------ classes
    def class_token(self, index: int) -> int:
        """Token id of class ``index`` in ``[0, num_classes)``."""
        if not 0 <= int(index) < self.num_classes:
            raise ValueError(f"class index {index} outside [0, {self.num_classes})")
        return self.class_offset + int(index)

    def class_index(self, token: int) -> int:
        """Class index of class token ``token``."""
        if not self.is_class(token):
            raise ValueError(f"token {token} is not a class token [{self.class_offset}, {self.coord_offset})")
        return int(token) - self.class_offset

    def is_class(self, token: int) -> bool:
        return self.class_offset <= int(token) < self.coord_offset

    @property
    def class_token_ids(self) -> torch.Tensor:
        """(C,) long tensor of the class token ids, in class-index order."""
        return torch.arange(self.class_offset, self.coord_offset, dtype=torch.long)

    # ------------------------------------------------------------------ coordinates
    def coord_token(self, bin: int) -> int:  # noqa: A002 - the contract's name
        """Token id of coordinate bin ``bin`` in ``[0, num_bins)``."""
        if not 0 <= int(bin) < self._num_bins:
            raise ValueError(f"coordinate bin {bin} outside [0, {self._num_bins})")
        return self.coord_offset + int(bin)

    def coord_bin(self, token: int) -> int:
        """Coordinate bin of coordinate token ``token``."""
        if not self.is_coord(token):
            raise ValueError(f"token {token} is not a coordinate token [{self.coord_offset}, {self.size})")
        return int(token) - self.coord_offset

    def is_coord(self, token: int) -> bool:
        return self.coord_offset <= int(token) < self.size

    @property
    def coord_token_ids(self) -> torch.Tensor:
        """(NB,) long tensor of the coordinate token ids, in bin order."""
        return torch.arange(self.coord_offset, self.size, dtype=torch.long)

    def quantize(self, coords: ArrayLike) -> ArrayLike:
        """Bins of normalised coordinates: ``floor(x * NB)`` clipped to ``[0, NB - 1]``.

        Args:
            coords: array or tensor of any shape, values in ``[0, 1]`` (values outside are clipped).

        Returns:
            int64 bins, same shape and container type (numpy → numpy, tensor → tensor on the same device).
        """
        if isinstance(coords, torch.Tensor):
            x = coords.to(torch.float64)
            if not torch.isfinite(x).all():
                raise ValueError("coordinates must be finite")
            return torch.clamp(torch.floor(x * self._num_bins), 0, self._num_bins - 1).to(torch.long)
        x = np.asarray(coords, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("coordinates must be finite")
        return np.clip(np.floor(x * self._num_bins), 0, self._num_bins - 1).astype(np.int64)

    def dequantize(self, bins: ArrayLike) -> ArrayLike:
        """Centres ``(b + 0.5) / NB`` of bins (clipped to ``[0, NB - 1]``), float, same container type."""
        if isinstance(bins, torch.Tensor):
            b = torch.clamp(bins.to(torch.float32), 0, self._num_bins - 1)
            return (b + 0.5) / self._num_bins
        b = np.clip(np.asarray(bins, dtype=np.float64), 0, self._num_bins - 1)
        return (b + 0.5) / self._num_bins

    # ------------------------------------------------------------------ debugging
    def token_name(self, token: int) -> str:
        """Readable name: ``"BOS"``, a class name, ``"<bin 12>"``; ``"<unk 999>"`` for ids outside the vocabulary."""
        t = int(token)
        if 0 <= t < self.class_offset:
            return self.SPECIAL_TOKENS[t]
        if self.is_class(t):
            return self._class_names[t - self.class_offset]
        if self.is_coord(t):
            return f"<bin {t - self.coord_offset}>"
        return f"<unk {t}>"

    def __repr__(self) -> str:
        return f"Vocabulary(class_names={list(self._class_names)}, num_bins={self._num_bins})"
