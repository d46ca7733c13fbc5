"""Read and write 3-D medical volumes with their geometry.

Convention (one, everywhere in UniMed): a :class:`Volume` holds a 3-D array indexed ``array[i, j, k]`` and a 4x4
``affine`` that maps a voxel index ``(i, j, k, 1)`` to **RAS world millimetres** (+x towards the patient's Right,
+y Anterior, +z Superior), exactly as nibabel, NIfTI and 3D Slicer do. Integer indices are voxel *centres*. ITK (and so DICOM, NRRD, MHA) uses LPS; readers and writers here
flip the first two world axes (``diag(-1, -1, 1)``) at the boundary, so nothing else in the project sees LPS.

Voxel data are never resampled or reoriented when read: ``array`` is the file's voxel grid, float data as
``float32`` and integer data (labels) in their integer type. Anything that is not one finite 3-D volume with an
invertible affine is refused with an :class:`~unimed_core.errors.ImageReadError` naming the file and the problem.

Formats: NIfTI (``.nii``, ``.nii.gz``; nibabel, which applies sform/qform rules), NRRD (``.nrrd``, ``.nhdr``),
MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder, or one ``.dcm`` file of the series; pydicom and
highdicom, see :mod:`unimed_core.data.dicom_series` for jittered, tilted, compressed and multi-frame series). Labels are also read from and written to Slicer ``.seg.nrrd`` (slicerio), and DICOM SEG is
written by :func:`~unimed_core.data.dicom_seg.write_dicom_seg` (highdicom). Every write is atomic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unimed_core.data.atomic import atomic_write
from unimed_core.errors import ImageReadError, ImageWriteError
from unimed_core.label_map import LabelMap

__all__ = [
    "Volume",
    "read_image",
    "read_label",
    "write_label",
    "lps_to_ras",
    "IMAGE_SUFFIXES",
    "LABEL_WRITE_SUFFIXES",
    "GEOMETRY_ATOL_MM",
]

# diag(-1, -1, 1, 1): LPS <-> RAS (its own inverse).
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", "<DICOM folder>")
LABEL_WRITE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
# Label vs image grid tolerance: NIfTI stores the affine in float32 (about 3e-5 mm at 500 mm), so 1 µm is
# far above storage noise and far below any real misregistration.
GEOMETRY_ATOL_MM = 1e-3
_ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert a 4x4 voxel→LPS affine to voxel→RAS (or back: the flip is its own inverse)."""
    return _FLIP_XY @ np.asarray(affine, dtype=np.float64)


@dataclass
class Volume:
    """One 3-D volume and its geometry.

    Args:
        array: voxel data, 3-D, indexed ``[i, j, k]``.
        affine: 4x4, voxel index ``(i, j, k, 1)`` → world RAS millimetres (nibabel's convention).
        path: the file or DICOM folder it was read from, if any.
        meta: what is known besides geometry: ``format``, ``modality``, ``series_uid``, ``dicom_datasets``
            (the series' pydicom datasets, in slice order ``k``, without pixel data), ``segment_names``.

    Example:
        >>> v = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
        >>> v.spacing.tolist(), v.shape
        ([2.0, 2.0, 3.0], (4, 5, 6))
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got shape {self.affine.shape}")
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Millimetres per voxel step along i, j, k (lengths of the affine's columns)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """RAS millimetres of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(_ITK_SUFFIXES):
        return "itk"
    if name.endswith(".dcm"):
        return "dicom"
    raise ImageReadError(path, f"unknown image format; supported: {', '.join(IMAGE_SUFFIXES)}")


def _check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ImageReadError(path, f"degenerate affine: not a finite 4x4 matrix:\n{affine}")
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    # Relative test: a voxel axis collapsed to (nearly) zero length or parallel to another one.
    if singular.min() <= 1e-6 * max(singular.max(), 1e-12):
        raise ImageReadError(path, f"degenerate affine: the voxel-to-world matrix is not invertible:\n{affine}")
    return affine


def _check_array(array: np.ndarray, path: Path, what: str = "image") -> np.ndarray:
    """Squeeze trailing singleton axes, refuse non-3-D/empty/non-finite data, normalise the dtype."""
    if array.size == 0:
        raise ImageReadError(path, f"empty volume (shape {array.shape})")
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim < 3:
        raise ImageReadError(path, f"2-D {what} (shape {array.shape}); UniMed needs a 3-D volume")
    if array.ndim > 3:
        raise ImageReadError(
            path, f"4-D or multi-channel {what} (shape {array.shape}); UniMed needs one single-channel 3-D volume"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, refused just below
            array = array.astype(np.float32, copy=False)
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            raise ImageReadError(
                path, f"{what} has non-finite voxels: {n_nan} NaN and {int((~finite).sum()) - n_nan} Inf"
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise ImageReadError(path, f"unsupported voxel type {array.dtype} (complex or structured data)")
    return np.ascontiguousarray(array)


# Bytes per voxel while reading: the file's data (up to 8 bytes) plus the float32 copy the readers make.
_READ_BYTES_PER_VOXEL = 12


def _default_max_bytes() -> int | None:
    try:
        import psutil
    except ImportError:  # no way to know: read and let the system decide
        return None
    return int(psutil.virtual_memory().available // 2)


def _check_size(path: Path, shape: tuple[int, ...], max_bytes: int | None) -> None:
    """Refuse, from the header alone, a volume that would not fit in memory (before any voxel is read)."""
    limit = _default_max_bytes() if max_bytes is None else max_bytes
    needed = float(np.prod([float(s) for s in shape])) * _READ_BYTES_PER_VOXEL
    if limit is not None and needed > limit:
        raise ImageReadError(
            path,
            f"volume of {' x '.join(str(int(s)) for s in shape)} voxels needs about {needed / 2**30:.1f} GB to read, "
            f"more than the {limit / 2**30:.1f} GB allowed (max_bytes; default: half the available memory); "
            "crop or downsample it first",
        )


def _read_nifti(path: Path, max_bytes: int | None) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path), mmap=False)  # the header only; voxels are read below, without a memory map
        shape = img.shape
    except Exception as e:  # nibabel raises many types for damaged files; the user needs one message
        raise ImageReadError(path, f"corrupt or truncated NIfTI file ({type(e).__name__}: {e})") from e
    _check_size(path, shape, max_bytes)
    try:
        # dataobj keeps integer labels integer; it applies scl_slope/scl_inter when they are set.
        array = np.asarray(img.dataobj)
        affine = img.affine
    except Exception as e:
        raise ImageReadError(path, f"corrupt or truncated NIfTI file ({type(e).__name__}: {e})") from e
    array = _check_array(array, path)
    return Volume(array, _check_affine(affine, path), path, {"format": "nifti"})


def _volume_from_itk(img: Any, path: Path, meta: dict[str, Any]) -> Volume:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() > 1:
        raise ImageReadError(
            path,
            f"4-D or multi-channel image ({img.GetNumberOfComponentsPerPixel()} components per voxel); "
            "UniMed needs one single-channel 3-D volume",
        )
    dim = img.GetDimension()
    # ITK arrays are (k, j, i) (C order over the last axis = i); reverse to nibabel's (i, j, k).
    array = _check_array(sitk.GetArrayFromImage(img).transpose(tuple(range(dim))[::-1]), path)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[:3]
    lps[:3, 3] = np.asarray(img.GetOrigin(), dtype=np.float64)[:3]
    return Volume(array, _check_affine(lps_to_ras(lps), path), path, meta)


def _itk_problem(error: Exception) -> str:
    """ITK's own reason, without its 'Exception thrown in ... .cxx:N' and object-address lines."""
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [re.sub(r"^(itk|sitk|ITK)[: ]+ERROR: (\w+\(0x[0-9a-f]+\): )?", "", line) for line in lines if line]
    kept = [line for line in kept if not line.startswith("Exception thrown") and ".cxx:" not in line]
    return " ".join(kept)[-300:] or type(error).__name__


def _read_itk_file(path: Path, max_bytes: int | None) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only
        _check_size(path, (*reader.GetSize(), reader.GetNumberOfComponents()), max_bytes)
        img = reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(path, f"corrupt, truncated or unreadable file ({_itk_problem(e)})") from e
    return _volume_from_itk(img, path, {"format": path.name.lower().rsplit(".", 1)[-1]})


def _read_dicom(path: Path, series_uid: str | None, max_bytes: int | None) -> Volume:
    from unimed_core.data.dicom_series import load_series, select_series

    folder = path if path.is_dir() else path.parent
    chosen = select_series(path, series_uid)
    _check_size(folder, chosen.shape, max_bytes)
    array, lps, meta = load_series(chosen, folder)
    return Volume(_check_array(array, folder), _check_affine(lps_to_ras(lps), folder), folder, meta)


def read_image(path: str | Path, series_uid: str | None = None, max_bytes: int | None = None) -> Volume:
    """Read one 3-D volume with its RAS affine, without resampling.

    Args:
        path: a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd`` file, a DICOM series folder or one
            ``.dcm`` file of a series.
        series_uid: for a DICOM folder holding several series, the SeriesInstanceUID to read.
        max_bytes: refuse, from the header and before reading voxels, a volume whose reading would need more
            memory than this (about 12 bytes per voxel); None: half the memory available now.

    Returns:
        A :class:`Volume`; ``meta["format"]`` names the format, DICOM adds ``modality``, ``series_uid`` and
        ``dicom_datasets`` (``dicom_resampled`` instead when jittered or tilted slices were resampled).

    Raises:
        ImageReadError: missing, unknown, corrupt or truncated file; 2-D, 4-D, multi-channel or empty volume;
            NaN/Inf voxels; degenerate affine; DICOM folder with no, several (without ``series_uid``, listing
            them) or gapped series (naming the missing positions); a volume larger than ``max_bytes`` allows.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    kind = _format_of(path)
    if kind == "nifti":
        return _read_nifti(path, max_bytes)
    if kind == "itk":
        return _read_itk_file(path, max_bytes)
    return _read_dicom(path, series_uid, max_bytes)


def _read_seg_nrrd(path: Path, label_map: LabelMap | None) -> Volume:
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as e:
        raise ImageReadError(path, f"corrupt or unreadable .seg.nrrd ({type(e).__name__}: {e})") from e
    segments = seg.get("segments", [])
    seg["voxels"] = np.asarray(seg["voxels"]).astype(np.int16)  # room for ids > 255 when relabelling
    names = [s.get("name", s.get("id", "")) for s in segments]
    if label_map is not None:
        ids = {name: i for i, name in label_map.mask_classes.items()}
        unknown = [n for n in names if n not in ids]
        if unknown:
            raise ImageReadError(path, f"segments {unknown} are not in the label map {list(ids)}")
        pairs = [(n, ids[n]) for n in names]
    elif seg["voxels"].ndim == 3:
        pairs = [(n, int(s["labelValue"])) for n, s in zip(names, segments)]
    else:  # overlapping layers and no label map: number segments in file order
        pairs = [(n, i + 1) for i, n in enumerate(names)]
    if len({n for n, _ in pairs}) != len(pairs):
        raise ImageReadError(path, f"segment names are not unique: {names}")
    flat = slicerio.extract_segments(seg, pairs)
    array = _check_array(np.asarray(flat["voxels"]), path, "label volume")
    affine = _check_affine(lps_to_ras(np.asarray(seg["ijkToLPS"], dtype=np.float64)), path)
    return Volume(array, affine, path, {"format": "seg.nrrd", "segment_names": {v: n for n, v in pairs}})


def read_label(
    path: str | Path, reference: Volume | None = None, label_map: LabelMap | None = None, series_uid: str | None = None
) -> Volume:
    """Read an integer label volume and check it lies on the reference image's grid.

    Args:
        path: any format of :func:`read_image`, or a Slicer ``.seg.nrrd``.
        reference: the image the labels belong to; when given, shape and affine must match it
            (affine within :data:`GEOMETRY_ATOL_MM`).
        label_map: for ``.seg.nrrd``, map segment names to the label map's ids (so a Slicer file whose "liver"
            segment has another label value still reads as our id); otherwise the file's label values are kept.
        series_uid: passed to :func:`read_image` for DICOM folders.

    Returns:
        A :class:`Volume` with a non-negative integer array (``int16`` unless the file's integer type is kept);
        ``meta["segment_names"]`` (id → name) for ``.seg.nrrd``.

    Raises:
        ImageReadError: as :func:`read_image`, plus non-integer or negative labels and
            "label geometry does not match image".
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.name.lower().endswith(".seg.nrrd"):
        vol = _read_seg_nrrd(path, label_map)
    else:
        vol = read_image(path, series_uid=series_uid)
        array = vol.array
        if np.issubdtype(array.dtype, np.floating):
            if not np.array_equal(array, np.round(array)):
                raise ImageReadError(path, "label volume has non-integer values")
            vol.array = array.astype(np.int32 if np.abs(array).max() > np.iinfo(np.int16).max else np.int16)
    if vol.array.min() < 0:
        raise ImageReadError(path, f"label volume has negative values (min {vol.array.min()})")
    if reference is not None:
        diff = float(np.abs(vol.affine - reference.affine).max()) if vol.shape == reference.shape else None
        if diff is None or diff > GEOMETRY_ATOL_MM:
            detail = f"shape {vol.shape} vs {reference.shape}" if diff is None else f"affines differ by {diff:.3g} mm"
            raise ImageReadError(path, f"label geometry does not match image {reference.path} ({detail})")
    return vol


def _ras_to_itk(array: np.ndarray, affine: np.ndarray) -> Any:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    lps = lps_to_ras(affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    return img


def _write_seg_nrrd(labels: np.ndarray, reference: Volume, tmp: Path, label_map: LabelMap | None) -> None:
    import slicerio

    present = [int(v) for v in np.unique(labels) if v != 0]
    names = dict(label_map.mask_classes) if label_map is not None else {i: f"label_{i}" for i in present}
    segments = []
    # With a label map every class gets a segment, empty ones too, so Slicer users can paint missing classes.
    for label_id in sorted(i for i in names if i != 0):
        mask = labels == label_id
        idx = np.nonzero(mask)
        extent = [int(v) for axis in idx for v in (axis.min(), axis.max())] if mask.any() else [0, -1, 0, -1, 0, -1]
        color = label_map.color(names[label_id]) if label_map is not None else (128, 128, 128)
        segment = {
            "id": f"Segment_{label_id}",
            "name": names[label_id],
            "color": [c / 255.0 for c in color],
            "labelValue": label_id,
            "layer": 0,
            "extent": extent,
        }
        codes = label_map.codes(names[label_id]) if label_map is not None else None
        if codes is not None:  # Slicer's terminology fields, from the label map's codes
            segment["terminology"] = {"contextName": "UniMed label map", **{k: list(v) for k, v in codes.items()}}
        segments.append(segment)
    voxels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int16)
    seg = {"voxels": voxels, "ijkToLPS": lps_to_ras(reference.affine), "segments": segments}
    slicerio.write_segmentation(str(tmp), seg)


def write_label(labels: np.ndarray, reference: Volume, path: str | Path, label_map: LabelMap | None = None) -> Path:
    """Write a label volume on the reference image's grid, atomically.

    Args:
        labels: non-negative integer array with ``reference.shape``.
        reference: the image the labels were computed on; its affine is written.
        path: ``.nii.gz``/``.nii`` (int16, qform and sform), ``.seg.nrrd`` (Slicer segments with names and
            colours from ``label_map``, label value = mask id), ``.nrrd`` (LPS space, as ITK writes), ``.mha``.
            Use :func:`unimed_core.data.dicom_seg.write_dicom_seg` for DICOM SEG.
        label_map: names and colours of the ids, for ``.seg.nrrd``.

    Returns:
        ``path``.

    Raises:
        ValueError: labels of the wrong shape, non-integer, negative or above int16, or ids outside the label map.
        ImageWriteError: unknown output format, or ``path`` is the reference image itself.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise ValueError(f"labels shape {labels.shape} does not match the reference image shape {reference.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.int16)
    if not np.issubdtype(labels.dtype, np.integer) and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"labels must be integer ids, got dtype {labels.dtype} with fractional values")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int16).max):
        raise ValueError(f"label ids must be in 0..32767, got {labels.min()}..{labels.max()}")
    labels = labels.astype(np.int16)
    if label_map is not None:
        unknown = sorted(set(np.unique(labels).tolist()) - set(label_map.mask_classes))
        if unknown:
            raise ValueError(f"label ids {unknown} are not in the label map {label_map.mask_classes}")
    if reference.path is not None and path.resolve() == reference.path.resolve():
        raise ImageWriteError(path, "refusing to overwrite the input image")
    name = path.name.lower()
    suffix = next((s for s in LABEL_WRITE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        hint = " (use write_dicom_seg for DICOM SEG)" if name.endswith(".dcm") else ""
        raise ImageWriteError(path, f"unknown label output format; supported: {', '.join(LABEL_WRITE_SUFFIXES)}{hint}")
    with atomic_write(path, suffix) as tmp:
        if suffix in (".nii.gz", ".nii"):
            import nibabel as nib

            img = nib.Nifti1Image(labels, reference.affine)
            img.set_sform(reference.affine, code=1)  # 1 = scanner anatomical coordinates
            img.set_qform(reference.affine, code=1)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(tmp))
        elif suffix == ".seg.nrrd":
            _write_seg_nrrd(labels, reference, tmp, label_map)
        else:
            import SimpleITK as sitk

            sitk.WriteImage(_ras_to_itk(labels, reference.affine), str(tmp), useCompression=True)
    return path
