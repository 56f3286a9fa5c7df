"""Deltas against a baseline and paired tests (:mod:`cbirlib.significance`), checked with ranx."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cbirlib import SliceSearch, build_index, evaluate
from cbirlib.datasets import make_phantoms
from cbirlib.errors import EvaluationError
from cbirlib.evaluation import per_class_table, truth_for
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.metrics import NDCG, AveragePrecision
from cbirlib.presets import default_chain
from cbirlib.significance import (
    OVERALL,
    adjust_p_values,
    compare_tables,
    compare_to_baseline,
    paired_p_value,
)

ranx = pytest.importorskip("ranx")
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*unsafe cast:Warning"),
    # ranx's own deprecations (not ours: pandas' are errors, as everywhere)
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ranx.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:numba.*"),
]

#: our metric -> ranx's name of the same metric
METRICS = {"ap": (AveragePrecision(), "map"), "ndcg@5": (NDCG(5), "ndcg@5")}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two real chains over phantoms (count votes, and MaxSim re-ranking), evaluated per query."""
    root = tmp_path_factory.mktemp("phantoms")
    data = make_phantoms(root, 12, shape=(48, 48), seed=1)
    database = list(data.subjects_in("train")) + list(data.subjects_in("val"))
    train = [data.load(s) for s in database]
    queries = [data.load(s) for s in data.subjects_in("test")]
    extractor = BaselineExtractor(bins=8, grid=4)
    index = build_index(train, extractor, tmp_path_factory.mktemp("index"), verbose=False)
    search = SliceSearch(extractor, index, k=30)
    chains = {
        "votes": default_chain(search, top=5, rerank=False),
        "maxsim": default_chain(search, top=5, rerank=True),
    }
    hits = {name: chain.retrieve(queries) for name, chain in chains.items()}
    labels = {s: data.labels(s) for s in database}
    metrics = [m for m, _ in METRICS.values()]
    per_query = evaluate(hits, queries, labels, metrics, per_query=True)
    per_structure = evaluate(hits, queries, labels, metrics)
    truth = truth_for(queries, labels)
    return {"hits": hits, "per_query": per_query, "per_structure": per_structure, "truth": truth}


def _ranx_p_values(
    study: dict[str, Any], keys: list[tuple[str, str]], stat_test: str
) -> dict[str, float]:
    """``ranx.compare`` of the two chains on the (query, structure) pairs ``keys``."""
    truth = study["truth"]
    runs = []
    for name in ("votes", "maxsim"):
        run: dict[str, dict[str, float]] = {}
        for q, c in keys:
            part = study["hits"][name].for_query(q).ranked()
            # 1 / rank: the chain's own order, ties and all
            run[f"{q}|{c}"] = {
                str(v): 1.0 / int(r) for v, r in zip(part.volume_id, part.rank, strict=True)
            }
        runs.append(ranx.Run(run, name=name))
    qrels = {
        f"{q}|{c}": {v: 1 for v in truth.database if truth.volume_contains(v, c)} for q, c in keys
    }
    report = ranx.compare(
        ranx.Qrels(qrels), runs, [n for _, n in METRICS.values()], stat_test=stat_test
    )
    pair = report.comparisons[frozenset(("votes", "maxsim"))]
    return {ours: float(pair[theirs]["p_value"]) for ours, (_, theirs) in METRICS.items()}


def _keys(per_query: pd.DataFrame, structure: str | None = None) -> list[tuple[str, str]]:
    rows = per_query[(per_query.system == "votes") & (per_query.metric == "ap")]
    rows = rows[rows.value.notna()]
    if structure is not None:
        rows = rows[rows.structure == structure]
    return list(zip(rows.query_id, rows.structure, strict=True))


def test_overall_deltas_and_p_values_equal_ranx_compare(study: dict[str, Any]) -> None:
    per_query = study["per_query"]
    keys = _keys(per_query)
    assert len(keys) >= 10
    for stat_test in ("student", "fisher"):
        table = compare_to_baseline(per_query, "votes", by=None, stat_test=stat_test)
        assert set(table.system) == {"maxsim"} and set(table.structure) == {OVERALL}
        theirs = _ranx_p_values(study, keys, stat_test)
        for row in table.itertuples():
            # ranx's mean over the pairs is the weighted mean here (every weight is 1)
            values = per_query[per_query.metric == row.metric].dropna(subset=["value"])
            means = values.groupby("system")["value"].mean()
            assert row.delta == pytest.approx(means["maxsim"] - means["votes"], abs=1e-12)
            assert row.n == len(keys)
            if stat_test == "student":
                assert row.p_value == pytest.approx(theirs[row.metric], rel=1e-9)
            else:  # Monte Carlo over 1000 permutations, drawn in ranx's own pair order
                assert abs(row.p_value - theirs[row.metric]) <= 0.02, row.metric
            assert bool(row.significant) == (row.p_value <= 0.05)


def test_per_structure_deltas_are_the_difference_of_the_evaluated_metrics(
    study: dict[str, Any],
) -> None:
    per_query, per_structure = study["per_query"], study["per_structure"]
    table = compare_to_baseline(per_query, "votes")
    wide = per_structure.pivot_table(
        index=["metric", "structure"], columns="system", values="value"
    )
    assert len(table) == len(wide.dropna()) > 5
    for row in table.itertuples():
        expected = wide.loc[(row.metric, row.structure)]
        assert row.baseline == pytest.approx(expected["votes"], abs=1e-12)
        assert row.value == pytest.approx(expected["maxsim"], abs=1e-12)
        assert row.delta == pytest.approx(expected["maxsim"] - expected["votes"], abs=1e-12)
    # the p-values of a structure are ranx's on that structure's queries
    checked = 0
    for structure in sorted(set(table.structure)):
        keys = _keys(per_query, structure)
        mine = table[table.structure == structure].set_index("metric")["p_value"]
        if len(keys) < 2 or mine.isna().any() or (mine == 1.0).any():
            continue  # too few queries, or identical values (ranx: NaN, ours: 1)
        theirs = _ranx_p_values(study, keys, "student")
        for metric, p in mine.items():
            assert p == pytest.approx(theirs[str(metric)], rel=1e-9), (structure, metric)
        checked += 1
    assert checked >= 1


def test_a_system_compared_with_itself_has_delta_zero_and_is_not_significant(
    study: dict[str, Any],
) -> None:
    per_query = study["per_query"]
    votes = per_query[per_query.system == "votes"]
    twins = pd.concat([votes, votes.assign(system="votes again")], ignore_index=True)
    for by in ("structure", None):
        for stat_test in ("student", "fisher"):
            table = compare_to_baseline(twins, "votes", by=by, stat_test=stat_test)  # type: ignore[arg-type]
            assert len(table) > 0 and set(table.system) == {"votes again"}
            assert (table.delta == 0).all()
            assert (table.p_value[table.n >= 2] == 1.0).all()
            assert not table.significant.any()


def test_corrections_adjust_within_each_metric(study: dict[str, Any]) -> None:
    raw = compare_to_baseline(study["per_query"], "votes")
    holm = compare_to_baseline(study["per_query"], "votes", correction="holm")
    bonf = compare_to_baseline(study["per_query"], "votes", correction="bonferroni")
    pd.testing.assert_series_equal(raw.p_value, holm.p_value)
    for metric, group in raw.groupby("metric"):
        m = int(group.p_value.notna().sum())
        expected = np.minimum(1.0, group.p_value * m)
        np.testing.assert_allclose(bonf.loc[group.index, "p_corrected"], expected)
        assert (holm.loc[group.index, "p_corrected"] <= expected + 1e-15).all(), metric
        assert (holm.loc[group.index, "p_corrected"] >= group.p_value - 1e-15).all(), metric


def test_compare_tables_pairs_the_structures_of_per_class_tables(study: dict[str, Any]) -> None:
    per_structure = study["per_structure"]
    tables = {f"coarse/volume/{m}": per_class_table(per_structure, m) for m in ("ap", "ndcg@5")}
    got = compare_tables(tables, "votes")
    assert list(got.metric) == ["ap", "ndcg@5"] and set(got.system) == {"maxsim"}
    for row in got.itertuples():
        table = tables[f"{row.level}/{row.mode}/{row.metric}"].iloc[:-1]  # without the mean row
        paired = table.dropna()
        assert row.n == len(paired)
        assert row.delta == pytest.approx(table.maxsim.mean() - table.votes.mean(), abs=1e-12)
        _, p = __import__("scipy.stats").stats.ttest_rel(paired.votes, paired.maxsim)
        assert row.p_value == pytest.approx(p, rel=1e-9)


def test_helpers_and_bad_input(study: dict[str, Any]) -> None:
    assert adjust_p_values([0.01, 0.04, 0.03], "holm").tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert paired_p_value([0.1, 0.5], [0.1, 0.5]) == 1.0
    assert math.isnan(paired_p_value([0.1], [0.9]))
    per_query = study["per_query"]
    with pytest.raises(EvaluationError, match="'nobody' is not among the systems: votes, maxsim"):
        compare_to_baseline(per_query, "nobody")
    with pytest.raises(EvaluationError, match="per-query results"):
        compare_to_baseline(study["per_structure"], "votes")
    with pytest.raises(EvaluationError, match="unknown stat_test 'tukey'"):
        compare_to_baseline(per_query, "votes", stat_test="tukey")  # type: ignore[arg-type]
    with pytest.raises(EvaluationError, match="unknown correction"):
        compare_to_baseline(per_query, "votes", correction="fdr")  # type: ignore[arg-type]
    with pytest.raises(EvaluationError, match="alpha"):
        compare_to_baseline(per_query, "votes", alpha=5)
    fewer = per_query.drop(per_query.index[(per_query.system == "maxsim")][:1])
    with pytest.raises(EvaluationError, match="different \\(query, structure\\) pairs"):
        compare_to_baseline(fewer, "votes")
    with pytest.raises(EvaluationError, match="of one length"):
        paired_p_value([0.1, 0.2], [0.1])
