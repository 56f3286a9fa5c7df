"""Fusion of volume rankings (:mod:`cbirlib.fusion`), checked against ranx's fusion."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cbirlib import Cutoff, Fuse, Hits, SliceSearch, build_index, evaluate
from cbirlib.datasets import TotalSegmentator, make_phantoms
from cbirlib.errors import CbirError, FusionError, PipelineError
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.fusion import fuse_hits
from cbirlib.hits import LOCALIZATION_COLUMNS
from cbirlib.metrics import VolumeRecall
from cbirlib.pipeline import Pipeline
from cbirlib.presets import default_chain
from cbirlib.volume import Volume

ranx = pytest.importorskip("ranx")
# ranx's numba min-max normalisation warns about its own integer casts
pytestmark = pytest.mark.filterwarnings("ignore:unsafe cast from uint64 to int64")

#: our method name -> (ranx method, ranx normalisation)
RANX = {"rrf": ("rrf", "min-max"), "combsum": ("sum", "min-max")}


def _as_dict(hits: Hits) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for q, v, s in zip(hits.query_id, hits.volume_id, hits.score.tolist(), strict=True):
        out.setdefault(str(q), {})[str(v)] = s
    return out


def _ranx_fuse(runs: list[Hits], method: str) -> dict[str, dict[str, float]]:
    name, norm = RANX[method]
    fused = ranx.fuse(runs=[ranx.Run(_as_dict(r)) for r in runs], method=name, norm=norm)
    return {q: dict(docs) for q, docs in fused.to_dict().items()}


def _assert_same_fusion(ours: Hits, runs: list[Hits], method: str) -> None:
    """Same fused score per (query, volume) as ranx, and ranked by it (ties in any order)."""
    expected = _ranx_fuse(runs, method)
    got = _as_dict(ours)
    assert set(got) == set(expected)
    for q, docs in expected.items():
        assert got[q] == pytest.approx(docs, rel=1e-9, abs=1e-12), q
        part = ours.for_query(q)
        assert part.rank.tolist() == list(range(1, len(part) + 1))
        ranked_ids = [v for v, _ in sorted(docs.items(), key=lambda kv: -kv[1])]
        ours_scores = [docs[v] for v in part.volume_id.tolist()]
        assert ours_scores == pytest.approx([docs[v] for v in ranked_ids], rel=1e-9)


def _random_runs(seed: int, n_runs: int = 3) -> list[Hits]:
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n_runs):
        qid, vid, score = [], [], []
        for q in range(6):
            docs = rng.choice(25, size=int(rng.integers(1, 15)), replace=False)
            qid += [f"q{q}"] * len(docs)
            vid += [f"v{d:02d}" for d in docs]
            score += rng.normal(size=len(docs)).tolist()
        runs.append(Hits(query_id=qid, volume_id=vid, score=score, level="volume"))
    return runs


@pytest.mark.parametrize("method", ["rrf", "combsum"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fusion_of_random_runs_equals_ranx(method: str, seed: int) -> None:
    runs = _random_runs(seed)
    _assert_same_fusion(fuse_hits(runs, method=method), runs, method)


def test_rrf_score_is_the_reciprocal_rank_sum() -> None:
    a = Hits(query_id=["q"] * 3, volume_id=["x", "y", "z"], score=[3.0, 2.0, 1.0], level="volume")
    b = Hits(query_id=["q"] * 2, volume_id=["y", "w"], score=[5.0, 4.0], level="volume")
    fused = fuse_hits([a, b], method="rrf", k=10)
    assert dict(zip(fused.volume_id.tolist(), fused.score.tolist(), strict=True)) == (
        pytest.approx({"y": 1 / 12 + 1 / 11, "x": 1 / 11, "w": 1 / 12, "z": 1 / 13})
    )
    assert fused.volume_id.tolist() == ["y", "x", "w", "z"]


# --- real chains over phantoms --------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("phantoms")
    data = make_phantoms(root, 8, shape=(48, 48), seed=0)
    train = [data.load(s) for s in data.subjects_in("train")]
    queries = [data.load(s) for s in data.subjects_in("test")]
    fine, coarse = BaselineExtractor(), BaselineExtractor(bins=8, grid=4)
    out = tmp_path_factory.mktemp("indexes")
    fine_index = build_index(train, fine, out / "fine", verbose=False)
    coarse_index = build_index(train, coarse, out / "coarse", exact=True, verbose=False)
    return {
        "data": data,
        "queries": queries,
        "a": default_chain(SliceSearch(fine, fine_index, k=50), top=5),
        "b": default_chain(SliceSearch(coarse, coarse_index, k=50), top=5),
    }


@pytest.mark.parametrize("method", ["rrf", "combsum"])
def test_fused_chains_equal_ranx_and_keep_the_best_parts_spans(
    phantom_chains: dict[str, Any], method: str
) -> None:
    a, b, queries = phantom_chains["a"], phantom_chains["b"], phantom_chains["queries"]
    runs = [a.retrieve(queries), b.retrieve(queries)]
    fused = Fuse(a, b, method=method).retrieve(queries)
    assert fused.level == "volume"
    assert fused.query_ids() == [q.id for q in queries]
    _assert_same_fusion(fused, runs, method)
    # the spans of each volume come from the chain that ranks it best (a on equal ranks)
    assert set(LOCALIZATION_COLUMNS) <= set(fused.extra)
    for row in fused.to_records():
        ranks = []
        for i, run in enumerate(runs):
            part = run.for_query(row["query_id"])
            hit = np.flatnonzero(part.volume_id == row["volume_id"])
            if hit.size:
                ranks.append((int(part.rank[hit[0]]), i, part.take(hit).to_records()[0]))
        _, _, source = min(ranks, key=lambda r: r[:2])
        for name in (*LOCALIZATION_COLUMNS, "slice_index"):
            assert row[name] == source[name], name


def test_fusing_a_chain_with_itself_gives_its_ranking(phantom_chains: dict[str, Any]) -> None:
    a, queries = phantom_chains["a"], phantom_chains["queries"]
    alone = a.retrieve(queries)
    for method in ("rrf", "combsum"):
        fused = Fuse(a, a, method=method).retrieve(queries)
        for qid, part in alone.split_by_query():
            got = fused.for_query(qid)
            assert got.volume_id.tolist() == part.ranked().volume_id.tolist(), method
            for name in LOCALIZATION_COLUMNS:
                np.testing.assert_array_equal(got.extra[name], part.ranked().extra[name])


def test_fuse_composes_and_is_evaluated_beside_its_parts(phantom_chains: dict[str, Any]) -> None:
    a, b, queries = phantom_chains["a"], phantom_chains["b"], phantom_chains["queries"]
    data: TotalSegmentator = phantom_chains["data"]
    chain = Fuse(a, b) >> Cutoff(2)
    assert isinstance(chain, Pipeline) and repr(chain).startswith("Fuse((SliceSearch(k=50)")
    hits = chain.retrieve(queries)
    assert max(len(part) for _, part in hits.split_by_query()) == 2
    truth = {s: data.labels(s) for s in data.subjects_in("train")}
    table = evaluate({"a": a, "b": b, "fused": chain}, queries, truth, [VolumeRecall(1)])
    assert set(table["system"]) == {"a", "b", "fused"}
    assert table["value"].between(0, 1).all()


# --- bad input --------------------------------------------------------------------------


def test_bad_input_raises_named_errors(phantom_chains: dict[str, Any]) -> None:
    a, b = phantom_chains["a"], phantom_chains["b"]
    with pytest.raises(FusionError, match="at least one chain"):
        Fuse()
    with pytest.raises(FusionError, match="unknown fusion method 'borda'"):
        Fuse(a, b, method="borda")
    with pytest.raises(FusionError, match="k must be"):
        Fuse(a, b, k=-1)
    with pytest.raises(FusionError, match="slice-level"):
        Fuse(a, a.stages[0])
    with pytest.raises(FusionError, match="not a retriever"):
        Fuse(a, "chain")  # type: ignore[arg-type]
    with pytest.raises(FusionError, match="cannot retrieve"):
        Fuse(a, Pipeline(a.stages[1:]))
    runs = _random_runs(0, n_runs=2)
    other = Hits(query_id=["elsewhere"], volume_id=["v01"], score=[1.0], level="volume")
    with pytest.raises(FusionError, match="other queries"):
        fuse_hits([runs[0], Hits.concat([runs[1], other])])
    with pytest.raises(FusionError, match="other queries"):
        fuse_hits([runs[0], runs[1].take(runs[1].query_id != "q0")])
    with pytest.raises(FusionError, match="at least one ranking"):
        fuse_hits([])
    slices = Hits(query_id=["q0"], volume_id=["v01"], score=[1.0])
    with pytest.raises(FusionError, match="volume-level"):
        fuse_hits([runs[0], slices])
    query: Volume = phantom_chains["queries"][0]
    with pytest.raises(PipelineError, match="precomputed embeddings"):
        Fuse(a, b).retrieve(query, embeddings={query.id: np.zeros((query.n_slices, 4))})
    assert issubclass(FusionError, CbirError) and issubclass(FusionError, ValueError)


def test_a_chain_may_find_nothing_for_a_query() -> None:
    runs = _random_runs(3, n_runs=2)
    fused = fuse_hits(
        [runs[0], runs[1].take(runs[1].query_id != "q0")], queries=runs[0].query_ids()
    )
    np.testing.assert_array_equal(
        fused.for_query("q0").volume_id, fuse_hits([runs[0]]).for_query("q0").volume_id
    )
