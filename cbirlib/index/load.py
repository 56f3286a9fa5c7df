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

from cbirlib.index.base import BaseIndex
from cbirlib.index.exact import ExactIndex
from cbirlib.index.hnsw import SliceIndex
from cbirlib.index.meta import read_meta

__all__ = ["INDEX_KINDS", "load_index"]

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
        No index there, or a malformed, corrupt or unknown-kind one.
    """
    kind = read_meta(path).kind
    return INDEX_KINDS[kind].load(path, mmap=mmap, dim=dim, verify=verify)
