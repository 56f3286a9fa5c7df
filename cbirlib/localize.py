"""Localization: where the query's anatomy lies in each retrieved volume.

The database slices that matched the query (the argmax slices of MaxSim, or the slices
that voted for the volume) give the predicted location, reported as the slice span
``[loc_first, loc_last]`` (inclusive) and its z range ``[loc_z_first, loc_z_last]`` in mm.
Query slices whose anatomy the retrieved volume lacks still have a best match there,
usually a poor one; :func:`inlier_matches` finds them by their similarity, so that they do
not stretch the span.

Examples
--------
>>> import numpy as np
>>> from cbirlib.localize import inlier_matches, matched_span
>>> matched_span(np.array([7, 3, 4, 5, 40]))
(3, 40)
>>> matched_span(np.array([7, 3, 4, 5, 40]), trim=0.2)
(4, 7)
>>> sims = np.array([0.93, 0.95, 0.94, 0.96, 0.41])  # slice 40 matched poorly
>>> inlier_matches(sims, "mad").tolist()
[True, True, True, True, False]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from cbirlib.errors import PipelineError
from cbirlib.hits import LOCALIZATION_COLUMNS, Hits
from cbirlib.pipeline import SearchContext, Stage, StageLevel

__all__ = ["METHODS", "ROBUST_RULES", "Localize", "inlier_matches", "matched_span"]

logger = logging.getLogger(__name__)

#: Localization methods and the evidence kind each reads.
METHODS: dict[str, str] = {"maxsim": "maxsim", "votes": "votes"}
#: Rules of :func:`inlier_matches` and the default ``cut`` of each (``"none"``: keep all).
ROBUST_RULES: dict[str, float] = {"mad": 2.5, "ratio": 0.9, "none": 0.0}
#: The rule :class:`Localize` applies to MaxSim matches unless told otherwise.
DEFAULT_ROBUST = "mad"
#: Smallest robust scale (cosine units) of the ``"mad"`` rule.
MAD_FLOOR = 0.01
_MAD_TO_SD = 1.4826  # MAD of a normal distribution times this = its SD


def inlier_matches(
    similarity: npt.NDArray[np.floating], rule: str = DEFAULT_ROBUST, cut: float | None = None
) -> npt.NDArray[np.bool_]:
    """Which matches to keep: those whose similarity is not far below the others'.

    Parameters
    ----------
    similarity
        Similarity of each query slice to its best match in one volume (non-empty).
    rule
        ``"mad"``: drop matches whose robust z-score ``(s - median) / (1.4826 * MAD)`` is
        below ``-cut`` (the scale is at least :data:`MAD_FLOOR`, so near-identical
        similarities drop nothing). ``"ratio"``: drop matches below ``cut * median``
        (nothing when the median is not positive). ``"none"``: keep all.
    cut
        Threshold of the rule; default :data:`ROBUST_RULES` ``[rule]`` (2.5 for ``"mad"``,
        0.9 for ``"ratio"``), chosen on partial-overlap phantom queries
        (``benchmarks/fair_votes_spans.py``).

    Returns
    -------
    ndarray of bool
        One flag per match; every match at or above the median is kept, so at least
        half of them are.

    Raises
    ------
    PipelineError
        An unknown rule or a negative ``cut``.
    """
    if rule not in ROBUST_RULES:
        raise PipelineError(
            f"unknown robust span rule {rule!r}; valid: {', '.join(map(repr, ROBUST_RULES))}"
        )
    threshold = ROBUST_RULES[rule] if cut is None else float(cut)
    if not np.isfinite(threshold) or threshold < 0:
        raise PipelineError(f"robust span cut must be a number >= 0, got {cut!r}")
    s = np.asarray(similarity, dtype=np.float64)
    if rule == "none" or len(s) == 0:
        return np.ones(len(s), bool)
    median = float(np.median(s))
    if rule == "mad":
        scale = max(_MAD_TO_SD * float(np.median(np.abs(s - median))), MAD_FLOOR)
        return np.asarray(s >= median - threshold * scale)
    if median <= 0:
        return np.ones(len(s), bool)
    return np.asarray(s >= threshold * median)


def matched_span(slices: npt.NDArray[np.int64], *, trim: float = 0.0) -> tuple[int, int]:
    """First and last matched slice, optionally ignoring outliers.

    Parameters
    ----------
    slices
        Matched slice indices (any order, repeats allowed; non-empty).
    trim
        Fraction of matches ignored at each end (``0.1`` drops the lowest and highest 10%);
        ``0`` gives the full span.
    """
    s = np.sort(np.asarray(slices, dtype=np.int64))
    drop = int(np.floor(trim * len(s)))
    if 2 * drop >= len(s):
        drop = (len(s) - 1) // 2
    return int(s[drop]), int(s[len(s) - 1 - drop])


@dataclass(frozen=True, repr=False)
class Localize(Stage):
    """Predict the location of the query in every retrieved volume.

    Parameters
    ----------
    method
        ``"maxsim"``: the argmax slices of :class:`~cbirlib.rerank.MaxSimRerank` (one per
        query slice); ``"votes"``: the voted slices of
        :class:`~cbirlib.aggregate.CountVotes`. The chain must contain that stage.
    trim
        Fraction of matched slices ignored at each end of the span (robustness to
        isolated outlier matches); ``0`` (default) uses the full span. With
        ``method="votes"`` and ``trim=0`` the span runs from the lowest to the highest
        slice that got **any** counted vote (with ``CountVotes(normalize="none")`` all
        ``k`` neighbours of every query slice; by default the best slice of each query
        slice), so a single stray vote far from the query's anatomy stretches it over
        much of the volume; ``trim=0.1`` (the default of
        :func:`cbirlib.benchmarking.benchmark`) gives a tighter span: a higher
        localization ratio, at a slightly lower localized recall on the phantom
        benchmark. The MaxSim argmax slices (one per query slice) are
        tighter still without trimming. Applied after ``robust``.
    robust
        How poor MaxSim matches are dropped before the span is taken (a query slice whose
        anatomy the retrieved volume lacks still has a best match there, anywhere in the
        volume): a rule of :func:`inlier_matches` applied to the similarities of the
        matches (``context.evidence["maxsim_similarity"]``). ``None`` (default):
        :data:`DEFAULT_ROBUST` (``"mad"``) with ``method="maxsim"``, ``"none"`` with
        ``method="votes"`` (vote evidence has no per-query-slice similarity; use
        ``trim`` there). ``"none"`` gives the span of all argmax slices.
    cut
        Threshold of the ``robust`` rule; ``None``: the rule's default
        (:data:`ROBUST_RULES`).

    Output: the input rows with extra columns ``loc_first``, ``loc_last`` (int64 slice
    indices in the retrieved volume, inclusive) and ``loc_z_first``, ``loc_z_last``
    (float64 mm, from the index's slice metadata; ``loc_z_first <= loc_z_last``). Rows
    without evidence (cut by an earlier ``top``) get ``-1`` and NaN.
    """

    method: str = "maxsim"
    trim: float = 0.0
    robust: str | None = None
    cut: float | None = None

    input_level: ClassVar[StageLevel] = "volume"
    output_level: ClassVar[StageLevel] = "volume"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PipelineError(
                f"unknown localization method {self.method!r}; valid: {', '.join(METHODS)}"
            )
        if not 0.0 <= self.trim < 0.5:
            raise PipelineError(f"Localize(trim=...) must be in [0, 0.5), got {self.trim!r}")
        if self.robust is not None and self.robust not in ROBUST_RULES:
            raise PipelineError(
                f"unknown robust span rule {self.robust!r}; "
                f"valid: {', '.join(map(repr, ROBUST_RULES))}"
            )
        if self.method == "votes" and self.robust not in (None, "none"):
            raise PipelineError(
                f"Localize(method='votes', robust={self.robust!r}): vote evidence has no "
                "per-query-slice similarity; use trim=... instead"
            )
        if self.cut is not None:
            inlier_matches(np.ones(1), self.rule, self.cut)  # validates the cut

    @property
    def rule(self) -> str:
        """The robust rule in effect (``robust`` with ``None`` resolved)."""
        if self.robust is not None:
            return self.robust
        return DEFAULT_ROBUST if self.method == "maxsim" else "none"

    def requires(self) -> frozenset[str]:
        """The evidence kind of ``method`` (and the MaxSim similarities for ``robust``)."""
        extra = {"maxsim_similarity"} if self.rule != "none" else set()
        return frozenset({METHODS[self.method], *extra})

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Add the localization columns."""
        index = context.require_index(self)
        evidence = context.evidence.get(METHODS[self.method], {})
        rule = self.rule
        similarity = context.evidence.get("maxsim_similarity", {}) if rule != "none" else {}
        dropped = 0
        n = len(hits)
        first = np.full(n, -1, np.int64)
        last = np.full(n, -1, np.int64)
        z_first = np.full(n, np.nan)
        z_last = np.full(n, np.nan)
        meta_cache: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
        for i, (qid, vid) in enumerate(zip(hits.query_id, hits.volume_id, strict=True)):
            matched = evidence.get((qid, vid))
            if matched is None or len(matched) == 0:
                continue
            sims = similarity.get((qid, vid))
            if sims is not None and len(sims) == len(matched):
                keep = inlier_matches(sims, rule, self.cut)
                dropped += len(matched) - int(np.count_nonzero(keep))
                matched = matched[keep]
            first[i], last[i] = matched_span(matched, trim=self.trim)
            if vid not in meta_cache:
                meta = index.slice_meta(vid)
                idx = np.asarray(meta["slice_index"], dtype=np.int64)
                order = np.argsort(idx, kind="stable")
                meta_cache[vid] = (idx[order], np.asarray(meta["z_mm"], np.float64)[order])
            idx_sorted, z_sorted = meta_cache[vid]
            pos = np.searchsorted(idx_sorted, [first[i], last[i]])
            z = z_sorted[np.minimum(pos, len(z_sorted) - 1)]
            z_first[i], z_last[i] = float(z.min()), float(z.max())
        missing = int(np.count_nonzero(first < 0))
        if missing:
            logger.debug("%s: %d of %d rows without %s evidence", self, missing, n, self.method)
        if dropped:
            logger.debug("%s: dropped %d poor matches (rule %r)", self, dropped, rule)
        return hits.with_columns(
            **dict(zip(LOCALIZATION_COLUMNS, (first, last, z_first, z_last), strict=True))
        )

    def __repr__(self) -> str:
        args = [] if self.method == "maxsim" else [f"method={self.method!r}"]
        if self.trim:
            args.append(f"trim={self.trim}")
        if self.robust is not None:
            args.append(f"robust={self.robust!r}")
        if self.cut is not None:
            args.append(f"cut={self.cut}")
        return f"Localize({', '.join(args)})"
