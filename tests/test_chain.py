"""Tests of the retrieval stages: votes, top slice, MaxSim, localization, region queries,
and an end-to-end chain over the real indexes."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cbirlib.aggregate import CountVotes, TopSlice
from cbirlib.errors import (
    CbirError,
    DimensionMismatchError,
    EvaluationError,
    ExtractorMismatchError,
    PipelineError,
    UnknownStructureError,
)
from cbirlib.hits import LOCALIZATION_COLUMNS, Hits
from cbirlib.index import ExactIndex, ExtractorMismatchWarning, SliceIndex
from cbirlib.localize import Localize, matched_span
from cbirlib.pipeline import Cutoff, SearchContext
from cbirlib.rerank import MaxSimRerank, maxsim_scores
from cbirlib.search import RegionVolume, SliceSearch, region_query
from cbirlib.volume import Volume
from tests.fakes import DIM, PositionExtractor, body_volume, build, position_embedding

# --- CountVotes / TopSlice -------------------------------------------------------------


def votes_input() -> Hits:
    # q: 5 slice hits; 'a' twice (0.9+0.1), 'b' twice (0.6+0.5), 'c' once (0.95)
    return Hits(
        query_id=["q"] * 5 + ["r"],
        volume_id=["a", "b", "c", "a", "b", "c"],
        slice_index=[10, 3, 7, 12, 3, 0],
        query_slice=[0, 0, 0, 1, 1, 0],
        score=[0.9, 0.6, 0.95, 0.1, 0.5, 0.4],
    )


def test_count_votes_counts_ties_and_evidence() -> None:
    ctx = SearchContext()
    out = CountVotes().transform(votes_input(), ctx)
    assert out.level == "volume"
    q = out.for_query("q")
    # a and b both have 2 votes; tie broken by summed similarity (a: 1.0 > b: 1.1? no: b)
    assert q.volume_id.tolist() == ["b", "a", "c"]
    assert q.score.tolist() == [2.0, 2.0, 1.0]
    assert q.rank.tolist() == [1, 2, 3]
    np.testing.assert_allclose(q["vote_sum"], [1.1, 1.0, 0.95])
    assert q["n_votes"].tolist() == [2, 2, 1]
    assert out.for_query("r").volume_id.tolist() == ["c"]
    assert out.query_ids() == ["q", "r"]
    ev = ctx.evidence["votes"]
    assert ev[("q", "a")].tolist() == [10, 12]
    assert ev[("q", "b")].tolist() == [3]  # slice 3 voted twice, counted once as evidence
    assert set(ev) == {("q", "a"), ("q", "b"), ("q", "c"), ("r", "c")}


def test_count_votes_tie_on_count_and_sum_uses_volume_id() -> None:
    h = Hits(query_id=["q"] * 2, volume_id=["zeta", "alpha"], score=[0.5, 0.5])
    out = CountVotes().transform(h, SearchContext())
    assert out.volume_id.tolist() == ["alpha", "zeta"]


def test_count_votes_weighted() -> None:
    out = CountVotes(weighted=True).transform(votes_input(), SearchContext()).for_query("q")
    assert out.volume_id.tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(out.score, [1.1, 1.0, 0.95])


def test_count_votes_empty() -> None:
    out = CountVotes().transform(Hits.empty("slice"), SearchContext())
    assert len(out) == 0 and out.level == "volume"


def test_top_slice_keeps_best_per_query_slice() -> None:
    out = TopSlice().transform(votes_input(), SearchContext())
    assert out.level == "slice"
    pairs = list(zip(out.query_id, out.query_slice, out.volume_id, strict=True))
    assert pairs == [("q", 0, "c"), ("q", 1, "b"), ("r", 0, "c")]


# --- MaxSim ------------------------------------------------------------------------------


def loop_maxsim(q: npt.NDArray[np.float32], cands: list[npt.NDArray[np.float32]]) -> list[float]:
    out = []
    for c in cands:
        total = 0.0
        for t in range(len(q)):
            total += max(float(np.dot(q[t], s)) for s in c)
        out.append(total / len(q))
    return out


def unit(rng: np.random.Generator, n: int, d: int) -> npt.NDArray[np.float32]:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_maxsim_matches_per_candidate_loop() -> None:
    rng = np.random.default_rng(7)
    q = unit(rng, 9, 16)
    cands = [unit(rng, n, 16) for n in (1, 5, 12, 3, 7)]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in cands])]).astype(np.int64)
    scores, argmax = maxsim_scores(q, np.concatenate(cands), offsets)
    np.testing.assert_allclose(scores, loop_maxsim(q, cands), atol=1e-6)
    for j, c in enumerate(cands):
        assert argmax[:, j].tolist() == np.argmax(q @ c.T, axis=1).tolist()


def test_maxsim_argmax_takes_first_of_ties() -> None:
    q = np.array([[1.0, 0.0]], np.float32)
    s = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
    scores, argmax = maxsim_scores(q, s, np.array([0, 3]))
    assert scores.tolist() == [1.0] and argmax.tolist() == [[1]]


def test_maxsim_rerank_stage_reorders_and_drops_beyond_top() -> None:
    rng = np.random.default_rng(3)
    index = ExactIndex(16)
    for i in range(6):
        index.add(f"v{i}", unit(rng, 4 + i, 16))
    q = unit(rng, 5, 16)
    ctx = SearchContext(index=index, embeddings={"q": q})
    votes = Hits(
        query_id=["q"] * 6,
        volume_id=[f"v{i}" for i in range(6)],
        score=[6, 5, 4, 3, 2, 1],
        level="volume",
    )
    out = MaxSimRerank(top=4).transform(votes, ctx)
    assert len(out) == 4 and set(out.volume_id) == {"v0", "v1", "v2", "v3"}
    expected = loop_maxsim(q, [index.vectors(f"v{i}") for i in range(4)])
    order = np.argsort(expected)[::-1]
    assert out.volume_id.tolist() == [f"v{i}" for i in order]
    np.testing.assert_allclose(out.score, np.sort(expected)[::-1], atol=1e-6)
    assert out["prior_rank"].tolist() == [int(i) + 1 for i in order]
    ev = ctx.evidence["maxsim"][("q", "v2")]
    assert ev.tolist() == np.argmax(q @ index.vectors("v2").T, axis=1).tolist()
    with pytest.raises(PipelineError, match="SliceSearch"):
        MaxSimRerank(top=2).transform(votes, SearchContext())
    with pytest.raises(PipelineError, match="top"):
        MaxSimRerank(top=0)


# --- Localize ------------------------------------------------------------------------------


def test_matched_span_and_trim() -> None:
    assert matched_span(np.array([5])) == (5, 5)
    assert matched_span(np.array([9, 2, 4])) == (2, 9)
    assert matched_span(np.arange(10), trim=0.1) == (1, 8)
    assert matched_span(np.array([1, 2]), trim=0.4) == (1, 2)


def test_localize_spans_and_mm() -> None:
    index = ExactIndex(2)
    vec = np.tile([[1.0, 0.0]], (5, 1))
    index.add("a", vec, slice_meta={"z_mm": [100.0, 102.5, 105.0, 107.5, 110.0]})
    index.add("b", vec[:3], slice_meta={"z_mm": [-4.0, -2.0, 0.0], "slice_index": [10, 12, 14]})
    ctx = SearchContext(index=index)
    ctx.evidence["maxsim"] = {("q", "a"): np.array([3, 1, 3, 2]), ("q", "b"): np.array([14, 12])}
    ctx.evidence["votes"] = {("q", "a"): np.array([4])}
    hits = Hits(query_id=["q", "q"], volume_id=["a", "b"], score=[2.0, 1.0], level="volume")
    out = Localize().transform(hits, ctx)
    assert set(LOCALIZATION_COLUMNS) <= set(out.extra)
    assert out["loc_first"].tolist() == [1, 12] and out["loc_last"].tolist() == [3, 14]
    assert out["loc_z_first"].tolist() == [102.5, -2.0]
    assert out["loc_z_last"].tolist() == [107.5, 0.0]
    votes = Localize(method="votes").transform(hits, ctx)
    assert votes["loc_first"].tolist() == [4, -1]  # no vote evidence for b
    assert votes["loc_z_first"][0] == 110.0 and np.isnan(votes["loc_z_first"][1])
    with pytest.raises(PipelineError, match="valid: maxsim, votes"):
        Localize(method="center")


# --- region queries -------------------------------------------------------------------------


def test_region_query_fine_and_coarse() -> None:
    vol = body_volume("s1", 0.0, 1.0, 21)  # positions 0, .05, ..., 1
    liver = region_query(vol, "liver")
    assert isinstance(liver, RegionVolume) and isinstance(liver, Volume)
    assert liver.id == "s1:liver" and liver.source_id == "s1" and liver.structure == "liver"
    expected = np.arange(11, 15)  # positions 0.55, 0.6, 0.65, 0.7
    assert liver.source_slices.tolist() == expected.tolist()
    np.testing.assert_array_equal(liver.z_positions, vol.z_positions[expected])
    np.testing.assert_array_equal(liver.array, vol.array[expected])
    assert liver.labels is not None and liver.labels.present[:, 0].all()
    lung = region_query(vol, "lung")  # coarse: any lobe
    pos = np.linspace(0, 1, 21)[lung.source_slices]
    assert pos.min() == pytest.approx(0.7) and pos.max() == pytest.approx(0.85)


def test_region_query_errors() -> None:
    vol = body_volume("s1", 0.0, 0.5, 11)
    with pytest.raises(EvaluationError, match="does not contain 'liver'"):
        region_query(vol, "liver")
    with pytest.raises(UnknownStructureError, match="livr"):
        region_query(vol, "livr")
    with pytest.raises(UnknownStructureError, match="heart"):
        region_query(vol, "heart")  # known name, but not in this volume's labels
    with pytest.raises(EvaluationError, match="no labels"):
        region_query(vol.with_labels(None), "liver")


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.parametrize("index_cls", [ExactIndex, SliceIndex])
def test_end_to_end_region_query(index_cls: type[ExactIndex] | type[SliceIndex]) -> None:
    db = [
        body_volume("lower", 0.0, 0.45, 30),
        body_volume("upper", 0.5, 1.0, 30),
        body_volume("whole", 0.0, 1.0, 60, dz=3.0),
        body_volume("legs", -0.6, -0.1, 30),
    ]
    index = build(index_cls, db)
    ex = PositionExtractor()
    chain = (
        SliceSearch(ex, index, k=20) >> CountVotes() >> MaxSimRerank(top=3) >> Localize()
    ) >> Cutoff(2)
    assert repr(chain) == (
        "SliceSearch(k=20) >> CountVotes() >> MaxSimRerank(top=3) >> Localize() >> Cutoff(2)"
    )
    query = body_volume("query", 0.0, 1.0, 41)
    liver = region_query(query, "liver")
    hits = chain.retrieve([liver, query])
    assert hits.level == "volume" and hits.query_ids() == ["query:liver", "query"]
    top = hits.for_query("query:liver")
    assert len(top) == 2 and top.rank.tolist() == [1, 2]
    assert set(top.volume_id) == {"upper", "whole"}  # the volumes that hold the liver
    assert "lower" not in set(top.volume_id) and "legs" not in set(top.volume_id)
    whole_vol = db[2]
    for row in range(2):
        vid = top.volume_id[row]
        vol = next(v for v in db if v.id == vid)
        assert vol.labels is not None
        liver_slices = vol.labels.slices_with("liver")
        first, last = int(top["loc_first"][row]), int(top["loc_last"][row])
        # predicted span overlaps the liver and stays close to it
        assert first <= liver_slices[-1] and last >= liver_slices[0]
        assert abs(first - liver_slices[0]) <= 2 and abs(last - liver_slices[-1]) <= 2
        assert top["loc_z_first"][row] == vol.z_positions[first]
        assert top["loc_z_last"][row] == vol.z_positions[last]
    assert whole_vol.id in set(hits.for_query("query").volume_id)
    assert hits.for_query("query").volume_id[0] == "whole"  # covers the whole query


def test_slice_search_output_and_query_stride() -> None:
    db = [body_volume("upper", 0.5, 1.0, 30), body_volume("whole", 0.0, 1.0, 60)]
    index = build(ExactIndex, db)
    ex = PositionExtractor()
    query = body_volume("q", 0.0, 1.0, 10)
    hits = SliceSearch(ex, index, k=3, query_stride=4).retrieve(query)
    assert hits.level == "slice"
    assert sorted(set(hits.query_slice.tolist())) == [0, 4, 8]
    assert len(hits) == 9 and (hits.rank.reshape(3, 3) == [1, 2, 3]).all()
    assert (np.diff(hits.score.reshape(3, 3), axis=1) <= 0).all()
    # slice 0 of the query (position 0.0) is only found in 'whole'
    assert set(hits.volume_id[hits.query_slice == 0]) == {"whole"}
    # k larger than the index gives every slice
    many = SliceSearch(ex, index, k=1000).retrieve(query)
    assert len(many) == 10 * 90
    top1 = (SliceSearch(ex, index, k=5) >> TopSlice()).retrieve(query)
    assert len(top1) == 10 and (top1.rank == 1).all()


def test_precomputed_embeddings_skip_the_extractor() -> None:
    db = [body_volume("whole", 0.0, 1.0, 40)]
    index = build(ExactIndex, db)
    ex = PositionExtractor()
    query = body_volume("q", 0.0, 1.0, 10)
    emb = PositionExtractor().extract(query)
    chain = SliceSearch(ex, index, k=5, query_stride=2) >> CountVotes()
    with_emb = chain.retrieve(query, embeddings={"q": emb})
    assert ex.calls == 0
    plain = chain.retrieve(query)
    assert ex.calls == 1
    np.testing.assert_array_equal(with_emb.score, plain.score)
    with pytest.raises(PipelineError, match="unknown query 'x'"):
        chain.retrieve(query, embeddings={"x": emb})


def test_extractor_config_difference_warns_once_at_user_code() -> None:
    index = build(ExactIndex, [body_volume("whole", 0.0, 1.0, 10)])

    class Other(PositionExtractor):
        def to_config(self) -> dict[str, Any]:
            return {"name": "position", "dim": DIM, "window": [0, 1]}

    search = SliceSearch(Other(), index, k=2)
    query = body_volume("q", 0.0, 1.0, 5)
    with pytest.warns(ExtractorMismatchWarning, match="window") as record:
        search.retrieve(query)
    assert [w.filename for w in record] == [__file__]  # points at this line, not cbirlib
    search.retrieve(query)  # checked once: no second warning (warnings are errors here)


@pytest.mark.parametrize(
    ("name", "dim", "error", "match"),
    [
        (
            "other",
            DIM,
            ExtractorMismatchError,
            r"index built with 'position' \(dim 24\), vectors come from 'other' \(dim 24\)",
        ),
        (
            "position",
            2 * DIM,
            DimensionMismatchError,
            r"'position' \(dim 24\), vectors come from 'position' \(dim 48\)",
        ),
    ],
)
def test_other_extractor_name_or_dim_raises_before_embedding(
    name: str, dim: int, error: type[Exception], match: str
) -> None:
    index = build(ExactIndex, [body_volume("whole", 0.0, 1.0, 10)])

    class Other(PositionExtractor):
        def to_config(self) -> dict[str, Any]:
            return {"name": name, "dim": DIM}

    ex = Other()
    ex.dim = dim  # type: ignore[misc]
    with pytest.raises(error, match=match):
        SliceSearch(ex, index, k=2).retrieve(body_volume("q", 0.0, 1.0, 5))
    assert ex.calls == 0  # refused before embedding any slice


def test_progress_bars_advance_with_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.auto

    bars: dict[str, Any] = {}

    class Recorder:
        def __init__(self, *args: Any, total: int | None = None, desc: str = "", **kw: Any):
            self.total, self.n = total, 0
            bars[desc] = self

        def update(self, n: int = 1) -> None:
            self.n += n

        def close(self) -> None:
            pass

        def __enter__(self) -> Recorder:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    seen: list[int] = []

    class Watched(PositionExtractor):
        def extract(
            self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
        ) -> npt.NDArray[np.float32]:
            seen.append(bars["embedding queries"].n)
            return super().extract(volume, slices=slices)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    index = build(ExactIndex, [body_volume(f"v{i}", 0.0, 1.0, 10) for i in range(4)])
    chain = (
        SliceSearch(Watched(), index, k=5, query_stride=2) >> CountVotes() >> MaxSimRerank(top=3)
    )
    queries = [body_volume("q1", 0.0, 1.0, 7), body_volume("q2", 0.0, 1.0, 4)]
    chain.retrieve(queries, verbose=True)
    assert seen == [0, 4]  # 7 slices at stride 2 -> 4 slices done before the second query
    assert bars["embedding queries"].total == bars["embedding queries"].n == 6
    assert bars["MaxSim re-ranking"].total == bars["MaxSim re-ranking"].n == 6  # 2 x top 3


def test_vote_evidence_is_a_mapping() -> None:
    ctx = SearchContext()
    CountVotes().transform(votes_input(), ctx)
    ev = ctx.evidence["votes"]
    assert len(ev) == 4 and ("q", "zzz") not in ev and ("nobody", "a") not in ev
    assert dict(ev).keys() == {("q", "a"), ("q", "b"), ("q", "c"), ("r", "c")}
    with pytest.raises(KeyError):
        ev[("r", "a")]


def test_precomputed_embeddings_must_cover_every_slice() -> None:
    index = build(ExactIndex, [body_volume("whole", 0.0, 1.0, 10)])
    query = body_volume("q", 0.0, 1.0, 6)
    chain = SliceSearch(PositionExtractor(), index, k=2)
    with pytest.raises(PipelineError, match=r"\(6, dim\)"):
        chain.retrieve(query, embeddings={"q": np.zeros((3, DIM), np.float32)})


# --- leave-one-out, normalisation, region slabs, custom groups, strided indexes -----------


@pytest.mark.parametrize("index_cls", [ExactIndex, SliceIndex])
def test_exclude_source_drops_own_volume_and_keeps_k(
    index_cls: type[ExactIndex] | type[SliceIndex],
) -> None:
    query = body_volume("q", 0.0, 1.0, 12)
    others = [body_volume("whole", 0.0, 1.0, 30), body_volume("upper", 0.5, 1.0, 20)]
    with_q = build(index_cls, [query, *others])
    ex = PositionExtractor()
    plain = SliceSearch(ex, with_q, k=5).retrieve(query)
    assert plain.volume_id[plain.rank == 1].tolist() == ["q"] * 12  # finds itself first
    search = SliceSearch(ex, with_q, k=5, exclude_source=True)
    assert repr(search) == "SliceSearch(k=5, exclude_source=True)"
    loo = search.retrieve(query)
    assert "q" not in set(loo.volume_id)
    assert len(loo) == 12 * 5
    assert (loo.rank.reshape(12, 5) == np.arange(1, 6)).all()
    # the same hits as a search of an index that never held the query
    without_q = SliceSearch(ex, build(ExactIndex, others), k=5).retrieve(query)
    np.testing.assert_allclose(loo.score, without_q.score, atol=1e-5)
    assert (loo.volume_id == without_q.volume_id).mean() > 0.9  # ties may swap volumes
    # a region query leaves out its source volume too
    region = region_query(query, "liver")
    hits = search.retrieve(region)
    assert "q" not in set(hits.volume_id) and len(hits) == region.n_slices * 5
    # a query whose volume is not indexed is searched as usual
    other = body_volume("new", 0.0, 1.0, 12)
    np.testing.assert_allclose(search.retrieve(other).score, plain.score, atol=1e-5)


def test_precomputed_embeddings_are_normalised_for_maxsim() -> None:
    db = [body_volume("whole", 0.0, 1.0, 30), body_volume("upper", 0.5, 1.0, 20)]
    index = build(ExactIndex, db)
    query = body_volume("q", 0.0, 1.0, 10)
    emb = PositionExtractor().extract(query)
    chain = SliceSearch(PositionExtractor(), index, k=10) >> CountVotes() >> MaxSimRerank(top=2)
    unit_scores = chain.retrieve(query, embeddings={"q": emb}).score
    scaled = chain.retrieve(query, embeddings={"q": 5.0 * emb}).score
    assert (unit_scores <= 1.0 + 1e-6).all()
    np.testing.assert_allclose(scaled, unit_scores, atol=1e-6)
    ctx = SearchContext.for_queries(query)
    ctx.embeddings["q"] = 3.0 * emb
    SliceSearch(PositionExtractor(), index, k=3).transform(Hits.empty("slice"), ctx)
    np.testing.assert_allclose(np.linalg.norm(ctx.embeddings["q"], axis=1), 1.0, atol=1e-6)
    bad = emb.copy()
    bad[2] = np.nan
    with pytest.raises(CbirError, match="NaN"):
        chain.retrieve(query, embeddings={"q": bad})
    with pytest.raises(CbirError, match="zero"):
        chain.retrieve(query, embeddings={"q": np.zeros_like(emb)})


def test_region_volume_slab_keeps_source_positions() -> None:
    vol = body_volume("s1", 0.0, 1.0, 21)
    liver = region_query(vol, "liver")  # source slices 11..14
    part = liver.slab(1, 3)
    assert isinstance(part, RegionVolume) and part.source_id == "s1"
    assert part.first_slice == 12 and part.source_slices.tolist() == [12, 13]
    np.testing.assert_array_equal(part.array, vol.array[12:14])
    assert liver.with_labels(None).source_slices.tolist() == liver.source_slices.tolist()


def test_region_query_uses_the_given_grouping() -> None:
    vol = body_volume("s1", 0.0, 1.0, 21)
    pos = np.linspace(0, 1, 21)
    # "lung" of the default grouping: both lobes, 0.7..0.85
    default = region_query(vol, "lung")
    assert pos[default.source_slices[[0, -1]]].tolist() == pytest.approx([0.7, 0.85])
    # a user grouping where "lung" is the upper lobe only, and a new "abdomen" group
    groups = {
        "lung_upper_lobe_left": "lung",
        "lung_lower_lobe_left": "abdomen",
        "liver": "abdomen",
    }
    lung = region_query(vol, "lung", groups=groups)
    assert pos[lung.source_slices[[0, -1]]].tolist() == pytest.approx([0.75, 0.85])
    abdomen = region_query(vol, "abdomen", groups=groups)
    assert pos[abdomen.source_slices[[0, -1]]].tolist() == pytest.approx([0.55, 0.8])
    assert abdomen.structure == "abdomen" and abdomen.id == "s1:abdomen"
    with pytest.raises(UnknownStructureError, match="abdomen"):
        region_query(vol, "abdomen")  # not a group without the mapping
    grouped = vol.with_labels(vol.labels.grouped(groups) if vol.labels else None)
    assert region_query(grouped, "abdomen", groups=groups).n_slices == abdomen.n_slices


def test_maxsim_localize_on_strided_slice_indices() -> None:
    """An index that holds every 2nd slice (slice_index 10, 12, ...): evidence and spans
    are slice indices of the volume, not rows of the index."""
    rows = position_embedding(np.linspace(0.0, 1.0, 6))
    index = ExactIndex(DIM)
    index.add(
        "a",
        rows,
        slice_meta={"slice_index": [10, 12, 14, 16, 18, 20], "z_mm": 5.0 * np.arange(6)},
    )
    index.add("b", position_embedding(np.linspace(-1.0, -0.5, 4)))
    query = body_volume("q", 0.0, 1.0, 6)
    emb = rows[[2, 3, 3, 4]]  # matches rows 2..4 of 'a': slices 14..18
    chain = (
        SliceSearch(PositionExtractor(), index, k=3)
        >> CountVotes()
        >> MaxSimRerank(top=2)
        >> Localize()
    )
    q = query.slab(0, 4)
    hits = chain.retrieve(q, embeddings={"q": emb})
    assert hits.volume_id[0] == "a"
    assert (hits["loc_first"][0], hits["loc_last"][0]) == (14, 18)
    assert (hits["loc_z_first"][0], hits["loc_z_last"][0]) == (10.0, 20.0)
    votes = (
        SliceSearch(PositionExtractor(), index, k=1) >> CountVotes() >> Localize(method="votes")
    ).retrieve(q, embeddings={"q": emb})
    assert (votes["loc_first"][0], votes["loc_last"][0]) == (14, 18)
