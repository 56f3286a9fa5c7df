"""Slice search, the source of every retrieval chain.

:class:`SliceSearch` embeds the query slices (every ``query_stride``-th slice) and runs
one batched nearest-neighbour search over all query slices of all queries; a query given
by its embeddings (:class:`~cbirlib.queries.EmbeddedQuery`) is searched without the
extractor. Region queries (:func:`region_query`, :class:`RegionVolume`) live in
:mod:`cbirlib.queries` and are importable from here as before.

Examples
--------
>>> import numpy as np
>>> from cbirlib.labels import SliceLabels
>>> from cbirlib.volume import Volume
>>> from cbirlib.search import region_query
>>> liver = np.zeros((6, 4, 4), bool); liver[2:4] = True
>>> vol = Volume("s1", np.zeros((6, 4, 4), np.float32),
...              labels=SliceLabels.from_masks({"liver": liver}))
>>> q = region_query(vol, "liver")
>>> q.id, q.n_slices, q.source_slices.tolist()
('s1:liver', 2, [2, 3])
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from cbirlib._progress import progress
from cbirlib._vectors import as_unit_rows
from cbirlib.errors import (
    CbirError,
    DimensionMismatchError,
    ExtractorError,
    ModalityMismatchWarning,
    PipelineError,
)
from cbirlib.hits import Hits
from cbirlib.informative import slice_flags
from cbirlib.modality import UNKNOWN, effective_modality
from cbirlib.pipeline import SearchContext, SliceStore, Stage, StageLevel
from cbirlib.queries import EmbeddedQuery, EmbeddedRegion, RegionVolume, region_query
from cbirlib.volume import Volume

__all__ = [
    "EmbeddedQuery",
    "EmbeddedRegion",
    "QueryEmbedder",
    "RegionVolume",
    "SliceSearch",
    "region_query",
]

logger = logging.getLogger(__name__)


class QueryEmbedder(Protocol):
    """What :class:`SliceSearch` needs from an extractor."""

    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        """``(n, dim)`` L2-normalised embeddings of the chosen slices."""

    def to_config(self) -> dict[str, Any]:
        """The extractor's JSON-able config."""

    # Optional: ``informative_slices(volume, *, slices) -> (n,) bool`` replaces
    # cbirlib.informative.informative_slices for the query slices. Queries given by
    # their embeddings (cbirlib.queries.EmbeddedQuery) need neither method.


@dataclass(frozen=True, repr=False)
class SliceSearch(Stage):
    """Source stage: embed query slices and find their ``k`` nearest database slices.

    Parameters
    ----------
    extractor
        Embeds query slices (``extract(volume, slices=...)``, ``to_config()``); it must be
        the extractor the index was built with: checked once, before any embedding;
        another extractor name or dimension raises
        :class:`~cbirlib.errors.ExtractorMismatchError`, other config differences warn.
    index
        The slice index (``SliceIndex``, ``ExactIndex`` or ``MilvusIndex``).
    k
        Neighbours per query slice (fewer when the index holds fewer slices).
    query_stride
        Use every ``query_stride``-th query slice (query sampling).
    exclude_source
        Leave-one-out search: drop every hit in the query's own volume (the volume whose
        id is the query's ``id``, or, for a region query, its ``source_id``). When that
        volume is in the index, ``k`` plus its number of slices neighbours are fetched,
        so each query slice still gets ``k`` hits (fewer only when the index holds fewer
        other slices). Use it to evaluate on an index that also holds the queries; the
        study's protocol keeps queries out of the database instead.
    keep_blank
        ``False`` (default): blank query slices (constant, or almost no body in the
        extractor's window; :func:`cbirlib.informative.informative_slices`) are not
        searched and cast no vote, and hits on database slices flagged blank in the
        index are dropped; rows left with fewer than ``k`` hits are searched again
        with more neighbours, so each query slice still gets ``k`` hits. ``True``:
        every slice takes part, as before blank slices were detected.

    Notes
    -----
    Output: slice-level hits, one group per query slice, ``query_slice`` being the slice
    index in the query volume (blank query slices have no group unless
    ``keep_blank``). The query embeddings (L2-normalised here, whether extracted or
    passed precomputed; blank slices included), their slice indices, their informative
    flags and the index are left in the :class:`~cbirlib.pipeline.SearchContext` for
    later stages.

    Warns
    -----
    ModalityMismatchWarning
        A query's modality (as windowed: :func:`cbirlib.modality.effective_modality`)
        is none of the modalities the index recorded for its volumes (volumes recorded
        as ``"unknown"`` are not counted).
    """

    extractor: QueryEmbedder
    index: SliceStore
    k: int = 100
    query_stride: int = 1
    exclude_source: bool = False
    keep_blank: bool = False
    _checked: list[bool] = field(default_factory=list, init=False, compare=False)

    input_level: ClassVar[StageLevel] = "any"
    output_level: ClassVar[StageLevel] = "slice"
    is_source: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("k", "query_stride"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise PipelineError(f"SliceSearch({name}=...) needs an integer >= 1, got {value!r}")

    def _query_embeddings(
        self, vol: Volume, context: SearchContext
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        slices = np.arange(0, vol.n_slices, self.query_stride, dtype=np.int64)
        emb = context.embeddings.get(vol.id)
        known = context.query_slices.get(vol.id)
        if emb is not None and known is not None and np.array_equal(known, slices):
            return _unit_rows(emb, vol.id), slices
        if emb is not None and len(emb) == vol.n_slices:  # precomputed for every slice
            return _unit_rows(emb[slices], vol.id), slices
        if isinstance(vol, EmbeddedQuery):  # a query given by its embeddings
            return _unit_rows(vol.embeddings[slices], vol.id), slices
        try:
            emb = np.asarray(self.extractor.extract(vol, slices=slices), dtype=np.float32)
        except CbirError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise ExtractorError(f"embedding query {vol.id!r} failed: {exc}") from exc
        if emb.ndim != 2 or emb.shape[0] != len(slices):
            raise ExtractorError(
                f"extractor returned shape {emb.shape} for {len(slices)} slices of {vol.id!r}"
            )
        return _unit_rows(emb, vol.id), slices

    def _excluded(self, vol: Volume) -> tuple[frozenset[str], int]:
        """The query's own volume ids and how many of their slices the index holds."""
        if not self.exclude_source:
            return frozenset(), 0
        source = vol.origin.source_id if vol.origin is not None else ""
        own = frozenset(v for v in (vol.id, source) if v)
        n_own = 0
        for vid in own:
            try:
                n_own += len(self.index.slice_meta(vid)["slice_index"])
            except KeyError:  # VolumeNotInIndexError: nothing to leave out
                continue
        return own, n_own

    def _check_extractor(self) -> None:
        """Refuse, before any embedding, an extractor of another name or dimension.

        Other config differences (preprocessing, options) only warn
        (:class:`~cbirlib.errors.ExtractorMismatchWarning`; an error with
        ``CBIRLIB_STRICT=1``); see :func:`cbirlib.index.check_compatible`.
        """
        dim = getattr(self.extractor, "dim", None)
        self.index.check_extractor(
            self.extractor.to_config(), dim=int(dim) if dim is not None else None
        )

    def _query_flags(self, vol: Volume, slices: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Informative flags of the query slices (see :mod:`cbirlib.informative`).

        An :class:`~cbirlib.queries.EmbeddedQuery` brings its own (no voxels to look at).
        """
        if isinstance(vol, EmbeddedQuery):
            flags = vol.informative
            return flags[slices] if flags is not None else np.ones(len(slices), dtype=bool)
        return slice_flags(self.extractor, vol, slices=slices)

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Search the index for every query slice of every query in ``context``."""
        if not self._checked:
            self._check_extractor()
            self._checked.append(True)
        context.index = self.index
        context.device = None if (d := getattr(self.extractor, "device", None)) is None else str(d)
        vols = list(context.queries.values())
        _warn_modality(vols, self.index)
        blocks, qids, qslices, owns = [], [], [], []
        n_extra = n_blank = 0
        n_total = sum(len(range(0, v.n_slices, self.query_stride)) for v in vols)
        with progress(
            total=n_total, desc="embedding queries", unit="slice", verbose=context.verbose
        ) as bar:
            for vol in vols:
                emb, slices = self._query_embeddings(vol, context)
                flags = self._query_flags(vol, slices)
                context.embeddings[vol.id] = emb
                context.query_slices[vol.id] = slices
                context.informative[vol.id] = flags
                if not self.keep_blank:
                    n_blank += int(np.count_nonzero(~flags))
                    if not flags.any():
                        logger.warning(
                            "query %r: all %d query slices are blank (constant or almost "
                            "no body); it gets no hits (SliceSearch(keep_blank=True) "
                            "searches them)",
                            vol.id,
                            len(slices),
                        )
                    emb, slices = emb[flags], slices[flags]
                blocks.append(emb)
                qids.append(np.full(len(slices), vol.id, dtype=object))
                qslices.append(slices)
                own, n_own = self._excluded(vol)
                owns.extend([own] * len(slices))
                n_extra = max(n_extra, n_own)
                bar.update(len(flags))
        dims = {b.shape[1] for b in blocks}
        if len(dims) > 1:
            raise DimensionMismatchError(f"query embeddings of different dimensions {dims}")
        queries = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
        if n_blank:
            logger.debug("slice search: %d blank query slices do not vote", n_blank)
        columns = self._search(queries, owns, n_extra)
        row = columns.pop("row")
        columns["query_id"] = np.concatenate(qids)[row]
        columns["query_slice"] = np.concatenate(qslices)[row]
        return Hits(
            query_id=columns.pop("query_id"),
            volume_id=columns.pop("volume_id"),
            slice_index=columns.pop("slice_index"),
            query_slice=columns.pop("query_slice"),
            score=columns.pop("score"),
            rank=columns.pop("rank"),
            level="slice",
            extra=columns,
        )

    def _search(
        self, queries: npt.NDArray[np.float32], owns: list[frozenset[str]], n_extra: int
    ) -> dict[str, npt.NDArray[Any]]:
        """The ``k`` best kept hits of every query row, with ``row`` and ``rank`` columns.

        A hit is dropped when it lies in the row's own volume (``exclude_source``) or,
        unless ``keep_blank``, on a blank database slice. Rows left with fewer than ``k``
        hits are searched again with twice as many neighbours, until they have ``k`` or
        the index has no more slices.
        """
        k = int(self.k)
        names = ("volume_id", "slice_index", "score", "z_mm")
        parts: list[dict[str, npt.NDArray[Any]]] = []
        rows = np.arange(len(queries), dtype=np.int64)
        width = k + n_extra
        dropped = 0
        while not parts or len(rows):  # one search even without rows: the same columns
            logger.debug("slice search: %d query slices, k=%d", len(rows), width)
            matches = self.index.search(queries[rows], width)
            found: dict[str, npt.NDArray[Any]] = {
                "volume_id": np.asarray(matches.volume_ids, dtype=object),
                "slice_index": np.asarray(matches.slice_indices, dtype=np.int64),
                "score": np.asarray(matches.scores, dtype=np.float64),
            }
            if getattr(matches, "z_mm", None) is not None:
                found["z_mm"] = np.asarray(matches.z_mm, dtype=np.float64)
            n_k = found["score"].shape[1]
            keep = np.ones((len(rows), n_k), dtype=bool)
            if n_extra:
                vol = found["volume_id"]
                keep &= np.array(
                    [[v not in owns[r] for v in vol[i]] for i, r in enumerate(rows.tolist())],
                    dtype=bool,
                ).reshape(keep.shape)
            flags = getattr(matches, "informative", None)
            if not self.keep_blank and flags is not None:
                keep &= np.asarray(flags, dtype=bool)
            rank = np.cumsum(keep, axis=1)
            done = np.ones(len(rows), dtype=bool)
            if n_k == width:  # the index may hold more slices: refetch rows left short
                done = rank[:, -1] >= k
            dropped += int(np.count_nonzero(~keep[done]))
            take = keep & (rank <= k) & done[:, None]
            part = {name: found[name][take] for name in names if name in found}
            part["row"] = np.broadcast_to(rows[:, None], take.shape)[take]
            part["rank"] = rank[take].astype(np.int64)
            parts.append(part)
            rows = rows[~done]
            width *= 2
        if dropped:
            logger.debug("slice search: dropped %d hits (own volume or blank slices)", dropped)
        out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        order = np.lexsort((out["rank"], out["row"]))
        return {name: col[order] for name, col in out.items()}

    def __repr__(self) -> str:
        stride = f", query_stride={self.query_stride}" if self.query_stride != 1 else ""
        loo = ", exclude_source=True" if self.exclude_source else ""
        blank = ", keep_blank=True" if self.keep_blank else ""
        return f"SliceSearch(k={self.k}{stride}{loo}{blank})"


def _warn_modality(vols: list[Volume], index: SliceStore) -> None:
    """Warn when queries are of a modality that none of the indexed volumes has."""
    recorded = getattr(index, "modalities", None)
    known = {m for m in recorded.values() if m != UNKNOWN} if recorded else set()
    if not known:
        return
    odd: dict[str, list[str]] = {}
    for vol in vols:
        if isinstance(vol, EmbeddedQuery):  # its modality is the one it was windowed as
            if vol.modality == UNKNOWN:
                continue
            modality = vol.modality
        else:
            modality = effective_modality(vol.modality, vol.array)
        if modality not in known:
            odd.setdefault(modality, []).append(vol.id)
    for modality, ids in odd.items():
        warnings.warn(
            f"{len(ids)} {'query is' if len(ids) == 1 else 'queries are'} {modality} "
            f"(e.g. {ids[0]!r}) but the index holds {', '.join(sorted(known))} volumes only: "
            "similarities across modalities mean little. If the modality is wrong, pass "
            "modality= to load_volume (or --modality)",
            ModalityMismatchWarning,
            stacklevel=3,
        )


def _unit_rows(emb: npt.NDArray[np.float32], query_id: str) -> npt.NDArray[np.float32]:
    """Finite, non-zero, L2-normalised ``(m, dim)`` query embeddings (a new array)."""
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise ExtractorError(
            f"query {query_id!r}: embeddings must be a (n_slices, dim) matrix, "
            f"got shape {arr.shape}"
        )
    return as_unit_rows(arr, arr.shape[1], f"embeddings of query {query_id!r}")
