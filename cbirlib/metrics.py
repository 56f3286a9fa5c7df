"""Retrieval metrics of the study, computed per (query, structure).

Every metric is a small frozen dataclass with a ``name`` and a
:meth:`~Metric.compute` method that turns a :class:`~cbirlib.hits.Hits` table and the
ground truth (:class:`~cbirlib.truth.Truth`) into one value per ``(query, structure)`` pair. The
metrics read the table's numpy columns directly; a DataFrame is refused with a
:class:`~cbirlib.errors.HitsTypeError` (turn it back into a table with
:meth:`Hits.from_pandas <cbirlib.hits.Hits.from_pandas>`). The values are
returned as a long :class:`pandas.DataFrame` with the columns ``query_id``,
``structure``, ``value`` and ``weight``; :func:`aggregate` turns them into one
value per structure (a weighted mean: ``weight`` is the number of query slices for
:class:`SliceRecall`, 1 otherwise).

Definitions (METHOD.md, "Evaluation"); a volume *contains* ``c`` when ``c`` is
present in at least one of its slices:

* :class:`SliceRecall` -- over the query slices that contain ``c``, the fraction
  whose top-1 retrieved slice also contains ``c`` (pooled over all slices of all
  queries).
* :class:`VolumeRecall` ``(k)`` -- over the query volumes that contain ``c``, the
  fraction for which **at least one** of the top-``k`` retrieved volumes contains
  ``c`` (``k=1``: the top-1 volume contains ``c``).
* :class:`RegionRecall` ``(k)`` -- the same over region queries for ``c``.
* :class:`LocalizedRecall` -- over region queries for ``c``, the fraction whose
  top-1 volume contains ``c`` **and** whose predicted span
  ``[loc_first, loc_last]`` overlaps the slices where ``c`` lies in that volume.
* :class:`LocalizationRatio` -- for a region query for ``c``, the fraction of the
  predicted span's slices in the top-1 volume that contain ``c`` (mean over the
  region queries for ``c``; 0 when the top-1 volume has no ``c``).
* :class:`AveragePrecision` and :class:`NDCG` ``(k)`` -- binary relevance "the
  volume contains ``c``", with every database volume that contains ``c`` counted
  as relevant (the ``trec_eval`` / ``ranx`` convention). Pairs without any
  relevant database volume are NaN and left out of the means.

Which structures a query is evaluated on: a region query (its id is a key of
the :class:`~cbirlib.truth.Truth`'s ``regions``) only for the structure it was made
for; any other query for every structure present in its own labels. Structures that no
query contains do not appear in the results (they are missing/NaN, never 0).

Examples
--------
>>> import numpy as np
>>> from cbirlib.hits import Hits
>>> from cbirlib.labels import SliceLabels
>>> from cbirlib.metrics import VolumeRecall, aggregate
>>> from cbirlib.truth import Truth
>>> lab = lambda *rows: SliceLabels(("liver", "lung"), np.array(rows, dtype=bool))
>>> truth = Truth(
...     database={"a": lab([1, 0], [1, 0]), "b": lab([0, 1])},
...     queries={"q": lab([1, 0], [0, 1])},
... )
>>> hits = Hits(query_id=["q", "q"], volume_id=["a", "b"], score=[2.0, 1.0], level="volume")
>>> aggregate(VolumeRecall(k=1).compute(hits, truth))["value"].to_dict()
{'liver': 1.0, 'lung': 0.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from cbirlib.errors import EvaluationError, HitsTypeError
from cbirlib.hits import Hits
from cbirlib.labels import SliceLabels
from cbirlib.truth import Truth

__all__ = [
    "METRIC_COLUMNS",
    "NDCG",
    "AveragePrecision",
    "LocalizationRatio",
    "LocalizedRecall",
    "Metric",
    "RegionRecall",
    "SliceRecall",
    "VolumeRecall",
    "aggregate",
    "as_hits",
    "default_metrics",
]

#: Columns of the long table every :meth:`Metric.compute` returns.
METRIC_COLUMNS = ("query_id", "structure", "value", "weight")


# -- hits helpers --------------------------------------------------------------------------


def as_hits(hits: object, what: str = "hits") -> Hits:
    """``hits`` if it is a :class:`~cbirlib.hits.Hits` table, else a named error.

    Parameters
    ----------
    hits
        The results to evaluate.
    what
        How the message names them (e.g. ``"system 'baseline'"``).

    Raises
    ------
    HitsTypeError
        For anything else; a DataFrame's message names :meth:`Hits.from_pandas`.

    Examples
    --------
    >>> import pandas as pd
    >>> try:
    ...     as_hits(pd.DataFrame({"query_id": []}))
    ... except HitsTypeError as exc:
    ...     print(exc)
    hits are a DataFrame; metrics take a Hits table: pass Hits.from_pandas(frame)
    """
    if isinstance(hits, Hits):
        return hits
    if isinstance(hits, pd.DataFrame):
        raise HitsTypeError(
            f"{what} are a DataFrame; metrics take a Hits table: pass Hits.from_pandas(frame)"
        )
    raise HitsTypeError(f"{what} are a {type(hits).__name__}; expected a Hits table (cbirlib.Hits)")


def _check_level(hits: Hits, expected: str, hint: str) -> None:
    """Raise unless the (non-empty) hits are at ``expected`` level."""
    if len(hits) and hits.level != expected:
        raise EvaluationError(
            f"this metric needs {expected}-level hits, got level {[hits.level]}; {hint}"
        )


def _sorted_codes(values: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Codes of ``values`` in sorted order of the distinct values, and those values."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), uniq


def _first_per_key(order: npt.NDArray[np.intp], key: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """The rows of ``order`` that are the first of their ``key`` (``key`` per row)."""
    _, first = np.unique(key[order], return_index=True)
    return order[np.sort(first)]


def _by_query(
    hits: Hits, rows: npt.NDArray[np.intp], codes: npt.NDArray[np.int64], names: npt.NDArray[Any]
) -> dict[str, Hits]:
    """``rows`` (sorted by query code) split into one table per query id."""
    sub = hits.take(rows)
    q = codes[rows]
    bounds = np.flatnonzero(q[1:] != q[:-1]) + 1
    parts = np.split(np.arange(len(rows)), bounds) if len(rows) else []
    return {str(names[q[p[0]]]): sub.take(p) for p in parts}


def _ranked_volumes(hits: Hits) -> dict[str, Hits]:
    """Volume-level hits per query, best first (rank, then score), one row per volume."""
    hits = as_hits(hits)
    _check_level(hits, "volume", "aggregate slice hits first (SliceSearch() >> CountVotes())")
    q, names = _sorted_codes(hits.query_id)
    v, _ = _sorted_codes(hits.volume_id)
    order = np.lexsort((-hits.score, hits.rank, q))
    keep = _first_per_key(order, q * (int(v.max(initial=0)) + 1) + v)
    return _by_query(hits, keep, q, names)


def _top_slices(hits: Hits) -> dict[str, Hits]:
    """Per query, the top-1 retrieved slice (best score, then rank) of each query slice."""
    hits = as_hits(hits)
    _check_level(hits, "slice", "use SliceSearch() or SliceSearch() >> TopSlice()")
    if (hits.query_slice < 0).any():
        raise EvaluationError("slice-level hits need query_slice >= 0 for every row")
    q, names = _sorted_codes(hits.query_id)
    order = np.lexsort((hits.rank, -hits.score, hits.query_slice, q))
    width = int(hits.query_slice.max(initial=0)) + 1
    keep = _first_per_key(order, q * width + hits.query_slice)
    return _by_query(hits, keep, q, names)


def _all_query_ids(hits: Hits, truth: Truth) -> list[str]:
    """Queries with ground truth: those with hits plus those the truth knows."""
    ids = {str(q) for q in hits.query_id.tolist()}
    return sorted(ids | set(truth.queries) | set(truth.regions))


def _records(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    return frame.astype({"query_id": object, "structure": object, "value": float, "weight": float})


# -- metrics -------------------------------------------------------------------------------


class Metric(Protocol):
    """What :func:`cbirlib.evaluation.evaluate` needs from a metric."""

    @property
    def name(self) -> str:
        """Column label of the metric, e.g. ``"volume_recall@1"``."""
        ...

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """One row per (query, structure) with :data:`METRIC_COLUMNS`."""
        ...


@dataclass(frozen=True)
class SliceRecall:
    """Slice-wise recall: top-1 retrieved slice contains ``c`` for query slices with ``c``.

    Needs slice-level hits with ``query_slice``. ``value`` is the per-query fraction
    and ``weight`` the number of the query's slices that contain ``c``, so the
    weighted mean over queries pools all query slices. Only the query slices that
    were searched count (query sampling with ``query_stride``; blank slices, which
    :class:`~cbirlib.search.SliceSearch` leaves out by default); a query without any
    hit counts as a miss on all its slices. Region queries are skipped.

    Examples
    --------
    >>> SliceRecall().name
    'slice_recall'
    """

    level: ClassVar[str] = "slice"

    @property
    def name(self) -> str:
        """Metric name."""
        return "slice_recall"

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """Per (query, structure) slice-wise recall; see the class docstring."""
        top = _top_slices(hits)
        rows: list[tuple[str, str, float, float]] = []
        for qid in _all_query_ids(hits, truth):
            if qid in truth.regions:
                continue
            labels = truth.query_labels(qid)
            retrieved: dict[int, tuple[str, int]] = {}
            if qid in top:
                g = top[qid]
                for t, v, s in zip(
                    g.query_slice.tolist(),
                    g.volume_id.tolist(),
                    g.slice_index.tolist(),
                    strict=True,
                ):
                    retrieved[int(t)] = (str(v), int(s))
                _check_slice_count(qid, "query", int(g.query_slice.max()), len(labels))
            # with query sampling only the searched slices count; no hits at all: all miss
            searched = np.array(sorted(retrieved), dtype=np.int64) if retrieved else None
            for c in sorted(labels.volume_structures()):
                slices = labels.slices_with(c)
                if searched is not None:
                    slices = np.intersect1d(slices, searched)
                    if slices.size == 0:
                        continue
                found = 0
                for t in slices:
                    if int(t) in retrieved:
                        v, s = retrieved[int(t)]
                        db = truth.volume_labels(v)
                        _check_slice_count(v, "database volume", s, len(db))
                        found += bool(c in db.names and db.present[s, db.column(c)])
                rows.append((qid, c, found / slices.size, float(slices.size)))
        return _records(rows)


def _check_slice_count(volume_id: str, what: str, slice_index: int, n_slices: int) -> None:
    """Raise when a hit names a slice beyond the ones the truth labels cover."""
    if not 0 <= slice_index < n_slices:
        raise EvaluationError(
            f"{what} {volume_id!r}: the hits refer to slice {slice_index}, but its "
            f"ground-truth labels cover {n_slices} slices (0..{n_slices - 1}); the labels "
            "do not belong to the volume that was indexed or queried"
        )


def _recall_at_k(hits: Hits, truth: Truth, k: int, *, regions_only: bool) -> pd.DataFrame:
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    ranked = _ranked_volumes(hits)
    rows: list[tuple[str, str, float, float]] = []
    for qid in _all_query_ids(hits, truth):
        if regions_only and qid not in truth.regions:
            continue
        top = ranked[qid].volume_id[:k].tolist() if qid in ranked else []
        for c in sorted(truth.query_structures(qid)):
            hit = any(truth.volume_contains(str(v), c) for v in top)
            rows.append((qid, c, float(hit), 1.0))
    return _records(rows)


@dataclass(frozen=True)
class VolumeRecall:
    """Volume-based recall@k: at least one of the top ``k`` volumes contains ``c``.

    Evaluated for every structure ``c`` of each query (a region query: only its own
    structure). Needs volume-level hits.

    Examples
    --------
    >>> VolumeRecall(k=3).name
    'volume_recall@3'
    """

    k: int = 1
    level: ClassVar[str] = "volume"

    @property
    def name(self) -> str:
        """Metric name."""
        return f"volume_recall@{self.k}"

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """Per (query, structure) 1.0 or 0.0; see the class docstring."""
        return _recall_at_k(hits, truth, self.k, regions_only=False)


@dataclass(frozen=True)
class RegionRecall:
    """Region-based recall@k: over region queries for ``c``, top ``k`` has a volume with ``c``.

    Only queries listed in ``Truth.regions`` (:class:`~cbirlib.truth.Truth`) are evaluated.

    Examples
    --------
    >>> RegionRecall().name
    'region_recall'
    """

    k: int = 1
    level: ClassVar[str] = "volume"

    @property
    def name(self) -> str:
        """Metric name."""
        return "region_recall" if self.k == 1 else f"region_recall@{self.k}"

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """Per region query 1.0 or 0.0; see the class docstring."""
        return _recall_at_k(hits, truth, self.k, regions_only=True)


def _localized(hits: Hits, truth: Truth) -> Iterator[tuple[str, str, SliceLabels | None, int, int]]:
    """For each region query: (query, c, top-1 volume labels or None, first, last)."""
    ranked = _ranked_volumes(hits)
    for qid in _all_query_ids(hits, truth):
        if qid not in truth.regions:
            continue
        c = truth.regions[qid]
        g = ranked.get(qid)
        if g is None or len(g) == 0:
            yield qid, c, None, -1, -1
            continue
        for col in ("loc_first", "loc_last"):
            if col not in g.extra:
                raise EvaluationError(
                    f"hits lack the localization column {col!r}; end the pipeline with Localize()"
                )
        first = float(g.extra["loc_first"][0])
        last = float(g.extra["loc_last"][0])
        labels = truth.volume_labels(str(g.volume_id[0]))
        if not (np.isfinite(first) and np.isfinite(last)) or first < 0 or last < first:
            yield qid, c, labels, -1, -1
        else:
            yield qid, c, labels, int(first), int(last)


@dataclass(frozen=True)
class LocalizedRecall:
    """Localized recall: top-1 volume contains ``c`` and the predicted span overlaps ``c``.

    Needs volume-level hits with ``loc_first`` and ``loc_last`` (inclusive slice
    indices in the retrieved volume). A missing or invalid span is a miss.

    Examples
    --------
    >>> LocalizedRecall().name
    'localized_recall'
    """

    level: ClassVar[str] = "volume"

    @property
    def name(self) -> str:
        """Metric name."""
        return "localized_recall"

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """Per region query 1.0 or 0.0; see the class docstring."""
        rows: list[tuple[str, str, float, float]] = []
        for qid, c, labels, first, last in _localized(hits, truth):
            hit = False
            if labels is not None and first >= 0 and c in labels.names:
                hit = bool(labels.present[first : last + 1, labels.column(c)].any())
            rows.append((qid, c, float(hit), 1.0))
        return _records(rows)


@dataclass(frozen=True)
class LocalizationRatio:
    """Fraction of the predicted span's slices (top-1 volume) that contain ``c``.

    1.0 means the span ``[loc_first, loc_last]`` lies entirely on ``c``; 0.0 when
    the top-1 volume lacks ``c`` or the span is missing.

    Examples
    --------
    >>> LocalizationRatio().name
    'localization_ratio'
    """

    level: ClassVar[str] = "volume"

    @property
    def name(self) -> str:
        """Metric name."""
        return "localization_ratio"

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """Per region query a ratio in [0, 1]; see the class docstring."""
        rows: list[tuple[str, str, float, float]] = []
        for qid, c, labels, first, last in _localized(hits, truth):
            ratio = 0.0
            if labels is not None and first >= 0 and c in labels.names:
                span = labels.present[first : last + 1, labels.column(c)]
                ratio = float(span.mean()) if span.size else 0.0
            rows.append((qid, c, ratio, 1.0))
        return _records(rows)


def _relevance(hits: Hits, truth: Truth) -> Iterator[tuple[str, str, np.ndarray, int]]:
    """Per (query, c): binary relevance of the ranked volumes and the number relevant."""
    ranked = _ranked_volumes(hits)
    n_relevant: dict[str, int] = {}
    for qid in _all_query_ids(hits, truth):
        vols = ranked[qid].volume_id.tolist() if qid in ranked else []
        for c in sorted(truth.query_structures(qid)):
            if c not in n_relevant:
                n_relevant[c] = truth.n_relevant(c)
            rel = np.array([truth.volume_contains(str(v), c) for v in vols], dtype=float)
            yield qid, c, rel, n_relevant[c]


@dataclass(frozen=True)
class AveragePrecision:
    """Average precision with relevance "the volume contains ``c``".

    ``AP = sum_i P@i * rel_i / R`` over the ranked volumes (cut at ``k`` when
    given), with ``R`` the number of database volumes that contain ``c``; NaN when
    ``R == 0``. Agrees with ``ranx`` ``"map"`` / ``"map@k"``.

    Examples
    --------
    >>> AveragePrecision().name, AveragePrecision(k=10).name
    ('ap', 'ap@10')
    """

    k: int | None = None
    level: ClassVar[str] = "volume"

    @property
    def name(self) -> str:
        """Metric name."""
        return "ap" if self.k is None else f"ap@{self.k}"

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """Per (query, structure) AP; see the class docstring."""
        if self.k is not None and (isinstance(self.k, bool) or self.k < 1):
            raise EvaluationError(f"k must be None or >= 1, got {self.k}")
        rows: list[tuple[str, str, float, float]] = []
        for qid, c, rel, n_rel in _relevance(hits, truth):
            rel = rel[: self.k] if self.k is not None else rel
            if n_rel == 0:
                rows.append((qid, c, math.nan, 1.0))
                continue
            precision = np.cumsum(rel) / np.arange(1, rel.size + 1)
            rows.append((qid, c, float((precision * rel).sum() / n_rel), 1.0))
        return _records(rows)


@dataclass(frozen=True)
class NDCG:
    """Normalised discounted cumulative gain at ``k`` with binary relevance.

    ``DCG@k = sum_{i<=k} rel_i / log2(i + 1)``; the ideal DCG ranks ``min(R, k)``
    relevant volumes first (``R`` as in :class:`AveragePrecision`); NaN when
    ``R == 0``. Agrees with ``ranx`` ``"ndcg@k"``.

    Examples
    --------
    >>> NDCG(k=10).name
    'ndcg@10'
    """

    k: int = 10
    level: ClassVar[str] = "volume"

    @property
    def name(self) -> str:
        """Metric name."""
        return f"ndcg@{self.k}"

    def compute(self, hits: Hits, truth: Truth) -> pd.DataFrame:
        """Per (query, structure) nDCG@k; see the class docstring."""
        if self.k < 1:
            raise EvaluationError(f"k must be >= 1, got {self.k}")
        discount = 1.0 / np.log2(np.arange(2, self.k + 2))
        rows: list[tuple[str, str, float, float]] = []
        for qid, c, rel, n_rel in _relevance(hits, truth):
            if n_rel == 0:
                rows.append((qid, c, math.nan, 1.0))
                continue
            rel = rel[: self.k]
            dcg = float((rel * discount[: rel.size]).sum())
            ideal = float(discount[: min(n_rel, self.k)].sum())
            rows.append((qid, c, dcg / ideal, 1.0))
        return _records(rows)


def default_metrics(mode: str) -> tuple[Metric, ...]:
    """The study's metrics for a retrieval mode.

    Parameters
    ----------
    mode
        ``"slice"``, ``"volume"``, ``"region"`` or ``"localized"``.

    Examples
    --------
    >>> [m.name for m in default_metrics("region")]
    ['region_recall', 'ap', 'ndcg@10']
    """
    if mode == "slice":
        return (SliceRecall(),)
    if mode == "volume":
        return (*(VolumeRecall(k) for k in (1, 3, 5, 10)), AveragePrecision(), NDCG(10))
    if mode == "region":
        return (RegionRecall(), AveragePrecision(), NDCG(10))
    if mode == "localized":
        return (LocalizedRecall(), LocalizationRatio())
    raise EvaluationError(
        f"unknown retrieval mode {mode!r}; valid: 'slice', 'volume', 'region', 'localized'"
    )


def aggregate(values: pd.DataFrame) -> pd.DataFrame:
    """Per-structure weighted mean of per-(query, structure) values.

    NaN values are left out; a structure with no finite value is NaN.

    Returns
    -------
    DataFrame
        Indexed by structure, with columns ``value`` and ``n`` (summed weight of the
        finite values: query slices for slice recall, queries otherwise).

    Examples
    --------
    >>> import pandas as pd
    >>> v = pd.DataFrame({"query_id": ["a", "b"], "structure": ["x", "x"],
    ...                   "value": [1.0, 0.5], "weight": [1.0, 2.0]})
    >>> float(aggregate(v).loc["x", "value"])
    0.6666666666666666
    """
    ok = values["value"].notna()
    weighted = (values["value"].where(ok, 0.0) * values["weight"].where(ok, 0.0)).groupby(
        values["structure"]
    )
    total = values["weight"].where(ok, 0.0).groupby(values["structure"]).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = weighted.sum() / total.replace(0.0, np.nan)
    out = pd.DataFrame({"value": mean.astype(float), "n": total.astype(float)})
    out.index.name = "structure"
    return out.sort_index()
