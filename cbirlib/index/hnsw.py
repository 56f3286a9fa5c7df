""":class:`SliceIndex`: the approximate slice index on an hnswlib HNSW graph.

It maps string volume ids to the embeddings of their slices, keeps slice metadata
(slice number and z position in mm), gives re-ranking cheap access to the stored
vectors, and saves to / loads from a crash-safe, pickle-free directory. It shares
:class:`~cbirlib.index.base.BaseIndex` with :class:`~cbirlib.index.ExactIndex`.

Examples
--------
>>> import numpy as np
>>> from cbirlib.index import SliceIndex
>>> rng = np.random.default_rng(0)
>>> index = SliceIndex(8)
>>> index.add("a", rng.normal(size=(5, 8)), slice_meta={"z_mm": np.arange(5) * 2.0})
>>> index.add("b", rng.normal(size=(3, 8)))
>>> len(index), index.volume_ids
(8, ['a', 'b'])
>>> m = index.search(index.vectors("a")[:2], k=3)
>>> m.volume_ids[:, 0].tolist(), m.slice_indices[:, 0].tolist(), m.z_mm[:, 0].tolist()
(['a', 'a'], [0, 1], [0.0, 2.0])
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from cbirlib._typing import F32, I64
from cbirlib.errors import IndexFormatError
from cbirlib.index.base import BaseIndex
from cbirlib.index.meta import IndexMeta
from cbirlib.index.store import VectorStore, check_hnsw_layout, hnsw_file_vectors, load_store

logger = logging.getLogger(__name__)

__all__ = ["SliceIndex"]

_GRAPH_FILE = "hnsw.bin"
_MIN_CAPACITY = 1024
_SPACE = "ip"  # on unit vectors: distance 1 - cosine similarity


class SliceIndex(BaseIndex):
    """Approximate nearest-slice index on an hnswlib HNSW graph (cosine similarity).

    Parameters
    ----------
    dim
        Embedding dimension.
    config
        Graph settings and the precision of the stored vectors (:class:`HnswConfig`).
        With ``store_dtype="float32"`` the vectors are stored once on disk, inside the
        graph file, and read back memory-mapped from it after :meth:`load` or
        :meth:`save`; vectors added since then are served from an in-memory float32
        copy (about 1x the raw vectors more memory until the next save). ``"float16"``
        keeps an extra half-precision copy on disk and in memory.
    extractor_config
        ``Extractor.to_config()`` of the model that made the vectors; saved with the
        index and compared by :meth:`check_extractor`.

    Notes
    -----
    The graph grows automatically (its capacity doubles). Removed volumes are marked
    deleted in the graph; their labels are never reused. ``ef`` is saved and restored.
    """

    KIND = "hnsw"

    def _init_backend(self) -> None:
        self._graph = self._new_graph(_MIN_CAPACITY)
        self._store = (
            VectorStore(self.dim, "float16") if self.config.store_dtype == "float16" else None
        )
        # float32 store: labels < self._base are read from the saved graph file
        # (memory-mapped), later ones from self._fresh, an in-memory copy (row = label -
        # base) kept until the next save, because hnswlib's get_items is slow.
        self._mapped: tuple[F32, I64] | None = None  # (file vectors, row of each label)
        self._base = 0
        self._fresh = VectorStore(self.dim, "float32")
        self._mmap = True

    def _new_graph(self, capacity: int) -> Any:
        # Vectors are unit-normalised on add, so inner product is cosine; space "ip"
        # (unlike "cosine") stores them bit-for-bit as given, so the in-memory copy and
        # the vectors read back from the file agree exactly.
        graph = hnswlib.Index(space=_SPACE, dim=self.dim)
        graph.init_index(
            max_elements=capacity,
            M=self.config.M,
            ef_construction=self.config.ef_construction,
            random_seed=100,
        )
        graph.set_ef(self._ef)
        return graph

    def _apply_ef(self) -> None:
        self._graph.set_ef(self._ef)

    def _backend_add(self, labels: I64, vectors: F32) -> None:
        need = int(labels[-1]) + 1  # every label ever added is a graph element
        capacity = int(self._graph.get_max_elements())
        if need > capacity:
            self._graph.resize_index(max(need, 2 * capacity))
        threads = 1 if self.config.deterministic else -1
        self._graph.add_items(vectors, labels, num_threads=threads)
        if self._store is not None:
            self._store.put(int(labels[0]), vectors)
        else:
            self._fresh.put(int(labels[0]) - self._base, vectors)

    def _backend_remove(self, labels: I64) -> None:
        for label in labels.tolist():
            self._graph.mark_deleted(label)

    def _rows(self, start: int, n: int) -> F32:
        if self._store is not None:
            return self._store.rows(start, n)
        if start >= self._base:  # added since the last save or load (a volume never straddles)
            return self._fresh.rows(start - self._base, n)
        assert self._mapped is not None
        vectors, row_of = self._mapped
        rows = row_of[start : start + n]
        first = int(rows[0])
        if (rows == np.arange(first, first + n)).all():
            return vectors[first : first + n]  # a view into the memory-mapped file
        return vectors[rows]

    def _backend_search(self, queries: F32, k: int) -> tuple[I64, F32]:
        ef = self._ef
        try:
            while True:
                try:
                    labels, distances = self._graph.knn_query(queries, k=k, num_threads=-1)
                except RuntimeError as exc:
                    # With deletions hnswlib may find fewer than k live items at this ef.
                    if ef >= self._next_label:
                        break
                    wider = min(max(ef, k) * 2, self._next_label)
                    logger.warning(
                        "HNSW search found fewer than k=%d items at ef=%d (%s); retrying "
                        "with ef=%d",
                        k,
                        ef,
                        " ".join(str(exc).split()),
                        wider,
                    )
                    ef = wider
                    self._graph.set_ef(ef)
                    continue
                return labels.astype(np.int64), (1.0 - distances).astype(np.float32)
        finally:
            if ef != self._ef:
                self._graph.set_ef(self._ef)
        logger.warning(
            "HNSW search found fewer than k=%d live items at every ef; searching exactly", k
        )
        return self._exact_fallback(queries, k)

    def _backend_save(self, directory: Path) -> None:
        self._graph.save_index(str(directory / _GRAPH_FILE))
        if self._store is not None:
            self._store.save_in(directory)

    def _backend_load(self, directory: Path, meta: IndexMeta, *, mmap: bool) -> None:
        path = directory / _GRAPH_FILE
        vectors, labels = hnsw_file_vectors(path, self.dim, mmap=mmap)  # validates layout
        if len(labels) != self._next_label or (
            len(labels) and int(labels.max()) >= self._next_label
        ):
            raise IndexFormatError(
                f"index file {str(path)!r} holds {len(labels)} elements, "
                f"meta.json says {self._next_label}"
            )
        graph = hnswlib.Index(space=_SPACE, dim=self.dim)
        try:
            graph.load_index(str(path), max_elements=max(self._next_label, _MIN_CAPACITY))
        except (RuntimeError, ValueError, OSError) as exc:
            raise IndexFormatError(f"index file {str(path)!r} is unreadable: {exc}") from None
        self._graph = graph
        if self._store is not None:
            self._store = load_store(directory, self.dim, "float16", mmap=mmap)
        else:
            check_hnsw_layout(graph, vectors, labels, self._alive, path)
            self._map_file(vectors, labels)
        self._mmap = mmap

    def _map_file(self, vectors: F32, labels: npt.NDArray[np.uint64]) -> None:
        """Read the vectors of every label so far from a saved graph file."""
        row_of = np.empty(len(labels), np.int64)
        row_of[labels.astype(np.int64)] = np.arange(len(labels))
        self._mapped = (vectors, row_of)
        self._base = len(labels)
        self._fresh = VectorStore(self.dim, "float32")

    def _after_save(self, directory: Path) -> None:
        if self._store is not None or not self._mmap or self._base == self._next_label:
            return
        # Serve the vectors from the file just written and free the in-memory copy.
        vectors, labels = hnsw_file_vectors(directory / _GRAPH_FILE, self.dim, mmap=True)
        if len(labels) == self._next_label:
            self._map_file(vectors, labels)
