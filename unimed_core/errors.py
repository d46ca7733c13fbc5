"""Errors raised project-wide for bad input and output files.

Both derive from ``ValueError`` (the input is wrong, not the program), and both name the file first so a user
reading a log of many cases knows which file to fix: ``"PATH: PROBLEM"``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ImageReadError", "ImageWriteError"]


class _FileError(ValueError):
    """A ``ValueError`` about one file, with message ``"PATH: PROBLEM"``.

    Args:
        path: the file (or DICOM folder) concerned.
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = str(problem)
        super().__init__(f"{self.path if self.path is not None else '<no file>'}: {self.problem}")

    def __reduce__(self):  # keeps the two-argument constructor picklable (multiprocessing data loaders)
        return (type(self), (self.path, self.problem))


class ImageReadError(_FileError):
    """An image or label file that cannot be read or is not a usable 3-D volume.

    Example:
        >>> str(ImageReadError("ct.nii.gz", "image has NaN voxels"))
        'ct.nii.gz: image has NaN voxels'
    """


class ImageWriteError(_FileError):
    """An output that cannot or must not be written (e.g. it would overwrite the input image).

    Example:
        >>> str(ImageWriteError("out.xyz", "unknown output format"))
        'out.xyz: unknown output format'
    """
