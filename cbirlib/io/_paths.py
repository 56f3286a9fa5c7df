"""What a path names: the file-name rules shared by the readers.

Which suffix is which format, and the errors for a path that does not exist or whose
type no reader takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from cbirlib.errors import VolumeNotFoundError, VolumeReadError

#: File name endings read as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def nifti_stem(path: str | os.PathLike[str]) -> str | None:
    """File name without its NIfTI suffix, or None if it is not a NIfTI name."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _unsupported(path: Path) -> VolumeReadError:
    hint = ""
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        hint = f"; for DICOM pass the folder of the series ({path.parent})"
    return VolumeReadError(
        f"{path}: unsupported file type; expected a NIfTI file "
        f"({', '.join(NIFTI_SUFFIXES)}) or a folder holding one DICOM series{hint}"
    )


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VolumeNotFoundError(f"{path}: no such file or folder")
