"""Write small synthetic DICOM series (and matching NIfTI files) for tests.

``write_dicom_series(folder, array, ...)`` takes a volume in the cbirlib layout
(``(Z, Y, X) = (S, A, R)``, canonical RAS+) and writes one CT/MR slice file per
``z``, so that :func:`cbirlib.io.load_volume` must give back ``array`` exactly
(values are stored as int16 through ``RescaleSlope``/``RescaleIntercept``).
``write_nifti(path, array, ...)`` writes the same content as a canonical NIfTI file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-987654321"
PATIENT_BIRTH_DATE = "19510704"


def canonical_affine(
    spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)
) -> npt.NDArray[np.float64]:
    """RAS affine of a canonical ``(x, y, z)`` grid: spacing ``(dz, dy, dx)``, origin RAS mm."""
    dz, dy, dx = spacing
    affine = np.diag([dx, dy, dz, 1.0])
    affine[:3, 3] = origin
    return affine


def write_nifti(
    path: Path,
    array: npt.NDArray[np.floating] | npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> Path:
    """Write a ``(Z, Y, X)`` array (bool masks as uint8) as a canonical (RAS+) NIfTI file."""
    data = np.asarray(array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)  # NIfTI has no bool type
    data = data.transpose(2, 1, 0)
    img = nib.Nifti1Image(data, canonical_affine(spacing, origin))  # type: ignore[no-untyped-call]
    nib.save(img, path)
    return path


def write_dicom_series(
    folder: Path,
    array: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    description: str = "synthetic",
    mirror_x: bool = False,
    shuffle: bool = True,
    skip: Sequence[int] = (),
    seed: int = 0,
    prefix: str = "img",
    tilt_degrees: float = 0.0,
    write_modality: bool = True,
) -> str:
    """Write ``array`` (``(Z, Y, X)`` = (S, A, R)) as a DICOM series; return its series UID.

    Parameters
    ----------
    spacing, origin
        ``(dz, dy, dx)`` in mm and the RAS position of voxel ``(0, 0, 0)``.
    slope, intercept
        Stored value = (value - intercept) / slope, written as int16.
    mirror_x
        Use ImageOrientationPatient ``[-1, 0, 0, 0, 1, 0]`` (columns run towards the
        patient's right and the slice normal points inferior) instead of the usual
        ``[1, 0, 0, 0, 1, 0]``.
    shuffle
        Give files random names and InstanceNumbers unrelated to position.
    skip
        Slice indices not written (to make gaps).
    tilt_degrees
        Gantry tilt: the slice planes are rotated by this angle about the left-right
        axis (ImageOrientationPatient's column direction gets a z component) while the
        slice positions still advance along z by ``dz``, as on a tilted CT gantry.
    write_modality
        Write the Modality tag (False: leave it out).
    """
    arr = np.asarray(array, dtype=np.float64)
    n_z, n_y, n_x = arr.shape
    dz, dy, dx = spacing
    ox, oy, oz = origin
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(n_z) + 1 if shuffle else np.arange(n_z) + 1
    name_keys = rng.permutation(n_z) if shuffle else np.arange(n_z)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_z):
        if k in skip:
            continue
        # DICOM row r runs A -> P (y = n_y-1-r); column c runs R -> L (x = n_x-1-c),
        # or L -> R (x = c) when mirror_x.
        pixels = arr[k, ::-1, :] if mirror_x else arr[k, ::-1, ::-1]
        x0 = ox if mirror_x else ox + (n_x - 1) * dx  # RAS x of pixel (0, 0)
        y0 = oy + (n_y - 1) * dy
        stored = np.round((pixels - intercept) / slope).astype(np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = PATIENT_BIRTH_DATE
        if write_modality:
            ds.Modality = modality
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.InstanceNumber = int(numbers[k])
        tilt = np.radians(tilt_degrees)
        col_dir = [0, 1, 0] if tilt == 0 else [0.0, float(np.cos(tilt)), float(np.sin(tilt))]
        ds.ImageOrientationPatient = [-1 if mirror_x else 1, 0, 0, *col_dir]
        ds.ImagePositionPatient = [-x0, -y0, oz + k * dz]  # RAS -> LPS
        ds.PixelSpacing = [dy, dx]  # (between rows, between columns)
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = n_y, n_x
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        ds.save_as(folder / f"{prefix}{name_keys[k]:04d}.dcm", enforce_file_format=True)
    return str(series_uid)
