"""evaluate(), per-class tables and their Markdown/CSV rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbirlib.errors import EvaluationError, HitsTypeError
from cbirlib.evaluation import (
    MEAN_ROW,
    evaluate,
    format_table,
    per_class_table,
    to_csv,
    to_markdown,
    truth_for,
)
from cbirlib.hits import Hits
from cbirlib.labels import SliceLabels
from cbirlib.metrics import RegionRecall, VolumeRecall
from cbirlib.search import region_query
from cbirlib.truth import Truth
from cbirlib.volume import Volume

NAMES = ("liver", "lung_upper_lobe_left", "lung_lower_lobe_left", "spleen")


def lab(rows: list[list[int]]) -> SliceLabels:
    return SliceLabels(NAMES, np.array(rows, dtype=bool))


# database: a = liver + upper lobe, b = lower lobe + spleen, c = liver only
DATABASE = {
    "a": lab([[1, 1, 0, 0], [1, 0, 0, 0]]),
    "b": lab([[0, 0, 1, 0], [0, 0, 0, 1]]),
    "c": lab([[1, 0, 0, 0]]),
}


def query(qid: str, rows: list[list[int]]) -> Volume:
    return Volume(qid, np.zeros((len(rows), 4, 4), np.float32), labels=lab(rows))


# q1: liver + upper lobe; q2: lower lobe + spleen
QUERIES = [query("q1", [[1, 0, 0, 0], [0, 1, 0, 0]]), query("q2", [[0, 0, 1, 1]])]


def ranking(rankings: dict[str, list[str]]) -> Hits:
    qid = [q for q, vs in rankings.items() for _ in vs]
    vid = [v for vs in rankings.values() for v in vs]
    score = [float(-i) for vs in rankings.values() for i in range(len(vs))]
    return Hits(query_id=qid, volume_id=vid, score=score, level="volume")


SYSTEMS = {
    # top-1: q1 -> a (liver yes, upper lobe yes); q2 -> b (lower lobe yes, spleen yes)
    "good": ranking({"q1": ["a", "b"], "q2": ["b", "a"]}),
    # top-1: q1 -> c (liver yes, upper lobe no); q2 -> a (lower lobe no, spleen no)
    "bad": ranking({"q1": ["c", "a"], "q2": ["a", "b"]}),
}


def test_evaluate_fine_per_structure() -> None:
    res = evaluate(
        SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1), VolumeRecall(2)], granularity="fine"
    )
    assert list(res.columns) == ["system", "metric", "structure", "value", "n"]
    got = res.set_index(["system", "metric", "structure"])["value"]
    assert got[("bad", "volume_recall@1", "liver")] == 1.0
    assert got[("bad", "volume_recall@1", "lung_upper_lobe_left")] == 0.0
    assert got[("bad", "volume_recall@2", "lung_upper_lobe_left")] == 1.0  # a is 2nd
    assert got[("good", "volume_recall@1", "spleen")] == 1.0
    assert (res["n"] == 1).all()  # one query per structure


def test_evaluate_coarse_groups_fine_labels() -> None:
    groups = {
        "liver": "liver",
        "spleen": "spleen",
        "lung_upper_lobe_left": "lung",
        "lung_lower_lobe_left": "lung",
    }
    res = evaluate(
        SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="coarse", groups=groups
    )
    bad = res[res.system == "bad"].set_index("structure")
    # lung: q1 (upper lobe) -> c has no lung: 0; q2 (lower lobe) -> a has lung: 1
    assert bad.loc["lung", "value"] == 0.5 and bad.loc["lung", "n"] == 2
    assert set(bad.index) == {"liver", "lung", "spleen"}


def test_evaluate_default_coarse_grouping_is_the_shipped_one() -> None:
    res = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)])
    assert "lung" in set(res.structure) and "lung_upper_lobe_left" not in set(res.structure)


def test_per_query_matches_aggregate() -> None:
    long = evaluate(
        SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine", per_query=True
    )
    assert {"query_id", "weight"} <= set(long.columns)
    assert len(long) == 2 * 4  # 2 systems x (2 structures per query x 2 queries)
    short = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    t_long = per_class_table(long, "volume_recall@1")
    t_short = per_class_table(short, "volume_recall@1")
    pd.testing.assert_frame_equal(t_long, t_short)


def test_evaluate_runs_retrievers() -> None:
    calls = []

    class Fixed:
        def retrieve(self, queries: list[Volume], *, verbose: bool = False) -> Hits:
            calls.append([q.id for q in queries])
            return SYSTEMS["good"]

    res = evaluate({"fixed": Fixed()}, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")  # type: ignore[dict-item]
    assert calls == [["q1", "q2"]]
    assert (res["value"] == 1.0).all()


def test_region_queries_are_recognised() -> None:
    liver = np.zeros((5, 4, 4), bool)
    liver[1:3] = True
    spleen = np.zeros((5, 4, 4), bool)
    spleen[3:] = True
    masks = {n: np.zeros((5, 4, 4), bool) for n in NAMES}
    vol = Volume(
        "s1",
        np.zeros((5, 4, 4), np.float32),
        labels=SliceLabels.from_masks({**masks, "liver": liver, "spleen": spleen}),
    )
    regions = [region_query(vol, "liver"), region_query(vol, "spleen")]
    truth = truth_for(regions, DATABASE, granularity="fine")
    assert dict(truth.regions) == {"s1:liver": "liver", "s1:spleen": "spleen"}
    hits = ranking({"s1:liver": ["b", "c"], "s1:spleen": ["b"]})
    res = evaluate(
        {"x": hits}, regions, DATABASE, [RegionRecall(), RegionRecall(2)], granularity="fine"
    )
    got = res.set_index(["metric", "structure"])["value"]
    assert got[("region_recall", "liver")] == 0.0  # b has no liver
    assert got[("region_recall@2", "liver")] == 1.0  # c has
    assert got[("region_recall", "spleen")] == 1.0
    assert len(res) == 4  # region queries only for their own structure


def test_per_class_table_layout_and_mean_row() -> None:
    res = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    rows = [*NAMES, "kidney"]
    table = per_class_table(res, "volume_recall@1", structures=rows, systems=["good", "bad"])
    assert table.shape == (len(rows) + 1, 2)
    assert list(table.index) == [*rows, MEAN_ROW]
    assert list(table.columns) == ["good", "bad"]
    assert np.isnan(table.loc["kidney", "bad"])  # no query contains it: NaN, not 0
    # bad per class: liver 1, upper lobe 0, lower lobe 0, spleen 0 -> mean .25, and the
    # sample SD over the 4 classes: sqrt(((.75)^2 + 3 * (.25)^2) / 3) = .5 (population: .433)
    assert table.loc[MEAN_ROW, "bad"] == pytest.approx(0.25)
    assert table.attrs["sd"]["bad"] == pytest.approx(np.std([1, 0, 0, 0], ddof=1))
    assert table.attrs["sd"]["bad"] == pytest.approx(0.5)
    assert table.loc[MEAN_ROW, "good"] == 1.0 and table.attrs["sd"]["good"] == 0.0
    text = format_table(table)
    assert text.loc[MEAN_ROW, "bad"] == ".250 ± .500"
    assert text.loc[MEAN_ROW, "good"] == "1.000 ± .000"
    assert text.loc["kidney", "good"] == "n/a"


def test_markdown_and_csv(tmp_path: Path) -> None:
    res = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    table = per_class_table(res, "volume_recall@1")
    md = to_markdown(table).splitlines()
    assert md[0] == "| structure | good | bad |"
    assert md[1] == "|---|---|---|"
    assert md[-1] == "| mean ± SD | 1.000 ± .000 | .250 ± .500 |"
    assert len(md) == 2 + 4 + 1
    path = to_csv(table, tmp_path / "t.csv", formatted=True)
    back = pd.read_csv(path, index_col=0, dtype=str)
    assert back.loc[MEAN_ROW, "bad"] == ".250 ± .500"
    assert float(back.loc["liver", "bad"]) == 1.0


def test_csv_is_numeric_with_the_number_of_queries(tmp_path: Path) -> None:
    res = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    table = per_class_table(res, "volume_recall@1", structures=[*NAMES, "kidney"])
    back = pd.read_csv(to_csv(table, tmp_path / "t.csv"), index_col=0)
    assert list(back.columns) == ["good", "bad", "n_queries"]
    assert all(back[c].dtype == np.float64 for c in back.columns)  # numbers, not strings
    expected_n = res[res["system"] == "good"].set_index("structure")["n"]
    for structure, n in expected_n.items():
        assert back.loc[structure, "n_queries"] == n
    assert back.loc["kidney", "n_queries"] == 0 and np.isnan(back.loc["kidney", "bad"])
    assert back.loc["mean", "bad"] == pytest.approx(0.25)
    assert back.loc["sd", "bad"] == pytest.approx(0.5)
    assert np.isnan(back.loc["mean", "n_queries"])


def test_errors_name_the_bad_value() -> None:
    with pytest.raises(EvaluationError, match="'medium'"):
        evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="medium")  # type: ignore[arg-type]
    res = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    with pytest.raises(EvaluationError, match="volume_recall@1"):
        per_class_table(res, "recall")
    with pytest.raises(EvaluationError, match="'q1'"):
        evaluate(SYSTEMS, [QUERIES[0], QUERIES[0]], DATABASE, [VolumeRecall(1)])
    unlabelled = Volume("q9", np.zeros((1, 2, 2), np.float32))
    with pytest.raises(EvaluationError, match="'q9'"):
        evaluate(SYSTEMS, [unlabelled], DATABASE, [VolumeRecall(1)])
    with pytest.raises(EvaluationError, match="'x'"):
        evaluate({"x": object()}, QUERIES, DATABASE, [VolumeRecall(1)])  # type: ignore[dict-item]


def _values(res: pd.DataFrame) -> dict[tuple[str, str], tuple[float, int]]:
    return {(r.system, r.structure): (r.value, r.n) for r in res.itertuples()}


def test_truth_object_is_accepted() -> None:
    up, low = "lung_upper_lobe_left", "lung_lower_lobe_left"
    # top-1 by hand (see SYSTEMS): good q1 -> a, q2 -> b; bad q1 -> c, q2 -> a
    expected = {
        ("good", "liver"): (1.0, 1),  # a has liver
        ("good", up): (1.0, 1),  # a has the upper lobe
        ("good", low): (1.0, 1),  # b has the lower lobe
        ("good", "spleen"): (1.0, 1),  # b has the spleen
        ("bad", "liver"): (1.0, 1),  # c has liver
        ("bad", up): (0.0, 1),  # c has no upper lobe
        ("bad", low): (0.0, 1),  # a has no lower lobe
        ("bad", "spleen"): (0.0, 1),  # nor a spleen
    }
    for truth in (Truth(database=DATABASE), DATABASE):
        res = evaluate(SYSTEMS, QUERIES, truth, [VolumeRecall(1)], granularity="fine")
        assert _values(res) == expected, type(truth)
    # query labels held by the Truth win over the query volumes' own: q1 is a spleen query
    truth = Truth(database=DATABASE, queries={"q1": lab([[0, 0, 0, 1], [0, 0, 0, 1]])})
    res = evaluate(SYSTEMS, QUERIES, truth, [VolumeRecall(1)], granularity="fine")
    assert _values(res) == {
        ("good", low): (1.0, 1),  # q2 -> b
        ("good", "spleen"): (0.5, 2),  # q1 -> a: no spleen; q2 -> b: spleen
        ("bad", low): (0.0, 1),  # q2 -> a
        ("bad", "spleen"): (0.0, 2),  # q1 -> c, q2 -> a: neither has a spleen
    }


def test_queries_in_the_database_are_refused() -> None:
    inside = query("a", [[1, 0, 0, 0]])  # 'a' is a database volume
    with pytest.raises(EvaluationError, match=r"'a'.*also in the database.*allow_overlap"):
        evaluate(SYSTEMS, [inside, QUERIES[1]], DATABASE, [VolumeRecall(1)], granularity="fine")
    with pytest.raises(EvaluationError, match="'a'"):
        truth_for([inside], DATABASE)
    # a region query whose source volume is in the database
    region = region_query(
        Volume("c", np.zeros((1, 4, 4), np.float32), labels=DATABASE["c"]), "liver"
    )
    with pytest.raises(EvaluationError, match="'c'"):
        truth_for([region], Truth(database=DATABASE), granularity="fine")
    # explicit opt-out, for a leave-one-out search
    hits = ranking({"a": ["c", "b"]})
    res = evaluate(
        {"loo": hits}, [inside], DATABASE, [VolumeRecall(1)], granularity="fine", allow_overlap=True
    )
    assert res.set_index("structure").loc["liver", "value"] == 1.0


def test_hits_in_a_dataframe_are_refused_with_the_conversion() -> None:
    frames = {name: hits.to_pandas() for name, hits in SYSTEMS.items()}
    with pytest.raises(HitsTypeError, match=r"system 'good' is a DataFrame.*Hits\.from_pandas"):
        evaluate(frames, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")  # type: ignore[arg-type]
    # the conversion the message names gives the same results as the tables themselves
    back = {name: Hits.from_pandas(frame) for name, frame in frames.items()}
    a = evaluate(back, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    b = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    pd.testing.assert_frame_equal(a, b)


def test_a_retriever_that_returns_no_hits_is_named() -> None:
    class Frames:
        def retrieve(self, queries: list[Volume], *, verbose: bool = False) -> pd.DataFrame:
            return SYSTEMS["good"].to_pandas()

    with pytest.raises(HitsTypeError, match=r"results of system 'frames' are a DataFrame"):
        evaluate({"frames": Frames()}, QUERIES, DATABASE, [VolumeRecall(1)])  # type: ignore[dict-item]


def test_level_is_the_deprecated_name_of_granularity() -> None:
    new = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine")
    with pytest.deprecated_call(match=r"evaluate\(granularity=\.\.\.\)"):
        old = evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], level="fine")
    pd.testing.assert_frame_equal(old, new)
    assert "lung_upper_lobe_left" in set(new.structure)  # fine labels, not the default coarse
    with pytest.deprecated_call(match=r"truth_for\(granularity=\.\.\.\)"):
        truth = truth_for(QUERIES, DATABASE, level="fine")
    assert truth == truth_for(QUERIES, DATABASE, granularity="fine")
    with (
        pytest.deprecated_call(),
        pytest.raises(EvaluationError, match="granularity= only"),
    ):
        evaluate(SYSTEMS, QUERIES, DATABASE, [VolumeRecall(1)], granularity="fine", level="coarse")
