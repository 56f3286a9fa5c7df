""":class:`ExactIndex`: brute-force slice search with the :class:`~cbirlib.index.SliceIndex` API.

Examples
--------
>>> import numpy as np
>>> from cbirlib.index import ExactIndex
>>> index = ExactIndex(3)
>>> index.add("v", np.eye(3))
>>> index.search([[1.0, 0.1, 0.0]], k=2).slice_indices.tolist()
[[0, 1]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbirlib._typing import F32, I64
from cbirlib.errors import IndexFormatError
from cbirlib.index.base import BaseIndex
from cbirlib.index.matches import exact_search
from cbirlib.index.meta import IndexMeta
from cbirlib.index.store import STORE_FILE, VectorStore, load_store

__all__ = ["ExactIndex"]


class ExactIndex(BaseIndex):
    """Brute-force slice index with the :class:`SliceIndex` interface.

    Search is one matrix product over the stored vectors (float32 or float16,
    ``config.store_dtype``); it is exact, so it is the reference for HNSW recall.
    Removal leaves a hole that :meth:`save` compacts.

    Examples
    --------
    >>> import numpy as np
    >>> index = ExactIndex(3)
    >>> index.add("v", np.eye(3))
    >>> index.search([[1.0, 0.1, 0.0]], k=5).slice_indices.tolist()
    [[0, 1, 2]]
    """

    KIND = "exact"

    def _init_backend(self) -> None:
        self._store = VectorStore(self.dim, self.config.store_dtype)

    def _backend_add(self, labels: I64, vectors: F32) -> None:
        self._store.put(int(labels[0]), vectors)

    def _backend_remove(self, labels: I64) -> None:
        pass  # the alive mask hides the rows until save() compacts them

    def _rows(self, start: int, n: int) -> F32:
        return self._store.rows(start, n)

    def _backend_search(self, queries: F32, k: int) -> tuple[I64, F32]:
        n = self._next_label
        labels = np.arange(n, dtype=np.int64)
        return exact_search(queries, self._store.raw()[:n], labels, k, alive=self._alive[:n])

    def _before_save(self) -> None:
        if self._n_entries == self._next_label:
            return
        store = VectorStore(self.dim, self.config.store_dtype)
        slice_index = np.zeros(self._n_entries, np.int64)
        z_mm = np.zeros(self._n_entries, np.float64)
        informative = np.ones(self._n_entries, bool)
        bits = np.zeros((self._n_entries, self._labels.shape[1]), np.uint8)
        new = 0
        for vid, (start, n) in list(self._spans.items()):
            store.put(new, self._store.raw()[start : start + n])
            slice_index[new : new + n] = self._slice_index[start : start + n]
            z_mm[new : new + n] = self._z_mm[start : start + n]
            informative[new : new + n] = self._informative[start : start + n]
            bits[new : new + n] = self._labels[start : start + n]
            self._spans[vid] = (new, n)
            new += n
        self._store, self._slice_index, self._z_mm = store, slice_index, z_mm
        self._informative, self._labels = informative, bits
        self._alive = np.ones(new, bool)
        self._next_label = new
        self._table = None

    def _backend_save(self, directory: Path) -> None:
        self._store.save_in(directory)

    def _backend_load(self, directory: Path, meta: IndexMeta, *, mmap: bool) -> None:
        self._store = load_store(directory, self.dim, self.config.store_dtype, mmap=mmap)
        if len(self._store) != self._next_label:
            raise IndexFormatError(
                f"index file {str(directory / STORE_FILE)!r} has {len(self._store)} rows, "
                f"meta.json says {self._next_label}"
            )
