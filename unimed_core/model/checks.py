"""Argument checks shared by the network constructors (plain ``ValueError`` with the argument's name)."""

from __future__ import annotations

__all__ = ["require_positive_ints", "require_heads_divide"]


def require_positive_ints(**values: object) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive ``int`` (bools are refused)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def require_heads_divide(embed_dim: int, num_heads: int) -> None:
    """Multi-head attention splits ``embed_dim`` evenly over ``num_heads``."""
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
