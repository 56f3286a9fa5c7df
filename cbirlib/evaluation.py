"""Evaluate retrieval systems and lay the results out as the study's per-class tables.

:func:`evaluate` runs every system on the same queries and computes every metric per
``(query, structure)``; by default the values are averaged per structure.
:func:`per_class_table` turns one metric into the paper's layout (one row per
structure, one column per system, a last row ``"mean ± SD"`` over the classes), and
:func:`to_markdown` / :func:`to_csv` render it with values like ``.863 ± .107``.

Examples
--------
>>> import numpy as np
>>> from cbirlib.hits import Hits
>>> from cbirlib.labels import SliceLabels
>>> from cbirlib.metrics import VolumeRecall
>>> from cbirlib.truth import Truth
>>> from cbirlib.evaluation import evaluate, per_class_table, to_markdown
>>> lab = lambda *rows: SliceLabels(("liver", "lung"), np.array(rows, dtype=bool))
>>> truth = Truth(database={"a": lab([1, 0]), "b": lab([0, 1])},
...               queries={"q": lab([1, 1]), "r": lab([0, 1])})
>>> runs = {
...     "good": Hits(query_id=["q", "q", "r"], volume_id=["a", "b", "b"],
...                  score=[2.0, 1.0, 1.0], level="volume"),
...     "bad": Hits(query_id=["q", "r"], volume_id=["b", "a"], score=[1.0, 1.0],
...                 level="volume"),
... }
>>> results = evaluate(runs, [], truth, [VolumeRecall(1)], granularity="fine")
>>> table = per_class_table(results, "volume_recall@1")
>>> print(to_markdown(table))
| structure | good | bad |
|---|---|---|
| liver | 1.000 | .000 |
| lung | .500 | .500 |
| mean ± SD | .750 ± .354 | .250 ± .354 |
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeAlias

import pandas as pd

from cbirlib._progress import progress
from cbirlib.errors import EvaluationError, HitsTypeError
from cbirlib.hits import Hits
from cbirlib.labels import SliceLabels
from cbirlib.metrics import Metric, aggregate, as_hits
from cbirlib.pipeline import Retriever
from cbirlib.structures import COARSE_GROUPS
from cbirlib.truth import Truth
from cbirlib.volume import Volume

__all__ = [
    "GRANULARITIES",
    "MEAN_ROW",
    "Granularity",
    "evaluate",
    "format_table",
    "numeric_table",
    "per_class_table",
    "to_csv",
    "to_markdown",
    "truth_for",
]

logger = logging.getLogger(__name__)

#: Label of the last row of :func:`per_class_table`.
MEAN_ROW = "mean ± SD"
#: Delta degrees of freedom of the SD over classes: 1, the sample SD.
SD_DDOF = 1

#: Label granularity of an evaluation: the 29 coarse regions or the 104 fine classes.
Granularity: TypeAlias = Literal["coarse", "fine"]
#: The valid granularities.
GRANULARITIES: tuple[Granularity, ...] = ("coarse", "fine")


def _granularity(granularity: str, level: str | None, where: str) -> Granularity:
    """``granularity``, or the deprecated ``level=`` (with a DeprecationWarning), checked."""
    if level is not None:
        warnings.warn(
            f"{where}(level=...) is now {where}(granularity=...) (in Hits, 'level' means "
            "slice or volume); level= will be removed in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        if granularity != "coarse" and granularity != level:
            raise EvaluationError(
                f"{where}() got granularity={granularity!r} and level={level!r}; "
                "pass granularity= only"
            )
        granularity = level
    if granularity not in GRANULARITIES:
        raise EvaluationError(
            f"unknown evaluation granularity {granularity!r}; valid: 'coarse', 'fine'"
        )
    return granularity


def truth_for(
    queries: Sequence[Volume],
    truth: Truth | Mapping[str, SliceLabels],
    *,
    granularity: Granularity = "coarse",
    groups: Mapping[str, str] | None = None,
    allow_overlap: bool = False,
    level: Granularity | None = None,
) -> Truth:
    """Complete the ground truth from the query volumes and group it for ``granularity``.

    Query labels missing from ``truth`` are taken from ``query.labels``; a query with an
    :attr:`~cbirlib.volume.Volume.origin` (a region query, from
    :func:`~cbirlib.region_query`) is a region query for ``origin.structure``.

    Parameters
    ----------
    queries
        The query volumes.
    truth
        A :class:`~cbirlib.truth.Truth` or just the database labels by volume id.
    granularity
        ``"fine"`` keeps the labels as they are; ``"coarse"`` groups them with
        ``groups``.
    groups
        Fine -> coarse mapping; default :data:`cbirlib.structures.COARSE_GROUPS`.
    allow_overlap
        Accept queries whose volume (its id, or a region query's ``source_id``) is also
        a database volume of ``truth``. Off by default: a query found in the database
        retrieves itself and inflates every recall. Turn it on only with a leave-one-out
        search (``SliceSearch(..., exclude_source=True)``).
    level
        Deprecated name of ``granularity`` (a DeprecationWarning; removed in the next
        release): in :class:`~cbirlib.hits.Hits`, ``level`` means slice or volume.

    Raises
    ------
    EvaluationError
        Unknown ``granularity``, duplicate query ids, a query without labels, or (unless
        ``allow_overlap``) queries that are in the database, named in the message.
    """
    granularity = _granularity(granularity, level, "truth_for")
    base = truth if isinstance(truth, Truth) else Truth(database=dict(truth))
    labels = dict(base.queries)
    regions = dict(base.regions)
    seen: set[str] = set()
    if not allow_overlap:
        _check_no_overlap(queries, base)
    for query in queries:
        if query.id in seen:
            raise EvaluationError(f"query id {query.id!r} occurs twice; query ids must be unique")
        seen.add(query.id)
        if query.id not in labels:
            if query.labels is None:
                raise EvaluationError(
                    f"query {query.id!r} has no labels and the truth has none for it"
                )
            labels[query.id] = query.labels
        if query.origin is not None and query.id not in regions:
            regions[query.id] = query.origin.structure
    out = Truth(database=base.database, queries=labels, regions=regions)
    if granularity == "coarse":
        if groups is None:
            groups = COARSE_GROUPS
        out = out.grouped(groups)
    return out


def _check_no_overlap(queries: Sequence[Volume], truth: Truth) -> None:
    """Raise if a query volume (or a region query's source) is a database volume."""
    overlap: dict[str, None] = {}
    for query in queries:
        source = query.origin.source_id if query.origin is not None else ""
        for vid in (query.id, source):
            if vid and vid in truth.database:
                overlap[vid] = None
    if overlap:
        shown = ", ".join(repr(v) for v in list(overlap)[:10])
        more = f" and {len(overlap) - 10} more" if len(overlap) > 10 else ""
        raise EvaluationError(
            f"query volumes {shown}{more} are also in the database, so they can retrieve "
            "themselves; keep queries out of the database (a train/test split), or search "
            "leave-one-out with SliceSearch(..., exclude_source=True) and pass "
            "allow_overlap=True"
        )


def evaluate(
    systems: Mapping[str, Retriever | Hits],
    queries: Sequence[Volume],
    truth: Truth | Mapping[str, SliceLabels],
    metrics: Sequence[Metric],
    *,
    granularity: Granularity = "coarse",
    groups: Mapping[str, str] | None = None,
    per_query: bool = False,
    verbose: bool | None = None,
    allow_overlap: bool = False,
    level: Granularity | None = None,
) -> pd.DataFrame:
    """Run every system on ``queries`` and compute every metric.

    Parameters
    ----------
    systems
        Name -> retriever (anything with ``retrieve(queries, verbose=...)``, e.g. a
        :class:`~cbirlib.pipeline.Pipeline`), or name -> precomputed hits (a
        :class:`~cbirlib.hits.Hits` table; a DataFrame of hits becomes one with
        :meth:`Hits.from_pandas <cbirlib.hits.Hits.from_pandas>`).
    queries
        Query volumes (volume queries, or :func:`~cbirlib.region_query` slabs).
        Never part of the database (checked; see ``allow_overlap``).
    truth
        Ground truth; see :func:`truth_for`.
    metrics
        Metric objects from :mod:`cbirlib.metrics`.
    granularity
        ``"coarse"`` (labels grouped with ``groups``) or ``"fine"`` labels.
    groups
        Fine -> coarse mapping; default :data:`cbirlib.structures.COARSE_GROUPS`.
    per_query
        Return one row per (system, metric, query, structure) instead of per structure.
    verbose
        Progress bars (on a terminal only with ``None``); passed on to the retrievers.
    allow_overlap
        Accept queries that are also database volumes; see :func:`truth_for`.
    level
        Deprecated name of ``granularity`` (a DeprecationWarning; removed in the next
        release).

    Returns
    -------
    DataFrame
        ``per_query=False``: columns ``system``, ``metric``, ``structure``, ``value``,
        ``n`` (queries, or query slices for slice recall, behind the value).
        ``per_query=True``: ``system``, ``metric``, ``query_id``, ``structure``,
        ``value``, ``weight``. Structures no query contains have no rows.

    Raises
    ------
    HitsTypeError
        A system that is neither a retriever nor a :class:`~cbirlib.hits.Hits` table (a
        DataFrame: the message names :meth:`Hits.from_pandas`), or a retriever that
        returns something else.
    EvaluationError
        No metrics, or queries and ground truth that do not fit (see :func:`truth_for`).
    """
    if not metrics:
        raise EvaluationError("evaluate() needs at least one metric")
    granularity = _granularity(granularity, level, "evaluate")
    full = truth_for(
        queries, truth, granularity=granularity, groups=groups, allow_overlap=allow_overlap
    )
    frames: list[pd.DataFrame] = []
    for name, system in progress(systems.items(), verbose=verbose, desc="systems"):
        hits: Hits
        if isinstance(system, Hits):
            hits = system
        elif hasattr(system, "retrieve") and not isinstance(system, pd.DataFrame):
            logger.info("retrieving %d queries with %s", len(queries), name)
            out = system.retrieve(list(queries), verbose=verbose)
            hits = as_hits(out, f"the results of system {name!r}")
        else:
            frame = isinstance(system, pd.DataFrame)
            raise HitsTypeError(
                f"system {name!r} is a {'DataFrame' if frame else type(system).__name__}; "
                "expected a Retriever or a Hits table"
                + ("; pass Hits.from_pandas(frame) for hits in a DataFrame" if frame else "")
            )
        for metric in metrics:
            values = metric.compute(hits, full)
            if not per_query:
                values = aggregate(values).reset_index()
            values.insert(0, "metric", metric.name)
            values.insert(0, "system", name)
            frames.append(values)
    columns = (
        ["system", "metric", "query_id", "structure", "value", "weight"]
        if per_query
        else ["system", "metric", "structure", "value", "n"]
    )
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def per_class_table(
    results: pd.DataFrame,
    metric: str,
    *,
    structures: Sequence[str] | None = None,
    systems: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One metric in the study's layout: structures x systems plus a ``"mean ± SD"`` row.

    Parameters
    ----------
    results
        Output of :func:`evaluate` (per structure or per query; per-query values are
        averaged first).
    metric
        Metric name, e.g. ``"volume_recall@1"``.
    structures
        Row order; structures without results become NaN rows (default: the structures
        with results, sorted).
    systems
        Column order (default: order of appearance).

    Returns
    -------
    DataFrame
        Numeric; the last row ``"mean ± SD"`` holds the mean over the classes (NaN
        classes skipped) and ``table.attrs["sd"]`` the matching **sample** standard
        deviations over the classes (``ddof=1``, as papers usually report; NaN with
        fewer than two classes); :func:`format_table` renders both.
        ``table.attrs["n"]``: structure -> the number of queries behind its values (the
        largest over the systems; query slices for slice recall), where ``results``
        has an ``n`` column.
    """
    if "query_id" in results.columns:
        parts = []
        for (system, name), group in results.groupby(["system", "metric"], sort=False):
            agg = aggregate(group).reset_index()
            agg.insert(0, "metric", str(name))
            agg.insert(0, "system", str(system))
            parts.append(agg)
        results = pd.concat(parts, ignore_index=True) if parts else results
    chosen = results[results["metric"] == metric]
    if chosen.empty:
        known = sorted(results["metric"].unique()) if "metric" in results else []
        raise EvaluationError(f"no results for metric {metric!r}; available: {known}")
    table = chosen.pivot_table(
        index="structure", columns="system", values="value", aggfunc="mean", dropna=False
    )
    order = list(systems) if systems is not None else list(dict.fromkeys(chosen["system"]))
    table = table.reindex(columns=order)
    table = table.reindex(sorted(table.index) if structures is None else list(structures))
    table = table.astype(float)
    mean = table.mean(axis=0, skipna=True)
    sd = table.std(axis=0, skipna=True, ddof=SD_DDOF)
    table.loc[MEAN_ROW] = mean
    table.index.name = "structure"
    table.columns.name = None
    table.attrs["metric"] = metric
    table.attrs["sd"] = {str(k): float(v) for k, v in sd.items()}
    if "n" in chosen.columns:
        counts = chosen.groupby("structure")["n"].max()
        table.attrs["n"] = {str(k): int(v) for k, v in counts.items() if pd.notna(v)}
    return table


def _fmt(value: float, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    if text.startswith("0."):
        return text[1:]
    if text.startswith("-0."):
        return "-" + text[2:]
    return text


def format_table(table: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """Values as strings like ``.863``; the ``"mean ± SD"`` row as ``.863 ± .107``.

    The mean and the sample SD (``ddof=1``) are recomputed from the class rows, so an
    edited table renders consistently; an SD over fewer than two classes is ``n/a``.
    """
    classes = table.drop(index=MEAN_ROW, errors="ignore")
    out = classes.map(lambda v: _fmt(float(v), digits)).astype(object)
    if MEAN_ROW in table.index:
        mean = classes.mean(axis=0, skipna=True)
        sd = classes.std(axis=0, skipna=True, ddof=SD_DDOF)
        out.loc[MEAN_ROW] = [
            f"{_fmt(float(m), digits)} ± {_fmt(float(s), digits)}"
            for m, s in zip(mean, sd, strict=True)
        ]
    return out


def to_markdown(table: pd.DataFrame, *, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of :func:`per_class_table` output."""
    text = format_table(table, digits=digits)
    header = [str(table.index.name or ""), *(str(c) for c in text.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in text.iterrows():
        lines.append("| " + " | ".join([str(label), *(str(v) for v in row)]) + " |")
    return "\n".join(lines)


def numeric_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`per_class_table` output as plain numbers, ready for CSV and plotting.

    One row per structure with each system's value (float, NaN where no query contains
    the structure) and ``n_queries`` (the number of queries behind the values; query
    slices for slice recall; 0 where none), then a ``"mean"`` and an ``"sd"`` row (the
    mean and sample SD over the classes, ``n_queries`` empty).

    Examples
    --------
    >>> import pandas as pd
    >>> res = pd.DataFrame({"system": ["a", "a"], "metric": ["m", "m"],
    ...                     "structure": ["liver", "spleen"], "value": [1.0, 0.5], "n": [4, 2]})
    >>> t = numeric_table(per_class_table(res, "m"))
    >>> t.index.tolist(), t["a"].round(3).tolist(), t["n_queries"].tolist()[:2]
    (['liver', 'spleen', 'mean', 'sd'], [1.0, 0.5, 0.75, 0.354], [4.0, 2.0])
    """
    classes = table.drop(index=MEAN_ROW, errors="ignore").astype(float)
    counts = table.attrs.get("n", {})
    out = classes.copy()
    out["n_queries"] = [float(counts.get(str(s), 0)) for s in classes.index]
    mean = classes.mean(axis=0, skipna=True)
    sd = classes.std(axis=0, skipna=True, ddof=SD_DDOF)
    out.loc["mean"] = [*mean.tolist(), math.nan]
    out.loc["sd"] = [*sd.tolist(), math.nan]
    out.index.name = "structure"
    return out


def to_csv(
    table: pd.DataFrame, path: str | Path, *, formatted: bool = False, digits: int = 3
) -> Path:
    """Write a :func:`per_class_table` as CSV (UTF-8) and return the path.

    Parameters
    ----------
    table
        Output of :func:`per_class_table`.
    path
        The file to write.
    formatted
        ``False`` (default): numbers, as :func:`numeric_table` lays them out (floats at
        full precision, a ``n_queries`` column, ``mean`` and ``sd`` rows).
        ``True``: the strings of :func:`format_table` (``.863``, ``.863 ± .107``).
    digits
        Decimals of the formatted strings.
    """
    path = Path(path)
    try:
        frame = format_table(table, digits=digits) if formatted else numeric_table(table)
        frame.to_csv(path, encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot write table to {str(path)!r}: {exc}") from None
    return path
