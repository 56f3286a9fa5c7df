"""Enhanced (multi-frame) CT/MR DICOM files through highdicom (the ``highdicom`` extra).

One file holds the whole series: highdicom reads each frame's position and orientation
from the Per-frame (or Shared) Functional Groups (``PlanePositionSequence``,
``PlaneOrientationSequence``, ``PixelMeasuresSequence``), sorts the frames along the
slice normal and applies the rescale slope and intercept (``PixelValueTransformation``
or the modality LUT). Its voxel -> LPS affine is turned into RAS and the image goes
through the canonical layout of :mod:`cbirlib.io._canonical`, like every other format.
Only the geometry, the pixels and (in :mod:`cbirlib.io.dicom`) ``Modality``,
``SeriesNumber`` and the series UID are read; no patient data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cbirlib.errors import (
    DicomSeriesError,
    InvalidVolumeError,
    OptionalDependencyError,
    VolumeReadError,
)
from cbirlib.io._canonical import _LPS_TO_RAS, _Canonical, _canonical_zyx


def _highdicom(what: str) -> Any:
    try:
        import highdicom
    except ImportError:
        raise OptionalDependencyError(
            f"{what} needs highdicom: pip install cbirlib[highdicom]"
        ) from None
    return highdicom


def _header(path: Path) -> Any:
    """The file's DICOM header (None when pydicom cannot read it: highdicom reports that)."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # a damaged file: highdicom's read names it
        return None


def _has_frame_positions(ds: Any) -> bool:
    """Every frame has an ``ImagePositionPatient``: shared, per frame, or (legacy) top level."""
    if ds is None or "ImagePositionPatient" in ds:
        return True
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(name)
        if groups and all("PlanePositionSequence" in group for group in groups):
            return True
    return False


def _read_enhanced(path: Path) -> _Canonical:
    """Read a multi-frame DICOM image file into the canonical layout.

    Raises
    ------
    OptionalDependencyError
        highdicom is not installed.
    VolumeReadError
        The file cannot be read as a DICOM image.
    DicomSeriesError
        The frames are not one regularly spaced 3D volume (several stacks, echoes or
        time points, missing positions).
    """
    hd = _highdicom("reading a multi-frame (Enhanced) DICOM file")
    if not _has_frame_positions(_header(path)):
        raise DicomSeriesError(
            f"{path}: the frames of this multi-frame image have no positions in space (no "
            "PlanePositionSequence or ImagePositionPatient), so they cannot be stacked into "
            "a volume"
        )
    try:
        image = hd.imread(str(path))
    except Exception as exc:  # InvalidDicomError, unsupported SOP class, damaged file
        raise VolumeReadError(
            f"{path}: cannot read as a multi-frame DICOM image ({type(exc).__name__}: {exc})"
        ) from None
    try:
        volume = image.get_volume(dtype=np.float32)
    except Exception as exc:  # highdicom's RuntimeError/ValueError on irregular frames
        raise DicomSeriesError(
            f"{path}: the frames of this multi-frame image do not form one regularly spaced "
            f"3D volume ({type(exc).__name__}: {exc})"
        ) from None
    array = np.asarray(volume.array, dtype=np.float32)  # (slice, row, column)
    if array.ndim != 3:
        raise InvalidVolumeError(
            f"{path}: expected one 3D volume, got frames of shape {array.shape} "
            "(several channels, echoes or time points)"
        )
    affine = _LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)
    img = nib.Nifti1Image(array, affine)  # type: ignore[no-untyped-call]
    return _canonical_zyx(img, str(path))
