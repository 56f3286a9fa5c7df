"""Where the slice vectors live: a growable row store, and a reader for hnswlib files.

:class:`VectorStore` keeps all slice embeddings in one contiguous matrix (float32 or
float16), row ``i`` holding the vector of index label ``i``. It grows by doubling, saves
to one ``.npy`` file and loads memory-mapped, so reading the rows of one volume is a
cheap view.

:func:`hnsw_file_vectors` maps the vectors that an hnswlib graph file already holds,
so an HNSW index need not store its float32 vectors twice.

Examples
--------
>>> import numpy as np
>>> from cbirlib.index.store import VectorStore
>>> store = VectorStore(4, "float16")
>>> store.put(0, np.eye(4, dtype=np.float32)[:2])
>>> store.rows(0, 2).dtype, store.rows(0, 2).shape
(dtype('float32'), (2, 4))
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from cbirlib._typing import F32
from cbirlib.errors import DimensionMismatchError, IndexFormatError, SliceIndexError
from cbirlib.index.files import load_npy, save_npy

logger = logging.getLogger(__name__)

STORE_DTYPES = ("float32", "float16")
STORE_FILE = "vectors.npy"
_HNSW_HEADER = 96  # bytes before hnswlib's level-0 data block (hnswlib 0.7/0.8 format)

__all__ = ["STORE_DTYPES", "VectorStore", "hnsw_file_vectors"]


class VectorStore:
    """A growable matrix of vectors whose row number is the index label.

    Parameters
    ----------
    dim
        Vector dimension.
    dtype
        ``"float32"`` or ``"float16"`` (half the memory and disk; rows are returned as
        float32).
    """

    def __init__(self, dim: int, dtype: str = "float32") -> None:
        if dtype not in STORE_DTYPES:
            raise SliceIndexError(
                f"store dtype {dtype!r} is not supported; use one of {STORE_DTYPES}"
            )
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self._data: npt.NDArray[Any] = np.zeros((0, dim), self.dtype)
        self._size = 0  # rows in use (highest label + 1)

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in use."""
        return self._size * self.dim * self.dtype.itemsize

    def _reserve(self, n: int) -> None:
        if n <= self._data.shape[0] and self._data.flags.writeable:
            return
        capacity = max(n, 2 * self._data.shape[0], 1024)
        grown = np.empty((capacity, self.dim), self.dtype)
        grown[: self._size] = self._data[: self._size]
        self._data = grown

    def put(self, start: int, vectors: F32) -> None:
        """Write ``vectors`` into rows ``start:start+len(vectors)`` (growing as needed)."""
        stop = start + len(vectors)
        self._reserve(stop)
        self._data[start:stop] = vectors
        self._size = max(self._size, stop)

    def rows(self, start: int, n: int) -> F32:
        """Rows ``start:start+n`` as float32 (a view for a float32 store)."""
        block = self._data[start : start + n]
        return block if block.dtype == np.float32 else block.astype(np.float32)

    def take(self, labels: npt.NDArray[np.int64]) -> F32:
        """The rows of ``labels`` as a new float32 matrix."""
        return np.asarray(self._data[labels], dtype=np.float32)

    def raw(self) -> npt.NDArray[Any]:
        """All rows in use, in the store's dtype (a view)."""
        return self._data[: self._size]

    def save(self, path: Path) -> None:
        """Write the rows in use to one ``.npy`` file."""
        save_npy(path, self.raw())

    def save_in(self, directory: Path) -> None:
        """Write the rows to ``directory / STORE_FILE``."""
        self.save(directory / STORE_FILE)

    @classmethod
    def load(cls, path: Path, dim: int, dtype: str, *, mmap: bool = True) -> VectorStore:
        """Read a store written by :meth:`save`, memory-mapped when ``mmap``."""
        data = load_npy(path, mmap=mmap)
        if data.ndim != 2 or data.shape[1] != dim or data.dtype != np.dtype(dtype):
            raise IndexFormatError(
                f"index file {str(path)!r} holds a {data.dtype} array of shape {data.shape}, "
                f"expected {dtype} rows of dimension {dim}"
            )
        store = cls(dim, dtype)
        store._data = data
        store._size = data.shape[0]
        return store


def load_store(directory: Path, dim: int, dtype: str, *, mmap: bool) -> VectorStore:
    """The :class:`VectorStore` saved in ``directory`` by :meth:`VectorStore.save_in`."""
    path = directory / STORE_FILE
    data = load_npy(path, mmap=True)
    if data.ndim == 2 and data.shape[1] != dim:
        raise DimensionMismatchError(
            f"index file {str(path)!r} holds vectors of dimension {data.shape[1]}, "
            f"meta.json says {dim}"
        )
    return VectorStore.load(path, dim, dtype, mmap=mmap)


def check_hnsw_layout(
    graph: hnswlib.Index,
    vectors: F32,
    labels: npt.NDArray[np.uint64],
    alive: npt.NDArray[np.bool_],
    path: Path,
    *,
    sample: int = 8,
) -> None:
    """Check the mapped rows of an hnswlib file against hnswlib's own ``get_items``.

    :func:`hnsw_file_vectors` reads hnswlib's file layout (not a public API), so every
    load compares a few rows, spread over the file, with what the loaded graph returns
    through its public API. A newer hnswlib that lays its file out differently fails
    here, loudly, instead of serving wrong vectors.
    """
    live = np.flatnonzero(alive[labels.astype(np.int64)])  # removed labels are not served
    if len(live) == 0:
        return
    rows = live[np.unique(np.linspace(0, len(live) - 1, min(sample, len(live))).astype(np.int64))]
    try:
        expected = np.asarray(graph.get_items(labels[rows].tolist()), dtype=np.float32)
    except (RuntimeError, ValueError) as exc:
        raise IndexFormatError(f"index file {str(path)!r}: hnswlib cannot read it: {exc}") from None
    if expected.shape != (len(rows), vectors.shape[1]) or not np.array_equal(
        expected, np.asarray(vectors[rows])
    ):
        raise IndexFormatError(
            f"index file {str(path)!r}: the vectors mapped from the file differ from what "
            f"hnswlib {getattr(hnswlib, '__version__', '?')} returns; this cbirlib reads the "
            "file layout of hnswlib 0.7/0.8 (install hnswlib<0.9)"
        )


def hnsw_file_vectors(
    path: Path, dim: int, *, mmap: bool = True
) -> tuple[F32, npt.NDArray[np.uint64]]:
    """The vectors and labels held in an hnswlib index file, without loading the graph.

    hnswlib (0.7/0.8) writes a 96-byte header, then one fixed-size record per element
    (level-0 links, the float32 vector, the 8-byte label). This maps that block and
    returns strided views of the vector and label columns.

    Parameters
    ----------
    path
        File written by ``hnswlib.Index.save_index`` (``space`` ``"cosine"`` or ``"ip"``
        with float32 data).
    dim
        Vector dimension, checked against the record layout.
    mmap
        Memory-map the file (default) or read the block into memory.

    Returns
    -------
    vectors, labels
        ``(n_elements, dim)`` float32 rows in hnswlib's internal order and their labels.
    """
    try:
        header = np.fromfile(path, dtype="<u8", count=6)
        size = path.stat().st_size
    except OSError as exc:
        raise IndexFormatError(f"index file {str(path)!r} is unreadable: {exc}") from None
    if header.size < 6:
        raise IndexFormatError(f"index file {str(path)!r} is truncated (no hnswlib header)")
    _, _, count, per_element, label_offset, data_offset = (int(v) for v in header)
    file_dim = (label_offset - data_offset) // 4
    if file_dim != dim and per_element == label_offset + 8 and file_dim > 0:
        raise DimensionMismatchError(
            f"index file {str(path)!r} holds vectors of dimension {file_dim}, expected {dim}"
        )
    if (
        label_offset != data_offset + 4 * dim
        or per_element != label_offset + 8
        or _HNSW_HEADER + count * per_element > size
    ):
        raise IndexFormatError(
            f"index file {str(path)!r} is not an hnswlib file of dimension {dim} or is truncated"
        )
    try:
        levels = np.fromfile(path, dtype="<i4", count=2, offset=48)
    except OSError as exc:
        raise IndexFormatError(f"index file {str(path)!r} is unreadable: {exc}") from None
    max_level, entry_point = int(levels[0]), int(levels[1].view("<u4"))
    if count and not (0 <= entry_point < count and 0 <= max_level < 64):
        raise IndexFormatError(
            f"index file {str(path)!r} has a graph entry point ({entry_point}) or top level "
            f"({max_level}) outside its {count} elements"
        )
    labels = _read_labels(path, count, per_element, label_offset, data_offset)
    if len(np.unique(labels)) != count:
        raise IndexFormatError(f"index file {str(path)!r} holds one label twice")
    if mmap:
        block: npt.NDArray[np.uint8] = np.memmap(
            path, dtype=np.uint8, mode="r", offset=_HNSW_HEADER, shape=(count, per_element)
        )
    else:
        block = np.fromfile(path, dtype=np.uint8, count=count * per_element, offset=_HNSW_HEADER)
        block = block.reshape(count, per_element)
    vectors = block[:, data_offset:label_offset].view(np.float32)
    return vectors, labels


def _read_labels(
    path: Path,
    count: int,
    per_element: int,
    label_offset: int,
    links_end: int,
    *,
    chunk: int = 1 << 26,
) -> npt.NDArray[np.uint64]:
    """The label column of an hnswlib file, read in chunks, checking the level-0 links.

    Read with ordinary reads rather than through the memory map, so that the pages of
    the whole file (the labels are interleaved with the vectors) do not become resident
    in this process just to learn the label order. Each record's level-0 link list (a
    count, then up to ``(links_end - 4) / 4`` neighbour ids) must point inside the file:
    hnswlib follows such links without bounds checks.
    """
    max_links = (links_end - 4) // 4
    labels = np.empty(count, np.uint64)
    step = max(1, chunk // per_element)
    with open(path, "rb") as fh:
        for first in range(0, count, step):
            n = min(step, count - first)
            fh.seek(_HNSW_HEADER + first * per_element)
            block = np.frombuffer(fh.read(n * per_element), np.uint8).reshape(n, per_element)
            labels[first : first + n] = block[:, label_offset : label_offset + 8].view(np.uint64)[
                :, 0
            ]
            n_links = block[:, 0:2].view("<u2")[:, 0]
            links = block[:, 4 : 4 + 4 * max_links].view("<u4")
            used = np.arange(max_links) < n_links[:, None]
            if (n_links > max_links).any() or (links[used] >= count).any():
                raise IndexFormatError(
                    f"index file {str(path)!r} has graph links outside its {count} elements"
                )
    return labels
