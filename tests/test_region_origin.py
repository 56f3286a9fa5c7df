"""Region-query provenance: the typed ``Volume.origin`` that region_query sets and
evaluation and leave-one-out search read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cbirlib.errors import EvaluationError, InvalidVolumeError
from cbirlib.evaluation import truth_for
from cbirlib.index import ExactIndex
from cbirlib.search import RegionVolume, SliceSearch, region_query
from cbirlib.volume import RegionOrigin, Volume
from tests.fakes import PositionExtractor, body_volume, build


def test_region_query_records_its_origin_and_slabs_keep_it_in_the_source() -> None:
    vol = body_volume("s1", 0.0, 1.0, 21)
    liver = region_query(vol, "liver")
    first = int(vol.labels.slices_with("liver")[0])  # type: ignore[union-attr]
    # values 0-1, guessed MR: windowed by the whole volume's percentiles
    assert liver.origin == RegionOrigin("s1", "liver", first, vol.percentile_bounds())
    assert (liver.source_id, liver.structure, liver.first_slice) == ("s1", "liver", first)
    part = liver.slab(1, 3, id="part")
    assert part.origin == RegionOrigin("s1", "liver", first + 1, vol.percentile_bounds())
    assert part.origin.source_slices(part.n_slices).tolist() == [first + 1, first + 2]
    assert liver.with_labels(None).origin == liver.origin
    # a whole volume, and any slab of one, has no origin: it is not a region query
    assert vol.origin is None and vol.slab(2, 5).origin is None


def test_any_volume_with_an_origin_is_evaluated_and_searched_as_a_region_query() -> None:
    db = [body_volume("upper", 0.5, 1.0, 20), body_volume("whole", 0.0, 1.0, 30)]
    slab = body_volume("q", 0.0, 1.0, 21).slab(11, 15)
    # a plain Volume (not a RegionVolume) given an origin by hand
    query = dataclasses.replace(slab, id="q:liver", origin=RegionOrigin("upper", "liver", 3))
    assert not isinstance(query, RegionVolume)
    # evaluated for its own structure only
    truth = truth_for([query], {v.id: v.labels for v in db[1:]}, granularity="fine")  # type: ignore[misc]
    assert dict(truth.regions) == {"q:liver": "liver"}
    # its source is a database volume: refused, named
    with pytest.raises(EvaluationError, match="'upper'"):
        truth_for([query], {v.id: v.labels for v in db}, granularity="fine")  # type: ignore[misc]
    # leave-one-out drops the hits in its source volume
    index = build(ExactIndex, db)
    plain = SliceSearch(PositionExtractor(), index, k=5).retrieve(query)
    assert "upper" in set(plain.volume_id)
    loo = SliceSearch(PositionExtractor(), index, k=5, exclude_source=True).retrieve(query)
    assert set(loo.volume_id) == {"whole"} and len(loo) == query.n_slices * 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source_id": "", "structure": "liver"}, "source_id"),
        ({"source_id": "s1", "structure": ""}, "structure"),
        ({"source_id": "s1", "structure": "liver", "first_slice": -1}, "first_slice"),
        ({"source_id": "s1", "structure": "liver", "first_slice": 1.5}, "first_slice"),
        ({"source_id": "s1", "structure": "liver", "window_percentiles": (5, 5)}, "low < high"),
        ({"source_id": "s1", "structure": "liver", "window_percentiles": (0, np.nan)}, "finite"),
        ({"source_id": "s1", "structure": "liver", "window_percentiles": "ab"}, "two finite"),
    ],
)
def test_bad_origins_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidVolumeError, match=match):
        RegionOrigin(**kwargs)  # type: ignore[arg-type]


def test_origin_must_be_a_region_origin_and_a_region_volume_needs_one() -> None:
    array = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(InvalidVolumeError, match="RegionOrigin"):
        Volume("v", array, origin=("s1", "liver", 0))  # type: ignore[arg-type]
    with pytest.raises(InvalidVolumeError, match="region_query"):
        RegionVolume("v", array)


def _real_mr_with_a_structure() -> Volume:
    """nibabel's real anatomical MR (25 slices) with a 'brain' labelled on slices 8-15."""
    from pathlib import Path

    import nibabel as nib

    from cbirlib.labels import SliceLabels

    path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    img = nib.as_closest_canonical(nib.load(path))
    array = np.ascontiguousarray(img.get_fdata(dtype=np.float32).transpose(2, 1, 0))
    brain = np.zeros(array.shape, bool)
    brain[8:16, 10:20, 10:20] = True
    labels = SliceLabels.from_masks({"brain": brain})
    return Volume("mr", array, spacing=(3.0, 2.0, 2.0), modality="MR", labels=labels)


@pytest.mark.parametrize("modality", ["MR", "PT"])
def test_a_region_of_an_mr_is_windowed_as_its_whole_volume(modality: str) -> None:
    """The slab was windowed by its own percentiles: 0.997 cosine to the indexed slices."""
    from cbirlib.extractors.baseline import BaselineExtractor
    from cbirlib.informative import slice_flags
    from cbirlib.queries import EmbeddedQuery

    vol = dataclasses.replace(_real_mr_with_a_structure(), modality=modality)
    ex = BaselineExtractor()
    whole = ex.extract(vol)
    region = region_query(vol, "brain")
    assert region.origin is not None
    assert region.origin.window_percentiles == vol.percentile_bounds()
    assert region.percentile_bounds() != Volume("own", region.array).percentile_bounds()
    np.testing.assert_allclose(ex.extract(region), whole[8:16], atol=1e-6)
    assert np.array_equal(slice_flags(ex, region), slice_flags(ex, vol)[8:16])
    # the same as the region of the embedded query (rows of the whole volume's embeddings)
    embedded = region_query(EmbeddedQuery.embed(vol, ex), "brain")
    np.testing.assert_allclose(ex.extract(region), embedded.embeddings, atol=1e-6)
    part = region.slab(2, 5)  # a slab of the region keeps the source's window
    np.testing.assert_allclose(ex.extract(part), whole[10:13], atol=1e-6)


def test_a_region_of_a_ct_keeps_the_hu_window() -> None:
    vol = dataclasses.replace(body_volume("s1", 0.0, 1.0, 21), modality="CT")
    assert region_query(vol, "liver").origin.window_percentiles is None  # type: ignore[union-attr]
