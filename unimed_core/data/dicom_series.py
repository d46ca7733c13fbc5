"""DICOM as scanners write it: find the image series in a folder and turn one into voxels and an LPS affine.

What a folder from a scanner or a PACS export holds, and what happens to it:

- **several series**: one is read when asked for by SeriesInstanceUID; otherwise the reader refuses and lists
  each series' description, modality and size;
- **non-image objects** (structured reports, segmentations, presentation states, key objects, RT structures,
  DICOMDIR, files that are not DICOM, images without patient geometry such as screenshots): skipped, each with
  a :class:`DicomNote` warning, never silently;
- **single-frame series** (one file per slice): sorted along the slice normal; pixel data decoded by pydicom
  (compressed transfer syntaxes through its decoder plugins: pylibjpeg-libjpeg for JPEG baseline/lossless,
  pyjpegls or pylibjpeg-libjpeg for JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, pydicom itself for RLE) and
  rescaled **per slice** with that slice's own slope and intercept (or modality LUT);
- **slice positions that jitter** (steps within ±10 % of the median step, as real series do) or **gantry
  tilt** (slices shifted in-plane from one to the next): the slices are resampled onto a regular grid
  perpendicular to them (linear interpolation between the two nearest slices), with a note saying by how much;
- **real gaps** (a step near a multiple of the others) and other uneven spacing, duplicate positions, mixed
  orientations: refused, naming the folder and the missing positions;
- **multi-frame (enhanced) CT/MR** objects: highdicom reads the per-frame geometry and rescale.

ITK's series reader (GDCM) stacks slices as if evenly spaced and untilted, and takes one pixel type from the
first slice (so a later slice's fractional rescale slope is truncated); highdicom's series reader refuses
irregular stacks. The regularisation here is what 3D Slicer's DICOM plugin does, which no library offers.

This module knows DICOM only; :mod:`unimed_core.data.image_io` turns its output into a ``Volume``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unimed_core.errors import ImageReadError

__all__ = ["DicomNote", "DicomSeries", "find_series", "select_series", "load_series", "JITTER_RTOL"]

# Steps between slices within this fraction of the median step are jitter (resampled); beyond, a gap.
JITTER_RTOL = 0.1
# Below this (mm), positions are taken as exact: DS text rounding and the normal's rounding stay far below it.
_EXACT_ATOL_MM = 1e-3
_ORIENTATION_ATOL = 1e-4


class DicomNote(UserWarning):
    """Something in a DICOM folder that was skipped or corrected while reading it (never done silently)."""


@dataclass
class DicomSeries:
    """One image series of a folder: its files and their headers (no pixel data), in file-name order."""

    uid: str
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)

    @property
    def first(self) -> Any:
        return self.headers[0]

    @property
    def frames(self) -> int:
        return sum(int(getattr(h, "NumberOfFrames", 1) or 1) for h in self.headers)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, slices or frames): the voxel grid's size before any resampling."""
        return int(getattr(self.first, "Columns", 0)), int(getattr(self.first, "Rows", 0)), self.frames

    def describe(self) -> str:
        """``UID (MODALITY, 'description', C x R x N)``: how a folder's series are listed to the user."""
        description = str(getattr(self.first, "SeriesDescription", "") or "")
        c, r, n = self.shape
        return f"{self.uid} ({getattr(self.first, 'Modality', '?')}, {description!r}, {c} x {r} x {n})"


def _has_geometry(ds: Any) -> bool:
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        return True
    shared = ds.get("SharedFunctionalGroupsSequence")
    return bool(shared) and "PlaneOrientationSequence" in shared[0] and "PerFrameFunctionalGroupsSequence" in ds


def _skip_reason(ds: Any) -> str | None:
    """Why a DICOM object is not part of an image volume, or None when it is."""
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = getattr(sop, "name", str(sop))
    if sop is None or "SeriesInstanceUID" not in ds:
        return "not an image (no SOP class or series; a DICOMDIR?)"
    if not str(name).endswith("Image Storage") or "Rows" not in ds:
        return f"not an image ({name})"
    if not _has_geometry(ds):
        return f"an image without patient position and orientation ({name}), e.g. a screenshot"
    return None


def find_series(folder: Path) -> tuple[dict[str, DicomSeries], list[str]]:
    """The image series of ``folder`` (not its sub-folders) and one note per file or folder left out."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, DicomSeries] = {}
    notes: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            notes.append(f"sub-folder {path.name}/ not searched (give it as the input to read it)")
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            notes.append(f"{path.name} skipped: not a readable DICOM file ({type(e).__name__})")
            continue
        reason = _skip_reason(ds)
        if reason is not None:
            notes.append(f"{path.name} skipped: {reason}")
            continue
        uid = str(ds.SeriesInstanceUID)
        series.setdefault(uid, DicomSeries(uid))
        series[uid].files.append(path)
        series[uid].headers.append(ds)
    return series, notes


def select_series(path: str | Path, series_uid: str | None = None) -> DicomSeries:
    """The series to read from a folder (or from the folder of one ``.dcm`` file, whose series it is).

    Notes on what was skipped are issued as :class:`DicomNote` warnings.

    Raises:
        ImageReadError: no image series; several and none chosen (listing them); the chosen one absent.
    """
    import pydicom

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if series_uid is None and not path.is_dir():
        try:
            series_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        except Exception as e:
            raise ImageReadError(path, f"corrupt or unreadable DICOM file ({type(e).__name__}: {e})") from e
    series, notes = find_series(folder)
    for note in notes:
        warnings.warn(DicomNote(f"{folder}: {note}"), stacklevel=3)
    if not series:
        detail = f" ({len(notes)} files or folders skipped: {'; '.join(notes[:3])})" if notes else ""
        raise ImageReadError(folder, f"no DICOM series found in the folder{detail}")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(s.describe() for s in series.values())
            raise ImageReadError(
                folder,
                f"folder holds {len(series)} DICOM series: {listing}. Choose one with series_uid= "
                "(unimed-infer --series UID)",
            )
        series_uid = next(iter(series))
    if series_uid not in series:
        listing = "; ".join(s.describe() for s in series.values())
        raise ImageReadError(folder, f"DICOM series {series_uid} not found; the folder holds {listing}")
    return series[series_uid]


# ------------------------------------------------------------------------------------------------ geometry


def _orientation(chosen: DicomSeries, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit LPS directions of increasing column (i), increasing row (j) and the slice normal."""
    iops = np.array([np.asarray(h.ImageOrientationPatient, dtype=np.float64) for h in chosen.headers])
    spread = np.abs(iops - iops[0]).max()
    if spread > _ORIENTATION_ATOL:
        raise ImageReadError(
            folder,
            f"DICOM series {chosen.uid} mixes slice orientations (they differ by up to {spread:.3g}); "
            "a localizer or several stacks in one series?",
        )
    row, col = iops[0][:3], iops[0][3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _check_steps(positions: np.ndarray, chosen: DicomSeries, files: list[Path], folder: Path) -> float:
    """The median step along the normal; refuse duplicates, gaps (naming the missing positions) and uneven steps."""
    steps = np.diff(positions)
    median = float(np.median(steps))
    duplicates = np.nonzero(steps <= _EXACT_ATOL_MM)[0]
    if len(duplicates):
        where = ", ".join(f"{positions[i]:.3f} mm ({files[i].name}, {files[i + 1].name})" for i in duplicates[:5])
        raise ImageReadError(
            folder,
            f"DICOM series {chosen.uid} has {len(duplicates)} duplicate slice positions along the normal: {where}; "
            "several acquisitions, echoes or time points in one series cannot be stacked into one volume",
        )
    ratio = steps / median
    gaps = np.nonzero(ratio > 1 + JITTER_RTOL)[0]
    if len(gaps) and np.all(np.abs(ratio[gaps] - np.rint(ratio[gaps])) <= JITTER_RTOL * np.rint(ratio[gaps])):
        missing = [positions[i] + median * m for i in gaps for m in range(1, int(np.rint(ratio[i])))]
        shown = ", ".join(f"{p:.2f}" for p in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ImageReadError(
            folder,
            f"missing slices in DICOM series {chosen.uid}: {len(missing)} slice(s) of the {median:.4g} mm spacing absent "
            f"at {shown} mm along the slice normal (after {', '.join(files[i].name for i in gaps[:5])})",
        )
    if np.any(np.abs(ratio - 1) > JITTER_RTOL):
        raise ImageReadError(
            folder,
            f"unevenly spaced slices in DICOM series {chosen.uid}: steps between the {len(files)} slices range from "
            f"{steps.min():.4g} to {steps.max():.4g} mm (more than {JITTER_RTOL:.0%} from the median {median:.4g} mm)",
        )
    return median


def _decode(path: Path, folder: Path) -> tuple[np.ndarray, Any]:
    """One file's pixels after its own modality transform (rescale slope/intercept or LUT), as float64."""
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom 2 (the MONAI Label server's environment keeps it for pydicom-seg)
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise ImageReadError(folder, f"corrupt DICOM file {path.name} ({type(e).__name__}: {e})") from e
    try:
        pixels = ds.pixel_array
    except Exception as e:  # a missing decoder plugin, damaged pixel data, ...: the user needs the file and why
        syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "?")
        raise ImageReadError(
            folder,
            f"cannot decode the pixel data of {path.name} (transfer syntax {syntax}): {type(e).__name__}: {e}. "
            "Compressed DICOM needs pydicom's decoder plugins: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg",
        ) from e
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise ImageReadError(
            folder, f"{path.name} is a colour image ({ds.PhotometricInterpretation}); UniMed needs grey values"
        )
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64), ds


def _integer_if_exact(array: np.ndarray) -> np.ndarray:
    """int16 (or int32) when every value is an integer that fits, as ITK keeps CT in Hounsfield units; else float32."""
    if np.array_equal(array, np.round(array)):
        lo, hi = float(array.min()), float(array.max())
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return array.astype(dtype)
    return array.astype(np.float32)


def _regularise(
    stack: np.ndarray, offsets: np.ndarray, heights: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Resample slices at ``heights`` along the normal, each shifted in-plane by ``offsets`` (mm along i, j),
    onto a regular grid perpendicular to them that contains every slice.

    Returns the new stack, the in-plane offset (mm along i, j) of the new grid's first voxel from the first
    slice's, and the new slice spacing. Each output slice blends the two source slices around its height
    (linear), sampled bilinearly at the in-plane shift their interpolated position has there.
    """
    from scipy import ndimage

    n = len(heights)
    dz = (heights[-1] - heights[0]) / (n - 1)
    shifts = offsets / spacing[:2]  # voxels along i, j
    lo, hi = np.floor(shifts.min(0) + 1e-6), np.ceil(shifts.max(0) - 1e-6)
    size = (stack.shape[0] + int(hi[0] - lo[0]), stack.shape[1] + int(hi[1] - lo[1]))
    fill = float(stack.min())
    out = np.empty((*size, n), dtype=np.float32)
    ii, jj = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    for k in range(n):
        m = float(np.interp(heights[0] + k * dz, heights, np.arange(n)))
        m0 = min(int(np.floor(m)), n - 2)
        w = m - m0
        blend = (1 - w) * stack[:, :, m0] + w * stack[:, :, m0 + 1]
        shift = (1 - w) * shifts[m0] + w * shifts[m0 + 1] - lo  # where the blended slice's voxel 0 lies
        out[:, :, k] = ndimage.map_coordinates(blend, [ii - shift[0], jj - shift[1]], order=1, cval=fill)
    return out, lo * spacing[:2], dz


def _single_frames(chosen: DicomSeries, folder: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if len(chosen.files) == 1:
        raise ImageReadError(folder, f"2-D image: DICOM series {chosen.uid} has a single slice")
    row, col, normal = _orientation(chosen, folder)
    try:
        positions = np.array([np.asarray(h.ImagePositionPatient, dtype=np.float64) for h in chosen.headers])
        spacing = np.array([float(v) for v in chosen.first.PixelSpacing][::-1])  # (along i, along j)
    except (AttributeError, ValueError, TypeError) as e:
        raise ImageReadError(folder, f"DICOM series {chosen.uid} without usable slice geometry ({e})") from e
    order = np.argsort(positions @ normal, kind="stable")
    files = [chosen.files[i] for i in order]
    headers = [chosen.headers[i] for i in order]
    positions = positions[order]
    heights = positions @ normal
    median = _check_steps(heights, chosen, files, folder)
    drift = positions - positions[0] - np.outer(heights - heights[0], normal)
    offsets = np.stack([drift @ row, drift @ col], axis=1)  # in-plane shift of each slice, mm along i and j
    jitter = float(np.abs(np.diff(heights) - median).max())
    tilted = float(np.abs(offsets).max()) > _EXACT_ATOL_MM
    resample = tilted or jitter > _EXACT_ATOL_MM

    size = chosen.shape[:2]
    stack = np.empty((*size, len(files)), dtype=np.float32)
    for k, path in enumerate(files):
        pixels, _ = _decode(path, folder)
        if pixels.shape != (size[1], size[0]):
            raise ImageReadError(
                folder, f"{path.name} is {pixels.shape[1]} x {pixels.shape[0]}, the series {size[0]} x {size[1]}"
            )
        stack[:, :, k] = pixels.T  # DICOM rows are j, columns i
    meta: dict[str, Any] = {"dicom_files": files}
    dz = (heights[-1] - heights[0]) / (len(files) - 1)
    origin = positions[0]
    if resample:
        stack, corner, dz = _regularise(stack, offsets, heights, spacing)
        origin = positions[0] + corner[0] * row + corner[1] * col
        what = []
        if jitter > _EXACT_ATOL_MM:
            what.append(
                f"slice positions jitter by up to {jitter:.3g} mm ({jitter / median:.1%} of the {median:.4g} mm step)"
            )
        if tilted:
            tilt = np.degrees(np.arctan(np.linalg.norm(offsets[-1]) / (heights[-1] - heights[0])))
            what.append(
                f"slices are tilted by {tilt:.2f} degrees (gantry tilt {getattr(chosen.first, 'GantryDetectorTilt', '?')})"
            )
        warnings.warn(
            DicomNote(
                f"{folder}: {' and '.join(what)} in DICOM series {chosen.uid}; resampled onto a regular grid of "
                f"{stack.shape[0]} x {stack.shape[1]} x {stack.shape[2]} voxels with {dz:.4g} mm slices (linear interpolation)"
            ),
            stacklevel=4,
        )
        meta["dicom_resampled"] = " and ".join(what)
        meta["dicom_source_datasets"] = headers
    else:
        stack = _integer_if_exact(stack)
        meta["dicom_datasets"] = headers
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * spacing[0], col * spacing[1], normal * dz
    lps[:3, 3] = origin
    return stack, lps, meta


def _multi_frame(chosen: DicomSeries, folder: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    import highdicom as hd

    if len(chosen.files) > 1:
        raise ImageReadError(
            folder, f"DICOM series {chosen.uid} has {len(chosen.files)} multi-frame files; give one of them"
        )
    try:
        volume = hd.imread(chosen.files[0]).get_volume(dtype=np.float64)
    except Exception as e:  # highdicom says why the frames are not one regular volume
        raise ImageReadError(
            folder, f"multi-frame DICOM {chosen.files[0].name} is not one regular 3-D volume ({e})"
        ) from e
    if volume.array.ndim != 3:
        raise ImageReadError(
            folder, f"multi-frame DICOM {chosen.files[0].name} has {volume.array.ndim - 3} channel axes"
        )
    # highdicom indexes (slice, row, column); UniMed (i = column, j = row, k = slice)
    lps = np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    array = volume.array.transpose(2, 1, 0)
    # highdicom orders frames for a right-handed (slice, row, column); k runs along +normal here, as for series
    if np.dot(np.cross(lps[:3, 0], lps[:3, 1]), lps[:3, 2]) < 0:
        array = array[:, :, ::-1]
        lps[:3, 3] += (array.shape[2] - 1) * lps[:3, 2]
        lps[:3, 2] *= -1
    meta = {"dicom_files": list(chosen.files), "dicom_source_datasets": list(chosen.headers)}
    return _integer_if_exact(np.ascontiguousarray(array)), lps, meta


def load_series(chosen: DicomSeries, folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Voxels ``[i, j, k]`` (i along columns, j along rows, k along the slice normal), the voxel → **LPS** affine,
    and meta (``modality``, ``series_uid``, ``dicom_files``; ``dicom_datasets`` when the grid is the source
    slices; else ``dicom_source_datasets``, and ``dicom_resampled`` saying why when slices were resampled)."""
    folder = Path(folder)
    if chosen.frames > len(chosen.files):
        array, lps, meta = _multi_frame(chosen, folder)
    else:
        array, lps, meta = _single_frames(chosen, folder)
    meta.update(
        {"format": "dicom", "modality": str(getattr(chosen.first, "Modality", "")) or None, "series_uid": chosen.uid}
    )
    return array, lps, meta
