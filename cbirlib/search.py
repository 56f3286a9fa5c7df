"""Slice search, the source of every retrieval chain, and region queries.

:class:`SliceSearch` embeds the query slices (every ``query_stride``-th slice) and runs
one batched nearest-neighbour search over all query slices of all queries.
:func:`region_query` cuts the sub-volume around one structure out of a labelled volume.

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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from cbirlib.errors import (
    CbirError,
    DimensionMismatchError,
    EvaluationError,
    ExtractorError,
    PipelineError,
    StructureNotPresentError,
    UnknownStructureError,
)
from cbirlib.hits import Hits
from cbirlib.pipeline import SearchContext, SliceStore, Stage, StageLevel
from cbirlib.volume import Volume

__all__ = ["QueryEmbedder", "RegionVolume", "SliceSearch", "region_query"]

logger = logging.getLogger(__name__)


class QueryEmbedder(Protocol):
    """What :class:`SliceSearch` needs from an extractor."""

    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        """``(n, dim)`` L2-normalised embeddings of the chosen slices."""

    def to_config(self) -> dict[str, Any]:
        """The extractor's JSON-able config."""


@dataclass(frozen=True, eq=False, repr=False)
class RegionVolume(Volume):
    """A region query: the slab of ``source_id`` around ``structure``.

    ``source_slices[i]`` is the index, in the source volume, of slice ``i`` of this one.
    """

    source_id: str = ""
    structure: str = ""
    first_slice: int = 0

    @property
    def source_slices(self) -> npt.NDArray[np.int64]:
        """Indices of this volume's slices in the source volume."""
        return np.arange(self.first_slice, self.first_slice + self.n_slices, dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"RegionVolume({self.id!r}, slices {self.first_slice}..."
            f"{self.first_slice + self.n_slices - 1} of {self.source_id!r})"
        )


def _structure_mask(volume: Volume, structure: str) -> npt.NDArray[np.bool_]:
    """Per-slice presence of a fine structure or a coarse region (any member)."""
    labels = volume.labels
    if labels is None:
        raise EvaluationError(
            f"volume {volume.id!r} has no labels; a region query for {structure!r} needs "
            "segmentation labels (Volume(..., labels=SliceLabels.from_masks(...)))"
        )
    if structure in labels.names:
        return labels.present[:, labels.column(structure)].copy()
    members: tuple[str, ...] = ()
    try:
        from cbirlib.structures import resolve_structure
    except ImportError:  # pragma: no cover - structures module not installed yet
        pass
    else:
        try:
            _, members = resolve_structure(structure)
        except UnknownStructureError:
            members = ()
    cols = [labels.column(m) for m in members if m in labels.names]
    if not cols:
        raise UnknownStructureError(
            f"volume {volume.id!r}: unknown structure {structure!r}; its labels know "
            f"{', '.join(sorted(labels.names))}"
            + (f" (members of {structure!r}: {', '.join(members)})" if members else "")
        )
    return np.asarray(labels.present[:, cols].any(axis=1), dtype=bool)


def region_query(volume: Volume, structure: str, *, min_pixels: int | None = None) -> RegionVolume:
    """The sub-volume of ``volume`` from the first to the last slice containing ``structure``.

    Parameters
    ----------
    volume
        A labelled query volume.
    structure
        A fine structure name, or a coarse region name (present where any member is).
    min_pixels
        Presence threshold. ``None`` uses the labels as built; the labels store presence
        only, so another threshold means rebuilding them with
        ``SliceLabels.from_masks(masks, min_pixels=...)``.

    Returns
    -------
    RegionVolume
        A :class:`~cbirlib.volume.Volume` with id ``f"{volume.id}:{structure}"``, labels
        and z positions of the slab, and ``source_slices`` giving the original indices.

    Raises
    ------
    UnknownStructureError
        If the name is not a known structure of the volume's labels.
    EvaluationError
        If the volume has no labels or does not contain the structure.
    """
    if min_pixels is not None and min_pixels != 1:
        raise EvaluationError(
            f"region_query(min_pixels={min_pixels}): labels of {volume.id!r} store presence "
            "only; rebuild them with SliceLabels.from_masks(masks, min_pixels=...) instead"
        )
    present = _structure_mask(volume, structure)
    where = np.flatnonzero(present)
    if where.size == 0:
        assert volume.labels is not None
        found = sorted(volume.labels.volume_structures())
        raise StructureNotPresentError(
            f"volume {volume.id!r} does not contain {structure!r}; it contains "
            f"{', '.join(found) if found else 'no labelled structure'}"
        )
    first, last = int(where[0]), int(where[-1])
    slab = volume.slab(first, last + 1)
    return RegionVolume(
        id=f"{volume.id}:{structure}",
        array=slab.array,
        spacing=slab.spacing,
        z_positions=slab.z_positions,
        labels=slab.labels,
        modality=slab.modality,
        affine=slab.affine,
        source_id=volume.id,
        structure=structure,
        first_slice=first,
    )


@dataclass(frozen=True, repr=False)
class SliceSearch(Stage):
    """Source stage: embed query slices and find their ``k`` nearest database slices.

    Parameters
    ----------
    extractor
        Embeds query slices (``extract(volume, slices=...)``, ``to_config()``); it must be
        the extractor the index was built with (checked once, warns on mismatch).
    index
        The slice index (``SliceIndex`` or ``ExactIndex``).
    k
        Neighbours per query slice (fewer when the index holds fewer slices).
    query_stride
        Use every ``query_stride``-th query slice (query sampling).

    Notes
    -----
    Output: slice-level hits, one group per query slice, ``query_slice`` being the slice
    index in the query volume. The query embeddings, their slice indices and the index
    are left in the :class:`~cbirlib.pipeline.SearchContext` for later stages.
    """

    extractor: QueryEmbedder
    index: SliceStore
    k: int = 100
    query_stride: int = 1
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
            return emb, slices
        if emb is not None and len(emb) == vol.n_slices:  # precomputed for every slice
            return emb[slices], slices
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
        return emb, slices

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Search the index for every query slice of every query in ``context``."""
        if not self._checked:
            self.index.check_extractor(self.extractor.to_config())
            self._checked.append(True)
        context.index = self.index
        vols = list(context.queries.values())
        if context.verbose:
            from tqdm.auto import tqdm

            vols = list(tqdm(vols, desc="embedding queries", unit="query"))
        blocks, qids, qslices = [], [], []
        for vol in vols:
            emb, slices = self._query_embeddings(vol, context)
            context.embeddings[vol.id] = emb
            context.query_slices[vol.id] = slices
            blocks.append(emb)
            qids.append(np.full(len(slices), vol.id, dtype=object))
            qslices.append(slices)
        dims = {b.shape[1] for b in blocks}
        if len(dims) > 1:
            raise DimensionMismatchError(f"query embeddings of different dimensions {dims}")
        queries = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
        logger.debug("slice search: %d query slices, k=%d", len(queries), self.k)
        matches = self.index.search(queries, int(self.k))
        vol_ids = np.asarray(matches.volume_ids, dtype=object)
        n_q, n_k = vol_ids.shape
        extra = {}
        if getattr(matches, "z_mm", None) is not None:
            extra["z_mm"] = np.asarray(matches.z_mm, dtype=np.float64).reshape(-1)
        return Hits(
            query_id=np.repeat(np.concatenate(qids), n_k),
            volume_id=vol_ids.reshape(-1),
            slice_index=np.asarray(matches.slice_indices, dtype=np.int64).reshape(-1),
            query_slice=np.repeat(np.concatenate(qslices), n_k),
            score=np.asarray(matches.scores, dtype=np.float64).reshape(-1),
            rank=np.tile(np.arange(1, n_k + 1, dtype=np.int64), n_q),
            level="slice",
            extra=extra,
        )

    def __repr__(self) -> str:
        stride = f", query_stride={self.query_stride}" if self.query_stride != 1 else ""
        return f"SliceSearch(k={self.k}{stride})"
