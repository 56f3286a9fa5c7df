"""Slice indexes and their on-disk format: the one owner of everything an index stores.

- :class:`SliceIndex` (HNSW, hnswlib) and :class:`ExactIndex` (brute force) share one
  API (add, search, vectors, slice metadata, remove, save, load); :class:`MilvusIndex`
  offers the same API on a Milvus collection (Milvus Lite file or server; the
  ``cbirlib[milvus]`` extra, imported only when used);
- :func:`load_index` opens either from its directory, :func:`read_meta` reads what a
  directory holds without a vector, and :func:`check_compatible` is the one check that
  an extractor's vectors fit an index;
- :func:`build_index` embeds volumes into an index with crash-safe checkpoints, and
  :func:`build_milvus_index` into a Milvus collection.

Nothing outside this package reads or writes an index's files.

Examples
--------
>>> import tempfile, numpy as np
>>> from cbirlib.index import SliceIndex, read_meta
>>> index = SliceIndex(4, extractor_config={"name": "demo"})
>>> index.add("a", np.eye(4))
>>> path = tempfile.mkdtemp() + "/idx"
>>> index.save(path)
>>> meta = read_meta(path)
>>> meta.kind, meta.dim, meta.n_volumes, meta.n_slices, meta.extractor_name
('hnsw', 4, 1, 4, 'demo')
"""

from cbirlib.errors import ExtractorMismatchWarning
from cbirlib.index.base import BaseIndex
from cbirlib.index.build import build_index, build_milvus_index, check_resumable
from cbirlib.index.config import HnswConfig
from cbirlib.index.exact import ExactIndex
from cbirlib.index.hnsw import SliceIndex
from cbirlib.index.load import load_index, open_index
from cbirlib.index.matches import SliceMatches
from cbirlib.index.meta import FORMAT_VERSION, IndexMeta, check_compatible, read_meta
from cbirlib.index.milvus import MilvusIndex

__all__ = [
    "FORMAT_VERSION",
    "BaseIndex",
    "ExactIndex",
    "ExtractorMismatchWarning",
    "HnswConfig",
    "IndexMeta",
    "MilvusIndex",
    "SliceIndex",
    "SliceMatches",
    "build_index",
    "build_milvus_index",
    "check_compatible",
    "check_resumable",
    "load_index",
    "open_index",
    "read_meta",
]
