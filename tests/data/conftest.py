"""Fixtures shared by the image I/O tests: a synthetic CT DICOM series writer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
) -> str:
    """Write ``hu[i, j, k]`` as a CT Image Storage series (int16 + rescale intercept -1024), one file per slice k.

    The geometry follows DICOM: ImageOrientationPatient holds the LPS directions of increasing column (i) and
    row (j); PixelSpacing is (row spacing, column spacing). Slices listed in ``skip`` are left out (a gap).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_FLIP @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    study, series, frame = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    for k in range(hu.shape[2]):
        if k in set(skip):
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = folder / f"{series[-6:]}_{k:03d}.dcm"
        ds = FileDataset(str(name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^P", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "CT", "test"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.ImagePositionPatient = [f"{v:.10f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [f"{spacing[1]:.10f}", f"{spacing[0]:.10f}"]
        ds.SliceThickness = f"{spacing[2]:.10f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T + 1024).astype(np.int16)).tobytes()
        ds.save_as(name, enforce_file_format=True)
    return series


@pytest.fixture
def write_ct_series() -> Callable[..., str]:
    """The synthetic CT series writer; returns the SeriesInstanceUID it wrote."""
    return _write_ct_series
