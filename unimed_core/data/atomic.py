"""Atomic file writes: every output of UniMed appears complete or not at all.

A write goes to a temporary file in the destination's own folder (same file system, so the final
``os.replace`` is an atomic rename), and is moved into place only when the writer finished without error.
On error the temporary file is deleted and any previous file at the destination is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block ends without error.

    Args:
        path: the final destination. Its folder must exist.
        suffix: ending of the temporary file name; writers that choose the format from the extension
            (SimpleITK, nibabel) need the real one, e.g. ``".nii.gz"``.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_write(out, ".txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> out.read_text()
        'done'
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{path}: output folder {path.parent} does not exist")
    # A hidden name so a half-written file is never mistaken for a result by globbing tools.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); a result should have the permissions any new file gets.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return ``path``.

    Args:
        path: destination file.
        text: the whole content.
        encoding: text encoding.
    """
    path = Path(path)
    with atomic_write(path, path.suffix) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return ``path``.

    The object is serialised before anything touches the disk, so an unserialisable object leaves no file.

    Args:
        path: destination file.
        obj: a JSON-serialisable object.
        indent: indentation of the JSON text.
    """
    text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    return atomic_write_text(path, text)
