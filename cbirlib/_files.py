"""File helpers shared by the index and the weights loader."""

from __future__ import annotations

import hashlib
import os


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
