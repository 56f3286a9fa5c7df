""":class:`MilvusIndex`: the slice index in a Milvus collection (Milvus Lite or a server).

The same index API as :class:`~cbirlib.index.SliceIndex` (``add``, ``remove``,
``search``, ``vectors_for``, ``slice_meta``, ``check_extractor``, listing and counts), so
``SliceSearch >> CountVotes >> MaxSimRerank >> Localize`` runs on it unchanged. The
vectors live in Milvus: a local ``.db`` path opens an embedded Milvus Lite (no server,
one process at a time), ``http://host:19530`` (with a ``token``) a Milvus standalone or
cluster. Install with ``pip install "cbirlib[milvus]"``.

One collection per index, one row per slice: ``label`` (primary key; a volume owns a
contiguous range), ``volume_id``, ``pos`` (row within the volume), ``n_slices``,
``slice_index``, ``z_mm`` and the float32 unit ``vector``, under an HNSW index with the
``M`` / ``ef_construction`` of :class:`~cbirlib.index.HnswConfig` and inner-product
metric. The collection property ``cbirlib.meta`` holds the format version, dimension,
settings, search ``ef`` and the extractor config; they are checked on every open.

Examples
--------
>>> import tempfile, numpy as np
>>> from cbirlib.index.milvus import MilvusIndex
>>> uri = tempfile.mkdtemp() + "/slices.db"
>>> index = MilvusIndex(uri, 4, extractor_config={"name": "demo"})
>>> index.add("a", np.eye(4), slice_meta={"z_mm": np.arange(4) * 2.5})
>>> m = index.search(np.eye(4)[:1], k=2)
>>> m.volume_ids[0].tolist(), m.slice_indices[0].tolist(), m.z_mm[0].tolist()
(['a', 'a'], [0, 1], [0.0, 2.5])
>>> index.close()
>>> MilvusIndex.open(uri).volume_ids
['a']
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from cbirlib._typing import F32, I64
from cbirlib._vectors import as_unit_rows
from cbirlib._version import __version__
from cbirlib.errors import (
    BackendUnavailableError,
    DimensionMismatchError,
    DuplicateVolumeError,
    IndexFormatError,
    IndexInUseError,
    InvalidVolumeError,
    LabelsError,
    SliceIndexError,
    VolumeNotInIndexError,
)
from cbirlib.index.base import parse_slice_meta
from cbirlib.index.config import HnswConfig, search_ef
from cbirlib.index.files import META_NAME, read_json, write_json
from cbirlib.index.matches import SliceMatches
from cbirlib.index.meta import check_compatible, normalise_config
from cbirlib.index.volumes import VolumeRecords
from cbirlib.labels import SliceLabels
from cbirlib.modality import UNKNOWN, normalize_modality
from cbirlib.provenance import Source

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_COLLECTION", "MILVUS_FORMAT", "MilvusIndex", "open_pointer"]

#: Version of the collection layout (fields and ``cbirlib.meta``) this cbirlib writes.
MILVUS_FORMAT = 1
DEFAULT_COLLECTION = "cbirlib_slices"
_META_KEY = "cbirlib.meta"
_MAX_ROWS = 16384  # Milvus caps a search's limit and a query's offset + limit here
_MAX_QUERIES = 1024  # query vectors per search request
_MAX_ID_BYTES = 4096
_MAX_MODALITY = 64  # bytes of a modality code ("CT", "MR", ...)
_MAX_SOURCE = 8192  # bytes of a volume's source record (JSON; "" when unknown)
_INSERT_BYTES = 16 << 20  # payload of one insert request
_META_CACHE_ROWS = 1 << 20  # slice metadata kept in memory (about 17 MB at most)
_META_FIELDS = ["slice_index", "z_mm", "informative"]
_FIELDS = (
    "label",
    "volume_id",
    "pos",
    "n_slices",
    "slice_index",
    "z_mm",
    "informative",
    "modality",
    "source",
    "vector",
)
_REMOTE = ("http://", "https://", "tcp://", "grpc://", "unix:")
#: Milvus Lite paths opened by this process, and how many open indexes use each.
_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the Milvus backend needs pymilvus and milvus-lite ({exc}); "
            'install them with: pip install "cbirlib[milvus]"'
        ) from None
    return pymilvus


def _is_remote(uri: str) -> bool:
    return uri.startswith(_REMOTE)


def _lite_locked(path: str) -> bool:
    """Whether another process holds the Milvus Lite lock of ``path``."""
    lock = Path(path) / "LOCK"
    if sys.platform == "win32" or not lock.is_file():
        return False
    import fcntl

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _connect(uri: str, token: str | None) -> tuple[Any, str | None]:
    """A ``MilvusClient`` for ``uri`` and, for Milvus Lite, the absolute file path."""
    pymilvus = _pymilvus()
    if not isinstance(uri, str | os.PathLike) or not str(uri):
        raise SliceIndexError(f"uri must be a .db file path or a Milvus URL, got {uri!r}")
    uri = os.fspath(uri)
    path = None
    if not _is_remote(uri):
        path = os.path.abspath(uri)
        if not path.endswith(".db"):
            raise SliceIndexError(
                f"Milvus Lite file {uri!r} must end in '.db' (or give a server URL such as "
                "http://host:19530)"
            )
        if not os.path.isdir(os.path.dirname(path)):
            raise SliceIndexError(f"folder of the Milvus Lite file {uri!r} does not exist")
    try:
        client = pymilvus.MilvusClient(uri=path or uri, token=token or "")
    except pymilvus.MilvusException as exc:
        if path is not None and _lite_locked(path):
            raise IndexInUseError(_in_use(uri)) from None
        raise SliceIndexError(f"cannot open Milvus at {uri!r}: {exc.message}") from None
    if path is not None:
        with _LITE_LOCK:
            _LITE_USERS[path] = _LITE_USERS.get(path, 0) + 1
    return client, path


def _in_use(uri: str) -> str:
    return (
        f"Milvus Lite file {uri!r} is open in another process; Milvus Lite admits one "
        "process at a time: close the index there (MilvusIndex.close, or end that process), "
        "or serve the collection from a Milvus server (uri='http://host:19530')"
    )


def _release(path: str | None) -> None:
    if path is None:
        return
    with _LITE_LOCK:
        left = _LITE_USERS.get(path, 0) - 1
        if left > 0:
            _LITE_USERS[path] = left
            return
        _LITE_USERS.pop(path, None)
    try:  # free the file (and its lock) for other processes
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)
    except (ImportError, AttributeError):  # pragma: no cover - another milvus-lite layout
        logger.debug("could not release the Milvus Lite server of %s", path)


class MilvusIndex(VolumeRecords):
    """Slice index in a Milvus collection, with the :class:`~cbirlib.index.SliceIndex` API.

    Parameters
    ----------
    uri
        A local ``.db`` path (Milvus Lite, embedded: no server) or a server URL
        (``http://host:19530``).
    dim
        Embedding dimension; needed to create the collection, checked when it exists.
    collection
        Collection name (one index per collection).
    config
        ``M`` and ``ef_construction`` of the HNSW index and the default search ``ef``
        (as :class:`HnswConfig`); only ``store_dtype="float32"`` (Milvus Lite has no
        float16 vectors). Stored with a new collection; an existing one keeps its own.
    extractor_config
        ``Extractor.to_config()`` of the model that made the vectors: stored with a new
        collection, checked against an existing one (:func:`~cbirlib.index.check_compatible`).
    token
        Server token (``"user:password"`` or an API key); not used by Milvus Lite and never
        stored.
    create
        Create the collection when it does not exist (``False``: :class:`IndexFormatError`).

    Raises
    ------
    IndexInUseError
        The Milvus Lite file is open in another process (Milvus Lite admits one process
        at a time; a server admits many).
    IndexFormatError
        The collection was written by another cbirlib format version or not by cbirlib.
    ExtractorMismatchError, DimensionMismatchError
        ``extractor_config`` or ``dim`` do not fit the existing collection.

    Notes
    -----
    The list of volumes is cached in this object, and searches see the volumes it lists:
    run one writer at a time per collection; readers in other processes (server only)
    call :meth:`refresh` to see volumes added since they opened it. A volume whose add
    was cut short by a crash is never listed; the next :meth:`add` deletes its rows.
    Searches run with ``ef`` at least ``4 * k``, as :class:`~cbirlib.index.SliceIndex`'s. Call
    :meth:`close` (or use ``with``) to free a Milvus Lite file for another process.
    """

    KIND: ClassVar[str] = "milvus"

    def __init__(
        self,
        uri: str | os.PathLike[str],
        dim: int | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        config: HnswConfig | None = None,
        extractor_config: Mapping[str, Any] | None = None,
        token: str | None = None,
        create: bool = True,
    ) -> None:
        if dim is not None and (
            isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1
        ):
            raise SliceIndexError(f"dim must be a positive integer, got {dim!r}")
        if config is not None and not isinstance(config, HnswConfig):
            raise SliceIndexError(f"config must be an HnswConfig, got {type(config).__name__}")
        if config is not None and config.store_dtype != "float32":
            raise SliceIndexError(
                "MilvusIndex stores float32 vectors only (Milvus Lite has no float16 vectors); "
                "use HnswConfig(store_dtype='float32')"
            )
        if not isinstance(collection, str) or not collection:
            raise SliceIndexError(f"collection must be a non-empty name, got {collection!r}")
        self.uri = os.fspath(uri)
        self.collection = collection
        self._lock = threading.RLock()
        self._spans: dict[str, tuple[int, int]] = {}
        self._modality: dict[str, str] = {}
        self._source: dict[str, Source] = {}
        self._next_label = 0
        self._n_entries = 0
        self._swept = False  # rows of an add that a crash cut short were deleted
        # slice metadata of recently fetched volumes, by label range (a range is never
        # reused while it is listed): what vectors_for fetched for MaxSim, read again by
        # slice_meta during re-ranking and localization without another request
        self._meta_cache: OrderedDict[tuple[int, int], dict[str, npt.NDArray[Any]]] = OrderedDict()
        self._meta_cached_rows = 0
        self._client, self._path = _connect(self.uri, token)
        try:
            if self._client.has_collection(collection):
                self._open(dim, extractor_config)
            elif not create:
                raise IndexFormatError(
                    f"Milvus at {self.uri!r} has no collection {collection!r}; "
                    f"collections there: {', '.join(self._client.list_collections()) or 'none'}"
                )
            else:
                if dim is None:
                    raise SliceIndexError(
                        f"collection {collection!r} does not exist; give dim to create it"
                    )
                self._create(int(dim), config or HnswConfig(), extractor_config)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        uri: str | os.PathLike[str],
        *,
        collection: str = DEFAULT_COLLECTION,
        dim: int | None = None,
        extractor_config: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> MilvusIndex:
        """Open an existing index (:class:`IndexFormatError` if there is none)."""
        return cls(
            uri,
            dim,
            collection=collection,
            extractor_config=extractor_config,
            token=token,
            create=False,
        )

    # -- collection ---------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "format": MILVUS_FORMAT,
            "kind": self.KIND,
            "cbirlib_version": __version__,
            "dim": self.dim,
            "config": self.config.to_dict(),
            "ef": self._ef,
            "extractor_config": self._extractor_config,
        }

    def _create(
        self, dim: int, config: HnswConfig, extractor_config: Mapping[str, Any] | None
    ) -> None:
        pymilvus = _pymilvus()
        types = pymilvus.DataType
        self.dim, self.config, self._ef = dim, config, config.ef_search
        self._extractor_config = normalise_config(extractor_config)
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("label", types.INT64, is_primary=True)
        schema.add_field("volume_id", types.VARCHAR, max_length=_MAX_ID_BYTES)
        schema.add_field("pos", types.INT32)
        schema.add_field("n_slices", types.INT32)
        schema.add_field("slice_index", types.INT64)
        schema.add_field("z_mm", types.DOUBLE)
        schema.add_field("informative", types.BOOL)
        schema.add_field("modality", types.VARCHAR, max_length=_MAX_MODALITY)
        schema.add_field("source", types.VARCHAR, max_length=_MAX_SOURCE)
        schema.add_field("vector", types.FLOAT_VECTOR, dim=dim)
        params = self._client.prepare_index_params()
        params.add_index(
            "vector",
            index_type="HNSW",
            metric_type="IP",  # inner product of unit vectors: cosine
            params={"M": config.M, "efConstruction": config.ef_construction},
        )
        self._client.create_collection(
            self.collection,
            schema=schema,
            index_params=params,
            consistency_level="Strong",
            properties={_META_KEY: json.dumps(self._meta(), sort_keys=True)},
        )
        logger.info("created Milvus collection %r at %s", self.collection, self.uri)

    def _open(self, dim: int | None, extractor_config: Mapping[str, Any] | None) -> None:
        where = f"collection {self.collection!r} at {self.uri!r}"
        info = self._client.describe_collection(self.collection)
        raw = (info.get("properties") or {}).get(_META_KEY)
        if raw is None:
            raise IndexFormatError(f"{where} was not written by cbirlib (no {_META_KEY!r})")
        try:
            meta = json.loads(raw)
            version = meta["format"]
        except (ValueError, TypeError, KeyError) as exc:
            raise IndexFormatError(f"{where}: malformed {_META_KEY!r}: {exc!r}") from None
        if version != MILVUS_FORMAT:
            raise IndexFormatError(
                f"{where} has cbirlib format {version!r} (written by cbirlib "
                f"{meta.get('cbirlib_version', '?')}); this cbirlib reads format {MILVUS_FORMAT} "
                "only: rebuild the index or use the cbirlib that wrote it"
            )
        fields = {f["name"] for f in info.get("fields", [])}
        if fields != set(_FIELDS):
            raise IndexFormatError(f"{where} has fields {sorted(fields)}, expected {_FIELDS}")
        try:
            self.dim = int(meta["dim"])
            self.config = HnswConfig.from_dict(meta["config"])
            self._ef = int(meta["ef"])
            self._extractor_config = normalise_config(meta["extractor_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{where}: malformed {_META_KEY!r}: {exc!r}") from None
        if dim is not None and int(dim) != self.dim:
            raise DimensionMismatchError(f"{where} has dimension {self.dim}, expected {dim}")
        if extractor_config is not None:
            self.check_extractor(extractor_config, dim=dim)
        self._client.load_collection(self.collection)
        self._read_volumes()

    def _read_volumes(self) -> None:
        """Rebuild the volume table from the first row of every volume."""
        fields = ["label", "volume_id", "n_slices", "modality", "source"]
        heads = self._query("pos == 0", fields, self._count("pos == 0"))
        heads.sort(key=lambda r: int(r["label"]))
        self._spans = {str(r["volume_id"]): (int(r["label"]), int(r["n_slices"])) for r in heads}
        self._modality = {str(r["volume_id"]): str(r["modality"]) for r in heads}
        self._source = {
            str(r["volume_id"]): Source.from_dict(json.loads(r["source"]))
            for r in heads
            if r["source"]
        }
        self._n_entries = sum(n for _, n in self._spans.values())
        self._next_label = max((s + n for s, n in self._spans.values()), default=0)

    def _count(self, where: str) -> int:
        rows = self._client.query(self.collection, filter=where, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _query(self, where: str, fields: list[str], n: int) -> list[dict[str, Any]]:
        """All ``n`` rows matching ``where`` (one request when ``n`` fits Milvus's cap)."""
        if n <= _MAX_ROWS:
            return list(
                self._client.query(self.collection, filter=where, output_fields=fields, limit=n)
            )
        rows: list[dict[str, Any]] = []
        iterator = self._client.query_iterator(
            self.collection, batch_size=4096, filter=where, output_fields=fields
        )
        try:
            while batch := iterator.next():
                rows.extend(batch)
        finally:
            iterator.close()
        return rows

    def refresh(self) -> None:
        """Re-read the list of volumes (after another process added or removed some)."""
        with self._lock:
            self._clear_meta_cache()
            self._read_volumes()

    def _clear_meta_cache(self) -> None:
        self._meta_cache.clear()
        self._meta_cached_rows = 0

    def _cache_meta(self, span: tuple[int, int], meta: dict[str, npt.NDArray[Any]]) -> None:
        if span in self._meta_cache:
            self._meta_cache.move_to_end(span)
            return
        self._meta_cache[span] = meta
        self._meta_cached_rows += span[1]
        while self._meta_cached_rows > _META_CACHE_ROWS and len(self._meta_cache) > 1:
            old, _ = self._meta_cache.popitem(last=False)
            self._meta_cached_rows -= old[1]

    def close(self) -> None:
        """Close the connection; a Milvus Lite file is then free for other processes."""
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()
            _release(self._path)

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> Any:
        if self._client is None:
            raise SliceIndexError(f"{self!r} is closed")
        return self._client

    def drop(self) -> None:
        """Delete the collection and everything in it, and close the index."""
        self._live().drop_collection(self.collection)
        self.close()

    # -- keys and metadata ----------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"MilvusIndex({self.uri!r}, collection={self.collection!r}, dim={self.dim}, "
            f"n_volumes={self.n_volumes}, n_slices={len(self)}, ef={self._ef})"
        )

    @property
    def extractor_config(self) -> dict[str, Any] | None:
        """Config of the extractor that made the vectors (None when not recorded)."""
        return None if self._extractor_config is None else dict(self._extractor_config)

    @property
    def ef(self) -> int:
        """Search candidate list size (stored with the collection; a search for ``k`` uses
        at least ``4 * k``, :func:`~cbirlib.index.config.search_ef`)."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise SliceIndexError(f"ef must be a positive integer, got {value!r}")
        with self._lock:
            self._ef = int(value)
            self._live().alter_collection_properties(
                self.collection, properties={_META_KEY: json.dumps(self._meta(), sort_keys=True)}
            )

    def check_extractor(
        self,
        extractor_config: Mapping[str, Any],
        *,
        dim: int | None = None,
        strict: bool | None = None,
    ) -> None:
        """Check that vectors from ``extractor_config`` fit this index, as ``SliceIndex`` does."""
        check_compatible(self._extractor_config, self.dim, extractor_config, dim, strict=strict)

    def _span(self, volume_id: str) -> tuple[int, int]:
        span = self._spans.get(volume_id) if isinstance(volume_id, str) else None
        if span is None:
            known = ", ".join(repr(v) for v in list(self._spans)[:10])
            more = "..." if len(self._spans) > 10 else ""
            raise VolumeNotInIndexError(
                f"volume {volume_id!r} is not in the index; indexed volumes: {known}{more}"
                if self._spans
                else f"volume {volume_id!r} is not in the index; the index is empty"
            )
        return span

    # -- add / remove -----------------------------------------------------------------------

    def add(
        self,
        volume_id: str,
        embeddings: npt.ArrayLike,
        *,
        slice_meta: Mapping[str, npt.ArrayLike] | None = None,
        modality: str = UNKNOWN,
        source: Source | None = None,
        labels: SliceLabels | None = None,
    ) -> None:
        """Add the slice embeddings of one volume (see :meth:`SliceIndex.add`).

        Raises
        ------
        LabelsError
            ``labels`` given: this backend does not store slice labels (build a labeled
            reference index as a :class:`~cbirlib.index.SliceIndex` or
            :class:`~cbirlib.index.ExactIndex`).
        """
        if labels is not None:
            raise LabelsError(
                "MilvusIndex does not store slice labels; build the labeled reference "
                "index as a SliceIndex or ExactIndex (cbirlib.build_index), or add "
                "this volume without labels"
            )
        if not isinstance(volume_id, str) or not volume_id:
            raise SliceIndexError(f"volume id must be a non-empty string, got {volume_id!r}")
        if len(volume_id.encode("utf-8")) > _MAX_ID_BYTES:
            raise SliceIndexError(f"volume id {volume_id[:40]!r}... is over {_MAX_ID_BYTES} bytes")
        vectors = as_unit_rows(embeddings, self.dim, f"volume {volume_id!r}")
        n = len(vectors)
        if n == 0:
            raise InvalidVolumeError(f"volume {volume_id!r}: no slice embeddings to add")
        slice_index, z, flags = parse_slice_meta(volume_id, n, slice_meta)
        code = normalize_modality(modality)
        origin = "" if source is None else json.dumps(source.to_dict(), sort_keys=True)
        if len(origin.encode("utf-8")) > _MAX_SOURCE:
            raise SliceIndexError(f"volume {volume_id!r}: source record over {_MAX_SOURCE} bytes")
        with self._lock:
            client = self._live()
            if volume_id in self._spans:
                raise DuplicateVolumeError(
                    f"volume {volume_id!r} is already in the index; remove it first"
                )
            if not self._swept:
                self._sweep(client)
            start = self._next_label
            rows = [
                {
                    "label": start + i,
                    "volume_id": volume_id,
                    "pos": i,
                    "n_slices": n,
                    "slice_index": int(slice_index[i]),
                    "z_mm": float(z[i]),
                    "informative": bool(flags[i]),
                    "modality": code,
                    "source": origin if i == 0 else "",
                    "vector": vectors[i],
                }
                for i in range(n)
            ]
            step = max(1, _INSERT_BYTES // (4 * self.dim + 64))
            try:
                # the first row (pos 0) lists the volume: insert it last, so that a volume
                # cut short by a crash is never listed (its rows are swept by the next add)
                for first in reversed(range(0, n, step)):
                    client.insert(self.collection, rows[first : first + step])
            except BaseException:
                client.delete(self.collection, filter=_label_range(start, n))
                raise
            self._spans[volume_id] = (start, n)
            self._modality[volume_id] = code
            if source is not None:
                self._source[volume_id] = source
            self._next_label += n
            self._n_entries += n

    def _sweep(self, client: Any) -> None:
        """Delete rows past every listed volume: what an add cut short by a crash left."""
        where = f"label >= {self._next_label}"
        stray = self._count(where)
        if stray:
            logger.warning(
                "collection %r at %s holds %d slices of an add that did not finish; deleting them",
                self.collection,
                self.uri,
                stray,
            )
            client.delete(self.collection, filter=where)
        self._swept = True

    def remove(self, volume_id: str) -> None:
        """Remove a volume (:class:`~cbirlib.errors.VolumeNotInIndexError` if unknown)."""
        with self._lock:
            start, n = self._span(volume_id)
            self._live().delete(self.collection, filter=_label_range(start, n))
            del self._spans[volume_id]
            if self._meta_cache.pop((start, n), None) is not None:
                self._meta_cached_rows -= n
            self._modality.pop(volume_id, None)
            self._source.pop(volume_id, None)
            self._n_entries -= n

    # -- vectors ----------------------------------------------------------------------------

    def _fetch(self, spans: list[tuple[int, int]], fields: list[str]) -> list[dict[str, Any]]:
        """Rows of label ranges ``spans``, in label order.

        The labels are the primary keys, so the rows are read by key (``get``; one request
        per <= 16384 rows), which Milvus Lite answers 2-3x faster than a query filtering
        the same label ranges (``docs/results/index_scale.md``).
        """
        client = self._live()
        labels = [i for start, n in sorted(set(spans)) for i in range(start, start + n)]
        rows: list[dict[str, Any]] = []
        for first in range(0, len(labels), _MAX_ROWS):
            ids = labels[first : first + _MAX_ROWS]
            rows.extend(client.get(self.collection, ids=ids, output_fields=["label", *fields]))
        rows.sort(key=lambda r: int(r["label"]))
        if len(rows) != len(labels):
            raise IndexFormatError(
                f"collection {self.collection!r} at {self.uri!r} returned {len(rows)} of "
                f"{len(labels)} slices; it was changed by another process (call refresh())"
            )
        return rows

    def vectors(self, volume_id: str) -> F32:
        """``(n_slices, dim)`` float32 unit vectors of one volume."""
        return self.vectors_for([volume_id])[0]

    def vectors_for(self, volume_ids: Sequence[str]) -> tuple[F32, I64]:
        """Stacked vectors of several volumes and their row offsets, read by primary key.

        Returns ``(matrix, offsets)``: volume ``volume_ids[i]`` owns rows
        ``offsets[i]:offsets[i+1]`` (see :meth:`SliceIndex.vectors_for`); one request per
        16384 slices. The slice metadata of these volumes comes with the vectors, in the
        same request, and is kept
        (up to about 10^6 slices, least recently used dropped first): the
        :meth:`slice_meta` calls of re-ranking and localization that follow need no
        further request.
        """
        with self._lock:
            spans = [self._span(v) for v in volume_ids]
            offsets = np.zeros(len(spans) + 1, np.int64)
            offsets[1:] = np.cumsum([n for _, n in spans])
            if not spans:
                return np.zeros((0, self.dim), np.float32), offsets
            rows = self._fetch(spans, ["vector", *_META_FIELDS])
            labels = np.fromiter((int(r["label"]) for r in rows), np.int64, len(rows))
            starts = {start: int(np.searchsorted(labels, start)) for start, _ in set(spans)}
            for start, n in set(spans):
                self._cache_meta((start, n), _meta_of(rows[starts[start] : starts[start] + n]))
        matrix = np.asarray([r["vector"] for r in rows], dtype=np.float32)
        picks = np.concatenate([starts[start] + np.arange(n) for start, n in spans])
        return matrix[picks], offsets

    def labels(self, volume_id: str, *, granularity: str = "fine") -> SliceLabels | None:
        """Always None once ``volume_id`` is found: this backend stores no labels."""
        self._span(volume_id)
        return None

    @property
    def labeled_volumes(self) -> list[str]:
        """Always empty: this backend stores no labels."""
        return []

    @property
    def n_labeled_slices(self) -> int:
        """Always 0: this backend stores no labels."""
        return 0

    def slice_meta(self, volume_id: str) -> dict[str, npt.NDArray[Any]]:
        """``{"slice_index": int64, "z_mm": float64, "informative": bool}``, each (n,).

        Of one volume, as :meth:`SliceIndex.slice_meta`.
        """
        with self._lock:
            span = self._span(volume_id)
            meta = self._meta_cache.get(span)
            if meta is None:
                meta = _meta_of(self._fetch([span], _META_FIELDS))
                self._cache_meta(span, meta)
            else:
                self._meta_cache.move_to_end(span)
        return {key: value.copy() for key, value in meta.items()}

    # -- search -----------------------------------------------------------------------------

    def search(self, queries: npt.ArrayLike, k: int) -> SliceMatches:
        """The ``k`` most similar indexed slices of each query vector (cosine).

        As :meth:`SliceIndex.search`; ``k`` is capped at the number of slices, and at
        16384 (Milvus's limit). Rows are sorted by descending score, then label.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise SliceIndexError(f"k must be a non-negative integer, got {k!r}")
        q = as_unit_rows(queries, self.dim, "queries")
        with self._lock:
            client = self._live()
            k_eff = min(int(k), self._n_entries)
            if k_eff > _MAX_ROWS:
                raise SliceIndexError(f"k={k} is over Milvus's limit of {_MAX_ROWS} per query")
            shape = (len(q), k_eff)
            labels = np.zeros(shape, np.int64)
            scores = np.zeros(shape, np.float32)
            ids = np.empty(shape, object)
            slices = np.zeros(shape, np.int64)
            z_mm = np.zeros(shape, np.float64)
            flags = np.ones(shape, bool)
            if k_eff == 0 or len(q) == 0:
                return SliceMatches(ids, slices, scores, z_mm, informative=flags)
            for first in range(0, len(q), _MAX_QUERIES):
                block = q[first : first + _MAX_QUERIES]
                for row, hits in enumerate(self._search_block(client, block, k_eff), first):
                    labels[row] = hits.ids
                    scores[row] = hits.distances
                    for col, hit in enumerate(hits):
                        entity = hit["entity"]
                        ids[row, col] = entity["volume_id"]
                        slices[row, col] = entity["slice_index"]
                        z_mm[row, col] = entity["z_mm"]
                        flags[row, col] = entity["informative"]
        order = np.lexsort((labels, -scores), axis=-1)

        def take(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return np.take_along_axis(a, order, axis=1)

        return SliceMatches(
            take(ids), take(slices), take(scores), take(z_mm), informative=take(flags)
        )

    def _search_block(self, client: Any, block: F32, k: int) -> Any:
        ef = search_ef(self._ef, k)
        while True:
            result = client.search(
                self.collection,
                data=block,
                limit=k,
                filter=f"label < {self._next_label}",  # the volumes this object lists
                output_fields=["volume_id", "slice_index", "z_mm", "informative"],
                search_params={"metric_type": "IP", "params": {"ef": ef}},
            )
            short = min(len(hits) for hits in result)
            if short == k:
                return result
            if ef >= self._n_entries:
                raise SliceIndexError(
                    f"Milvus found only {short} of k={k} slices at ef={ef} in collection "
                    f"{self.collection!r}; it holds {self._n_entries}"
                )
            wider = min(2 * ef, max(self._n_entries, k))
            logger.warning(
                "Milvus search found %d of k=%d slices at ef=%d; retrying with ef=%d",
                short,
                k,
                ef,
                wider,
            )
            ef = wider

    # -- a pointer directory ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a pointer directory that :func:`cbirlib.index.load_index` opens.

        The vectors stay in Milvus; ``path/meta.json`` records ``kind: "milvus"``, the
        URI (relative to ``path`` when the Milvus Lite file lies inside it) and the
        collection name, never a token (``load_index`` reads it from the environment
        variable ``CBIRLIB_MILVUS_TOKEN``).
        """
        directory = Path(path)
        meta_path = directory / META_NAME
        if meta_path.is_file():
            old = read_json(meta_path)
            if not isinstance(old, dict) or old.get("kind") != self.KIND:
                raise SliceIndexError(
                    f"{str(directory)!r} holds another index; save the Milvus pointer elsewhere"
                )
        directory.mkdir(parents=True, exist_ok=True)
        uri = self.uri
        if self._path is not None:
            here = directory.absolute()
            target = Path(self._path)
            uri = str(target.relative_to(here)) if target.is_relative_to(here) else self._path
        meta = {
            "format": MILVUS_FORMAT,
            "kind": self.KIND,
            "uri": uri,
            "collection": self.collection,
            "dim": self.dim,
        }
        tmp = directory / (META_NAME + ".tmp")
        write_json(tmp, meta)
        os.replace(tmp, meta_path)


def open_pointer(directory: Path, meta: Mapping[str, Any], *, dim: int | None) -> MilvusIndex:
    """Open the index a pointer directory written by :meth:`MilvusIndex.save` names."""
    if meta.get("format") != MILVUS_FORMAT or not isinstance(meta.get("uri"), str):
        raise IndexFormatError(
            f"index {str(directory)!r} is a Milvus pointer of format {meta.get('format')!r}; "
            f"this cbirlib reads format {MILVUS_FORMAT} with a 'uri'"
        )
    uri = str(meta["uri"])
    if not _is_remote(uri) and not os.path.isabs(uri):
        uri = str(directory / uri)
    return MilvusIndex.open(
        uri,
        collection=str(meta.get("collection", DEFAULT_COLLECTION)),
        dim=dim,
        token=os.environ.get("CBIRLIB_MILVUS_TOKEN"),
    )


def _meta_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, npt.NDArray[Any]]:
    """``slice_index`` / ``z_mm`` / ``informative`` arrays of fetched rows."""
    return {
        "slice_index": np.array([r["slice_index"] for r in rows], np.int64),
        "z_mm": np.array([r["z_mm"] for r in rows], np.float64),
        "informative": np.array([r["informative"] for r in rows], bool),
    }


def _label_range(start: int, n: int) -> str:
    return f"label >= {int(start)} and label < {int(start) + int(n)}"
