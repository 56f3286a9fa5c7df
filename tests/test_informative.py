"""Blank slices: detected on realistic slices, flagged in the index, kept out of votes.

The failure this guards against (issue 11, item 2): constant or near-empty slices embed
to one shared vector whatever the volume, so a query padded with blank slices voted for
any database volume that had blank padding too, and an unrelated volume ranked first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cbirlib.aggregate import CountVotes
from cbirlib.datasets.phantom import make_phantoms
from cbirlib.errors import SliceIndexError, SliceOutOfRangeError
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.index import ExactIndex, SliceIndex, build_index
from cbirlib.informative import (
    BODY_FRACTION_MIN,
    STD_MIN,
    extractor_window,
    informative_slices,
    slice_flags,
)
from cbirlib.localize import Localize
from cbirlib.preprocess import WINDOW_PRESETS
from cbirlib.rerank import MaxSimRerank
from cbirlib.search import SliceSearch
from cbirlib.volume import Volume
from tests.fakes import write_meta

PAD = 40  # blank slices added below and above


def _air(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """CT air: -1000 HU with realistic quantum noise (sigma 20 HU)."""
    return rng.normal(-1000.0, 20.0, (n, *shape)).astype(np.float32)


def _padded(
    vid: str, array: npt.NDArray[np.float32], spacing: Any, below: int, above: int, seed: int = 0
) -> Volume:
    rng = np.random.default_rng(seed)
    shape = array.shape[1:]
    arr = np.concatenate([_air(rng, below, shape), array, _air(rng, above, shape)])
    return Volume(vid, arr, spacing=spacing)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Volume]:
    """Seven small phantom CTs (s0004 is a thorax, s0006 a pelvis)."""
    ds = make_phantoms(tmp_path_factory.mktemp("phantoms"), 7, shape=(32, 32), seed=0)
    return {s: ds.load(s, labels=False) for s in ds.subjects}


# --- detection on realistic slices --------------------------------------------------------


def _disc(shape: tuple[int, int], fraction: float) -> npt.NDArray[np.bool_]:
    """A centred disc covering ``fraction`` of the slice."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.sqrt(fraction * shape[0] * shape[1] / np.pi)
    return np.asarray((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 <= r**2)


@pytest.mark.parametrize("window", ["wide", "lung", "soft_tissue", "brain"])
def test_ct_air_and_padding_are_blank_and_body_slices_are_not(
    phantoms: dict[str, Volume], window: str
) -> None:
    thorax = phantoms["s0004"]
    body = thorax.array[len(thorax.array) // 2]
    rng = np.random.default_rng(1)
    slices = np.stack(
        [
            body,
            _air(rng, 1, body.shape)[0],  # air only, with noise
            np.full(body.shape, -1024.0, np.float32),  # the usual padding value
            np.full(body.shape, -3024.0, np.float32),  # outside the scan circle
            np.zeros(body.shape, np.float32),  # zero padding: constant water
        ]
    )
    flags = informative_slices(Volume("ct", slices), window)
    assert flags.tolist() == [True, False, False, False, False]


def test_thresholds_leave_wide_margins_on_ct() -> None:
    """Air noise is far below STD_MIN; a body slice's spread and area far above."""
    rng = np.random.default_rng(2)
    air = _air(rng, 1, (64, 64))[0]
    low, high = WINDOW_PRESETS["wide"]
    spread = np.clip((air - low) / (high - low), 0, 1).std()
    assert spread < STD_MIN / 1.5
    # a small body (a child's limb, 5 % of the slice) is informative
    limb = air.copy()
    limb[_disc(limb.shape, 0.05)] = 40.0
    assert informative_slices(Volume("ct", np.stack([limb, air]))).tolist() == [True, False]


def test_phantom_ct_slices_are_blank_only_where_almost_no_body(
    phantoms: dict[str, Volume],
) -> None:
    """No false positive on realistic CT: a slice is flagged only for its tiny body area
    (the skull cap at the vertex in a 512 mm field of view), never for low contrast."""
    ex = BaselineExtractor()
    n_flagged = n_total = 0
    for vol in phantoms.values():
        flags = slice_flags(ex, vol)
        body = (vol.array > -500.0).reshape(vol.n_slices, -1).mean(axis=1)
        np.testing.assert_array_equal(flags, body >= BODY_FRACTION_MIN, err_msg=vol.id)
        n_flagged += int((~flags).sum())
        n_total += vol.n_slices
    assert n_flagged <= 0.01 * n_total


def _brain_template(rng: np.random.Generator) -> tuple[Volume, npt.NDArray[np.float64]]:
    """A skull-stripped MR template (zero background) and the brain fraction per slice."""
    nz, ny, nx = 90, 96, 80
    z, y, x = np.mgrid[:nz, :ny, :nx].astype(np.float64)
    inside = ((z - 35) / 42) ** 2 + ((y - ny / 2) / 40) ** 2 + ((x - nx / 2) / 33) ** 2 <= 1
    arr = np.where(inside, 380.0 + rng.normal(0, 25.0, inside.shape), 0.0).astype(np.float32)
    fraction = inside.reshape(nz, -1).mean(axis=1)
    return Volume("template", arr, spacing=(2.0, 2.0, 2.0), modality="MR"), fraction


def test_skull_stripped_template_top_slices_are_blank() -> None:
    vol, fraction = _brain_template(np.random.default_rng(3))
    flags = informative_slices(vol)
    assert (fraction == 0).sum() >= 10  # slices above the vertex
    assert not flags[fraction == 0].any()
    assert not flags[(fraction > 0) & (fraction < 0.01)].any()  # the last caps of cortex
    assert flags[fraction >= 0.03].all()


def test_mr_noise_background_is_blank_and_a_small_structure_is_not() -> None:
    rng = np.random.default_rng(4)
    ny = nx = 128
    tissue = 500.0
    sigma = 0.02 * tissue  # background noise 2 % of tissue signal (Rician)
    noise = np.abs(rng.normal(0, sigma, (6, ny, nx)) + 1j * rng.normal(0, sigma, (6, ny, nx)))
    arr = noise.astype(np.float32)
    arr[:3][:, _disc((ny, nx), 0.4)] += tissue  # three slices through a head
    arr[3][_disc((ny, nx), 0.03)] += 0.4 * tissue  # a small structure, 3 % of the slice
    vol = Volume("mr", arr, modality="MR")
    assert informative_slices(vol).tolist() == [True, True, True, True, False, False]
    # an MR volume is windowed by percentiles whatever the extractor's CT window says
    assert extractor_window(BaselineExtractor(), vol) == "percentile"


def test_slices_argument_and_its_validation() -> None:
    arr = np.full((4, 16, 16), -1000.0, np.float32)
    arr[2] = np.random.default_rng(0).normal(40, 30, (16, 16))
    vol = Volume("v", arr)
    assert informative_slices(vol, slices=np.array([2, 0])).tolist() == [True, False]
    with pytest.raises(SliceOutOfRangeError, match="outside"):
        informative_slices(vol, slices=np.array([4]))


# --- the index stores the flags ----------------------------------------------------------


@pytest.mark.parametrize("cls", [SliceIndex, ExactIndex])
def test_flags_round_trip_and_old_indexes_load_as_informative(
    tmp_path: Path, cls: type[SliceIndex] | type[ExactIndex]
) -> None:
    rng = np.random.default_rng(0)
    index = cls(8)
    flags = {"a": np.array([False, True, True, False]), "b": np.array([True, True, True])}
    index.add("gone", rng.normal(size=(2, 8)), slice_meta={"informative": np.zeros(2, bool)})
    for vid, f in flags.items():
        index.add(vid, rng.normal(size=(len(f), 8)), slice_meta={"informative": f})
    index.remove("gone")  # ExactIndex compacts its rows on save
    assert index.n_uninformative == 2
    index.save(tmp_path / "idx")
    loaded = cls.load(tmp_path / "idx")
    for vid, f in flags.items():
        np.testing.assert_array_equal(loaded.slice_meta(vid)["informative"], f)
    m = loaded.search(loaded.vectors("a"), k=7)
    assert m.informative is not None
    for row in range(m.informative.shape[0]):
        for col in range(m.informative.shape[1]):
            vid, s = str(m.volume_ids[row, col]), int(m.slice_indices[row, col])
            assert m.informative[row, col] == flags[vid][s]
    # an index written before the flags existed: no informative.npy, all informative
    (tmp_path / "idx" / "informative.npy").unlink()
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    del meta["files"]["informative.npy"]
    write_meta(tmp_path / "idx", meta)
    old = cls.load(tmp_path / "idx")
    assert old.n_uninformative == 0
    assert old.slice_meta("a")["informative"].all()


def test_bad_flags_are_refused() -> None:
    index = ExactIndex(4)
    with pytest.raises(SliceIndexError, match="informative"):
        index.add("a", np.eye(4), slice_meta={"informative": np.ones(4, np.int64)})
    with pytest.raises(SliceIndexError, match="informative"):
        index.add("a", np.eye(4), slice_meta={"informative": np.ones(3, bool)})


def test_build_index_flags_padding(tmp_path: Path, phantoms: dict[str, Volume]) -> None:
    src = phantoms["s0005"]
    vol = _padded("padded", src.array, src.spacing, 5, 7)
    index = build_index([vol], BaselineExtractor(), tmp_path / "idx", verbose=False)
    flags = SliceIndex.load(tmp_path / "idx").slice_meta("padded")["informative"]
    assert flags.tolist() == [False] * 5 + [True] * src.n_slices + [False] * 7
    assert index.n_uninformative == 12


# --- blank slices do not vote ----------------------------------------------------------------


@pytest.fixture(scope="module")
def blank_case(
    phantoms: dict[str, Volume], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Volume, ExactIndex, int]:
    """A re-scan of the thorax s0004 (every 2nd slice, new noise) padded with air,
    against a database of s0004, three other phantoms and a pelvis padded with air."""
    src = phantoms["s0004"]
    rng = np.random.default_rng(5)
    body = src.array[::2] + rng.normal(0, 30, src.array[::2].shape).astype(np.float32)
    spacing = (2 * src.spacing[0], src.spacing[1], src.spacing[2])
    query = _padded("query", body, spacing, PAD, PAD, seed=6)
    pelvis = phantoms["s0006"]
    db = [src, phantoms["s0002"], phantoms["s0003"], phantoms["s0005"]]
    db.append(_padded("s0006", pelvis.array, pelvis.spacing, PAD, PAD, seed=7))
    path = tmp_path_factory.mktemp("blank") / "idx"
    index = build_index(db, BaselineExtractor(), path, exact=True, verbose=False)
    assert isinstance(index, ExactIndex)
    return query, index, len(body)


def test_blank_padding_no_longer_makes_an_unrelated_volume_rank_first(
    blank_case: tuple[Volume, ExactIndex, int],
) -> None:
    query, index, n_body = blank_case
    ex = BaselineExtractor()
    padding = np.r_[0:PAD, PAD + n_body : 2 * PAD + n_body]

    def run(keep_blank: bool) -> tuple[Any, Any, Any]:
        search = SliceSearch(ex, index, k=10, keep_blank=keep_blank)
        hits = search.retrieve(query)
        votes = (search >> CountVotes()).retrieve(query)
        rerank = MaxSimRerank(top=5, keep_blank=keep_blank)
        maxsim = (search >> CountVotes() >> rerank).retrieve(query)
        return hits, votes, maxsim

    # the failure: blank slices carry most votes and the padded pelvis ranks first
    hits, votes, maxsim = run(keep_blank=True)
    blank_share = np.isin(hits.query_slice, padding).mean()
    assert blank_share > 0.4
    assert votes.volume_id[0] == "s0006" and maxsim.volume_id[0] == "s0006"
    # the fix: the re-scanned volume ranks first, blank slices carry zero votes
    hits, votes, maxsim = run(keep_blank=False)
    assert not np.isin(hits.query_slice, padding).any()
    pelvis_blank = index.slice_meta("s0006")["informative"]
    on_blank = hits.volume_id == "s0006"
    assert pelvis_blank[hits.slice_index[on_blank]].all()  # no hit lands on padding
    assert votes.volume_id[0] == "s0004" and maxsim.volume_id[0] == "s0004"
    assert len(hits) == 10 * n_body  # every informative query slice keeps k hits


def test_localized_spans_use_the_volumes_own_slice_numbers(
    phantoms: dict[str, Volume], tmp_path: Path
) -> None:
    """Padding above and below shifts the span by the padding below, nothing else."""
    src = phantoms["s0004"]
    query = Volume("query", src.array[20:60:2], spacing=(4.0, *src.spacing[1:]))
    ex = BaselineExtractor()
    plain = build_index([src], ex, tmp_path / "plain", exact=True, verbose=False)
    padded_vol = _padded("s0004", src.array, src.spacing, 9, 13, seed=8)
    padded = build_index([padded_vol], ex, tmp_path / "padded", exact=True, verbose=False)
    spans = {}
    for name, index in (("plain", plain), ("padded", padded)):
        for method in ("maxsim", "votes"):
            chain = (
                SliceSearch(ex, index, k=5)
                >> CountVotes()
                >> MaxSimRerank(top=1)
                >> Localize(method=method)
            )
            hits = chain.retrieve(query)
            spans[name, method] = (int(hits.extra["loc_first"][0]), int(hits.extra["loc_last"][0]))
    for method in ("maxsim", "votes"):
        first, last = spans["plain", method]
        assert spans["padded", method] == (first + 9, last + 9)
    assert spans["plain", "maxsim"] == (20, 58)  # the query is slices 20, 22, ..., 58
    assert spans["plain", "votes"][0] <= 20 and spans["plain", "votes"][1] >= 58  # any vote


# --- search and re-ranking mechanics ---------------------------------------------------------


class FlagEmbedder:
    """Query slice z embeds as row z of ``vectors``; ``flags`` says which are informative."""

    def __init__(self, vectors: npt.NDArray[np.float32], flags: npt.NDArray[np.bool_]) -> None:
        self.vectors, self.flags = vectors, flags

    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        return self.vectors if slices is None else self.vectors[slices]

    def informative_slices(
        self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.bool_]:
        return self.flags if slices is None else self.flags[slices]

    def to_config(self) -> dict[str, Any]:
        return {"name": "flags"}


def _unit(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    a = np.asarray(x, np.float32)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_each_query_slice_keeps_k_hits_when_its_neighbours_are_blank() -> None:
    rng = np.random.default_rng(0)
    q = _unit(np.r_[1.0, np.zeros(7)] + 0.01 * rng.normal(size=(3, 8)))
    index = ExactIndex(8, extractor_config={"name": "flags"})
    # 40 blank slices closest to every query slice, then 12 informative ones
    near = _unit(np.r_[1.0, np.zeros(7)] + 0.02 * rng.normal(size=(40, 8)))
    index.add("blanky", near, slice_meta={"informative": np.zeros(40, bool)})
    index.add("real", _unit(np.r_[1.0, 1.0, np.zeros(6)] + 0.1 * rng.normal(size=(12, 8))))
    vol = Volume("q", np.zeros((3, 2, 2), np.float32))
    ex = FlagEmbedder(q, np.ones(3, bool))
    hits = SliceSearch(ex, index, k=5).retrieve(vol)
    assert len(hits) == 15 and set(hits.volume_id) == {"real"}
    assert sorted(hits.rank.tolist()) == sorted([1, 2, 3, 4, 5] * 3)
    old = SliceSearch(ex, index, k=5, keep_blank=True).retrieve(vol)
    assert set(old.volume_id) == {"blanky"}
    # combined with leave-one-out: own volume and blank slices both left out
    index.add("q", q)
    loo = SliceSearch(ex, index, k=5, exclude_source=True).retrieve(vol)
    assert len(loo) == 15 and set(loo.volume_id) == {"real"}


def test_blank_query_slices_do_not_search_unless_kept(caplog: pytest.LogCaptureFixture) -> None:
    index = ExactIndex(4, extractor_config={"name": "flags"})
    index.add("a", np.eye(4))
    vol = Volume("q", np.zeros((4, 2, 2), np.float32))
    flags = np.array([True, False, True, False])
    hits = SliceSearch(FlagEmbedder(np.eye(4, dtype=np.float32), flags), index, k=2).retrieve(vol)
    assert sorted(set(hits.query_slice.tolist())) == [0, 2]
    kept = SliceSearch(
        FlagEmbedder(np.eye(4, dtype=np.float32), flags), index, k=2, keep_blank=True
    )
    assert sorted(set(kept.retrieve(vol).query_slice.tolist())) == [0, 1, 2, 3]
    assert repr(kept) == "SliceSearch(k=2, keep_blank=True)"
    blank = FlagEmbedder(np.eye(4, dtype=np.float32), np.zeros(4, bool))
    with caplog.at_level(logging.WARNING, logger="cbirlib.search"):
        out = (SliceSearch(blank, index, k=2) >> CountVotes()).retrieve(vol)
    assert len(out) == 0 and "all 4 query slices are blank" in caplog.text


def test_maxsim_ignores_blank_slices_on_both_sides() -> None:
    e = np.eye(4, dtype=np.float32)
    index = ExactIndex(4, extractor_config={"name": "flags"})
    # volume "a": slices 0-3; slice 3 (= e3) is blank
    index.add(
        "a",
        e,
        slice_meta={
            "informative": np.array([True, True, True, False]),
            "slice_index": np.array([10, 11, 12, 13]),
        },
    )
    q = np.stack([e[0], e[3], _unit([0, 0, 1, 1])])  # query slice 1 (= e3) is blank
    vol = Volume("q", np.zeros((3, 2, 2), np.float32))
    ex = FlagEmbedder(q, np.array([True, False, True]))
    chain = SliceSearch(ex, index, k=4, keep_blank=True) >> CountVotes()
    ctx_hits = (chain >> MaxSimRerank(top=1) >> Localize()).retrieve(vol)
    # informative query slices 0 and 2 against informative rows 0-2: (1 + 0.7071) / 2
    assert ctx_hits.score[0] == pytest.approx((1 + np.sqrt(0.5)) / 2, rel=1e-5)
    assert (int(ctx_hits.extra["loc_first"][0]), int(ctx_hits.extra["loc_last"][0])) == (10, 12)
    old = (chain >> MaxSimRerank(top=1, keep_blank=True) >> Localize()).retrieve(vol)
    assert old.score[0] == pytest.approx((1 + 1 + np.sqrt(0.5)) / 3, rel=1e-5)
    assert (int(old.extra["loc_first"][0]), int(old.extra["loc_last"][0])) == (10, 13)
    assert repr(MaxSimRerank(keep_blank=True)) == "MaxSimRerank(top=20, keep_blank=True)"


# --- every modality but CT is windowed by percentiles, flags included ----------------------


def _real_mr() -> npt.NDArray[np.float32]:
    """nibabel's shipped anatomical MR (a real scan, 25 slices), as ``(Z, Y, X)``."""
    import nibabel as nib

    path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    img = nib.as_closest_canonical(nib.load(path))
    return np.ascontiguousarray(img.get_fdata(dtype=np.float32).transpose(2, 1, 0))


@pytest.mark.parametrize("modality", ["PT", "NM", "unknown"])
def test_other_modalities_are_flagged_in_the_window_the_extractor_uses(modality: str) -> None:
    """A PET (or a volume of unknown modality, guessed MR) was flagged in the CT window.

    Its intensities (SUV 0-12, or z-scores) all lie below -500 HU's body threshold, so
    every slice was blank and the volume could never be retrieved, while the extractor
    windowed it by percentiles, as MR.
    """
    mr = _real_mr()
    array = mr / mr.max() * 12.0 if modality != "unknown" else (mr - mr.mean()) / mr.std()
    as_mr = informative_slices(Volume("mr", array, modality="MR"))
    volume = Volume("v", array, modality=modality)
    ex = BaselineExtractor()
    assert extractor_window(ex, volume) == "percentile"
    flags = slice_flags(ex, volume)
    assert flags.sum() >= 0.8 * len(flags)
    assert np.array_equal(flags, as_mr)


def test_a_pet_volume_is_retrieved_by_itself_and_localized(tmp_path: Path) -> None:
    mr = _real_mr()
    pet = Volume("pet", mr / mr.max() * 12.0, spacing=(3.0, 2.0, 2.0), modality="PT")
    other = Volume("other", np.roll(pet.array, 40, axis=2)[::-1].copy(), modality="PT")
    ex = BaselineExtractor()
    index = build_index([pet, other], ex, tmp_path / "idx", exact=True, verbose=False)
    assert index.slice_meta("pet")["informative"].mean() >= 0.8
    chain = SliceSearch(ex, index, k=5) >> CountVotes() >> MaxSimRerank(top=2) >> Localize()
    found = chain.retrieve(pet)
    assert found.volume_id[0] == "pet"
    flags = index.slice_meta("pet")["informative"]
    body = np.flatnonzero(flags)
    span = (int(found.extra["loc_first"][0]), int(found.extra["loc_last"][0]))
    assert span == (body[0], body[-1])
