"""Issue 11, items 4 and 5: count votes fair to slice thickness, and robust MaxSim spans.

Each failure is shown first with the old behaviour (``normalize="none"``,
``robust="none"``), then fixed by the defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbirlib import CountVotes, ExactIndex, Hits, Localize, MaxSimRerank, SliceSearch, Volume
from cbirlib.aggregate import NORMALIZATIONS
from cbirlib.datasets import make_phantoms, reslice_z
from cbirlib.errors import PipelineError
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.localize import MAD_FLOOR, inlier_matches
from cbirlib.metrics import LocalizationRatio
from cbirlib.pipeline import SearchContext
from cbirlib.truth import Truth
from tests.fakes import PositionExtractor, body_volume, build

FAIR = [n for n in NORMALIZATIONS if n != "none"]


def scores(hits: Hits) -> dict[str, float]:
    return dict(zip(hits.volume_id.tolist(), hits.score.tolist(), strict=True))


# --- item 4: thin copies outvote thick copies under raw counts ------------------------------


def test_thin_copy_outvotes_thick_copy_only_under_raw_count() -> None:
    # the same anatomy (body positions 0.3-0.9 over 120 mm) at 1 mm and at 5 mm
    thin = body_volume("thin", 0.3, 0.9, 121, dz=1.0)
    thick = body_volume("thick", 0.3, 0.9, 25, dz=5.0)
    index = build(ExactIndex, [thin, thick])
    query = body_volume("q", 0.3, 0.9, 31)
    search = SliceSearch(PositionExtractor(), index, k=20)
    raw = scores((search >> CountVotes(normalize="none")).retrieve(query))
    assert raw["thin"] > 3 * raw["thick"]  # the failure: ~5x the votes for 5x the slices
    for norm in FAIR:
        fair = scores((search >> CountVotes(normalize=norm)).retrieve(query))
        assert fair["thin"] == pytest.approx(fair["thick"], rel=0.1), norm


def test_fair_votes_rank_the_scan_that_covers_the_query_first() -> None:
    # A: a thin scan (1 mm) holding only the upper half of the query's anatomy;
    # B: a thick scan (10 mm) that covers all of it
    a = body_volume("A", 0.6, 0.95, 141, dz=1.0)
    b = body_volume("B", 0.45, 0.75, 13, dz=10.0)
    index = build(ExactIndex, [a, b])
    query = body_volume("q", 0.5, 0.7, 11)
    search = SliceSearch(PositionExtractor(), index, k=10)
    assert (search >> CountVotes(normalize="none")).retrieve(query).volume_id[0] == "A"
    for norm in FAIR:
        assert (search >> CountVotes(normalize=norm)).retrieve(query).volume_id[0] == "B", norm
    assert CountVotes().normalize == "once-per-query-slice"  # the measured default


@pytest.mark.slow
def test_fair_votes_on_resliced_phantoms(tmp_path: Path) -> None:
    ds = make_phantoms(tmp_path, 2, shape=(32, 32), seed=4)
    query, subject = (ds.load(s) for s in ds.subjects)
    thin = reslice_z(subject, 2.5, id="thin")
    thick = reslice_z(subject, 5.0, id="thick")
    assert thin.n_slices >= 2 * thick.n_slices - 1
    np.testing.assert_allclose(thin.z_positions[::2], thick.z_positions)
    ex = BaselineExtractor()
    index = ExactIndex(ex.dim, extractor_config=ex.to_config())
    for v in (thin, thick):
        index.add(v.id, ex.extract(v), slice_meta={"z_mm": v.z_positions})
    search = SliceSearch(ex, index, k=10)
    raw = scores((search >> CountVotes(normalize="none")).retrieve(query))
    assert raw["thin"] > 1.5 * raw["thick"]
    for norm in FAIR:
        fair = scores((search >> CountVotes(normalize=norm)).retrieve(query))
        assert 0.7 < fair["thin"] / fair["thick"] < 1.4, (norm, fair)


def test_once_per_query_slice_keeps_the_best_hit_as_evidence() -> None:
    hits = Hits(
        query_id=["q"] * 4,
        volume_id=["a", "a", "a", "b"],
        slice_index=[3, 9, 4, 0],
        query_slice=[0, 0, 1, 1],
        score=[0.7, 0.9, 0.8, 0.85],
    )
    ctx = SearchContext()
    out = CountVotes().transform(hits, ctx)
    assert out.volume_id.tolist() == ["a", "b"]
    assert out["n_votes"].tolist() == [2, 1]
    np.testing.assert_allclose(out["vote_sum"], [0.9 + 0.8, 0.85])
    assert ctx.evidence["votes"][("q", "a")].tolist() == [4, 9]  # slice 3 did not count
    raw_ctx = SearchContext()
    assert CountVotes(normalize="none").transform(hits, raw_ctx)["n_votes"].tolist() == [3, 1]
    assert raw_ctx.evidence["votes"][("q", "a")].tolist() == [3, 4, 9]


def test_thickness_reads_the_index_and_handles_one_slice_volumes() -> None:
    index = ExactIndex(2)
    index.add("one", np.array([[1.0, 0.0]]), slice_meta={"z_mm": [5.0]})
    index.add("two", np.array([[1.0, 0.0], [0.0, 1.0]]), slice_meta={"z_mm": [0.0, 3.0]})
    hits = Hits(query_id=["q", "q"], volume_id=["one", "two"], score=[0.5, 0.5])
    out = CountVotes(normalize="thickness").transform(hits, SearchContext(index=index))
    assert scores(out) == {"one": 3.0, "two": 3.0}  # one slice: the others' median step
    with pytest.raises(PipelineError, match="needs the slice index"):
        CountVotes(normalize="thickness").transform(hits, SearchContext())


def test_count_votes_options_and_repr() -> None:
    assert repr(CountVotes()) == "CountVotes()"
    assert repr(CountVotes(weighted=True, normalize="none")) == (
        "CountVotes(weighted=True, normalize='none')"
    )
    with pytest.raises(PipelineError, match="valid: 'once-per-query-slice'"):
        CountVotes(normalize="per-mm")


# --- item 5: a query slice without a counterpart stretches the MaxSim span ---------------------


def test_outlier_query_slice_no_longer_stretches_the_span() -> None:
    target = body_volume("t", 0.3, 0.8, 26)  # liver (0.55-0.7) at slices 13..20
    other = body_volume("u", -0.5, 0.2, 20)
    index = build(ExactIndex, [target, other])
    # a liver query whose lowest slice (body position 0.05) lies below the target's view
    pos = np.array([0.05, 0.55, 0.6, 0.65, 0.7])
    query = Volume("q", np.broadcast_to(pos[:, None, None], (5, 4, 4)).astype(np.float32))
    query_labels = body_volume("q", 0.55, 0.7, 5).labels
    assert target.labels is not None and other.labels is not None and query_labels is not None
    truth = Truth(
        database={"t": target.labels, "u": other.labels},
        queries={"q": query_labels},
        regions={"q": "liver"},
    )
    search = SliceSearch(PositionExtractor(), index, k=10) >> CountVotes() >> MaxSimRerank(top=2)

    def span_and_ratio(loc: Localize) -> tuple[tuple[int, int], float]:
        hits = (search >> loc).retrieve(query)
        assert hits.volume_id[0] == "t"
        ratio = float(LocalizationRatio().compute(hits, truth)["value"].iloc[0])
        return (int(hits["loc_first"][0]), int(hits["loc_last"][0])), ratio

    (first, last), ratio = span_and_ratio(Localize(robust="none"))
    assert first == 0 and last == 20 and ratio < 0.4  # the failure: stretched to slice 0
    for loc in (Localize(), Localize(robust="ratio")):
        (first, last), ratio = span_and_ratio(loc)
        assert (first, last) == (13, 20) and ratio == 1.0, loc


def test_inlier_matches_rules() -> None:
    sims = np.array([0.90, 0.91, 0.92, 0.93, 0.50])
    assert inlier_matches(sims, "mad").tolist() == [True] * 4 + [False]
    assert inlier_matches(sims, "ratio").tolist() == [True] * 4 + [False]
    assert inlier_matches(sims, "none").all()
    # near-identical similarities: the MAD floor keeps every match
    close = 0.95 + np.array([0.0, 0.0, 0.0, -0.5, 0.0]) * MAD_FLOOR
    assert inlier_matches(close, "mad").all()
    assert not inlier_matches(close, "mad", cut=0.1).all()
    assert inlier_matches(np.array([-0.2, -0.1, -0.9]), "ratio").all()  # median <= 0
    spread = np.random.default_rng(0).normal(0.8, 0.05, 101)
    assert inlier_matches(spread, "mad").mean() >= 0.5
    with pytest.raises(PipelineError, match="unknown robust span rule"):
        inlier_matches(sims, "iqr")
    with pytest.raises(PipelineError, match=">= 0"):
        inlier_matches(sims, "mad", cut=-1.0)


def test_localize_robust_options() -> None:
    assert Localize().rule == "mad" and Localize(method="votes").rule == "none"
    assert repr(Localize(robust="ratio", cut=0.95)) == "Localize(robust='ratio', cut=0.95)"
    assert Localize(robust="none").requires() == frozenset({"maxsim"})
    with pytest.raises(PipelineError, match="use trim"):
        Localize(method="votes", robust="mad")
    with pytest.raises(PipelineError, match="unknown robust span rule"):
        Localize(robust="trimmed")
    with pytest.raises(PipelineError, match=">= 0"):
        Localize(cut=-2.0)
