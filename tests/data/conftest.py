"""Fixtures shared by the image I/O tests: a synthetic CT DICOM series writer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _write_ct_series(
    folder: Path,
    hu: np.ndarray,
    affine_ras: np.ndarray,
    series_uid: str | None = None,
    skip: Iterable[int] = (),
    study_uid: str | None = None,
    *,
    positions: Sequence[Sequence[float]] | None = None,
    rescale: Sequence[tuple[float, float]] | None = None,
    transfer_syntax: str | None = None,
    modality: str = "CT",
    description: str = "",
    tilt: float | None = None,
) -> str:
    """Write ``hu[i, j, k]`` as a CT Image Storage series (int16 + rescale intercept -1024), one file per slice k.

    The geometry follows DICOM: ImageOrientationPatient holds the LPS directions of increasing column (i) and
    row (j); PixelSpacing is (row spacing, column spacing). Slices listed in ``skip`` are left out (a gap).

    Scanner habits, on request: ``positions`` (LPS ImagePositionPatient of each slice instead of the affine's:
    jitter, tilt), ``rescale`` ((slope, intercept) of each slice; stored values are ``round((hu - b) / m)``),
    ``transfer_syntax`` (RLE, JPEG-LS and JPEG 2000 lossless through pydicom's encoders; JPEG lossless and
    JPEG baseline through imagecodecs, baseline storing 8-bit values), ``modality``, ``description``,
    ``tilt`` (GantryDetectorTilt, degrees).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_FLIP @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    study, series, frame = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    for k in range(hu.shape[2]):
        if k in set(skip):
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = folder / f"{series[-6:]}_{k:03d}.dcm"
        ds = FileDataset(str(name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^P", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", modality, "test"
        ds.SeriesDescription = description
        if tilt is not None:
            ds.GantryDetectorTilt = f"{tilt:.6f}"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        position = lps[:3, 3] + k * lps[:3, 2] if positions is None else np.asarray(positions[k], dtype=float)
        ds.ImagePositionPatient = [f"{v:.10f}" for v in position]
        ds.PixelSpacing = [f"{spacing[1]:.10f}", f"{spacing[0]:.10f}"]
        ds.SliceThickness = f"{spacing[2]:.10f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        slope, intercept = (1.0, -1024.0) if rescale is None else rescale[k]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", f"{slope:g}", "HU"
        stored = np.ascontiguousarray(np.rint((hu[:, :, k].T - intercept) / slope))
        ds.PixelData = np.ascontiguousarray(stored.astype(np.int16)).tobytes()
        if transfer_syntax is not None:
            _compress(ds, stored, transfer_syntax)
        ds.save_as(name, enforce_file_format=True)
    return series


def _compress(ds, stored: np.ndarray, transfer_syntax: str) -> None:
    """Compress one slice's pixel data in place, with pydicom's encoders where it has one, else imagecodecs."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, JPEGLosslessSV1

    if transfer_syntax not in (JPEGBaseline8Bit, JPEGLosslessSV1):
        ds.compress(transfer_syntax, encoding_plugin="pyjpegls" if "4.80" in transfer_syntax else "")
        return
    if transfer_syntax == JPEGBaseline8Bit:  # 8-bit only: lossy, unsigned
        pixels = stored.astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        frame = imagecodecs.jpeg8_encode(pixels, level=95)
        ds.LossyImageCompression = "01"
    else:  # lossless, unsigned 16-bit (stored values are >= 0 with intercept -1024)
        pixels = stored.astype(np.uint16)
        ds.PixelRepresentation = 0
        frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=16)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


@pytest.fixture
def write_ct_series() -> Callable[..., str]:
    """The synthetic CT series writer; returns the SeriesInstanceUID it wrote."""
    return _write_ct_series
