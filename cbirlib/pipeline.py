"""Chainable retrieval: :class:`Retriever`, :class:`Stage`, :class:`Pipeline` and ``>>``.

A pipeline is a flat sequence of stages. The first stage is a *source* (for example
:class:`cbirlib.search.SliceSearch`) that turns query volumes into slice-level
:class:`~cbirlib.hits.Hits`; every further stage maps ``Hits -> Hits``. Each stage
declares the level it takes and the level it returns (``"slice"``, ``"volume"`` or
``"any"``); levels are checked when stages are chained, so a wrong chain fails before
any search runs. Stages that need more than the hits (query embeddings, the index, the
evidence of an earlier stage) read it from the :class:`SearchContext`.

Examples
--------
>>> from cbirlib.hits import Hits
>>> from cbirlib.pipeline import Cutoff, stage
>>> double = stage(lambda h, ctx: h, input_level="volume", output_level="volume",
...                name="Identity")
>>> chain = double >> Cutoff(2)
>>> chain
Identity() >> Cutoff(2)
>>> h = Hits(query_id=["q"] * 3, volume_id=["a", "b", "c"], score=[3.0, 2.0, 1.0],
...          level="volume")
>>> chain.transform(h, SearchContext()).volume_id.tolist()
['a', 'b']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from cbirlib.errors import PipelineError
from cbirlib.hits import Hits
from cbirlib.volume import Volume

__all__ = [
    "Cutoff",
    "FunctionStage",
    "Pipeline",
    "Queries",
    "Retriever",
    "SearchContext",
    "SliceStore",
    "Stage",
    "StageLevel",
    "stage",
]

StageLevel = Literal["slice", "volume", "any"]
_LEVELS: tuple[str, ...] = ("slice", "volume", "any")
Queries: TypeAlias = Volume | Iterable[Volume]


class SliceStore(Protocol):
    """What the retrieval stages need from a slice index.

    :class:`~cbirlib.index.SliceIndex`, :class:`~cbirlib.index.ExactIndex` and
    :class:`~cbirlib.index.MilvusIndex` implement it.
    """

    def search(self, queries: npt.NDArray[np.float32], k: int) -> Any:
        """``SliceMatches`` with ``volume_ids``, ``slice_indices``, ``scores``, ``z_mm``."""

    def vectors_for(
        self, volume_ids: Sequence[str]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Concatenated stored vectors of ``volume_ids`` and their offsets."""

    def slice_meta(self, volume_id: str) -> Mapping[str, npt.NDArray[Any]]:
        """``{"slice_index": (n,) int64, "z_mm": (n,) float64}`` of one volume.

        May also hold ``"informative"`` (n,) bool (``False`` for blank slices); a store
        without it counts every slice as informative.
        """

    def check_extractor(
        self, extractor_config: Mapping[str, Any], *, dim: int | None = None
    ) -> None:
        """Raise on another extractor name or dimension; warn on other config differences."""


@dataclass
class SearchContext:
    """What stages share during one :meth:`Pipeline.retrieve` call.

    Parameters
    ----------
    queries
        Query volumes by id, in query order.
    index
        The slice index searched (set by the source stage).
    embeddings
        Query-slice embeddings by query id, ``(m, dim)`` float32, L2-normalised. Set by
        the source; may be filled in advance to skip query embedding (rows must then
        match ``query_slices``, or cover every slice of the query volume).
    query_slices
        Indices (in the query volume) of the slices whose embeddings are in
        ``embeddings``.
    informative
        Per query id, one bool per row of ``embeddings``: ``False`` for blank query
        slices (:mod:`cbirlib.informative`). Set by the source; a query without an entry
        counts as all informative.
    evidence
        Matched database slices per stage kind and ``(query_id, volume_id)``:
        ``evidence["votes"]`` (from :class:`~cbirlib.aggregate.CountVotes`) and
        ``evidence["maxsim"]`` (from :class:`~cbirlib.rerank.MaxSimRerank`) map each pair
        to an int64 array of slice indices in the retrieved volume; localization reads them.
        ``evidence["maxsim_similarity"]`` holds the float64 similarity of each MaxSim
        match (one per query slice).
    verbose
        Progress bars: on a terminal only (``None``), always (``True``) or never (``False``).
    device
        The device the query embeddings were computed on (``"cpu"``, ``"cuda:0"``...;
        set by :class:`~cbirlib.search.SliceSearch` from its extractor, None when
        unknown). :class:`~cbirlib.rerank.MaxSimRerank` computes on a CUDA device there.
    """

    queries: dict[str, Volume] = field(default_factory=dict)
    index: SliceStore | None = None
    embeddings: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    query_slices: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    informative: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    evidence: dict[str, Mapping[tuple[str, str], npt.NDArray[Any]]] = field(default_factory=dict)
    verbose: bool | None = None
    device: str | None = None

    @classmethod
    def for_queries(cls, queries: Queries, *, verbose: bool | None = None) -> SearchContext:
        """A fresh context for one volume or an iterable of volumes (ids must be unique)."""
        volumes = [queries] if isinstance(queries, Volume) else list(queries)
        by_id: dict[str, Volume] = {}
        for vol in volumes:
            if not isinstance(vol, Volume):
                raise PipelineError(
                    f"queries must be Volume objects (or region queries), got {type(vol).__name__}"
                )
            if vol.id in by_id:
                raise PipelineError(f"duplicate query id {vol.id!r}; query ids must be unique")
            by_id[vol.id] = vol
        if not by_id:
            raise PipelineError("no queries given: pass a Volume or a non-empty list of Volumes")
        return cls(queries=by_id, verbose=verbose)

    def require_index(self, stage: object) -> SliceStore:
        """The index, or a :class:`PipelineError` naming ``stage`` if none is set."""
        if self.index is None:
            raise PipelineError(
                f"{stage!r} needs the slice index; start the chain with SliceSearch(...)"
            )
        return self.index

    def require_embeddings(self, query_id: str, stage: object) -> npt.NDArray[np.float32]:
        """The query-slice embeddings of ``query_id`` or a :class:`PipelineError`."""
        try:
            return self.embeddings[query_id]
        except KeyError:
            raise PipelineError(
                f"{stage!r} needs the embeddings of query {query_id!r}; "
                "start the chain with SliceSearch(...)"
            ) from None


class Retriever(ABC):
    """Anything that answers queries with :class:`~cbirlib.hits.Hits`."""

    @abstractmethod
    def retrieve(
        self,
        queries: Queries,
        *,
        verbose: bool | None = None,
        embeddings: Mapping[str, npt.ArrayLike] | None = None,
    ) -> Hits:
        """Run retrieval for one query volume or a list of them.

        ``embeddings`` optionally gives precomputed query embeddings by query id.
        """

    def then(self, stage: Stage | Pipeline) -> Pipeline:
        """This retriever followed by ``stage`` (same as ``self >> stage``)."""
        return Pipeline.of(self, stage)

    def __rshift__(self, other: Stage | Pipeline) -> Pipeline:
        if not isinstance(other, (Stage, Pipeline)):
            return NotImplemented
        return self.then(other)


class Stage(Retriever):
    """One step of a pipeline: ``transform(hits, context) -> Hits``.

    Subclasses are frozen dataclasses that set ``input_level`` and ``output_level``
    (``"any"`` as output means "the level of the input"). A *source* stage
    (``is_source = True``) ignores its input hits and produces the first table from
    ``context.queries``.
    """

    input_level: ClassVar[StageLevel] = "any"
    output_level: ClassVar[StageLevel] = "any"
    is_source: ClassVar[bool] = False
    #: evidence kinds this stage writes to / reads from ``SearchContext.evidence``.
    provides: ClassVar[frozenset[str]] = frozenset()

    def requires(self) -> frozenset[str]:
        """Evidence kinds that an earlier stage must provide (checked at chain time)."""
        return frozenset()

    @abstractmethod
    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Map the input table to the output table."""

    def retrieve(
        self,
        queries: Queries,
        *,
        verbose: bool | None = None,
        embeddings: Mapping[str, npt.ArrayLike] | None = None,
    ) -> Hits:
        """Run this stage alone (only a source stage can); see :meth:`Pipeline.retrieve`."""
        return Pipeline((self,)).retrieve(queries, verbose=verbose, embeddings=embeddings)


def _check_chain(stages: Sequence[Stage]) -> None:
    level: str = "any"
    provided: set[str] = set()
    prev: Stage | None = None
    for i, st in enumerate(stages):
        if st.input_level not in _LEVELS or st.output_level not in _LEVELS:
            raise PipelineError(
                f"{st!r}: levels must be one of {_LEVELS}, "
                f"got {st.input_level!r} -> {st.output_level!r}"
            )
        if st.is_source and i > 0:
            raise PipelineError(
                f"{st!r} is a source stage and must come first, but follows {prev!r}"
            )
        if "any" not in (level, st.input_level) and level != st.input_level:
            raise PipelineError(
                f"cannot chain {prev!r} >> {st!r}: {prev!r} returns {level}-level hits, "
                f"{st!r} takes {st.input_level}-level hits"
            )
        if stages[0].is_source:
            missing = st.requires() - provided
            if missing:
                raise PipelineError(
                    f"{st!r} needs {sorted(missing)} evidence that no earlier stage provides "
                    f"(after {' >> '.join(repr(s) for s in stages[:i])})"
                )
        provided |= st.provides
        if st.output_level != "any":
            level = st.output_level
        elif st.is_source:
            level = "slice"
        prev = st


@dataclass(frozen=True, repr=False)
class Pipeline(Stage):
    """A flat sequence of stages, itself a stage and a retriever.

    Build it with ``a >> b`` or ``a.then(b)``; nested pipelines are flattened. Level
    mismatches raise :class:`~cbirlib.errors.PipelineError` when chained.
    """

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        flat: list[Stage] = []
        for st in self.stages:
            if isinstance(st, Pipeline):
                flat.extend(st.stages)
            elif isinstance(st, Stage):
                flat.append(st)
            else:
                raise PipelineError(f"pipeline stages must be Stage objects, got {st!r}")
        if not flat:
            raise PipelineError("a pipeline needs at least one stage")
        _check_chain(flat)
        object.__setattr__(self, "stages", tuple(flat))

    @classmethod
    def of(cls, *parts: Retriever) -> Pipeline:
        """Chain stages and pipelines into one flat pipeline."""
        for p in parts:
            if not isinstance(p, Stage):
                raise PipelineError(f"cannot chain {p!r}: not a Stage or Pipeline")
        return cls(tuple(p for p in parts if isinstance(p, Stage)))

    @property
    def input_level(self) -> StageLevel:  # type: ignore[override]
        """Input level of the first stage."""
        return self.stages[0].input_level

    @property
    def output_level(self) -> StageLevel:  # type: ignore[override]
        """Level of the last stage that fixes one (``"any"`` if none does)."""
        for st in reversed(self.stages):
            if st.output_level != "any":
                return st.output_level
            if st.is_source:
                return "slice"
        return "any"

    @property
    def is_source(self) -> bool:  # type: ignore[override]
        """Whether the pipeline starts with a source stage."""
        return self.stages[0].is_source

    @property
    def provides(self) -> frozenset[str]:  # type: ignore[override]
        """Evidence kinds provided by any stage."""
        return frozenset().union(*(st.provides for st in self.stages))

    def requires(self) -> frozenset[str]:
        """Evidence needed from before this pipeline."""
        needed: set[str] = set()
        provided: set[str] = set()
        for st in self.stages:
            needed |= st.requires() - provided
            provided |= st.provides
        return frozenset(needed)

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Run every stage in turn."""
        for st in self.stages:
            hits = st.transform(hits, context)
        return hits

    def retrieve(
        self,
        queries: Queries,
        *,
        verbose: bool | None = None,
        embeddings: Mapping[str, npt.ArrayLike] | None = None,
    ) -> Hits:
        """Answer ``queries`` (a :class:`~cbirlib.volume.Volume` or a list of them).

        Parameters
        ----------
        queries
            Query volumes; region queries come from :func:`cbirlib.search.region_query`.
        verbose
            Progress bars: on a terminal only (``None``), always (``True``) or never (``False``).
        embeddings
            Optional precomputed embeddings by query id: ``(n_slices, dim)`` for every
            slice of the query volume (the source picks its strided rows), which skips
            query embedding.
        """
        if not self.is_source:
            raise PipelineError(
                f"{self!r} cannot retrieve: it does not start with a source stage such as "
                "SliceSearch(...); use transform(hits, context) instead"
            )
        context = SearchContext.for_queries(queries, verbose=verbose)
        for qid, emb in (embeddings or {}).items():
            if qid not in context.queries:
                raise PipelineError(
                    f"embeddings given for unknown query {qid!r}; queries: "
                    f"{', '.join(context.queries)}"
                )
            arr = np.asarray(emb, dtype=np.float32)
            n_slices = context.queries[qid].n_slices
            if arr.ndim != 2 or arr.shape[0] != n_slices:
                raise PipelineError(
                    f"embeddings of query {qid!r} have shape {arr.shape}; expected "
                    f"({n_slices}, dim), one row per slice of the query volume"
                )
            context.embeddings[qid] = arr
            context.query_slices[qid] = np.arange(n_slices, dtype=np.int64)
        return self.transform(Hits.empty("slice"), context)

    def __repr__(self) -> str:
        return " >> ".join(repr(st) for st in self.stages)


@dataclass(frozen=True, repr=False)
class FunctionStage(Stage):
    """A plain function ``f(hits, context) -> Hits`` used as a stage (see :func:`stage`)."""

    func: Callable[[Hits, SearchContext], Hits]
    levels: tuple[StageLevel, StageLevel] = ("any", "any")
    name: str | None = None

    def __post_init__(self) -> None:
        for level in self.levels:
            if level not in _LEVELS:
                raise PipelineError(f"unknown stage level {level!r}; valid: {', '.join(_LEVELS)}")

    @property
    def input_level(self) -> StageLevel:  # type: ignore[override]
        """The declared input level."""
        return self.levels[0]

    @property
    def output_level(self) -> StageLevel:  # type: ignore[override]
        """The declared output level."""
        return self.levels[1]

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Call the wrapped function and check that it returned Hits."""
        out = self.func(hits, context)
        if not isinstance(out, Hits):
            raise PipelineError(f"{self!r} returned {type(out).__name__}, expected Hits")
        if self.output_level != "any" and out.level != self.output_level:
            raise PipelineError(
                f"{self!r} declared {self.output_level}-level output but returned "
                f"{out.level}-level hits"
            )
        return out

    def __repr__(self) -> str:
        return f"{self.name or getattr(self.func, '__name__', 'stage')}()"


def stage(
    func: Callable[[Hits, SearchContext], Hits],
    *,
    input_level: StageLevel,
    output_level: StageLevel,
    name: str | None = None,
) -> FunctionStage:
    """Wrap ``func(hits, context) -> Hits`` as a chainable stage.

    Examples
    --------
    >>> def best(hits, context):
    ...     return hits.top(1)
    >>> stage(best, input_level="any", output_level="any")
    best()
    """
    return FunctionStage(func, (input_level, output_level), name)


@dataclass(frozen=True, repr=False)
class Cutoff(Stage):
    """Keep the ``k`` best rows of every group (per query at volume level).

    Examples
    --------
    >>> Cutoff(10)
    Cutoff(10)
    """

    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.k, (int, np.integer)) or isinstance(self.k, bool) or self.k < 1:
            raise PipelineError(f"Cutoff(k) needs an integer k >= 1, got {self.k!r}")

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Rows with ``rank <= k``."""
        return hits.top(int(self.k))

    def __repr__(self) -> str:
        return f"Cutoff({self.k})"
