"""Open a saved index of any kind: :func:`load_index` dispatches on ``meta.json``'s kind.

Examples
--------
>>> import tempfile, numpy as np
>>> from cbirlib.index import ExactIndex, load_index
>>> path = tempfile.mkdtemp() + "/idx"
>>> ExactIndex(3).save(path)
>>> type(load_index(path)).__name__
'ExactIndex'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbirlib.errors import IndexFormatError
from cbirlib.index.base import BaseIndex
from cbirlib.index.exact import ExactIndex
from cbirlib.index.files import META_NAME, read_json, resolve_dir
from cbirlib.index.hnsw import SliceIndex
from cbirlib.index.meta import read_meta
from cbirlib.index.milvus import open_pointer

if TYPE_CHECKING:
    from cbirlib.index.milvus import MilvusIndex

__all__ = ["INDEX_KINDS", "load_index", "open_index"]

#: ``meta.json`` kind -> the class that reads it.
INDEX_KINDS: dict[str, type[BaseIndex]] = {"hnsw": SliceIndex, "exact": ExactIndex}


def load_index(
    path: str | os.PathLike[str],
    *,
    mmap: bool = True,
    dim: int | None = None,
    verify: bool = True,
) -> BaseIndex:
    """Load the index saved at ``path``, whatever its kind (see :meth:`SliceIndex.load`).

    Raises
    ------
    IndexFormatError
        No index there, or a malformed, corrupt or unknown-kind one (a Milvus pointer
        directory is opened by :func:`open_index`).
    """
    if _pointer(path) is not None:
        raise IndexFormatError(
            f"index {str(path)!r} points to a Milvus collection; open it with "
            "cbirlib.index.open_index"
        )
    kind = read_meta(path).kind
    return INDEX_KINDS[kind].load(path, mmap=mmap, dim=dim, verify=verify)


def open_index(
    path: str | os.PathLike[str],
    *,
    mmap: bool = True,
    dim: int | None = None,
    verify: bool = True,
) -> BaseIndex | MilvusIndex:
    """:func:`load_index`, or the :class:`MilvusIndex` a pointer directory names.

    A directory written by :meth:`MilvusIndex.save` (``meta.json`` of kind ``"milvus"``)
    opens the Milvus collection it names, with the token from the environment variable
    ``CBIRLIB_MILVUS_TOKEN`` (``mmap`` and ``verify`` do not apply to it).
    """
    pointer = _pointer(path)
    if pointer is not None:
        return open_pointer(pointer[0], pointer[1], dim=dim)
    return load_index(path, mmap=mmap, dim=dim, verify=verify)


def _pointer(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]] | None:
    """``(directory, meta)`` when ``path`` holds a Milvus pointer, else None."""
    try:
        directory = resolve_dir(path)
        raw = read_json(directory / META_NAME)
    except IndexFormatError:  # missing, or between the renames of a save: load() says
        return None
    if isinstance(raw, dict) and raw.get("kind") == "milvus":
        return directory, raw
    return None
