"""Queries given by their embeddings (EmbeddedQuery): searched by SliceSearch without the
extractor, with their own blank-slice flags; their region queries reuse their rows."""

from __future__ import annotations

import numpy as np
import pytest

from cbirlib.errors import InvalidVolumeError
from cbirlib.index import ExactIndex
from cbirlib.presets import default_chain
from cbirlib.queries import EmbeddedQuery, EmbeddedRegion, RegionVolume, region_query
from cbirlib.search import SliceSearch
from cbirlib.volume import RegionOrigin
from tests.fakes import PositionExtractor, body_volume, build

DB = [
    body_volume("lower", 0.0, 0.45, 30),
    body_volume("upper", 0.5, 1.0, 30),
    body_volume("whole", 0.0, 1.0, 60, dz=3.0),
]


def _same(a: object, b: object) -> None:
    for name in ("query_id", "volume_id", "slice_index", "query_slice", "rank"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    np.testing.assert_allclose(a.score, b.score, rtol=1e-6)  # type: ignore[attr-defined]
    assert set(a.extra) == set(b.extra)  # type: ignore[attr-defined]
    for name in a.extra:  # type: ignore[attr-defined]
        np.testing.assert_allclose(a.extra[name], b.extra[name])  # type: ignore[attr-defined]


@pytest.mark.parametrize("stride", [1, 3])
def test_an_embedded_query_gives_the_hits_of_its_volume_without_the_extractor(
    stride: int,
) -> None:
    index = build(ExactIndex, DB)
    volume = body_volume("q", 0.0, 1.0, 41)
    embedder = PositionExtractor()
    query = EmbeddedQuery.embed(volume, embedder)
    assert embedder.calls == 1  # embedded once, every slice
    assert query.array.shape == (41, 1, 1) and query.labels is volume.labels
    chain = default_chain(SliceSearch(embedder, index, k=10, query_stride=stride), top=2)
    regions = [region_query(volume, "liver"), region_query(query, "liver")]
    expected = chain.retrieve([volume, regions[0]])
    calls = embedder.calls
    got = chain.retrieve([query, regions[1]])
    assert embedder.calls == calls  # the embedded queries were not embedded again
    _same(got, expected)
    # the region of an embedded query: a region query whose rows are its source's
    region = regions[1]
    assert isinstance(region, EmbeddedRegion) and isinstance(region, RegionVolume)
    assert region.origin == regions[0].origin == RegionOrigin("q", "liver", region.first_slice)
    np.testing.assert_array_equal(region.embeddings, query.embeddings[region.source_slices])


def test_the_blank_flags_of_an_embedded_query_decide_which_slices_vote() -> None:
    index = build(ExactIndex, DB)
    volume = body_volume("q", 0.0, 1.0, 12)
    emb = PositionExtractor().extract(volume)
    blank = np.zeros(12, bool)
    blank[[0, 5, 11]] = True
    query = EmbeddedQuery.of(volume, emb, informative=~blank)
    search = SliceSearch(PositionExtractor(), index, k=4)
    hits = search.retrieve(query)
    assert sorted(set(hits.query_slice.tolist())) == np.flatnonzero(~blank).tolist()
    every = SliceSearch(PositionExtractor(), index, k=4, keep_blank=True).retrieve(query)
    assert sorted(set(every.query_slice.tolist())) == list(range(12))
    # no flags: every slice is informative
    plain = search.retrieve(EmbeddedQuery.of(volume, emb))
    assert sorted(set(plain.query_slice.tolist())) == list(range(12))
    # a slab keeps the rows and flags of its slices
    part = query.slab(4, 8)
    assert isinstance(part, EmbeddedQuery)
    assert part.informative.tolist() == (~blank[4:8]).tolist()  # type: ignore[union-attr]
    np.testing.assert_array_equal(part.embeddings, emb[4:8])


def test_bad_embeddings_are_named() -> None:
    volume = body_volume("q", 0.0, 1.0, 5)
    with pytest.raises(InvalidVolumeError, match=r"\(5, dim\)"):
        EmbeddedQuery.of(volume, np.ones((4, 3)))
    with pytest.raises(InvalidVolumeError, match="NaN"):
        EmbeddedQuery.of(volume, np.full((5, 3), np.nan))
    with pytest.raises(InvalidVolumeError, match=r"\(5,\) bool"):
        EmbeddedQuery.of(volume, np.ones((5, 3)), informative=[True, False])
    with pytest.raises(InvalidVolumeError, match="needs embeddings"):
        EmbeddedQuery("q", np.zeros((5, 1, 1), np.float32))
