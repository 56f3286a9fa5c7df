"""A ``.nii.gz`` file inflated as a stream: its header first, then its voxels in pieces.

:class:`GzippedNifti` opens the file with :func:`cbirlib._gzip.open_gzip` (isal or
zlib, the library's streaming reader: every member, padding and CRC checked) and
inflates only the header and its extensions; nibabel parses them into an image whose
voxels are not read. Then either :meth:`GzippedNifti.cast_voxels_into` inflates the
voxels a few slices at a time and casts each piece into its place in an array, while
the piece is still in the CPU cache (one pass over memory, no buffer of the whole
inflated file), or :meth:`GzippedNifti.whole_image` inflates the rest and hands all of
it to nibabel, as a file read in one call.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import TracebackType
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cbirlib._gzip import open_gzip

__all__ = ["GzippedNifti"]

#: Bytes inflated at a time when casting (rounded to whole slices; at least one slice).
PIECE_BYTES = 2**20

_HEADER_BYTES = 544  # a NIfTI-2 header and its extension flag (NIfTI-1: 348 + 4)


class GzippedNifti:
    """An open ``.nii.gz`` file: its header image now, its voxels when asked.

    Parameters
    ----------
    path
        A gzipped NIfTI-1 or NIfTI-2 file.

    Raises
    ------
    OSError, EOFError, ValueError
        Not a gzip file or not a NIfTI header (the backend's or nibabel's own error).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open_gzip(path)
        try:
            self._head = self._file.read(_HEADER_BYTES)
            klass = _nifti_class(self._head)
            self._head += self._read_up_to(_data_offset(klass, self._head) - len(self._head))
            if _header_end(klass, self._head) is None:  # nibabel would read further
                self._head += self._file.read()
            # the image's proxy reads from this buffer: whole_image appends the rest
            self._bytes = io.BytesIO(self._head)
            holder = nib.FileHolder(filename=str(path), fileobj=self._bytes)
            #: The image of the header (nibabel's, its voxels not read).
            self.image: Any = klass.from_file_map({"header": holder, "image": holder})
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> GzippedNifti:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()

    def whole_image(self) -> Any:
        """The image over all of the file's inflated bytes (what nibabel would read).

        :attr:`image` itself, its buffer completed with the rest of the file: nibabel
        parsed the header from the same bytes it would read from the whole file
        (:func:`_header_end`), so nothing is parsed twice.
        """
        self._bytes.seek(0, io.SEEK_END)
        self._bytes.write(self._file.read())
        return self.image

    def _read_up_to(self, n: int) -> bytes:
        """Up to ``n`` more bytes (fewer at the end of the file), 1 MiB at a time."""
        parts = []
        while n > 0:
            part = self._file.read(min(n, PIECE_BYTES))
            if not part:
                break
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def voxels_fit(self) -> bool:
        """The stored voxels can be cast into place: a plain proxy, its offset read."""
        proxy = self.image.dataobj
        return (
            type(proxy) is nib.arrayproxy.ArrayProxy
            and proxy.order == "F"
            and 0 <= proxy.offset <= len(self._head)
        )

    def cast_voxels_into(self, out: npt.NDArray[Any]) -> bool:
        """Inflate the voxels and cast them into ``out``, a few slices at a time.

        Parameters
        ----------
        out
            A ``(Z, Y, X)`` view (any strides) of the stored ``(X, Y, Z)`` voxels:
            ``out[z, y, x]`` receives stored voxel ``(x, y, z)``; the file's first three
            dimensions are taken, so a 4D image with a trailing 1 fits.

        Returns
        -------
        bool
            ``False`` when the file ends before its last voxel (a short file). The
            file is read to its end either way, so a damaged stream raises.
        """
        proxy = self.image.dataobj
        dtype = np.dtype(proxy.dtype)
        n_z, n_y, n_x = out.shape
        slice_bytes = n_x * n_y * dtype.itemsize
        per_piece = max(1, PIECE_BYTES // max(slice_bytes, 1))
        buffer = bytearray(min(per_piece, n_z) * slice_bytes)
        view = memoryview(buffer)
        early = memoryview(self._head)[proxy.offset :]  # voxels inflated with the header

        def fill(target: memoryview) -> int:
            nonlocal early
            if not early:
                return int(self._file.readinto(target) or 0)  # type: ignore[attr-defined]
            n = min(len(early), len(target))
            target[:n] = early[:n]
            early = early[n:]
            return n

        for z in range(0, n_z, per_piece):
            k = min(per_piece, n_z - z)
            want, got = k * slice_bytes, 0
            while got < want:
                n = fill(view[got:want])
                if not n:
                    self._drain()
                    return False
                got += n
            piece = np.frombuffer(buffer, dtype, count=k * n_y * n_x).reshape(k, n_y, n_x)
            np.copyto(out[z : z + k], piece, casting="unsafe")
        self._drain()
        return True

    def _drain(self) -> None:
        """Read to the end, so that the gzip trailer (CRC and length) is checked."""
        while self._file.read(PIECE_BYTES):
            pass


def _data_offset(klass: Any, head: bytes) -> int:
    """The header's ``vox_offset`` (0 when unreadable: nibabel's parse then reports it)."""
    try:
        return int(_raw_header(klass, head).get_data_offset())
    except (ValueError, OverflowError, TypeError):
        return 0


def _raw_header(klass: Any, head: bytes) -> Any:
    return klass.header_class(head[: klass.header_class.sizeof_hdr], check=False)


def _header_end(klass: Any, head: bytes) -> int | None:
    """Where nibabel's header parse stops reading, if within ``head``; else None.

    It reads the header, the 4-byte extension flag and, when the flag is set, the
    extensions one after the other while at least 16 bytes remain before
    ``vox_offset``, each as long as its size field says (to the end of the file when
    ``vox_offset`` lies before the extensions, or a size is below 8: damaged headers).
    """
    n = int(klass.header_class.sizeof_hdr)
    if len(head) < n + 4 or head[n : n + 1] == b"\0":
        return n + 4
    try:
        raw = _raw_header(klass, head)
        remaining = float(raw["vox_offset"]) - (n + 4)
        order = "<" if raw.endianness == "<" else ">"
    except (ValueError, OverflowError, TypeError):
        return None
    if not remaining >= 0:  # negative or NaN
        return None
    position = n + 4
    while remaining >= 16:
        if position + 8 > len(head):
            return None
        size = int(np.frombuffer(head, f"{order}i4", count=1, offset=position)[0])
        if size < 8:
            return None
        position += size
        remaining -= size
        if position > len(head):
            return None
    return position


def _nifti_class(head: bytes) -> Any:
    """NIfTI-1 or NIfTI-2, from the header size (either byte order)."""
    sizeof_hdr = int.from_bytes(head[:4], "little")
    if sizeof_hdr not in (348, 540):
        sizeof_hdr = int.from_bytes(head[:4], "big")
    return nib.Nifti2Image if sizeof_hdr == 540 else nib.Nifti1Image
