"""What a path names: the file-name rules shared by the readers.

Which suffix is which format, and the errors for a path that does not exist or whose
type no reader takes. The NIfTI and DICOM rules live in :mod:`cbirlib._files` (code
below the readers needs them too).
"""

from __future__ import annotations

import os
from pathlib import Path

from cbirlib._files import DICOM_SUFFIXES, NIFTI_SUFFIXES
from cbirlib.errors import VolumeNotFoundError, VolumeReadError

#: File name endings read as NRRD (``.nhdr``: a detached header).
NRRD_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr")


def nrrd_stem(path: str | os.PathLike[str]) -> str | None:
    """File name without its NRRD suffix, or None if it is not an NRRD name.

    Examples
    --------
    >>> nrrd_stem("ct.nrrd"), nrrd_stem("head.NHDR"), nrrd_stem("ct.nii.gz")
    ('ct', 'head', None)
    """
    name = Path(path).name
    for suffix in NRRD_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _unsupported(path: Path) -> VolumeReadError:
    hint = ""
    if path.suffix.lower() in DICOM_SUFFIXES:
        hint = f"; for DICOM pass the folder of the series ({path.parent})"
    return VolumeReadError(
        f"{path}: unsupported file type; expected a NIfTI file "
        f"({', '.join(NIFTI_SUFFIXES)}), an NRRD file ({', '.join(NRRD_SUFFIXES)}), a "
        f"multi-frame DICOM file or a folder holding one DICOM series{hint}"
    )


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VolumeNotFoundError(f"{path}: no such file or folder")
