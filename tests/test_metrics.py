"""Metrics of the study on tiny hand-made cases (expected values computed by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cbirlib.errors import EvaluationError
from cbirlib.hits import Hits
from cbirlib.labels import SliceLabels
from cbirlib.metrics import (
    NDCG,
    AveragePrecision,
    LocalizationRatio,
    LocalizedRecall,
    RegionRecall,
    SliceRecall,
    Truth,
    VolumeRecall,
    aggregate,
    default_metrics,
)

NAMES = ("liver", "lung", "heart", "kidney")


def lab(**cols: list[int]) -> SliceLabels:
    """Labels over NAMES from per-structure columns (missing structures absent)."""
    n = len(next(iter(cols.values())))
    present = np.zeros((n, len(NAMES)), bool)
    for j, name in enumerate(NAMES):
        present[:, j] = cols.get(name, [0] * n)
    return SliceLabels(NAMES, present)


# database: which slices hold which structure
#   a: liver [1,1,0,0]  lung [0,0,1,1]  heart [0,0,0,1]
#   b: liver none       lung [1,1,1]    heart [0,1,0]
#   c: liver [1,0]      nothing else
DATABASE = {
    "a": lab(liver=[1, 1, 0, 0], lung=[0, 0, 1, 1], heart=[0, 0, 0, 1]),
    "b": lab(lung=[1, 1, 1], heart=[0, 1, 0]),
    "c": lab(liver=[1, 0]),
}
# volume queries
#   q1: liver [1,1,0]  lung [0,1,1]
#   q2: liver [1,1,1]  heart [1,0,0]
QUERIES = {
    "q1": lab(liver=[1, 1, 0], lung=[0, 1, 1]),
    "q2": lab(liver=[1, 1, 1], heart=[1, 0, 0]),
}


@pytest.fixture
def truth() -> Truth:
    return Truth(database=DATABASE, queries=QUERIES)


def volume_hits(rankings: dict[str, list[str]], **extra: list[float]) -> Hits:
    qid, vid, score = [], [], []
    for q, vols in rankings.items():
        for i, v in enumerate(vols):
            qid.append(q)
            vid.append(v)
            score.append(10.0 - i)
    return Hits(
        query_id=qid,
        volume_id=vid,
        score=score,
        level="volume",
        extra={k: np.asarray(v, float) for k, v in extra.items()},
    )


def per_structure(values: pd.DataFrame) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in aggregate(values)["value"].items()}


def test_slice_recall_pools_query_slices(truth: Truth) -> None:
    # (query, query slice) -> (volume, slice); rank 2 rows must be ignored
    top1 = {
        ("q1", 0): ("a", 0),  # liver: a[0] has liver -> hit
        ("q1", 1): ("b", 1),  # liver: miss (b has no liver); lung: b[1] lung -> hit
        ("q1", 2): ("a", 3),  # lung: a[3] lung -> hit
        ("q2", 0): ("c", 0),  # liver: hit; heart: c[0] no heart -> miss
        ("q2", 1): ("c", 1),  # liver: c[1] no liver -> miss
        ("q2", 2): ("c", 0),  # liver: hit
    }
    rows = []
    for (q, t), (v, s) in top1.items():
        rows.append((q, t, v, s, 0.9))
        rows.append((q, t, "a", 1, 0.1))  # a worse second neighbour (a[1] has liver)
    hits = Hits(
        query_id=[r[0] for r in rows],
        query_slice=[r[1] for r in rows],
        volume_id=[r[2] for r in rows],
        slice_index=[r[3] for r in rows],
        score=[r[4] for r in rows],
        level="slice",
    )
    values = SliceRecall().compute(hits, truth)
    q1 = values[values.query_id == "q1"].set_index("structure")
    assert q1.loc["liver", "value"] == 0.5 and q1.loc["liver", "weight"] == 2
    # pooled: liver (1 + 2) / (2 + 3) = 0.6 (not the mean of 1/2 and 2/3); lung 2/2; heart 0/1
    assert per_structure(values) == {"heart": 0.0, "liver": 0.6, "lung": 1.0}


def test_slice_recall_with_query_sampling(truth: Truth) -> None:
    # only q1 slices 0 and 2 were searched (query_stride=2); q2 has no hits at all
    hits = Hits(
        query_id=["q1", "q1"],
        query_slice=[0, 2],
        volume_id=["b", "a"],
        slice_index=[0, 2],
        score=[1.0, 1.0],
        level="slice",
    )
    values = SliceRecall().compute(hits, truth).set_index(["query_id", "structure"])
    # q1 liver: searched slices with liver = {0}; b[0] has no liver -> 0/1
    assert (values.loc[("q1", "liver"), "value"], values.loc[("q1", "liver"), "weight"]) == (0, 1)
    # q1 lung: searched slices with lung = {2}; a[2] has lung -> 1/1
    assert (values.loc[("q1", "lung"), "value"], values.loc[("q1", "lung"), "weight"]) == (1, 1)
    # q2 retrieved nothing: all 3 liver slices are misses
    assert (values.loc[("q2", "liver"), "value"], values.loc[("q2", "liver"), "weight"]) == (0, 3)


def test_volume_recall_at_k(truth: Truth) -> None:
    hits = volume_hits({"q1": ["b", "a", "c"], "q2": ["c", "a", "b"]})
    # @1: q1 top b: liver no, lung yes; q2 top c: liver yes, heart no
    assert per_structure(VolumeRecall(1).compute(hits, truth)) == {
        "heart": 0.0,
        "liver": 0.5,
        "lung": 1.0,
    }
    # @2: q1 liver found at a; q2 heart found at a ("at least one of the top k")
    assert per_structure(VolumeRecall(2).compute(hits, truth)) == {
        "heart": 1.0,
        "liver": 1.0,
        "lung": 1.0,
    }


def test_structures_absent_from_queries_are_not_reported(truth: Truth) -> None:
    hits = volume_hits({"q1": ["b"], "q2": ["c"]})
    out = aggregate(VolumeRecall(1).compute(hits, truth))
    assert "kidney" not in out.index  # never 0 for a structure no query contains


def test_query_without_hits_is_a_miss(truth: Truth) -> None:
    hits = volume_hits({"q1": ["a"]})  # q2 retrieved nothing
    values = VolumeRecall(1).compute(hits, truth).set_index(["query_id", "structure"])
    assert values.loc[("q2", "liver"), "value"] == 0.0
    assert values.loc[("q1", "liver"), "value"] == 1.0


def test_average_precision_and_ndcg_by_hand(truth: Truth) -> None:
    hits = volume_hits({"q1": ["b", "a", "c"], "q2": ["c", "a", "b"]})
    # relevant volumes: liver {a, c}, lung {a, b}, heart {a, b}  (R = 2 each)
    ap = AveragePrecision().compute(hits, truth).set_index(["query_id", "structure"])["value"]
    assert ap[("q1", "liver")] == pytest.approx((1 / 2 + 2 / 3) / 2)  # rel 0,1,1
    assert ap[("q1", "lung")] == pytest.approx(1.0)  # rel 1,1,0
    assert ap[("q2", "heart")] == pytest.approx((1 / 2 + 2 / 3) / 2)
    nd = NDCG(2).compute(hits, truth).set_index(["query_id", "structure"])["value"]
    # q1 liver: rel 0,1 -> (1/log2 3) / (1 + 1/log2 3)
    assert nd[("q1", "liver")] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert nd[("q2", "liver")] == pytest.approx(1.0)


def test_ranking_metrics_nan_without_relevant_volumes() -> None:
    truth = Truth(database={"b": DATABASE["b"]}, queries={"q": lab(liver=[1])})
    hits = volume_hits({"q": ["b"]})
    assert np.isnan(AveragePrecision().compute(hits, truth)["value"]).all()
    assert aggregate(NDCG(5).compute(hits, truth))["value"].isna().all()


REGIONS = {"r1": "liver", "r2": "heart", "r3": "heart", "r4": "lung"}


@pytest.fixture
def region_truth() -> Truth:
    queries = {r: lab(**{c: [1]}) for r, c in REGIONS.items()}
    return Truth(database=DATABASE, queries=queries, regions=REGIONS)


@pytest.fixture
def region_hits() -> Hits:
    # r1 -> a span [0, 2]: a has liver on 0,1 -> contains, overlaps, ratio 2/3
    # r2 -> c span [0, 1]: c has no heart -> miss everywhere, ratio 0
    # r3 -> a span [0, 2]: a has heart only on slice 3 -> contains, no overlap, ratio 0
    # r4 -> b span [1, 1]: b has lung there -> contains, overlaps, ratio 1
    return Hits(
        query_id=["r1", "r1", "r2", "r3", "r4"],
        volume_id=["a", "b", "c", "a", "b"],
        score=[2.0, 1.0, 1.0, 1.0, 1.0],
        level="volume",
        extra={
            "loc_first": np.array([0, 0, 0, 0, 1]),
            "loc_last": np.array([2, 2, 1, 2, 1]),
        },
    )


def test_region_metrics_by_hand(region_truth: Truth, region_hits: Hits) -> None:
    assert per_structure(RegionRecall().compute(region_hits, region_truth)) == {
        "heart": 0.5,
        "liver": 1.0,
        "lung": 1.0,
    }
    assert per_structure(LocalizedRecall().compute(region_hits, region_truth)) == {
        "heart": 0.0,
        "liver": 1.0,
        "lung": 1.0,
    }
    assert per_structure(LocalizationRatio().compute(region_hits, region_truth)) == {
        "heart": 0.0,
        "liver": round(2 / 3, 6),
        "lung": 1.0,
    }


def test_region_recall_ignores_volume_queries(region_truth: Truth, region_hits: Hits) -> None:
    truth = Truth(
        database=DATABASE,
        queries={**region_truth.queries, **QUERIES},
        regions=REGIONS,
    )
    hits = Hits.concat([region_hits.take(np.arange(len(region_hits))), region_hits])
    values = RegionRecall().compute(hits, truth)
    assert set(values.query_id) == set(REGIONS)


def test_localized_metrics_need_localization_columns(region_truth: Truth) -> None:
    hits = volume_hits({"r1": ["a"]})
    with pytest.raises(EvaluationError, match="Localize"):
        LocalizedRecall().compute(hits, region_truth)


def test_level_mismatch_is_a_named_error(truth: Truth) -> None:
    slice_hits = Hits(query_id=["q1"], volume_id=["a"], score=[1.0], query_slice=[0])
    with pytest.raises(EvaluationError, match="volume-level"):
        VolumeRecall().compute(slice_hits, truth)
    with pytest.raises(EvaluationError, match="slice-level"):
        SliceRecall().compute(volume_hits({"q1": ["a"]}), truth)


def test_unknown_retrieved_volume_is_a_named_error(truth: Truth) -> None:
    with pytest.raises(EvaluationError, match="'zz'"):
        VolumeRecall().compute(volume_hits({"q1": ["zz"]}), truth)


def test_coarse_grouping_of_truth(truth: Truth) -> None:
    coarse = truth.grouped({"liver": "abdomen", "kidney": "abdomen", "lung": "thorax"})
    hits = volume_hits({"q1": ["b"], "q2": ["b"]})
    # q1 abdomen (liver) -> b none: 0; thorax (lung) -> b: 1; q2 abdomen -> 0; heart dropped
    assert per_structure(VolumeRecall().compute(hits, coarse)) == {"abdomen": 0.0, "thorax": 1.0}


def test_default_metrics_unknown_mode() -> None:
    with pytest.raises(EvaluationError, match="'volume'"):
        default_metrics("volumes")


@pytest.mark.filterwarnings("ignore:.*unsafe cast:Warning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ap_and_ndcg_agree_with_ranx() -> None:
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(7)
    names = ("s0", "s1", "s2", "s3")
    database = {f"v{i}": SliceLabels(names, rng.random((5, 4)) < 0.15) for i in range(15)}
    queries = {f"q{i}": SliceLabels(names, rng.random((4, 4)) < 0.3) for i in range(6)}
    truth = Truth(database=database, queries=queries)
    qid, vid, score = [], [], []
    for q in queries:
        chosen = rng.choice(sorted(database), size=int(rng.integers(3, 12)), replace=False)
        qid += [q] * len(chosen)
        vid += list(chosen)
        score += list(rng.random(len(chosen)))
    hits = Hits(query_id=qid, volume_id=vid, score=score, level="volume")

    ours = {}
    for metric, ranx_name in ((AveragePrecision(), "map"), (NDCG(5), "ndcg@5")):
        values = metric.compute(hits, truth).dropna(subset=["value"])
        ours[ranx_name] = {
            f"{q}|{c}": v for q, c, v in values[["query_id", "structure", "value"]].values
        }
    keys = sorted(ours["map"])
    assert len(keys) >= 8
    qrels = {
        key: {v: 1 for v in database if truth.volume_contains(v, key.split("|")[1])} for key in keys
    }
    frame = hits.to_pandas()
    run = {
        key: {
            str(v): float(s)
            for v, s in frame[frame.query_id == key.split("|")[0]][["volume_id", "score"]].values
        }
        for key in keys
    }
    run_obj = ranx.Run(run)
    ranx.evaluate(ranx.Qrels(qrels), run_obj, ["map", "ndcg@5"])
    for name in ("map", "ndcg@5"):
        theirs = {k: float(v) for k, v in run_obj.scores[name].items()}
        assert theirs == pytest.approx(ours[name], abs=1e-9), name


def test_slice_recall_truth_of_the_wrong_length_is_named(truth: Truth) -> None:
    def slice_hits(query_slice: int, volume: str, slice_index: int) -> Hits:
        return Hits(
            query_id=["q1"],
            query_slice=[query_slice],
            volume_id=[volume],
            slice_index=[slice_index],
            score=[1.0],
            level="slice",
        )

    # database volume 'c' has 2 labelled slices; a hit on its slice 5 cannot be judged
    with pytest.raises(EvaluationError, match=r"database volume 'c'.*slice 5.*2 slices"):
        SliceRecall().compute(slice_hits(0, "c", 5), truth)
    # query 'q1' has 3 labelled slices; a hit for its slice 7
    with pytest.raises(EvaluationError, match=r"query 'q1'.*slice 7.*3 slices"):
        SliceRecall().compute(slice_hits(7, "a", 0), truth)


@pytest.mark.parametrize("metric", [AveragePrecision(k=0), NDCG(k=0), AveragePrecision(k=-2)])
def test_ranking_metrics_need_k_of_at_least_one(
    truth: Truth, metric: AveragePrecision | NDCG
) -> None:
    with pytest.raises(EvaluationError, match="k must be"):
        metric.compute(volume_hits({"q1": ["a"]}), truth)


# --- the metrics on a phantom chain, against the pandas computation they replaced ---------


def _pandas_ranked(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Volume hits per query as the pandas path did it: by rank, then score, one per volume."""
    frame = frame.sort_values(["query_id", "rank", "score"], ascending=[True, True, False])
    frame = frame.drop_duplicates(["query_id", "volume_id"], keep="first")
    return {str(q): g.reset_index(drop=True) for q, g in frame.groupby("query_id")}


def _pandas_values(metric: object, frame: pd.DataFrame, truth: Truth) -> pd.DataFrame:
    """Per-(query, structure) values of ``metric`` from a DataFrame of hits, with pandas."""
    qids = sorted(set(frame["query_id"]) | set(truth.queries) | set(truth.regions))
    has = {v: lab.volume_structures() for v, lab in truth.database.items()}
    rows: list[tuple[str, str, float, float]] = []
    if isinstance(metric, SliceRecall):
        top = frame.sort_values(
            ["query_id", "query_slice", "score", "rank"], ascending=[True, True, False, True]
        ).drop_duplicates(["query_id", "query_slice"], keep="first")
        for qid in qids:
            if qid in truth.regions:
                continue
            labels, mine = truth.queries[qid], top[top["query_id"] == qid]
            got = {
                int(t): (v, int(s))
                for t, v, s in mine[["query_slice", "volume_id", "slice_index"]].values
            }
            for c in sorted(labels.volume_structures()):
                slices = labels.slices_with(c)
                if got:
                    slices = np.intersect1d(slices, sorted(got))
                    if not slices.size:
                        continue
                found = 0
                for t in slices.tolist():
                    if t in got:
                        db = truth.database[got[t][0]]
                        found += bool(c in db.names and db.present[got[t][1], db.column(c)])
                rows.append((qid, c, found / slices.size, float(slices.size)))
    else:
        ranked = _pandas_ranked(frame)
        for qid in qids:
            regional = qid in truth.regions
            if not regional and isinstance(
                metric, RegionRecall | LocalizedRecall | LocalizationRatio
            ):
                continue
            g = ranked.get(qid, frame.iloc[:0])
            vols = list(g["volume_id"])
            wanted = {truth.regions[qid]} if regional else truth.queries[qid].volume_structures()
            for c in sorted(wanted):
                rel = np.array([c in has[v] for v in vols], dtype=float)
                n_rel = sum(c in s for s in has.values())
                if isinstance(metric, VolumeRecall | RegionRecall):
                    value = float(rel[: metric.k].any())
                elif isinstance(metric, AveragePrecision):
                    cut = rel[: metric.k]
                    prec = np.cumsum(cut) / np.arange(1, cut.size + 1)
                    value = float((prec * cut).sum() / n_rel) if n_rel else math.nan
                elif isinstance(metric, NDCG):
                    disc = 1.0 / np.log2(np.arange(2, metric.k + 2))
                    cut = rel[: metric.k]
                    dcg, ideal = (cut * disc[: cut.size]).sum(), disc[: min(n_rel, metric.k)].sum()
                    value = float(dcg / ideal) if n_rel else math.nan
                else:  # LocalizedRecall, LocalizationRatio: the top-1 volume's span
                    value = 0.0
                    if len(g):
                        lab_ = truth.database[str(g["volume_id"].iloc[0])]
                        first, last = g["loc_first"].iloc[0], g["loc_last"].iloc[0]
                        if c in lab_.names and 0 <= first <= last:
                            span = lab_.present[int(first) : int(last) + 1, lab_.column(c)]
                            ok = isinstance(metric, LocalizedRecall)
                            value = float(span.any()) if ok else float(span.mean())
                rows.append((qid, c, value, 1.0))
    return pd.DataFrame(rows, columns=["query_id", "structure", "value", "weight"])


@pytest.fixture(scope="module")
def phantom_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Hits], Truth]:
    """Slice, volume and localized region hits of the default chain on 7 small phantoms."""
    from functools import partial

    from cbirlib.aggregate import CountVotes
    from cbirlib.datasets import TotalSegmentator, make_phantoms
    from cbirlib.evaluation import truth_for
    from cbirlib.index.build import build_index
    from cbirlib.plugins import create_extractor
    from cbirlib.presets import default_chain
    from cbirlib.search import SliceSearch, region_query
    from cbirlib.structures import COARSE_GROUPS

    root = tmp_path_factory.mktemp("phantoms")
    make_phantoms(root, 7, shape=(32, 32), seed=5)
    data = TotalSegmentator(root)
    query_ids, db_ids = data.subjects[-2:], data.subjects[:-2]
    extractor = create_extractor("baseline")
    sources = [(s, partial(data.load, s, labels=False)) for s in db_ids]
    index = build_index(sources, extractor, root / "index", exact=True, verbose=False)
    queries = [data.load(s) for s in query_ids]
    regions = [
        region_query(q, c, groups=COARSE_GROUPS)
        for q in queries
        for c in sorted(q.labels.grouped(COARSE_GROUPS).volume_structures())  # type: ignore[union-attr]
    ]
    search = SliceSearch(extractor, index, k=30)
    hits = {
        "slice": search.retrieve(queries),
        "volume": (search >> CountVotes()).retrieve(queries),
        "region": default_chain(search, top=4).retrieve(regions),
    }
    truth = truth_for([*queries, *regions], {s: data.labels(s) for s in db_ids}, granularity="fine")
    return hits, truth


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "metric"),
    [
        ("slice", SliceRecall()),
        *(("volume", m) for m in default_metrics("volume")),
        ("volume", AveragePrecision(k=3)),
        *(("region", m) for m in (*default_metrics("region"), *default_metrics("localized"))),
        ("region", RegionRecall(k=2)),
    ],
    ids=lambda x: x if isinstance(x, str) else x.name,
)
def test_metrics_on_hits_match_the_pandas_computation(
    phantom_runs: tuple[dict[str, Hits], Truth], kind: str, metric: object
) -> None:
    runs, truth = phantom_runs
    hits = runs[kind]
    # rows in a scrambled order, and one query without any hit (a miss on everything)
    rng = np.random.default_rng(0)
    dropped = hits.query_ids()[0]
    shuffled = hits.take(rng.permutation(len(hits)))
    shuffled = shuffled.take(shuffled.query_id != dropped)
    for table in (hits, shuffled):
        ours = metric.compute(table, truth)  # type: ignore[attr-defined]
        theirs = _pandas_values(metric, table.to_pandas(), truth)
        assert len(ours) > 0 and ours["value"].notna().any()
        key = ["query_id", "structure"]
        pd.testing.assert_frame_equal(
            ours.sort_values(key).reset_index(drop=True),
            theirs.sort_values(key).reset_index(drop=True),
            check_dtype=False,
            rtol=1e-12,
        )
    assert dropped in set(metric.compute(shuffled, truth)["query_id"])  # type: ignore[attr-defined]


def test_a_dataframe_is_refused_with_the_conversion(truth: Truth) -> None:
    from cbirlib.errors import HitsTypeError

    frame = volume_hits({"q1": ["a"]}).to_pandas()
    with pytest.raises(HitsTypeError, match=r"Hits\.from_pandas"):
        VolumeRecall().compute(frame, truth)  # type: ignore[arg-type]
    with pytest.raises(HitsTypeError, match=r"Hits\.from_pandas"):
        SliceRecall().compute(frame, truth)  # type: ignore[arg-type]
    back = VolumeRecall().compute(Hits.from_pandas(frame), truth)
    # q1 -> a: a has q1's liver and lung; q2 retrieved nothing: a miss on liver and heart
    assert back.set_index(["query_id", "structure"])["value"].to_dict() == {
        ("q1", "liver"): 1.0,
        ("q1", "lung"): 1.0,
        ("q2", "heart"): 0.0,
        ("q2", "liver"): 0.0,
    }
