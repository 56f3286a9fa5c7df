"""Fuse the volume rankings of several retrieval chains: :class:`Fuse` and :func:`fuse_hits`.

Two methods, both per query over the union of the volumes the chains return:

- ``"rrf"``, reciprocal rank fusion (Cormack et al., SIGIR 2009): a volume scores
  ``sum over chains of 1 / (k + rank)``, its rank in each chain that returned it
  (``k = 60`` by default);
- ``"combsum"``, score fusion: each chain's scores are min-max normalised per query to
  ``[0, 1]`` (a query whose scores are all equal normalises to 0) and summed.

A chain that did not return a volume adds nothing for it. The localization columns
(``slice_index`` and every extra column that all chains return, such as ``loc_first``)
come from the chain that ranks the volume best (the first chain given, on equal ranks).
Equal fused scores are ordered by that best rank, then by chain order.

Examples
--------
>>> from cbirlib.hits import Hits
>>> a = Hits(query_id=["q"] * 3, volume_id=["x", "y", "z"], score=[3.0, 2.0, 1.0],
...          level="volume")
>>> b = Hits(query_id=["q"] * 2, volume_id=["z", "x"], score=[0.9, 0.1], level="volume")
>>> fused = fuse_hits([a, b], method="rrf")
>>> fused.volume_id.tolist()
['x', 'z', 'y']
>>> round(float(fused.score[0]), 6) == round(1 / 61 + 1 / 62, 6)
True
>>> combsum = fuse_hits([a, b], method="combsum")  # x: 1 + 0, z: 0 + 1, y: 0.5
>>> combsum.volume_id.tolist(), combsum.score.tolist()
(['x', 'z', 'y'], [1.0, 1.0, 0.5])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cbirlib.errors import FusionError, PipelineError
from cbirlib.hits import CORE_COLUMNS, Hits
from cbirlib.pipeline import Retriever, SearchContext, Stage, StageLevel

__all__ = ["METHODS", "Fuse", "fuse_hits"]

#: Fusion methods: reciprocal rank fusion and min-max normalised CombSUM.
METHODS: tuple[str, ...] = ("rrf", "combsum")


def _check_method(method: str, k: float) -> None:
    if method not in METHODS:
        raise FusionError(f"unknown fusion method {method!r}; valid: {', '.join(METHODS)}")
    if not np.isfinite(k) or k < 0:
        raise FusionError(f"the RRF constant k must be a finite number >= 0, got {k!r}")


def _contributions(part: Hits, method: str, k: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Each row's share of the fused score (``part`` is ranked, one query)."""
    if method == "rrf":
        return 1.0 / (k + np.arange(1, len(part) + 1, dtype=np.float64))
    lo, hi = float(part.score.min()), float(part.score.max())
    if hi > lo:
        return (part.score - lo) / (hi - lo)
    return np.zeros(len(part))


def fuse_hits(
    runs: Sequence[Hits],
    *,
    method: str = "rrf",
    k: float = 60,
    queries: Sequence[str] | None = None,
) -> Hits:
    """Fuse volume-level rankings of the same queries into one (see the module docstring).

    Parameters
    ----------
    runs
        Volume-level :class:`~cbirlib.hits.Hits`, one per chain; each ranks by its score.
    method
        ``"rrf"`` (reciprocal rank fusion) or ``"combsum"`` (min-max normalised sum).
    k
        The RRF constant (``"rrf"`` only).
    queries
        The query ids asked, in order. Given, a run may lack a query (it found nothing)
        but must not answer another one; not given, every run must answer the same
        queries (ordered as in the first run).

    Returns
    -------
    Hits
        Volume level, ranked by fused score, with the extra columns common to all runs.

    Raises
    ------
    FusionError
        No runs, an unknown method, a negative ``k``, a run that is not volume-level or
        lists a volume twice for a query, or runs of different queries.
    """
    _check_method(method, k)
    if not runs:
        raise FusionError("fusion needs at least one ranking")
    for i, run in enumerate(runs):
        if not isinstance(run, Hits) or run.level != "volume":
            level = run.level if isinstance(run, Hits) else type(run).__name__
            raise FusionError(f"ranking {i} must be volume-level Hits, got {level}")
    asked = list(queries) if queries is not None else runs[0].query_ids()
    for i, run in enumerate(runs):
        got = run.query_ids()
        extra = sorted(set(got) - set(asked))
        lacking = sorted(set(asked) - set(got)) if queries is None else []
        if extra or lacking:
            raise FusionError(
                f"ranking {i} answers other queries than the others: "
                f"extra {extra}, missing {lacking}"
            )
    names = [n for n in runs[0].extra if all(n in run.extra for run in runs)]
    split = [dict(_trim(run, names).split_by_query()) for run in runs]
    pieces: list[Hits] = []
    for qid in asked:
        fused: dict[str, float] = {}
        best: dict[str, tuple[int, int, int]] = {}  # volume -> (rank, chain, row)
        parts: list[Hits] = []
        for i, by_query in enumerate(split):
            part = by_query.get(qid, Hits.empty("volume")).ranked()
            parts.append(part)
            vids = part.volume_id.tolist()
            if len(set(vids)) != len(vids):
                raise FusionError(f"ranking {i} lists a volume twice for query {qid!r}")
            for row, (vid, share) in enumerate(
                zip(vids, _contributions(part, method, k).tolist(), strict=True)
            ):
                fused[vid] = fused.get(vid, 0.0) + share
                best[vid] = min(best.get(vid, (row + 1, i, row)), (row + 1, i, row))
        order = sorted(fused, key=lambda v: (-fused[v], best[v][:2]))
        for vid in order:
            _, i, row = best[vid]
            pieces.append(parts[i].take([row]).with_columns(_fused=[fused[vid]]))
    if not pieces:
        return Hits.empty("volume", extra=names)
    table = Hits.concat(pieces)
    return Hits(
        query_id=table.query_id,
        volume_id=table.volume_id,
        score=table.extra["_fused"],
        slice_index=table.slice_index,
        level="volume",
        extra={n: table.extra[n] for n in names},
    ).ranked()


def _trim(run: Hits, names: Sequence[str]) -> Hits:
    """``run`` with only the extra columns ``names``."""
    return Hits(
        **{c: getattr(run, c) for c in CORE_COLUMNS},
        level=run.level,
        extra={n: run.extra[n] for n in names},
    )


@dataclass(frozen=True, init=False, repr=False)
class Fuse(Stage):
    """A source stage that runs several chains on the same queries and fuses their rankings.

    Composes like any retriever (``Fuse(a, b) >> Cutoff(10)``) and is evaluated by
    :func:`cbirlib.evaluate` beside its parts. Each chain embeds the queries with its
    own extractor, so the chains may use different extractors and indexes.

    Parameters
    ----------
    *chains
        Retrievers that return volume-level hits, e.g. from
        :func:`cbirlib.presets.default_chain`.
    method
        ``"rrf"`` (reciprocal rank fusion) or ``"combsum"`` (min-max normalised score
        sum); see :mod:`cbirlib.fusion`.
    k
        The RRF constant.

    Raises
    ------
    FusionError
        No chains, a chain that cannot retrieve or returns slice-level hits, an unknown
        method or a negative ``k``.

    Examples
    --------
    >>> from cbirlib.pipeline import stage
    >>> Fuse(stage(lambda h, c: h, input_level="volume", output_level="volume", name="Keep"))
    Traceback (most recent call last):
    ...
    cbirlib.errors.FusionError: Fuse: chain 0 (Keep()) cannot retrieve: no source stage
    """

    input_level: ClassVar[StageLevel] = "any"
    output_level: ClassVar[StageLevel] = "volume"
    is_source: ClassVar[bool] = True

    chains: tuple[Retriever, ...]
    method: str
    k: float

    def __init__(self, *chains: Retriever, method: str = "rrf", k: float = 60) -> None:
        if not chains:
            raise FusionError("Fuse needs at least one chain, e.g. Fuse(chain_a, chain_b)")
        _check_method(method, k)
        for i, chain in enumerate(chains):
            if not isinstance(chain, Retriever):
                raise FusionError(f"Fuse: chain {i} is not a retriever: {chain!r}")
            if isinstance(chain, Stage) and not chain.is_source:
                raise FusionError(f"Fuse: chain {i} ({chain!r}) cannot retrieve: no source stage")
            if isinstance(chain, Stage) and chain.output_level == "slice":
                raise FusionError(
                    f"Fuse: chain {i} ({chain!r}) returns slice-level hits; "
                    "end it with a volume stage such as CountVotes()"
                )
        object.__setattr__(self, "chains", tuple(chains))
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "k", k)

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Run every chain on ``context.queries`` and fuse the rankings."""
        if context.embeddings:
            raise PipelineError(
                f"{self!r} cannot take precomputed embeddings: each chain embeds the "
                "queries with its own extractor"
            )
        queries = list(context.queries.values())
        runs = [chain.retrieve(queries, verbose=context.verbose) for chain in self.chains]
        return fuse_hits(runs, method=self.method, k=self.k, queries=list(context.queries))

    def __repr__(self) -> str:
        parts = ", ".join(f"({chain!r})" for chain in self.chains)
        k = f", k={self.k}" if self.method == "rrf" else ""
        return f"Fuse({parts}, method={self.method!r}{k})"
