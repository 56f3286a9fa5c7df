"""Gzip decompression of whole files: ISA-L's igzip when installed, else zlib.

``.nii.gz`` files are inflated here, either as a stream (:func:`open_gzip`: the readers
cast the voxels into the volume's array a few slices at a time) or in one call
(:func:`gunzip`: the bytes handed to nibabel, which decodes them as before). `python-isal
<https://pypi.org/project/isal/>`_ (the extra ``cbirlib[fast-gzip]``) decompresses about
twice as fast as zlib; the bytes are the same whichever backend inflates them.

The environment variable ``CBIRLIB_GZIP`` chooses: ``auto`` (default: isal when
installed, else zlib), ``isal``, ``zlib``, or ``nibabel`` (no decompression here:
nibabel opens the file itself, as cbirlib did before).

Examples
--------
>>> import gzip, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.gz"
>>> _ = path.write_bytes(gzip.compress(b"slices" * 3))
>>> gunzip(path)
b'slicesslicesslices'
>>> gzip_backend() in ("isal", "zlib", "nibabel")
True
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import BinaryIO, cast

from cbirlib.errors import SettingError

__all__ = ["BACKENDS", "ENV_GZIP", "gunzip", "gzip_backend", "open_gzip"]

ENV_GZIP = "CBIRLIB_GZIP"
BACKENDS = ("auto", "isal", "zlib", "nibabel")


def _has_isal() -> bool:
    try:
        import isal.igzip  # noqa: F401
    except ImportError:
        return False
    return True


def gzip_backend() -> str:
    """The backend in use: ``"isal"``, ``"zlib"`` or ``"nibabel"`` (see ``CBIRLIB_GZIP``).

    Raises
    ------
    SettingError
        ``CBIRLIB_GZIP`` holds another value, or ``isal`` is asked for and not installed.
    """
    value = os.environ.get(ENV_GZIP, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise SettingError(f"{ENV_GZIP}={value!r}; valid: {', '.join(BACKENDS)}")
    if value == "auto":
        return "isal" if _has_isal() else "zlib"
    if value == "isal" and not _has_isal():
        raise SettingError(
            f"{ENV_GZIP}=isal but python-isal is not installed: pip install 'cbirlib[fast-gzip]'"
        )
    return value


def gunzip(path: str | os.PathLike[str], *, backend: str | None = None) -> bytes:
    """The decompressed content of a gzip file (all members, as ``gzip`` reads them).

    Parameters
    ----------
    path
        A gzip file.
    backend
        ``"isal"`` or ``"zlib"``; default :func:`gzip_backend` (``"nibabel"`` means zlib
        here).

    Raises
    ------
    OSError, EOFError
        Not a gzip file, or a truncated or corrupt one (the backend's own error).
    """
    chosen = backend or gzip_backend()
    data = Path(path).read_bytes()
    if chosen == "isal":
        from isal import igzip

        return bytes(igzip.decompress(data))  # type: ignore[no-untyped-call]
    return gzip.decompress(data)


def open_gzip(path: str | os.PathLike[str], *, backend: str | None = None) -> BinaryIO:
    """A gzip file opened for reading its decompressed content as a stream.

    The library's own reader (``isal.igzip.open`` or ``gzip.open``): every member,
    padding and CRC checked as :func:`gunzip` does, without holding the whole content.

    Parameters
    ----------
    path
        A gzip file.
    backend
        ``"isal"`` or ``"zlib"``; default :func:`gzip_backend` (``"nibabel"`` means zlib
        here).

    Raises
    ------
    OSError
        The file cannot be opened. Reading a truncated or corrupt file raises the
        backend's own error (``OSError``, ``EOFError``, ``zlib.error``).
    """
    chosen = backend or gzip_backend()
    if chosen == "isal":
        from isal import igzip

        return cast(BinaryIO, igzip.open(path, "rb"))  # type: ignore[no-untyped-call]
    return cast(BinaryIO, gzip.open(path, "rb"))
