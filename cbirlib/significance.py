"""Deltas against a baseline system and paired significance tests, through ranx.

Two systems evaluated on the same queries give paired values: one per query (and
structure) from :func:`cbirlib.evaluate` with ``per_query=True``, or one per structure
from the per-class tables of :func:`cbirlib.benchmark`. :func:`compare_to_baseline` and
:func:`compare_tables` report, for every other system, its value, the baseline's, their
difference (``delta = value - baseline``) and the p-value of a paired test:

* ``"student"``: the two-sided paired Student's t-test, ranx's
  ``paired_student_t_test`` (the default of ``ranx.compare``);
* ``"fisher"``: Fisher's (approximate) randomization test, ranx's
  ``fisher_randomization_test``, with ``n_permutations`` and ``random_seed`` as in
  ``ranx.compare``.

The p-values are the ones ``ranx.compare`` gives on the same per-query scores. Two
systems with identical values have delta 0 and p-value 1 (ranx gives NaN there). With
several comparisons, ``correction="holm"`` or ``"bonferroni"`` adjusts the p-values
within each family: all comparisons of one metric (of one level and mode, for a
benchmark); ``significant`` is ``p_corrected <= alpha``. ranx is an optional dependency
(``pip install cbirlib[stats]``); it is imported only when a test runs.

Examples
--------
>>> import pandas as pd
>>> from cbirlib.significance import compare_to_baseline
>>> rows = [("a", q, v) for q, v in zip("pqrs", [0.2, 0.4, 0.5, 0.1])]
>>> rows += [("b", q, v) for q, v in zip("pqrs", [0.9, 0.8, 1.0, 0.7])]
>>> results = pd.DataFrame(
...     [(s, "ap", q, "liver", v, 1.0) for s, q, v in rows],
...     columns=["system", "metric", "query_id", "structure", "value", "weight"],
... )
>>> row = compare_to_baseline(results, "a").iloc[0]
>>> row["system"], round(float(row["delta"]), 3), bool(row["significant"])
('b', 0.55, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from cbirlib.errors import EvaluationError, OptionalDependencyError
from cbirlib.evaluation import MEAN_ROW

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "COLUMNS",
    "CORRECTIONS",
    "OVERALL",
    "STAT_TESTS",
    "adjust_p_values",
    "compare_tables",
    "compare_to_baseline",
    "paired_p_value",
]

StatTest = Literal["student", "fisher"]
Correction = Literal["none", "bonferroni", "holm"]

STAT_TESTS: tuple[str, ...] = ("student", "fisher")
"""Paired tests: ranx's ``"student"`` (t-test) and ``"fisher"`` (randomization)."""

CORRECTIONS: tuple[str, ...] = ("none", "bonferroni", "holm")
"""Multiple-comparison corrections of :func:`adjust_p_values`."""

OVERALL = "(all)"
"""``structure`` of a comparison over all (query, structure) pairs (``by=None``)."""

COLUMNS: tuple[str, ...] = (
    "system",
    "metric",
    "structure",
    "n",
    "baseline",
    "value",
    "delta",
    "p_value",
    "p_corrected",
    "significant",
)
"""Columns of :func:`compare_to_baseline` (``n``: the paired observations)."""

_INSTALL = "pip install 'cbirlib[stats]'"


def _ranx_tests() -> Any:
    try:
        from ranx import statistical_tests
    except ImportError as exc:
        raise OptionalDependencyError(
            f"significance tests need ranx, which is not installed ({exc}); {_INSTALL}"
        ) from None
    return statistical_tests


def _check_choice(value: str, valid: Sequence[str], what: str) -> None:
    if value not in valid:
        raise EvaluationError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def paired_p_value(
    control: npt.ArrayLike,
    treatment: npt.ArrayLike,
    *,
    stat_test: StatTest = "student",
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> float:
    """The p-value of a paired test of ``treatment`` against ``control`` (through ranx).

    Parameters
    ----------
    control, treatment
        Paired values (same length, finite), one per query.
    stat_test
        ``"student"`` or ``"fisher"`` (see the module docstring).
    n_permutations, random_seed
        Of the Fisher randomization test, as in ``ranx.compare``.

    Returns
    -------
    float
        The p-value: 1.0 when the values are identical, NaN with fewer than two pairs.

    Raises
    ------
    EvaluationError
        An unknown test, arrays of different lengths, or non-finite values.
    OptionalDependencyError
        ranx is not installed.
    """
    _check_choice(stat_test, STAT_TESTS, "stat_test")
    a = np.ascontiguousarray(control, dtype=np.float64)
    b = np.ascontiguousarray(treatment, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise EvaluationError(
            f"paired values need two 1-D arrays of one length, got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise EvaluationError("paired values must be finite (leave out NaN pairs first)")
    if len(a) < 2:
        return float("nan")
    if np.array_equal(a, b):
        return 1.0
    tests = _ranx_tests()
    with warnings.catch_warnings():
        # a constant nonzero difference: scipy warns of precision loss, and p is ~0
        warnings.simplefilter("ignore", RuntimeWarning)
        if stat_test == "student":
            p, _ = tests.paired_student_t_test(a, b, 1.0)
        else:
            p, _ = tests.fisher_randomization_test(a, b, n_permutations, 1.0, random_seed)
    return float(p)


def adjust_p_values(
    p_values: npt.ArrayLike, method: Correction = "holm"
) -> npt.NDArray[np.float64]:
    """P-values adjusted for multiple comparisons (NaN entries stay NaN and do not count).

    ranx offers no correction; these are the textbook ones: Bonferroni
    (``min(1, m p)``) and Holm's step-down (``max_{j<=i} min(1, (m - j + 1) p_(j))`` in
    ascending order of ``p``), ``m`` the number of finite p-values.

    Parameters
    ----------
    p_values
        Raw p-values.
    method
        ``"none"``, ``"bonferroni"`` or ``"holm"``.

    Examples
    --------
    >>> adjust_p_values([0.01, 0.04, 0.03], "holm").round(2).tolist()
    [0.03, 0.06, 0.06]
    >>> adjust_p_values([0.01, float("nan")], "bonferroni").tolist()
    [0.01, nan]
    """
    _check_choice(method, CORRECTIONS, "correction")
    p = np.asarray(p_values, dtype=np.float64).copy()
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if method == "none" or m == 0:
        return p
    if method == "bonferroni":
        p[ok] = np.minimum(1.0, p[ok] * m)
        return p
    order = ok[np.argsort(p[ok], kind="stable")]
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    p[order] = np.maximum.accumulate(steps)
    return p


def _finish(
    rows: list[dict[str, Any]], family: list[str], correction: Correction, alpha: float
) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["p_corrected"] = np.nan
    for _, group in frame.groupby(family, sort=False):
        frame.loc[group.index, "p_corrected"] = adjust_p_values(
            group["p_value"].to_numpy(dtype=float), correction
        )
    frame["significant"] = (frame["p_corrected"] <= alpha).astype(bool)
    return frame


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise EvaluationError(f"alpha must lie between 0 and 1, got {alpha}")


def _weighted_mean(values: pd.Series, weights: pd.Series) -> float:
    ok = values.notna().to_numpy()
    w = weights.to_numpy(dtype=float)[ok]
    if w.sum() <= 0:
        return float("nan")
    return float(np.sum(values.to_numpy(dtype=float)[ok] * w) / w.sum())


def compare_to_baseline(
    results: pd.DataFrame,
    baseline: str,
    *,
    by: Literal["structure"] | None = "structure",
    stat_test: StatTest = "student",
    alpha: float = 0.05,
    correction: Correction = "none",
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> pd.DataFrame:
    """Every system against ``baseline``: delta and paired p-value, per structure or overall.

    Parameters
    ----------
    results
        Per-query output of :func:`cbirlib.evaluate` (``per_query=True``): columns
        ``system``, ``metric``, ``query_id``, ``structure``, ``value``, ``weight``.
    baseline
        The system the others are compared with.
    by
        ``"structure"``: one comparison per (system, metric, structure), the queries
        that contain the structure paired; ``None``: one per (system, metric), every
        (query, structure) pair paired, ``structure`` is :data:`OVERALL`.
    stat_test
        ``"student"`` or ``"fisher"``.
    alpha
        Significance level of the ``significant`` column.
    correction
        ``"none"``, ``"bonferroni"`` or ``"holm"``, within each metric.
    n_permutations, random_seed
        Of the Fisher randomization test.

    Returns
    -------
    DataFrame
        Columns :data:`COLUMNS`. ``baseline`` and ``value`` are each system's weighted
        mean over its finite values, as :func:`cbirlib.evaluate` reports them (so
        ``delta`` is the difference of the two systems' metrics); the test pairs the
        (query, structure) values finite in both (``n`` of them), each pair one
        observation, as ranx does.

    Raises
    ------
    EvaluationError
        Not per-query results, an unknown baseline, test or correction, or a system
        evaluated on other (query, structure) pairs or metrics than the baseline.
    OptionalDependencyError
        ranx is not installed.
    """
    import pandas as pd

    _check_choice(stat_test, STAT_TESTS, "stat_test")
    _check_choice(correction, CORRECTIONS, "correction")
    _check_alpha(alpha)
    if by not in ("structure", None):
        raise EvaluationError(f"by must be 'structure' or None, got {by!r}")
    needed = {"system", "metric", "query_id", "structure", "value", "weight"}
    if not needed <= set(results.columns):
        raise EvaluationError(
            "compare_to_baseline needs per-query results (evaluate(..., per_query=True)); "
            f"missing columns: {', '.join(sorted(needed - set(results.columns)))}"
        )
    systems = list(dict.fromkeys(map(str, results["system"])))
    if baseline not in systems:
        raise EvaluationError(
            f"baseline {baseline!r} is not among the systems: {', '.join(systems) or '(none)'}"
        )
    frame = results.assign(system=results["system"].astype(str))
    keyed = frame.set_index(["system", "metric", "query_id", "structure"]).sort_index()
    base_all = keyed.loc[baseline]
    rows: list[dict[str, Any]] = []
    for system in systems:
        if system == baseline:
            continue
        mine = keyed.loc[system]
        for metric in dict.fromkeys(frame.loc[frame["system"] == system, "metric"]):
            if metric not in base_all.index.get_level_values("metric"):
                raise EvaluationError(
                    f"metric {metric!r} of system {system!r} was not computed for baseline "
                    f"{baseline!r}"
                )
            ours, theirs = mine.loc[metric], base_all.loc[metric]
            if not ours.index.equals(theirs.index):
                extra = ours.index.symmetric_difference(theirs.index)
                raise EvaluationError(
                    f"system {system!r} and baseline {baseline!r} were evaluated on different "
                    f"(query, structure) pairs for {metric!r} ({len(extra)} differ, e.g. "
                    f"{extra[0]}); compare systems run on the same queries and truth"
                )
            groups: list[tuple[str, pd.Index]] = (
                [(OVERALL, ours.index)]
                if by is None
                else [
                    (str(s), ours.index[ours.index.get_level_values("structure") == s])
                    for s in sorted(set(ours.index.get_level_values("structure")))
                ]
            )
            for structure, index in groups:
                a, b = theirs.loc[index], ours.loc[index]
                both = (a["value"].notna() & b["value"].notna()).to_numpy()
                base_value = _weighted_mean(a["value"], a["weight"])
                value = _weighted_mean(b["value"], b["weight"])
                rows.append(
                    {
                        "system": system,
                        "metric": str(metric),
                        "structure": structure,
                        "n": int(both.sum()),
                        "baseline": base_value,
                        "value": value,
                        "delta": value - base_value,
                        "p_value": paired_p_value(
                            a["value"].to_numpy(dtype=float)[both],
                            b["value"].to_numpy(dtype=float)[both],
                            stat_test=stat_test,
                            n_permutations=n_permutations,
                            random_seed=random_seed,
                        ),
                    }
                )
    if not rows:
        return pd.DataFrame(columns=list(COLUMNS))
    return _finish(rows, ["metric"], correction, alpha)[list(COLUMNS)]


def compare_tables(
    tables: Mapping[str, pd.DataFrame],
    baseline: str,
    *,
    stat_test: StatTest = "student",
    alpha: float = 0.05,
    correction: Correction = "none",
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> pd.DataFrame:
    """Every system of a benchmark against ``baseline``, the structures paired.

    Each per-class table (:func:`cbirlib.benchmark`'s ``"<level>/<mode>/<metric>"``
    entries) gives one comparison per system: the mean over the classes (its
    ``"mean ± SD"`` row, the figure the summary prints), the baseline's, their delta,
    and a paired test over the classes both systems have a value for (each class one
    observation; the unit of the study's mean ± SD).

    Parameters
    ----------
    tables
        :func:`cbirlib.benchmark`'s result (the ``"summary"`` entry is skipped), or any
        mapping ``"<level>/<mode>/<metric>"`` -> :func:`~cbirlib.evaluation.per_class_table`.
    baseline
        The column (system) the others are compared with.
    stat_test, alpha, correction, n_permutations, random_seed
        As for :func:`compare_to_baseline`; the correction family is one table.

    Returns
    -------
    DataFrame
        Columns ``level``, ``mode``, ``metric``, ``system``, ``n`` (paired classes),
        ``baseline``, ``value``, ``delta``, ``p_value``, ``p_corrected``,
        ``significant``; numeric values (floats), one row per (table, other system).

    Raises
    ------
    EvaluationError
        A baseline that is not a column of the tables, or an unknown test or correction.
    OptionalDependencyError
        ranx is not installed.
    """
    import pandas as pd

    _check_choice(stat_test, STAT_TESTS, "stat_test")
    _check_choice(correction, CORRECTIONS, "correction")
    _check_alpha(alpha)
    rows: list[dict[str, Any]] = []
    for key, table in tables.items():
        if key == "summary":
            continue
        level, mode, metric = ([*key.split("/", 2), "", ""])[:3]
        columns = list(map(str, table.columns))
        if baseline not in columns:
            raise EvaluationError(
                f"baseline {baseline!r} is not a system of table {key!r}: {', '.join(columns)}"
            )
        classes = table.drop(index=MEAN_ROW, errors="ignore")
        row = table.loc[MEAN_ROW] if MEAN_ROW in table.index else classes.mean()
        means = dict(zip(columns, np.asarray(row, dtype=float).tolist(), strict=True))
        base = classes[baseline].to_numpy(dtype=float)
        for system in columns:
            if system == baseline:
                continue
            ours = classes[system].to_numpy(dtype=float)
            both = np.isfinite(base) & np.isfinite(ours)
            rows.append(
                {
                    "level": level,
                    "mode": mode,
                    "metric": metric,
                    "system": system,
                    "n": int(both.sum()),
                    "baseline": means[baseline],
                    "value": means[system],
                    "delta": means[system] - means[baseline],
                    "p_value": paired_p_value(
                        base[both],
                        ours[both],
                        stat_test=stat_test,
                        n_permutations=n_permutations,
                        random_seed=random_seed,
                    ),
                }
            )
    columns = ["level", "mode", "metric"]
    columns += [c for c in COLUMNS if c not in ("metric", "structure")]
    if not rows:
        return pd.DataFrame(columns=columns)
    return _finish(rows, ["level", "mode", "metric"], correction, alpha)[columns]
