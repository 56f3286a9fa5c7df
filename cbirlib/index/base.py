"""The shared core of the slice indexes: keys, slice metadata, vector access, persistence.

:class:`BaseIndex` holds everything :class:`~cbirlib.index.SliceIndex` (HNSW) and
:class:`~cbirlib.index.ExactIndex` (brute force) have in common; a subclass supplies the
search backend and where vectors live. The search result (:class:`SliceMatches`) and
the brute-force kernel (:func:`exact_search`) live in :mod:`cbirlib.index.matches`, the
key files in :mod:`cbirlib.index.keyfiles`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from cbirlib._files import sha256_file
from cbirlib._typing import F32, I64
from cbirlib._vectors import as_unit_rows
from cbirlib._version import __version__
from cbirlib.errors import (
    DimensionMismatchError,
    DuplicateVolumeError,
    IndexFormatError,
    InvalidVolumeError,
    LabelsError,
    SettingError,
    SliceIndexError,
    VolumeNotInIndexError,
)
from cbirlib.index.config import HnswConfig
from cbirlib.index.files import (
    META_NAME,
    atomic_write_dir,
    pinned_dir,
    resolve_dir,
    save_in_progress,
    write_json,
)
from cbirlib.index.keyfiles import StoredKeys, read_keys, write_keys
from cbirlib.index.matches import SliceMatches, exact_search
from cbirlib.index.meta import (
    FORMAT_VERSION,
    IndexMeta,
    check_compatible,
    meta_checksum,
    normalise_config,
    parse_meta,
)
from cbirlib.index.volumes import VolumeRecords
from cbirlib.labels import PACKED_BYTES, SliceLabels, pack_labels, unpack_labels
from cbirlib.modality import UNKNOWN, normalize_modality
from cbirlib.provenance import Source
from cbirlib.structures import COARSE_GROUPS

logger = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 40  # reads of an index that saves keep replacing, before giving up
META_KEYS = ("slice_index", "z_mm", "informative")
_NO_CLASSES = np.zeros(PACKED_BYTES, np.uint8)

__all__ = ["BaseIndex", "SliceMatches", "exact_search", "parse_slice_meta"]

_T = TypeVar("_T", bound="BaseIndex")


def parse_slice_meta(
    volume_id: str, n: int, slice_meta: Mapping[str, npt.ArrayLike] | None
) -> tuple[I64, npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Validate the ``slice_meta`` given to ``add``: ``(slice_index int64, z_mm float64)``.

    Also ``informative`` (bool, default all ``True``) as a third element.
    Missing keys default to ``0..n-1`` and NaN (unknown position); unknown keys, wrong
    shapes and negative or non-integer slice numbers raise
    :class:`~cbirlib.errors.SliceIndexError`.
    """
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
        raise SliceIndexError(f"volume {volume_id!r}: slice_index must hold non-negative integers")
    flags = np.asarray(meta.get("informative", np.ones(n, bool)))
    if flags.shape != (n,) or flags.dtype != np.bool_:
        raise SliceIndexError(
            f"volume {volume_id!r}: slice_meta 'informative' must be a bool array of "
            f"shape ({n},), got {flags.dtype} {flags.shape}"
        )
    return idx_raw.astype(np.int64), z, flags


class BaseIndex(VolumeRecords, ABC):
    """Keys, slice metadata, vector access and persistence shared by the indexes.

    Every slice entry has an integer label from a counter that never goes back, so
    labels are never reused; a volume owns one contiguous label range.
    """

    KIND: ClassVar[str]

    def __init__(
        self,
        dim: int,
        *,
        config: HnswConfig = HnswConfig(),  # noqa: B008 - frozen dataclass
        extractor_config: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise SliceIndexError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(config, HnswConfig):
            raise SliceIndexError(f"config must be an HnswConfig, got {type(config).__name__}")
        self.dim = int(dim)
        self.config = config
        self._extractor_config = normalise_config(extractor_config)
        self._ef = config.ef_search
        self._spans: dict[str, tuple[int, int]] = {}  # id -> (first label, n), insertion order
        self._modality: dict[str, str] = {}  # id -> modality code ("unknown": not recorded)
        self._source: dict[str, Source] = {}  # id -> provenance (absent: unknown)
        self._label_classes: dict[str, npt.NDArray[np.uint8]] = {}  # id -> packed classes
        self._removed: set[str] = set()  # ids removed since creation, for clearer errors
        self._next_label = 0
        self._n_entries = 0
        self._slice_index = np.zeros(0, np.int64)  # per label
        self._z_mm = np.zeros(0, np.float64)  # per label
        self._informative = np.zeros(0, bool)  # per label
        self._labels = np.zeros((0, PACKED_BYTES), np.uint8)  # per label, packed bits
        self._alive = np.zeros(0, bool)  # per label
        self._table: tuple[I64, npt.NDArray[np.object_], npt.NDArray[np.uint8]] | None = None
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
    def _backend_load(self, directory: Path, meta: IndexMeta, *, mmap: bool) -> None: ...

    def _apply_ef(self) -> None:
        """Push ``self._ef`` to the backend (nothing to do for exact search)."""

    def _before_save(self) -> None:
        """Hook run (under the lock) before writing."""

    def _after_save(self, directory: Path) -> None:
        """Hook run (under the lock) once ``directory`` holds the saved index."""

    # -- keys and metadata ------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dim={self.dim}, n_volumes={self.n_volumes}, "
            f"n_slices={len(self)}, ef={self.ef})"
        )

    @property
    def extractor_config(self) -> dict[str, Any] | None:
        """Config of the extractor that made the vectors (None when not recorded)."""
        return None if self._extractor_config is None else dict(self._extractor_config)

    @property
    def ef(self) -> int:
        """Search candidate list size (saved with the index; a search for ``k`` uses at
        least ``4 * k``, :func:`~cbirlib.index.config.search_ef`)."""
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
        self,
        extractor_config: Mapping[str, Any],
        *,
        dim: int | None = None,
        strict: bool | None = None,
    ) -> None:
        """Check that vectors from ``extractor_config`` (of dimension ``dim``) fit this index.

        See :func:`cbirlib.index.check_compatible`: another extractor name or dimension
        raises, other config differences warn (raise in strict mode). Nothing but the
        dimension is checked when the index has no stored config.
        """
        check_compatible(self._extractor_config, self.dim, extractor_config, dim, strict=strict)

    # -- add / remove -------------------------------------------------------------------------

    def _reserve(self, n: int) -> None:
        if n <= len(self._alive):
            return
        cap = max(n, 2 * len(self._alive), 1024)
        for name, fill in (
            ("_slice_index", 0),
            ("_z_mm", np.nan),
            ("_informative", True),
            ("_alive", False),
            ("_labels", 0),
        ):
            old = getattr(self, name)
            new = np.full((cap, *old.shape[1:]), fill, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _parse_meta(
        self, volume_id: str, n: int, slice_meta: dict[str, npt.ArrayLike] | None
    ) -> tuple[I64, npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        return parse_slice_meta(volume_id, n, slice_meta)

    def add(
        self,
        volume_id: str,
        embeddings: npt.ArrayLike,
        *,
        slice_meta: dict[str, npt.ArrayLike] | None = None,
        modality: str = UNKNOWN,
        source: Source | None = None,
        labels: SliceLabels | None = None,
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
            ``0..n-1``; give them when only some slices are stored), and
            ``"informative"`` (n,) bool, ``False`` for blank slices
            (:func:`cbirlib.informative.informative_slices`; default all ``True``).
        modality
            The volume's modality (``"CT"``, ``"MR"``, ...), recorded so that a query of
            another modality can be told (:attr:`modalities`); default ``"unknown"``.
        source
            Where the volume was read from (:attr:`sources`; :attr:`Volume.source
            <cbirlib.Volume.source>`); default unknown.
        labels
            Optional per-slice structure sets (one row per embedding; columns
            TotalSegmentator v1 class names), stored packed as bits
            (:func:`cbirlib.labels.pack_labels`) and read back by :meth:`labels`.
            None (default): an unlabeled volume.

        Raises
        ------
        LabelsError
            ``labels`` with a column that is not a v1 class, or another slice count.
        """
        if source is not None and not isinstance(source, Source):
            raise SliceIndexError(f"volume {volume_id!r}: source must be a Source or None")
        if not isinstance(volume_id, str) or not volume_id:
            raise SliceIndexError(f"volume id must be a non-empty string, got {volume_id!r}")
        try:
            code = normalize_modality(modality)
        except SettingError as exc:
            raise SliceIndexError(f"volume {volume_id!r}: {exc}") from None
        vectors = as_unit_rows(embeddings, self.dim, f"volume {volume_id!r}")
        n = len(vectors)
        if n == 0:
            raise InvalidVolumeError(f"volume {volume_id!r}: no slice embeddings to add")
        slice_index, z, flags = self._parse_meta(volume_id, n, slice_meta)
        bits, known = _packed(volume_id, n, labels)
        with self._lock:
            if volume_id in self._spans:
                raise DuplicateVolumeError(
                    f"volume {volume_id!r} is already in the index; remove it first"
                )
            start = self._next_label
            keys = np.arange(start, start + n, dtype=np.int64)
            self._reserve(start + n)
            self._backend_add(keys, vectors)
            self._slice_index[start : start + n] = slice_index
            self._z_mm[start : start + n] = z
            self._informative[start : start + n] = flags
            self._labels[start : start + n] = bits
            self._alive[start : start + n] = True
            self._spans[volume_id] = (start, n)
            self._modality[volume_id] = code
            if source is not None:
                self._source[volume_id] = source
            self._label_classes[volume_id] = known
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
            self._modality.pop(volume_id, None)
            self._source.pop(volume_id, None)
            self._label_classes.pop(volume_id, None)
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
        """``{"slice_index": int64 (n,), "z_mm": float64 (n,), "informative": bool (n,)}``.

        Copies, for one volume. ``informative`` is ``False`` for blank slices (all
        ``True`` in an index built before the flags existed).
        """
        start, n = self._span(volume_id)
        return {
            "slice_index": self._slice_index[start : start + n].copy(),
            "z_mm": self._z_mm[start : start + n].copy(),
            "informative": self._informative[start : start + n].copy(),
        }

    def labels(self, volume_id: str, *, granularity: str = "fine") -> SliceLabels | None:
        """The stored per-slice structure sets of one volume, or None if it has none.

        Parameters
        ----------
        volume_id
            An indexed volume.
        granularity
            ``"fine"``: the v1 classes its labels cover; ``"coarse"``: grouped into the
            coarse regions of :data:`cbirlib.structures.COARSE_GROUPS`.

        Raises
        ------
        VolumeNotInIndexError
            ``volume_id`` is not in the index.
        SettingError
            An unknown ``granularity``.
        """
        _check_granularity(granularity)
        start, n = self._span(volume_id)
        known = self._label_classes.get(volume_id, _NO_CLASSES)
        if not known.any():
            return None
        fine = unpack_labels(self._labels[start : start + n], known)
        if granularity == "fine":
            return fine

        return fine.grouped(COARSE_GROUPS)

    @property
    def labeled_volumes(self) -> list[str]:
        """Ids of the volumes stored with labels, in insertion order."""
        with self._lock:
            return [v for v in self._spans if self._label_classes.get(v, _NO_CLASSES).any()]

    @property
    def n_labeled_slices(self) -> int:
        """Number of indexed slices whose volume was stored with labels."""
        with self._lock:
            return sum(
                n
                for v, (_, n) in self._spans.items()
                if self._label_classes.get(v, _NO_CLASSES).any()
            )

    @property
    def n_uninformative(self) -> int:
        """Number of indexed slices flagged uninformative (blank)."""
        n = self._next_label
        return int(np.count_nonzero(self._alive[:n] & ~self._informative[:n]))

    # -- search --------------------------------------------------------------------------------

    def _volume_table(self) -> tuple[I64, npt.NDArray[np.object_], npt.NDArray[np.uint8]]:
        table = self._table
        if table is None:
            starts = np.array([s for s, _ in self._spans.values()], np.int64)
            names = np.array(list(self._spans), dtype=object)
            known = np.array(
                [self._label_classes.get(v, _NO_CLASSES) for v in self._spans], np.uint8
            ).reshape(-1, PACKED_BYTES)
            table = self._table = (starts, names, known)
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
        q = as_unit_rows(queries, self.dim, "queries")
        with self._lock:
            k_eff = min(int(k), self._n_entries)
            if k_eff == 0 or len(q) == 0:
                labels = np.zeros((len(q), 0), np.int64)
                scores = np.zeros((len(q), 0), np.float32)
            else:
                labels, scores = self._backend_search(q, k_eff)
            starts, names, known = self._volume_table()
            pos = np.searchsorted(starts, labels, side="right") - 1
            return SliceMatches(
                volume_ids=names[pos] if len(names) else np.empty(labels.shape, object),
                slice_indices=self._slice_index[labels],
                scores=scores.astype(np.float32, copy=False),
                z_mm=self._z_mm[labels],
                informative=self._informative[labels],
                labels=self._labels[labels],
                label_known=(
                    known[pos] if len(names) else np.zeros((*labels.shape, PACKED_BYTES), np.uint8)
                ),
            )

    def _exact_fallback(self, queries: F32, k: int) -> tuple[I64, F32]:
        live = np.flatnonzero(self._alive[: self._next_label]).astype(np.int64)
        rows = np.concatenate([self._rows(s, n) for s, n in self._spans.values()])
        return exact_search(queries, rows, live, k)

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to directory ``path`` atomically (see :mod:`cbirlib.index.files`).

        The directory holds ``meta.json`` (format version, settings, ``ef``, extractor
        config, counts and a sha256 of every other file), the keys and slice metadata
        as ``.npy`` files and the backend's files. A crash at any moment leaves the old
        or the new index.
        """
        with self._lock:
            self._before_save()

            def write(directory: Path) -> None:
                n_labels = self._next_label
                classes = [self._label_classes.get(v, _NO_CLASSES) for v in self._spans]
                keys = StoredKeys(
                    volumes=list(self._spans),
                    spans=np.array(list(self._spans.values()), np.int64).reshape(-1, 2),
                    modalities=[self._modality.get(v, UNKNOWN) for v in self._spans],
                    sources=[self._source.get(v) for v in self._spans],
                    label_classes=np.array(classes, np.uint8).reshape(-1, PACKED_BYTES),
                    slice_index=self._slice_index[:n_labels],
                    z_mm=self._z_mm[:n_labels],
                    informative=self._informative[:n_labels],
                    labels=self._labels[:n_labels],
                )
                write_keys(directory, keys)
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
        meta = parse_meta(directory, verify=verify)
        if meta.kind != cls.KIND:
            other = {"hnsw": "SliceIndex", "exact": "ExactIndex"}[meta.kind]
            raise IndexFormatError(
                f"index {str(directory)!r} is of kind {meta.kind!r}; load it with "
                f"{other}.load (or cbirlib.index.load_index)"
            )
        if dim is not None and meta.dim != dim:
            raise DimensionMismatchError(
                f"index {str(directory)!r} has dimension {meta.dim}, expected {dim}"
            )
        try:
            index = cls(meta.dim, config=meta.config, extractor_config=meta.extractor_config)
            index._load_keys(directory, meta)
            index._ef = meta.ef
        except SliceIndexError as exc:
            if isinstance(exc, IndexFormatError | DimensionMismatchError):
                raise
            raise IndexFormatError(
                f"index file {str(directory / META_NAME)!r} is malformed: {exc}"
            ) from None
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise IndexFormatError(
                f"index file {str(directory / META_NAME)!r} is malformed: {exc!r}"
            ) from None
        index._backend_load(directory, meta, mmap=mmap)
        index._apply_ef()
        return index

    def _load_keys(self, directory: Path, meta: IndexMeta) -> None:
        keys = read_keys(directory, meta)
        n_labels = meta.n_labels
        self._reserve(n_labels)
        self._slice_index[:n_labels] = keys.slice_index
        self._z_mm[:n_labels] = keys.z_mm
        self._informative[:n_labels] = keys.informative
        self._labels[:n_labels] = keys.labels
        rows = zip(
            keys.volumes,
            keys.spans.tolist(),
            keys.modalities,
            keys.sources,
            keys.label_classes,
            strict=True,
        )
        for vid, (start, n), code, origin, known in rows:
            self._spans[vid] = (start, n)
            self._modality[vid] = code
            if origin is not None:
                self._source[vid] = origin
            if known.any():
                self._label_classes[vid] = known.copy()
            self._alive[start : start + n] = True
        self._next_label = n_labels
        self._n_entries = int(keys.spans[:, 1].sum()) if meta.n_volumes else 0


def _check_granularity(granularity: str) -> None:
    if granularity not in ("fine", "coarse"):
        raise SettingError(f"granularity must be 'fine' or 'coarse', got {granularity!r}")


def _packed(
    volume_id: str, n: int, labels: SliceLabels | None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """``(bits (n, 13), known (13,))`` of ``labels`` (zeros for an unlabeled volume)."""
    if labels is None:
        return np.zeros((n, PACKED_BYTES), np.uint8), _NO_CLASSES.copy()
    if not isinstance(labels, SliceLabels):
        raise LabelsError(
            f"volume {volume_id!r}: labels must be a SliceLabels, got {type(labels).__name__}"
        )
    if len(labels) != n:
        raise LabelsError(
            f"volume {volume_id!r}: labels cover {len(labels)} slices, the embeddings {n}"
        )
    try:
        return pack_labels(labels)
    except LabelsError as exc:
        raise LabelsError(f"volume {volume_id!r}: {exc}") from None


def _named(exc: Exception, pinned: Path, directory: Path) -> SliceIndexError:
    """``exc`` as a :class:`SliceIndexError` naming ``directory`` (not its fd alias)."""
    message = str(exc).replace(str(pinned), str(directory))
    if isinstance(exc, SliceIndexError):
        return type(exc)(message)
    return IndexFormatError(f"index {str(directory)!r} is unreadable: {' '.join(message.split())}")
