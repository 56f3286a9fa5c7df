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
from typing import TYPE_CHECKING

from cbirlib.index.base import BaseIndex
from cbirlib.index.exact import ExactIndex
from cbirlib.index.hnsw import SliceIndex
from cbirlib.index.files import META_NAME, read_json, resolve_dir
from cbirlib.index.meta import read_meta

if TYPE_CHECKING:
    from cbirlib.index.milvus import MilvusIndex

__all__ = ["INDEX_KINDS", "load_index"]

#: ``meta.json`` kind -> the class that reads it.
INDEX_KINDS: dict[str, type[BaseIndex]] = {"hnsw": SliceIndex, "exact": ExactIndex}


def load_index(
    path: str | os.PathLike[str],
    *,
    mmap: bool = True,
    dim: int | None = None,
    verify: bool = True,
) -> BaseIndex | MilvusIndex:
    """Load the index saved at ``path``, whatever its kind (see :meth:`SliceIndex.load`).

    A directory written by :meth:`MilvusIndex.save <cbirlib.index.milvus.MilvusIndex.save>`
    (``meta.json`` of kind ``"milvus"``) opens the Milvus collection it names, with the
    token from the environment variable ``CBIRLIB_MILVUS_TOKEN`` (``mmap`` and ``verify``
    do not apply).

    Raises
    ------
    IndexFormatError
        No index there, or a malformed, corrupt or unknown-kind one.
    """
    directory = resolve_dir(path)
    raw = read_json(directory / META_NAME)
    if isinstance(raw, dict) and raw.get("kind") == "milvus":
        from cbirlib.index.milvus import open_pointer

        return open_pointer(directory, raw, dim=dim)
    kind = read_meta(path).kind
    return INDEX_KINDS[kind].load(path, mmap=mmap, dim=dim, verify=verify)
