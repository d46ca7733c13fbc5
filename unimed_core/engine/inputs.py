"""What the bundle's configs read: the bundle folder, the inputs to run on, and volumes as dataset items.

``inference.json`` runs on one file, a folder of files, a DICOM series folder or a datalist section; this
module turns any of those into the list of ``{"image": path}`` items that MONAI's ``Dataset`` iterates.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

from monai.transforms import MapTransform

from unimed_core.data.datalist import load_datalist
from unimed_core.data.image_io import read_image
from unimed_core.label_map import LabelMap
from unimed_core.paths import BUNDLE_DIR

__all__ = ["IMAGE_SUFFIXES", "bundle_root", "inference_items", "LoadVolumed"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Outputs of a previous run living next to the inputs must not be taken for inputs.
_OUTPUT_SUFFIXES = (".seg.nrrd", "_seg.nii.gz", "_click.nii.gz")


def bundle_root() -> str:
    """The bundle folder: ``.`` when run from inside it, ``./bundle`` from the repo root, else the package's.

    MONAI runs configs relative to the working directory; this lets ``python -m monai.bundle run`` work from
    the repository root and from the bundle folder alike (``--bundle_root`` still overrides it).
    """
    cwd = Path.cwd()
    for candidate in (cwd, cwd / "bundle"):
        if (candidate / "configs" / "metadata.json").is_file() and (candidate / "configs" / "inference.json").is_file():
            return str(candidate)
    return str(BUNDLE_DIR)


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(IMAGE_SUFFIXES) and not name.endswith(_OUTPUT_SUFFIXES) and not name.startswith(".")


def inference_items(
    input_path: str | Path | None = None,
    datalist: str | Path | None = None,
    section: str = "test",
    label_map: LabelMap | None = None,
) -> list[dict[str, str]]:
    """The volumes to run on, as ``[{"image": path}, ...]``.

    Args:
        input_path: a NIfTI / NRRD / MHA file; a folder of such files (each is one input, sub-folders are
            ignored); or a folder holding one DICOM series (the folder is the input).
        datalist: a datalist JSON; when given, ``input_path`` is ignored and ``section`` is used.
        section: the datalist section to run ("training", "validation", "test", "unlabeled").
        label_map: classes the datalist may name (default: the datalist's own or the bundle's).

    Raises:
        ValueError: a path that does not exist, an empty folder or datalist section.
    """
    if datalist:
        splits = load_datalist(datalist, label_map, check_files=True)
        if section not in splits:
            raise ValueError(f"section must be one of {sorted(splits)}, got {section!r}")
        items = [{"image": item["image"]} for item in splits[section]]
        if not items:
            raise ValueError(f"{datalist}: section {section!r} lists no volumes")
        return items
    if input_path is None:
        raise ValueError("give an input_path (file or folder) or a datalist")
    path = Path(input_path)
    if path.is_file():
        return [{"image": str(path.resolve())}]
    if not path.is_dir():
        raise ValueError(f"input_path {str(path)!r} is neither a file nor a folder")
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if _is_image_file(p)]
    if images:
        return [{"image": str(p.resolve())} for p in images]
    if files:  # no image files: the folder is read as one DICOM series
        return [{"image": str(path.resolve())}]
    raise ValueError(f"input_path {str(path)!r} is an empty folder")


class LoadVolumed(MapTransform):
    """Read each key's path with :func:`unimed_core.data.image_io.read_image` (NIfTI, NRRD, DICOM series).

    The value becomes a :class:`~unimed_core.data.image_io.Volume` that keeps its affine and DICOM headers,
    which the predictor and the writers need to put every output back on the input's geometry.

    Args:
        keys: keys holding paths.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(self, keys, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_image(d[key])
        return d
