"""The shared core of the slice indexes: keys, slice metadata, vector access, persistence.

:class:`BaseIndex` holds everything :class:`~cbirlib.index.SliceIndex` (HNSW) and
:class:`~cbirlib.index.ExactIndex` (brute force) have in common; a subclass supplies the
search backend and where vectors live. Also defines the settings (:class:`HnswConfig`)
and the search result (:class:`SliceMatches`).

Examples
--------
>>> from cbirlib.indexbase import HnswConfig
>>> HnswConfig(M=16, store_dtype="float16").store_dtype
'float16'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from cbirlib.errors import (
    DimensionMismatchError,
    DuplicateVolumeError,
    ExtractorMismatchError,
    IndexFormatError,
    InvalidVolumeError,
    SliceIndexError,
    VolumeNotInIndexError,
)
from cbirlib.persist import (
    META_NAME,
    atomic_write_dir,
    load_npy,
    pinned_dir,
    read_json,
    resolve_dir,
    save_in_progress,
    save_npy,
    sha256_file,
    write_json,
)
from cbirlib.vectorstore import STORE_DTYPES

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_DIM = 1 << 16  # widest embedding meta.json may declare
MAX_EF = 1 << 20
MAX_LABELS = 1 << 40
_LOAD_ATTEMPTS = 40  # reads of an index that saves keep replacing, before giving up
META_KEYS = ("slice_index", "z_mm")

__all__ = [
    "BaseIndex",
    "ExtractorMismatchWarning",
    "HnswConfig",
    "SliceMatches",
    "exact_search",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
_T = TypeVar("_T", bound="BaseIndex")


class ExtractorMismatchWarning(UserWarning):
    """Vectors come from an extractor whose config differs from the index's one."""


@dataclass(frozen=True, kw_only=True)
class HnswConfig:
    """Settings of the slice index.

    Parameters
    ----------
    M
        HNSW graph degree (hnswlib ``M``); larger is more accurate, bigger and slower.
        Each vector costs ``4 * (2 * M + 1) + 4 * dim + 8`` bytes in the graph; the
        default 16 keeps an index at about 1.1x the raw float32 vectors for dim 384
        (1.05x for dim 768), where M=32 costs 1.17x.
    ef_construction
        Candidate list size while building the graph.
    ef_search
        Default candidate list size while searching (``SliceIndex.ef``; at least ``k``
        is used). With the defaults, on 300,000 synthetic slice vectors
        (``benchmarks/index_scale.py``, see ``docs/results/index_benchmark.md``),
        recall@10 is >= 0.998 at about 25x the speed of exact search.
    store_dtype
        ``"float32"`` or ``"float16"``: precision of the stored vectors used for
        re-ranking and exact search. With float32 an HNSW index reads its vectors back
        from the graph file (no second copy on disk).
    deterministic
        Insert vectors into the graph with one thread (default), so that the same
        vectors added in the same order give the same graph, byte for byte, and the
        same search results. hnswlib's multithreaded insertion builds a different graph
        each time. ``False`` inserts with every core, which is faster to build and not
        reproducible. Searches always use every core.

    Examples
    --------
    >>> HnswConfig(M=16).to_dict()["M"]
    16
    >>> HnswConfig.from_dict(HnswConfig().to_dict()) == HnswConfig()
    True
    """

    M: int = 16
    ef_construction: int = 200
    ef_search: int = 128
    store_dtype: str = "float32"
    deterministic: bool = True

    def __post_init__(self) -> None:
        for name, low in (("M", 2), ("ef_construction", 1), ("ef_search", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SliceIndexError(
                    f"HnswConfig.{name} must be an integer >= {low}, got {value!r}"
                )
        if not isinstance(self.deterministic, bool):
            raise SliceIndexError(
                f"HnswConfig.deterministic must be True or False, got {self.deterministic!r}"
            )
        if self.store_dtype not in STORE_DTYPES:
            raise SliceIndexError(
                f"HnswConfig.store_dtype {self.store_dtype!r} is not supported; "
                f"valid: {', '.join(STORE_DTYPES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HnswConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are refused."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise SliceIndexError(
                f"unknown HnswConfig keys {unknown}; valid keys: {', '.join(valid)}"
            )
        return cls(**data)


@dataclass(frozen=True)
class SliceMatches:
    """Result of :meth:`SliceIndex.search`: ``k`` nearest slices for each query row.

    All arrays have shape ``(n_queries, k)``; rows are sorted by descending score.
    """

    volume_ids: npt.NDArray[np.object_]
    slice_indices: I64
    scores: F32
    z_mm: npt.NDArray[np.float64]

    @property
    def k(self) -> int:
        """Number of matches per query."""
        return int(self.scores.shape[1])

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _user_stacklevel() -> int:
    """``stacklevel`` for a warning raised by the caller: the first frame outside cbirlib."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)  # the function that calls warnings.warn
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _normalise_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON round trip of ``config``, so stored and given configs compare equal."""
    if config is None:
        return None
    try:
        result: dict[str, Any] = json.loads(json.dumps(config, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise SliceIndexError(f"extractor config is not JSON-serialisable: {exc}") from None
    return result


def _as_unit_rows(x: npt.ArrayLike, dim: int, what: str) -> F32:
    """Validate a (n, dim) finite matrix and L2-normalise its rows (a new float32 array)."""
    arr = np.array(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DimensionMismatchError(
            f"{what}: expected vectors of shape (n, {dim}), got shape {np.shape(x)}"
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise InvalidVolumeError(f"{what}: {int((~finite).sum())} vectors contain NaN or Inf")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise InvalidVolumeError(f"{what}: {int((norms == 0).sum())} vectors are all zero")
    arr /= norms[:, None]
    return arr


def _sorted_topk(scores: F32, labels: I64, k: int) -> tuple[I64, F32]:
    """Per row, the ``k`` best (score descending, label ascending on ties)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        labels = np.take_along_axis(labels, part, axis=1)
    order = np.lexsort((labels, -scores), axis=-1)
    return np.take_along_axis(labels, order, axis=1), np.take_along_axis(scores, order, axis=1)


def exact_search(
    queries: F32,
    rows: npt.NDArray[Any],
    labels: I64,
    k: int,
    *,
    alive: npt.NDArray[np.bool_] | None = None,
    block: int = 65536,
) -> tuple[I64, F32]:
    """Brute-force cosine top-``k`` of unit ``queries`` against unit ``rows``.

    ``rows`` may be float16 (converted block by block); rows where ``alive`` is False
    are skipped. ``k`` must not exceed the number of alive rows.
    """
    best_l = np.zeros((len(queries), 0), np.int64)
    best_s = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(rows), block):
        chunk = np.asarray(rows[start : start + block], dtype=np.float32)
        scores = queries @ chunk.T
        if alive is not None:
            scores[:, ~alive[start : start + block]] = -np.inf
        cand = np.broadcast_to(labels[start : start + block], scores.shape)
        best_l, best_s = _sorted_topk(
            np.concatenate([best_s, scores], axis=1),
            np.concatenate([best_l, cand], axis=1),
            k,
        )
    return best_l, best_s


class BaseIndex(ABC):
    """Keys, slice metadata, vector access and persistence shared by the indexes.

    Every slice entry has an integer label from a counter that never goes back, so
    labels are never reused; a volume owns one contiguous label range.
    """

    KIND: ClassVar[str]

    def __init__(
        self,
        dim: int,
        *,
        config: HnswConfig = HnswConfig(),
        extractor_config: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise SliceIndexError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(config, HnswConfig):
            raise SliceIndexError(f"config must be an HnswConfig, got {type(config).__name__}")
        self.dim = int(dim)
        self.config = config
        self._extractor_config = _normalise_config(extractor_config)
        self._ef = config.ef_search
        self._spans: dict[str, tuple[int, int]] = {}  # id -> (first label, n), insertion order
        self._removed: set[str] = set()  # ids removed since creation, for clearer errors
        self._next_label = 0
        self._n_entries = 0
        self._slice_index = np.zeros(0, np.int64)  # per label
        self._z_mm = np.zeros(0, np.float64)  # per label
        self._alive = np.zeros(0, bool)  # per label
        self._table: tuple[I64, npt.NDArray[np.object_]] | None = None
        self._lock = threading.RLock()
        self._init_backend()

    # -- backend hooks ----------------------------------------------------------------

    @abstractmethod
    def _init_backend(self) -> None: ...

    @abstractmethod
    def _backend_add(self, labels: I64, vectors: F32) -> None: ...

    @abstractmethod
    def _backend_remove(self, labels: I64) -> None: ...

    @abstractmethod
    def _rows(self, start: int, n: int) -> F32: ...

    @abstractmethod
    def _backend_search(self, queries: F32, k: int) -> tuple[I64, F32]: ...

    @abstractmethod
    def _backend_save(self, directory: Path) -> None: ...

    @abstractmethod
    def _backend_load(self, directory: Path, meta: dict[str, Any], *, mmap: bool) -> None: ...

    def _apply_ef(self) -> None:  # noqa: B027 - optional hook
        """Push ``self._ef`` to the backend (nothing to do for exact search)."""

    def _before_save(self) -> None:  # noqa: B027 - optional hook
        """Hook run (under the lock) before writing."""

    def _after_save(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Hook run (under the lock) once ``directory`` holds the saved index."""

    # -- keys and metadata ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n_entries

    def __contains__(self, volume_id: object) -> bool:
        return volume_id in self._spans

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dim={self.dim}, n_volumes={self.n_volumes}, "
            f"n_slices={len(self)}, ef={self.ef})"
        )

    @property
    def volume_ids(self) -> list[str]:
        """Ids of the indexed volumes, in insertion order."""
        return list(self._spans)

    @property
    def n_volumes(self) -> int:
        """Number of indexed volumes."""
        return len(self._spans)

    @property
    def extractor_config(self) -> dict[str, Any] | None:
        """Config of the extractor that made the vectors (None when not recorded)."""
        return None if self._extractor_config is None else dict(self._extractor_config)

    @property
    def ef(self) -> int:
        """Search candidate list size (saved with the index; at least ``k`` is used)."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise SliceIndexError(f"ef must be a positive integer, got {value!r}")
        with self._lock:
            self._ef = int(value)
            self._apply_ef()

    def _span(self, volume_id: str) -> tuple[int, int]:
        try:
            return self._spans[volume_id]
        except (KeyError, TypeError):
            if volume_id in self._removed:
                raise VolumeNotInIndexError(
                    f"volume {volume_id!r} was removed from the index (by another thread while "
                    "a query that had found it was running, if this comes from a chain); "
                    "queries and add/remove on one index must not overlap: serialise them, "
                    "or run the query again"
                ) from None
            known = ", ".join(repr(v) for v in list(self._spans)[:10])
            more = "..." if len(self._spans) > 10 else ""
            raise VolumeNotInIndexError(
                f"volume {volume_id!r} is not in the index; indexed volumes: {known}{more}"
                if self._spans
                else f"volume {volume_id!r} is not in the index; the index is empty"
            ) from None

    def check_extractor(
        self, extractor_config: dict[str, Any], *, strict: bool | None = None
    ) -> None:
        """Check that vectors from ``extractor_config`` fit this index.

        Another extractor ``name`` always raises
        :class:`~cbirlib.errors.ExtractorMismatchError`. Other differences warn with
        :class:`ExtractorMismatchWarning` (attributed to the first caller outside
        cbirlib), or raise in strict mode (``strict=None`` reads the environment
        variable ``CBIRLIB_STRICT=1``). Nothing is checked when the index has no stored
        config.
        """
        stored = self._extractor_config
        given = _normalise_config(extractor_config)
        if stored is None or given == stored:
            return
        assert given is not None
        keys = sorted(
            k
            for k in set(stored) | set(given)
            if stored.get(k, "<missing>") != given.get(k, "<missing>")
        )
        diff = "; ".join(
            f"{k}: index has {stored.get(k, '<missing>')!r}, given {given.get(k, '<missing>')!r}"
            for k in keys
        )
        if stored.get("name") != given.get("name"):
            raise ExtractorMismatchError(
                f"index built with {stored.get('name')!r}, vectors come from "
                f"{given.get('name')!r}: use the index's extractor "
                "(cbirlib.create_extractor(**index.extractor_config)) or build another index"
            )
        message = f"extractor config differs from the one the index was built with ({diff})"
        if strict is None:
            strict = os.environ.get("CBIRLIB_STRICT", "") == "1"
        if strict:
            raise ExtractorMismatchError(message)
        warnings.warn(message, ExtractorMismatchWarning, stacklevel=_user_stacklevel())

    # -- add / remove -------------------------------------------------------------------------

    def _reserve(self, n: int) -> None:
        if n <= len(self._alive):
            return
        cap = max(n, 2 * len(self._alive), 1024)
        for name, fill in (("_slice_index", 0), ("_z_mm", np.nan), ("_alive", False)):
            old = getattr(self, name)
            new = np.full(cap, fill, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _parse_meta(
        self, volume_id: str, n: int, slice_meta: dict[str, npt.ArrayLike] | None
    ) -> tuple[I64, npt.NDArray[np.float64]]:
        meta = dict(slice_meta or {})
        unknown = sorted(set(meta) - set(META_KEYS))
        if unknown:
            raise SliceIndexError(
                f"volume {volume_id!r}: unknown slice_meta keys {unknown}; "
                f"valid keys: {', '.join(META_KEYS)}"
            )
        z = np.asarray(meta.get("z_mm", np.full(n, np.nan)), dtype=np.float64)
        idx_raw = np.asarray(meta.get("slice_index", np.arange(n)))
        if z.shape != (n,) or idx_raw.shape != (n,):
            raise SliceIndexError(
                f"volume {volume_id!r}: slice_meta arrays must have shape ({n},), got "
                f"z_mm {z.shape} and slice_index {idx_raw.shape}"
            )
        if not np.issubdtype(idx_raw.dtype, np.integer) or (idx_raw < 0).any():
            raise SliceIndexError(
                f"volume {volume_id!r}: slice_index must hold non-negative integers"
            )
        return idx_raw.astype(np.int64), z

    def add(
        self,
        volume_id: str,
        embeddings: npt.ArrayLike,
        *,
        slice_meta: dict[str, npt.ArrayLike] | None = None,
    ) -> None:
        """Add the slice embeddings of one volume.

        Parameters
        ----------
        volume_id
            A new, non-empty volume id (:class:`~cbirlib.errors.DuplicateVolumeError`
            if it is already indexed).
        embeddings
            ``(n_slices, dim)`` finite vectors; they are L2-normalised here.
        slice_meta
            Optional ``"z_mm"`` (n,) slice positions in mm (default NaN: unknown) and
            ``"slice_index"`` (n,) slice numbers within the volume (default
            ``0..n-1``; give them when only some slices are stored).
        """
        if not isinstance(volume_id, str) or not volume_id:
            raise SliceIndexError(f"volume id must be a non-empty string, got {volume_id!r}")
        vectors = _as_unit_rows(embeddings, self.dim, f"volume {volume_id!r}")
        n = len(vectors)
        if n == 0:
            raise InvalidVolumeError(f"volume {volume_id!r}: no slice embeddings to add")
        slice_index, z = self._parse_meta(volume_id, n, slice_meta)
        with self._lock:
            if volume_id in self._spans:
                raise DuplicateVolumeError(
                    f"volume {volume_id!r} is already in the index; remove it first"
                )
            start = self._next_label
            labels = np.arange(start, start + n, dtype=np.int64)
            self._reserve(start + n)
            self._backend_add(labels, vectors)
            self._slice_index[start : start + n] = slice_index
            self._z_mm[start : start + n] = z
            self._alive[start : start + n] = True
            self._spans[volume_id] = (start, n)
            self._removed.discard(volume_id)
            self._next_label += n
            self._n_entries += n
            self._table = None

    def remove(self, volume_id: str) -> None:
        """Remove a volume (:class:`~cbirlib.errors.VolumeNotInIndexError` if unknown)."""
        with self._lock:
            start, n = self._span(volume_id)
            self._backend_remove(np.arange(start, start + n, dtype=np.int64))
            self._alive[start : start + n] = False
            del self._spans[volume_id]
            self._removed.add(volume_id)
            self._n_entries -= n
            self._table = None

    # -- vectors -------------------------------------------------------------------------------

    def vectors(self, volume_id: str) -> F32:
        """``(n_slices, dim)`` float32 unit vectors of one volume (a view where possible)."""
        start, n = self._span(volume_id)
        return self._rows(start, n)

    def vectors_for(self, volume_ids: Sequence[str]) -> tuple[F32, I64]:
        """Stacked vectors of several volumes and their row offsets.

        Returns ``(matrix, offsets)``: volume ``volume_ids[i]`` owns rows
        ``offsets[i]:offsets[i+1]`` of ``matrix`` (``len(volume_ids) + 1`` offsets).
        """
        spans = [self._span(v) for v in volume_ids]
        offsets = np.zeros(len(spans) + 1, np.int64)
        offsets[1:] = np.cumsum([n for _, n in spans])
        if not spans:
            return np.zeros((0, self.dim), np.float32), offsets
        return np.concatenate([self._rows(s, n) for s, n in spans]), offsets

    def slice_meta(self, volume_id: str) -> dict[str, npt.NDArray[Any]]:
        """``{"slice_index": int64 (n,), "z_mm": float64 (n,)}`` of one volume (copies)."""
        start, n = self._span(volume_id)
        return {
            "slice_index": self._slice_index[start : start + n].copy(),
            "z_mm": self._z_mm[start : start + n].copy(),
        }

    # -- search --------------------------------------------------------------------------------

    def _volume_table(self) -> tuple[I64, npt.NDArray[np.object_]]:
        table = self._table
        if table is None:
            starts = np.array([s for s, _ in self._spans.values()], np.int64)
            names = np.array(list(self._spans), dtype=object)
            table = self._table = (starts, names)
        return table

    def search(self, queries: npt.ArrayLike, k: int) -> SliceMatches:
        """The ``k`` most similar indexed slices of each query vector (cosine).

        Parameters
        ----------
        queries
            ``(n_queries, dim)`` (or ``(dim,)``) finite vectors; normalised here.
        k
            Matches per query; more than ``len(self)`` gives ``len(self)`` columns, an
            empty index gives 0 columns.

        Notes
        -----
        Safe to call from several threads: calls are serialised on an internal lock
        (each call already uses all cores through hnswlib), and give the same results
        as serial calls. Do not add or remove volumes while searching from another thread.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise SliceIndexError(f"k must be a non-negative integer, got {k!r}")
        q = _as_unit_rows(queries, self.dim, "queries")
        with self._lock:
            k_eff = min(int(k), self._n_entries)
            if k_eff == 0 or len(q) == 0:
                labels = np.zeros((len(q), 0), np.int64)
                scores = np.zeros((len(q), 0), np.float32)
            else:
                labels, scores = self._backend_search(q, k_eff)
            starts, names = self._volume_table()
            pos = np.searchsorted(starts, labels, side="right") - 1
            return SliceMatches(
                volume_ids=names[pos] if len(names) else np.empty(labels.shape, object),
                slice_indices=self._slice_index[labels],
                scores=scores.astype(np.float32, copy=False),
                z_mm=self._z_mm[labels],
            )

    def _exact_fallback(self, queries: F32, k: int) -> tuple[I64, F32]:
        live = np.flatnonzero(self._alive[: self._next_label]).astype(np.int64)
        rows = np.concatenate([self._rows(s, n) for s, n in self._spans.values()])
        return exact_search(queries, rows, live, k)

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to directory ``path`` atomically (see :mod:`cbirlib.persist`).

        The directory holds ``meta.json`` (format version, settings, ``ef``, extractor
        config, counts and a sha256 of every other file), the keys and slice metadata
        as ``.npy`` files and the backend's files. A crash at any moment leaves the old
        or the new index.
        """
        from cbirlib import __version__

        with self._lock:
            self._before_save()

            def write(directory: Path) -> None:
                n_labels = self._next_label
                save_npy(directory / "volumes.npy", np.array(list(self._spans), dtype=np.str_))
                spans = np.array(list(self._spans.values()), np.int64).reshape(-1, 2)
                save_npy(directory / "spans.npy", spans)
                save_npy(directory / "slice_index.npy", self._slice_index[:n_labels])
                save_npy(directory / "z_mm.npy", self._z_mm[:n_labels])
                self._backend_save(directory)
                files = {
                    f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
                    for f in sorted(directory.iterdir())
                }
                meta = {
                    "format": FORMAT_VERSION,
                    "cbirlib_version": __version__,
                    "kind": self.KIND,
                    "dim": self.dim,
                    "config": self.config.to_dict(),
                    "ef": self._ef,
                    "extractor_config": self._extractor_config,
                    "counts": {
                        "volumes": self.n_volumes,
                        "entries": self._n_entries,
                        "labels": n_labels,
                    },
                    "files": files,
                }
                meta["checksum"] = meta_checksum(meta)
                write_json(directory / META_NAME, meta)

            atomic_write_dir(path, write)
            self._after_save(Path(path).absolute())
        logger.info("saved %r to %s", self, path)

    @classmethod
    def load(
        cls: type[_T],
        path: str | os.PathLike[str],
        *,
        mmap: bool = True,
        dim: int | None = None,
        verify: bool = True,
    ) -> _T:
        """Read an index written by :meth:`save`.

        A load that overlaps saves to the same folder returns the complete old or the
        complete new index, never a mix: every file is read through one handle on one
        version of the directory, and a load whose directory was replaced meanwhile is
        retried (logged at debug level).

        Parameters
        ----------
        path
            Index directory (recovered from ``path + '.old'`` after a crashed save).
        mmap
            Memory-map the vectors (default) instead of reading them into memory.
        dim
            Expected dimension; :class:`~cbirlib.errors.DimensionMismatchError` if the
            index has another.
        verify
            Check the sha256 of every file and of ``meta.json`` itself (sizes, types and
            ranges are always checked).

        Raises
        ------
        IndexFormatError
            Unknown format version, wrong kind, missing, truncated, corrupt or
            inconsistent file, or an index that kept changing while it was read.
        """
        last: Exception | None = None
        for attempt in range(_LOAD_ATTEMPTS):
            try:
                directory = resolve_dir(path)
                pin_context = pinned_dir(directory, path)
                pin = pin_context.__enter__()
            except IndexFormatError as exc:  # the folder is between the two renames of a save
                if attempt == _LOAD_ATTEMPTS - 1 or not save_in_progress(path):
                    raise
                last = exc
            else:
                try:
                    index = cls._load_from(pin.path, mmap=mmap, dim=dim, verify=verify)
                except (SliceIndexError, OSError) as exc:
                    if not pin.replaced():
                        raise _named(exc, pin.path, directory) from None
                    last = exc
                else:
                    if pin.held or not pin.replaced():
                        logger.info("loaded %r from %s", index, directory)
                        return index
                    last = None
                finally:
                    pin_context.__exit__(None, None, None)
            logger.debug(
                "index %s was replaced while being read (attempt %d: %s); reading again",
                path,
                attempt + 1,
                last,
            )
            time.sleep(min(0.001 * 2**attempt, 0.05))
        raise IndexFormatError(
            f"index {str(path)!r} kept changing while it was read ({_LOAD_ATTEMPTS} attempts)"
        )

    @classmethod
    def _load_from(
        cls: type[_T], directory: Path, *, mmap: bool, dim: int | None, verify: bool
    ) -> _T:
        meta = _check_meta(directory, cls.KIND, verify=verify)
        if dim is not None and meta["dim"] != dim:
            raise DimensionMismatchError(
                f"index {str(directory)!r} has dimension {meta['dim']}, expected {dim}"
            )
        try:
            config = HnswConfig.from_dict(meta["config"])
            index = cls(int(meta["dim"]), config=config, extractor_config=meta["extractor_config"])
            index._load_keys(directory, meta)
            index._ef = int(meta["ef"])
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise IndexFormatError(
                f"index file {str(directory / META_NAME)!r} is malformed: {exc!r}"
            ) from None
        except SliceIndexError as exc:
            if isinstance(exc, IndexFormatError | DimensionMismatchError):
                raise
            raise IndexFormatError(
                f"index file {str(directory / META_NAME)!r} is malformed: {exc}"
            ) from None
        index._backend_load(directory, meta, mmap=mmap)
        index._apply_ef()
        return index

    def _load_keys(self, directory: Path, meta: dict[str, Any]) -> None:
        counts = meta["counts"]
        n_labels, n_vol = int(counts["labels"]), int(counts["volumes"])
        volumes = load_npy(directory / "volumes.npy")
        spans = load_npy(directory / "spans.npy")
        slice_index = load_npy(directory / "slice_index.npy")
        z_mm = load_npy(directory / "z_mm.npy")
        checks = [
            ("volumes.npy", volumes.dtype.kind == "U" and volumes.shape == (n_vol,)),
            ("spans.npy", spans.dtype == np.int64 and spans.shape == (n_vol, 2)),
            ("slice_index.npy", slice_index.dtype == np.int64 and slice_index.shape == (n_labels,)),
            ("z_mm.npy", z_mm.dtype == np.float64 and z_mm.shape == (n_labels,)),
        ]
        if n_vol and ((spans[:, 0] < 0).any() or (spans.sum(axis=1) > n_labels).any()):
            checks.append(("spans.npy", False))
        if volumes.shape == (n_vol,) and len(set(volumes.tolist())) != n_vol:
            raise IndexFormatError(
                f"index file {str(directory / 'volumes.npy')!r} lists a volume id twice"
            )
        if n_vol and spans.shape == (n_vol, 2) and _spans_overlap(spans):
            raise IndexFormatError(
                f"index file {str(directory / 'spans.npy')!r} gives two volumes the same slices"
            )
        if n_vol and spans.shape == (n_vol, 2) and int(spans[:, 1].sum()) != counts["entries"]:
            checks.append(("spans.npy", False))
        for name, ok in checks:
            if not ok:
                raise IndexFormatError(
                    f"index file {str(directory / name)!r} does not match meta.json counts"
                )
        self._reserve(n_labels)
        self._slice_index[:n_labels] = slice_index
        self._z_mm[:n_labels] = z_mm
        for vid, (start, n) in zip(volumes.tolist(), spans.tolist(), strict=True):
            self._spans[vid] = (start, n)
            self._alive[start : start + n] = True
        self._next_label = n_labels
        self._n_entries = int(spans[:, 1].sum()) if n_vol else 0


def _named(exc: Exception, pinned: Path, directory: Path) -> SliceIndexError:
    """``exc`` as a :class:`SliceIndexError` naming ``directory`` (not its fd alias)."""
    message = str(exc).replace(str(pinned), str(directory))
    if isinstance(exc, SliceIndexError):
        return type(exc)(message)
    return IndexFormatError(f"index {str(directory)!r} is unreadable: {' '.join(message.split())}")


def _spans_overlap(spans: I64) -> bool:
    """Whether any two ``(start, n)`` spans share a label (or a count is negative)."""
    if (spans[:, 1] < 0).any():
        return True
    order = np.argsort(spans[:, 0], kind="stable")
    starts, ends = spans[order, 0], spans[order].sum(axis=1)
    return bool((starts[1:] < ends[:-1]).any())


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def meta_checksum(meta: dict[str, Any]) -> str:
    """sha256 of ``meta.json``'s content without its own ``checksum`` entry."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _validate_meta(meta: dict[str, Any], meta_path: Path) -> None:
    """Types and ranges of ``meta.json`` values, checked before anything is allocated."""

    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"index file {str(meta_path)!r}: {what}")

    if not _is_int(meta["dim"], 1, MAX_DIM):
        raise bad(f"'dim' must be an integer in 1..{MAX_DIM}, got {meta['dim']!r}")
    if not _is_int(meta["ef"], 1, MAX_EF):
        raise bad(f"'ef' must be an integer in 1..{MAX_EF}, got {meta['ef']!r}")
    if not isinstance(meta["config"], dict):
        raise bad(f"'config' must be an object, got {type(meta['config']).__name__}")
    extractor = meta["extractor_config"]
    if extractor is not None and not isinstance(extractor, dict):
        raise bad(f"'extractor_config' must be an object or null, got {type(extractor).__name__}")
    counts = meta["counts"]
    if not isinstance(counts, dict) or not all(
        _is_int(counts.get(key), 0, MAX_LABELS) for key in ("volumes", "entries", "labels")
    ):
        raise bad(f"'counts' must hold integers volumes, entries, labels >= 0, got {counts!r}")
    if counts["entries"] > counts["labels"] or counts["volumes"] > counts["labels"]:
        raise bad(f"'counts' are inconsistent: {counts!r}")
    files = meta["files"]
    if not isinstance(files, dict) or not all(
        isinstance(name, str)
        and name == Path(name).name
        and name not in ("", ".", "..", META_NAME)
        and isinstance(info, dict)
        and _is_int(info.get("bytes"), 0, 1 << 62)
        and isinstance(info.get("sha256"), str)
        for name, info in files.items()
    ):
        raise bad("has a malformed 'files' entry")
    for name in ("slice_index.npy", "z_mm.npy"):
        if name not in files or files[name]["bytes"] < 8 * counts["labels"]:
            raise bad(f"'counts' say {counts['labels']} slices, more than {name} can hold")


def _check_meta(directory: Path, kind: str, *, verify: bool) -> dict[str, Any]:
    meta_path = directory / META_NAME
    meta = read_json(meta_path)
    required = ("format", "kind", "dim", "config", "ef", "extractor_config", "counts", "files")
    if not isinstance(meta, dict) or any(key not in meta for key in required):
        raise IndexFormatError(f"index file {str(meta_path)!r} lacks keys; needs {required}")
    if meta["format"] != FORMAT_VERSION:
        raise IndexFormatError(
            f"index {str(directory)!r} has format {meta['format']!r}; this cbirlib reads "
            f"format {FORMAT_VERSION} only"
        )
    if meta["kind"] != kind:
        other = {"hnsw": "SliceIndex", "exact": "ExactIndex"}.get(meta["kind"], meta["kind"])
        raise IndexFormatError(
            f"index {str(directory)!r} is of kind {meta['kind']!r}; load it with {other}.load"
        )
    if verify and "checksum" in meta and meta["checksum"] != meta_checksum(meta):
        raise IndexFormatError(f"index file {str(meta_path)!r} fails its sha256 checksum")
    _validate_meta(meta, meta_path)
    files = meta["files"]
    for name, info in files.items():
        file = directory / name
        if not file.is_file():
            raise IndexFormatError(f"index file {str(file)!r} is missing")
        if file.stat().st_size != info["bytes"]:
            raise IndexFormatError(
                f"index file {str(file)!r} is truncated or altered: {file.stat().st_size} "
                f"bytes, expected {info['bytes']}"
            )
        if verify and sha256_file(file) != info["sha256"]:
            raise IndexFormatError(f"index file {str(file)!r} fails its sha256 checksum")
    return meta
