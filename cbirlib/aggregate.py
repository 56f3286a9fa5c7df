"""Slice-level aggregation: slice-wise retrieval (:class:`TopSlice`) and count-based
volume votes (:class:`CountVotes`).

Examples
--------
>>> from cbirlib.hits import Hits
>>> from cbirlib.pipeline import SearchContext
>>> from cbirlib.aggregate import CountVotes
>>> hits = Hits(query_id=["q"] * 3, volume_id=["a", "b", "b"], slice_index=[4, 1, 2],
...             query_slice=[0, 0, 1], score=[0.9, 0.8, 0.7])
>>> ctx = SearchContext()
>>> votes = CountVotes().transform(hits, ctx)
>>> votes.volume_id.tolist(), votes.score.tolist()
(['b', 'a'], [2.0, 1.0])
>>> ctx.evidence["votes"][("q", "b")].tolist()
[1, 2]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from cbirlib.errors import PipelineError
from cbirlib.hits import Hits
from cbirlib.pipeline import SearchContext, SliceStore, Stage, StageLevel

__all__ = ["NORMALIZATIONS", "CountVotes", "TopSlice", "VoteEvidence"]

#: ``CountVotes(normalize=...)`` values; the first is the default.
NORMALIZATIONS: tuple[str, ...] = ("once-per-query-slice", "thickness", "none")


@dataclass(frozen=True, repr=False)
class TopSlice(Stage):
    """Slice-wise retrieval: every query slice keeps only its best database slice.

    Output: slice-level hits with one row (rank 1) per query slice; the paper's
    slice-wise baseline.
    """

    input_level: ClassVar[StageLevel] = "slice"
    output_level: ClassVar[StageLevel] = "slice"

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """The rank-1 row of every ``(query_id, query_slice)`` group."""
        return hits.top(1)

    def __repr__(self) -> str:
        return "TopSlice()"


class VoteEvidence(Mapping[tuple[str, str], npt.NDArray[np.int64]]):
    """Voted slices per ``(query_id, volume_id)``, looked up lazily.

    Holds the slice hits sorted by pair; ``evidence[(q, v)]`` returns the distinct voted
    slice indices (ascending) of volume ``v`` for query ``q``.
    """

    def __init__(
        self,
        queries: npt.NDArray[np.object_],
        volumes: npt.NDArray[np.object_],
        pairs: npt.NDArray[np.int64],
        offsets: npt.NDArray[np.int64],
        slices: npt.NDArray[np.int64],
    ) -> None:
        self._queries = {str(q): i for i, q in enumerate(queries)}
        self._volumes = {str(v): i for i, v in enumerate(volumes)}
        self._names = (queries, volumes)
        self._pairs, self._offsets, self._slices = pairs, offsets, slices

    def _position(self, key: tuple[str, str]) -> int | None:
        q, v = self._queries.get(key[0]), self._volumes.get(key[1])
        if q is None or v is None:
            return None
        code = q * len(self._volumes) + v
        pos = int(np.searchsorted(self._pairs, code))
        return pos if pos < len(self._pairs) and self._pairs[pos] == code else None

    def __getitem__(self, key: tuple[str, str]) -> npt.NDArray[np.int64]:
        pos = self._position(key)
        if pos is None:
            raise KeyError(key)
        return np.unique(self._slices[self._offsets[pos] : self._offsets[pos + 1]])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        n_v = len(self._volumes)
        for code in self._pairs.tolist():
            yield str(self._names[0][code // n_v]), str(self._names[1][code % n_v])

    def __len__(self) -> int:
        return len(self._pairs)


def _codes(values: npt.NDArray[np.object_]) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.intp]]:
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.reshape(-1)


def _thickness(index: SliceStore, volumes: npt.NDArray[np.object_]) -> npt.NDArray[np.float64]:
    """Slice thickness in mm of each volume: the median step of its stored z positions.

    A one-slice volume has no step; it gets the median thickness of the others (1.0 mm
    when no volume has two slices).
    """
    dz = np.full(len(volumes), np.nan)
    for i, vid in enumerate(volumes):
        z = np.unique(np.asarray(index.slice_meta(str(vid))["z_mm"], dtype=np.float64))
        if len(z) > 1:
            dz[i] = float(np.median(np.diff(z)))
    known = dz[np.isfinite(dz) & (dz > 0)]
    fallback = float(np.median(known)) if len(known) else 1.0
    return np.where(np.isfinite(dz) & (dz > 0), dz, fallback)


def _best_per_query_slice(hits: Hits) -> Hits:
    """The best-scoring hit of every ``(query_id, query_slice, volume_id)`` triple."""
    _, qcode = _codes(hits.query_id)
    _, vcode = _codes(hits.volume_id)
    _, scode = np.unique(hits.query_slice, return_inverse=True)
    n_v, n_s = int(vcode.max()) + 1, int(scode.max()) + 1
    key = (qcode.astype(np.int64) * n_s + scode.reshape(-1)) * n_v + vcode
    # best score first within a key; stable on ties (the earlier row, i.e. the better rank)
    order = np.lexsort((np.arange(len(hits)), -hits.score, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return hits.take(np.sort(order[first]))


@dataclass(frozen=True, repr=False)
class CountVotes(Stage):
    """Count-based volume aggregation: every slice hit votes for its volume.

    Parameters
    ----------
    weighted
        ``False``: score(V) = number of votes for V. ``True``: the sum of their
        similarities.
    normalize
        How votes are made fair to volumes of different slice thickness (a volume
        re-sliced at 2.5 mm has twice the slices of the same scan at 5 mm, so with raw
        counts it collects about twice the votes):

        * ``"once-per-query-slice"`` (default): each query slice votes at most once per
          database volume, with its best-matching slice there (its other hits in that
          volume are dropped); score(V) = number of query slices that hit V.
        * ``"thickness"``: every hit counts its volume's slice thickness in mm (the
          median step of the volume's stored z positions); score(V) = matched length
          in mm.
        * ``"none"``: the raw count of slice hits (the study's definition).

        The default was chosen on phantoms with thin and thick copies of the same
        subjects (``benchmarks/fair_votes_spans.py``; figures in
        ``docs/results/phantom_benchmark.md``).

    Notes
    -----
    Volumes are ranked per query by score; ties are broken by the summed similarity of
    the counted votes (times the slice thickness with ``"thickness"``; higher first),
    then by volume id (alphabetical), so the order is deterministic. Output:
    volume-level hits with extra columns ``n_votes`` (int64, the counted votes) and
    ``vote_sum`` (float64, their summed similarity). The database slices of the counted
    votes of each ``(query_id, volume_id)`` pair (sorted, distinct) go to
    ``context.evidence["votes"]`` for localization. ``"thickness"`` reads the slice
    positions from the index, so the chain must start with a search stage.
    """

    weighted: bool = False
    normalize: str = NORMALIZATIONS[0]

    input_level: ClassVar[StageLevel] = "slice"
    output_level: ClassVar[StageLevel] = "volume"
    provides: ClassVar[frozenset[str]] = frozenset({"votes"})

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise PipelineError(
                f"unknown CountVotes normalization {self.normalize!r}; "
                f"valid: {', '.join(map(repr, NORMALIZATIONS))}"
            )

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Aggregate slice hits into ranked volume hits."""
        if len(hits) == 0:
            context.evidence["votes"] = {}
            return Hits.empty("volume", extra=("n_votes", "vote_sum"))
        if self.normalize == "once-per-query-slice":
            hits = _best_per_query_slice(hits)
        queries, qcode = _codes(hits.query_id)
        volumes, vcode = _codes(hits.volume_id)
        pair = qcode.astype(np.int64) * len(volumes) + vcode
        pairs, inverse = np.unique(pair, return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse, minlength=len(pairs))
        sums = np.bincount(inverse, weights=hits.score, minlength=len(pairs)).astype(np.float64)
        pq, pv = pairs // len(volumes), pairs % len(volumes)
        score: npt.NDArray[np.float64] = sums if self.weighted else counts.astype(np.float64)
        tie = sums
        if self.normalize == "thickness":
            dz = _thickness(context.require_index(self), volumes)[pv]
            score, tie = score * dz, sums * dz
        # query order of first appearance, then score, summed similarity, volume id
        first_row = np.full(len(queries), len(hits), np.int64)
        np.minimum.at(first_row, qcode, np.arange(len(hits)))
        order = np.lexsort((pv, -tie, -score, first_row[pq]))
        out = Hits(
            query_id=queries[pq][order],
            volume_id=volumes[pv][order],
            score=score[order],
            level="volume",
            extra={"n_votes": counts[order].astype(np.int64), "vote_sum": sums[order]},
        )
        by_pair = np.argsort(inverse, kind="stable")
        context.evidence["votes"] = VoteEvidence(
            queries,
            volumes,
            pairs,
            np.concatenate([[0], np.cumsum(counts)]),
            hits.slice_index[by_pair],
        )
        return out

    def __repr__(self) -> str:
        args = ["weighted=True"] if self.weighted else []
        if self.normalize != NORMALIZATIONS[0]:
            args.append(f"normalize={self.normalize!r}")
        return f"CountVotes({', '.join(args)})"
