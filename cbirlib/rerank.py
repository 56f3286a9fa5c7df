"""Late-interaction (ColBERT / C-MIR style MaxSim) re-ranking of candidate volumes.

For a query Q with slice embeddings q_1..q_m and a candidate volume V with stored slice
embeddings s_1..s_n::

    score(Q, V) = (1/m) * sum_t max_i <q_t, s_i>

All candidates of a query are scored at once: one matrix product of the query slices
against the concatenated candidate vectors, then a segmented max
(``np.maximum.reduceat``) over each candidate's columns.

Examples
--------
>>> import numpy as np
>>> from cbirlib.rerank import maxsim_scores
>>> q = np.eye(2, dtype=np.float32)               # two query slices
>>> s = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
>>> scores, arg = maxsim_scores(q, s, np.array([0, 2, 3]))  # candidates: rows 0-1, row 2
>>> scores.tolist(), arg.tolist()
([1.0, 0.5], [[0, 0], [1, 0]])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from cbirlib._progress import progress
from cbirlib.errors import PipelineError, SliceIndexError
from cbirlib.hits import Hits
from cbirlib.pipeline import SearchContext, Stage, StageLevel

__all__ = ["MaxSimRerank", "maxsim_scores"]

logger = logging.getLogger(__name__)


def maxsim_scores(
    queries: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """MaxSim scores of one query against several candidates, vectorised.

    Parameters
    ----------
    queries
        ``(m, dim)`` query-slice embeddings.
    vectors
        ``(n, dim)`` stored slice embeddings of all candidates, concatenated.
    offsets
        ``(c + 1,)`` row offsets: candidate ``j`` owns rows ``offsets[j]:offsets[j+1]``
        (each non-empty).

    Returns
    -------
    scores
        ``(c,)`` float64, ``mean_t max_i <q_t, s_i>`` per candidate.
    argmax
        ``(m, c)`` int64, for each query slice the row (within the candidate, 0-based) of
        its best-matching candidate slice (first one on ties).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if (lengths <= 0).any():
        raise SliceIndexError(
            f"MaxSim candidates {np.flatnonzero(lengths <= 0).tolist()} have no stored vectors"
        )
    sims = queries @ vectors.T  # (m, n): the one matrix product
    best = np.maximum.reduceat(sims, starts, axis=1)  # (m, c)
    # first column reaching the segment max: mark hits, take the segment minimum position
    cols = np.arange(sims.shape[1], dtype=np.int64)
    is_best = sims >= np.repeat(best, lengths, axis=1)
    position = np.where(is_best, cols, sims.shape[1])
    argmax = np.minimum.reduceat(position, starts, axis=1) - starts
    scores = best.mean(axis=0, dtype=np.float64)
    return scores, argmax.astype(np.int64)


@dataclass(frozen=True, repr=False)
class MaxSimRerank(Stage):
    """Re-rank the ``top`` best candidate volumes of every query by MaxSim.

    Parameters
    ----------
    top
        Number of candidates per query to re-rank (by their current rank).
        **Candidates beyond ``top`` are dropped**: their first-stage scores (vote counts)
        are not comparable with MaxSim scores. Use a larger ``top`` to keep more.
    keep_blank
        ``False`` (default): blank slices take no part, neither query slices (the
        flags :class:`~cbirlib.search.SliceSearch` leaves in the context) nor candidate
        slices (the index's ``slice_meta(...)["informative"]``), so ``m`` counts the
        informative query slices only. A query or candidate with no informative slice
        at all is scored on all its slices. ``True``: every slice takes part.

    Notes
    -----
    Output: volume-level hits ordered by MaxSim score (ties: earlier rank first) with extra
    column ``prior_rank`` (rank before re-ranking); other extra columns are carried along.
    For each ``(query_id, volume_id)`` the database slice that best matches each query
    slice goes to ``context.evidence["maxsim"]`` (slice indices in the candidate's own
    numbering, one per query slice taking part) and its similarity to
    ``context.evidence["maxsim_similarity"]`` (float64, one per query slice taking part;
    robust localization drops query slices whose best match is poor).
    """

    top: int = 20
    keep_blank: bool = False

    input_level: ClassVar[StageLevel] = "volume"
    output_level: ClassVar[StageLevel] = "volume"
    provides: ClassVar[frozenset[str]] = frozenset({"maxsim", "maxsim_similarity"})

    def __post_init__(self) -> None:
        if not isinstance(self.top, (int, np.integer)) or isinstance(self.top, bool):
            raise PipelineError(f"MaxSimRerank(top=...) needs an integer >= 1, got {self.top!r}")
        if self.top < 1:
            raise PipelineError(f"MaxSimRerank(top=...) needs an integer >= 1, got {self.top!r}")

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Score and re-order the top candidates of every query."""
        index = context.require_index(self)
        evidence: dict[tuple[str, str], npt.NDArray[np.int64]] = {}
        context.evidence["maxsim"] = evidence
        best_sims: dict[tuple[str, str], npt.NDArray[np.float64]] = {}
        context.evidence["maxsim_similarity"] = best_sims
        kept = hits.top(int(self.top))
        parts: list[Hits] = []
        bar = progress(
            total=len(kept), desc="MaxSim re-ranking", unit="volume", verbose=context.verbose
        )
        for qid, cand in kept.split_by_query():
            cand = cand.take(np.argsort(cand.rank, kind="stable"))
            q = context.require_embeddings(qid, self)
            vids = [str(v) for v in cand.volume_id]
            vectors, offsets = index.vectors_for(vids)
            metas = [index.slice_meta(vid) for vid in vids]
            slice_ids = [np.asarray(m["slice_index"], dtype=np.int64) for m in metas]
            if not self.keep_blank:
                q = q[_usable(context.informative.get(qid), len(q))]
                rows = [
                    _usable(m.get("informative"), len(i))
                    for m, i in zip(metas, slice_ids, strict=True)
                ]
                if not all(r.all() for r in rows):  # copy the rows only when some drop
                    vectors = vectors[np.concatenate(rows)]
                    slice_ids = [i[r] for i, r in zip(slice_ids, rows, strict=True)]
                    offsets = np.concatenate([[0], np.cumsum([len(i) for i in slice_ids])])
            scores, argmax = maxsim_scores(q, vectors, offsets.astype(np.int64))
            for j, vid in enumerate(vids):
                evidence[(qid, vid)] = slice_ids[j][argmax[:, j]]
                best = vectors[offsets[j] + argmax[:, j]]
                best_sims[(qid, vid)] = np.einsum("td,td->t", q, best, dtype=np.float64)
            order = np.argsort(-scores, kind="stable")
            parts.append(
                Hits(
                    query_id=cand.query_id[order],
                    volume_id=cand.volume_id[order],
                    score=scores[order],
                    level="volume",
                    extra={
                        **{k: v[order] for k, v in cand.extra.items() if k != "prior_rank"},
                        "prior_rank": cand.rank[order],
                    },
                )
            )
            bar.update(len(cand))
        bar.close()
        if not parts:
            return Hits.empty("volume", extra=(*hits.extra, "prior_rank"))
        logger.debug("MaxSim re-ranked %d candidates of %d queries", len(kept), len(parts))
        return Hits.concat(parts)

    def __repr__(self) -> str:
        blank = ", keep_blank=True" if self.keep_blank else ""
        return f"MaxSimRerank(top={self.top}{blank})"


def _usable(flags: npt.ArrayLike | None, n: int) -> npt.NDArray[np.bool_]:
    """The rows that take part: the informative ones, or all when none (or no flags)."""
    if flags is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(flags, dtype=bool)
    if mask.shape != (n,):
        raise PipelineError(f"informative flags of shape {mask.shape} for {n} slices")
    return mask if mask.any() else np.ones(n, dtype=bool)
