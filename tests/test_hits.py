"""Tests of the Hits table: validation, ranking, selection, pandas round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbirlib.errors import CbirError
from cbirlib.hits import LOCALIZATION_COLUMNS, Hits, HitsError


def slice_hits() -> Hits:
    return Hits(
        query_id=["q1"] * 4 + ["q2"] * 2,
        volume_id=["a", "b", "a", "c", "b", "c"],
        slice_index=[3, 5, 4, 0, 1, 2],
        query_slice=[0, 0, 1, 1, 0, 0],
        score=[0.5, 0.9, 0.7, 0.8, 0.1, 0.3],
        level="slice",
    )


def test_ranks_are_computed_per_query_slice_group() -> None:
    h = slice_hits()
    # groups: (q1,0): 0.5,0.9 ; (q1,1): 0.7,0.8 ; (q2,0): 0.1,0.3
    assert h.rank.tolist() == [2, 1, 2, 1, 2, 1]
    assert h.rank.dtype == np.int64 and h.slice_index.dtype == np.int64
    assert h.score.dtype == np.float64 and h.query_id.dtype == object


def test_volume_level_ranks_per_query_and_defaults() -> None:
    h = Hits(query_id=["q", "q", "r"], volume_id=["a", "b", "c"], score=[1, 3, 2], level="volume")
    assert h.rank.tolist() == [2, 1, 1]
    assert h.slice_index.tolist() == [-1, -1, -1]
    assert h.query_slice.tolist() == [-1, -1, -1]


def test_equal_scores_keep_row_order() -> None:
    h = Hits(query_id=["q"] * 3, volume_id=["z", "a", "m"], score=[1.0, 1.0, 1.0])
    assert h.rank.tolist() == [1, 2, 3]
    assert h.ranked().volume_id.tolist() == ["z", "a", "m"]


def test_ranked_sorts_rows_groups_by_first_appearance() -> None:
    h = Hits(
        query_id=["q2", "q1", "q2", "q1"],
        volume_id=["a", "b", "c", "d"],
        score=[0.1, 0.2, 0.3, 0.4],
        level="volume",
    ).ranked()
    assert h.query_id.tolist() == ["q2", "q2", "q1", "q1"]
    assert h.volume_id.tolist() == ["c", "a", "d", "b"]
    assert h.rank.tolist() == [1, 2, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"volume_id": ["a"]}, "same length"),
        ({"query_id": ["q", 3]}, "must hold str"),
        ({"score": [0.1, np.nan]}, "finite"),
        ({"rank": [0, 1]}, "ranks must be >= 1"),
        ({"level": "patient"}, "valid: slice, volume"),
        ({"slice_index": [0.5, 1]}, "integers"),
        ({"score": ["x", "y"]}, "numeric"),
        ({"extra": {"score": [1, 2]}}, "shadows"),
        ({"extra": {"loc_first": [1]}}, "loc_first"),
    ],
)
def test_validation_errors_name_the_problem(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"query_id": ["q", "q"], "volume_id": ["a", "b"], "score": [1, 2]}
    base.update(kwargs)
    with pytest.raises(HitsError, match=match) as info:
        Hits(**base)  # type: ignore[arg-type]
    assert isinstance(info.value, CbirError) and isinstance(info.value, ValueError)


def test_immutable() -> None:
    h = slice_hits()
    with pytest.raises(AttributeError):
        h.score = np.zeros(6)  # type: ignore[misc]


def test_top_for_query_query_ids_take() -> None:
    h = slice_hits()
    top = h.top(1)
    assert top.volume_id.tolist() == ["b", "c", "c"]
    assert h.query_ids() == ["q1", "q2"]
    assert len(h.for_query("q2")) == 2 and set(h.for_query("q2").query_id) == {"q2"}
    assert len(h.for_query("nope")) == 0
    with pytest.raises(HitsError):
        h.top(0)
    picked = h.take([5, 0])
    assert picked.slice_index.tolist() == [2, 3]


def test_concat_and_errors() -> None:
    h = slice_hits()
    both = Hits.concat([h, h.for_query("q1")])
    assert len(both) == 10
    assert both.rank.tolist()[:6] == h.rank.tolist()
    vol = Hits(query_id=["q"], volume_id=["a"], score=[1.0], level="volume")
    with pytest.raises(HitsError, match="levels"):
        Hits.concat([h, vol])
    with pytest.raises(HitsError, match="extra columns"):
        Hits.concat([vol, vol.with_columns(n=[1])])
    with pytest.raises(HitsError):
        Hits.concat([])


def test_pandas_round_trip_keeps_columns_dtypes_and_level() -> None:
    h = Hits(
        query_id=["q", "q"],
        volume_id=["a", "b"],
        score=[0.2, 0.4],
        level="volume",
        extra={
            "loc_first": np.array([1, 2]),
            "loc_last": np.array([3, 4]),
            "loc_z_first": np.array([1.5, 2.5]),
            "loc_z_last": np.array([3.5, 4.5]),
        },
    )
    frame = h.to_pandas()
    assert list(frame.columns)[-4:] == list(LOCALIZATION_COLUMNS)
    assert frame.attrs["level"] == "volume"
    back = Hits.from_pandas(frame)
    assert back.level == "volume"
    for name, col in h.columns.items():
        np.testing.assert_array_equal(back[name], col)
        assert back[name].dtype == col.dtype
    with pytest.raises(KeyError, match="no Hits column"):
        back["nope"]
    with pytest.raises(HitsError, match="lacks"):
        Hits.from_pandas(frame.drop(columns=["score"]))


def test_repr_shows_rows_and_level() -> None:
    text = repr(slice_hits())
    assert "level='slice'" in text and "rows=6" in text and "q1" in text
    assert "1 more rows" in text
    assert "rows=0" in repr(Hits.empty("volume"))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 2), st.floats(-1, 1)),
        min_size=1,
        max_size=30,
    )
)
def test_ranked_invariants(rows: list[tuple[str, int, float]]) -> None:
    qid, qs, score = zip(*rows, strict=True)
    h = Hits(query_id=list(qid), volume_id=["v"] * len(rows), query_slice=qs, score=score)
    r = h.ranked()
    assert sorted(r.score.tolist()) == sorted(h.score.tolist())
    for q in set(qid):
        for s in set(qs):
            g = (r.query_id == q) & (r.query_slice == s)
            if g.any():
                assert r.rank[g].tolist() == list(range(1, int(g.sum()) + 1))
                assert (np.diff(r.score[g]) <= 0).all()
                # the unsorted table ranks the same rows identically
                gh = (h.query_id == q) & (h.query_slice == s)
                assert sorted(h.rank[gh].tolist()) == r.rank[g].tolist()


def test_split_by_query_matches_for_query() -> None:
    h = Hits(
        query_id=["b", "a", "b", "c", "a"],
        volume_id=["v1", "v2", "v3", "v4", "v5"],
        score=[1, 2, 3, 4, 5],
        level="volume",
    )
    parts = h.split_by_query()
    assert [q for q, _ in parts] == ["b", "a", "c"] == h.query_ids()
    for qid, part in parts:
        assert part.volume_id.tolist() == h.for_query(qid).volume_id.tolist()
        assert part.rank.tolist() == h.for_query(qid).rank.tolist()
    assert Hits.empty().split_by_query() == []
    with pytest.raises(HitsError, match="1-D selection"):
        h.take(np.array([True, False]))
    with pytest.raises(HitsError, match="integer positions"):
        h.take(np.array([0.5]))
