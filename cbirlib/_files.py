"""File helpers shared across layers: file digests and the names of image files.

The owner of the suffix rules that code below :mod:`cbirlib.io` needs too (saving a
volume, finding volumes in folders) without importing the readers (nibabel, pydicom).

Examples
--------
>>> nifti_stem("scans/ct.nii.gz"), nifti_stem("CT.NII"), nifti_stem("ct.nrrd")
('ct', 'CT', None)
>>> from pathlib import Path
>>> is_dicom_file(Path("IM0001.IMA")), is_dicom_file(Path("no/such/file"))
(True, False)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = [
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "TOTALSEG_IMAGE_FILES",
    "is_dicom_file",
    "nifti_stem",
    "sha256_file",
]

#: File name endings read as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: File name endings of DICOM files (a file without one is DICOM if it holds ``DICM``).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".ima", ".dicom")
#: The image file of a TotalSegmentator subject folder (CT layout first, then MRI) -> the
#: modality the layout states for it.
TOTALSEG_IMAGE_FILES: dict[str, str] = {"ct.nii.gz": "CT", "mri.nii.gz": "MR"}


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 22) -> str:
    """The hex sha256 digest of a file, read in chunks (``OSError`` if unreadable).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def nifti_stem(path: str | os.PathLike[str]) -> str | None:
    """File name without its NIfTI suffix (any case), or None if it is not a NIfTI name."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM file: a DICOM suffix or the ``DICM`` preamble marker.

    The suffixes are :data:`DICOM_SUFFIXES` (any case); a file without one is DICOM if
    its bytes 128-131 are ``DICM``. An unreadable file is not.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False
