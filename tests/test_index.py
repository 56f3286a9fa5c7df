"""SliceIndex / ExactIndex: adding, removing, searching, vectors, bad inputs, concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbirlib.errors import (
    DimensionMismatchError,
    DuplicateVolumeError,
    ExtractorMismatchError,
    InvalidVolumeError,
    SliceIndexError,
    VolumeNotInIndexError,
)
from cbirlib.index import ExactIndex, ExtractorMismatchWarning, HnswConfig, SliceIndex

KINDS = [SliceIndex, ExactIndex]


def clustered(
    rng: np.random.Generator, n_volumes: int, n_slices: int, dim: int, n_centroids: int = 6
) -> dict[str, np.ndarray]:
    """Volumes as smooth random walks around a few anatomical-level centroids."""
    centroids = rng.normal(size=(n_centroids, dim))
    out = {}
    for v in range(n_volumes):
        walk = rng.normal(scale=0.08, size=(n_slices, dim)).cumsum(axis=0)
        noise = rng.normal(scale=0.02, size=(n_slices, dim))
        out[f"vol{v:03d}"] = (centroids[rng.integers(n_centroids)] + walk + noise).astype(
            np.float32
        )
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    return clustered(np.random.default_rng(0), 6, 20, 16)


def fill(cls: type, data: dict[str, np.ndarray], **kw: object) -> SliceIndex | ExactIndex:
    index = cls(16, **kw)
    for i, (vid, x) in enumerate(data.items()):
        index.add(vid, x, slice_meta={"z_mm": np.arange(len(x)) * 2.5 + i})
    return index


@pytest.mark.parametrize("cls", KINDS)
def test_keys_counts_and_metadata(cls: type, data: dict[str, np.ndarray]) -> None:
    index = fill(cls, data)
    assert len(index) == sum(len(x) for x in data.values())
    assert index.volume_ids == list(data)
    assert index.n_volumes == len(data)
    assert "vol002" in index and "nope" not in index
    meta = index.slice_meta("vol002")
    np.testing.assert_array_equal(meta["slice_index"], np.arange(20))
    np.testing.assert_allclose(meta["z_mm"], np.arange(20) * 2.5 + 2)
    np.testing.assert_allclose(index.vectors("vol002"), unit(data["vol002"]), atol=1e-6)


@pytest.mark.parametrize("cls", KINDS)
def test_search_finds_the_slice_itself_with_metadata(
    cls: type, data: dict[str, np.ndarray]
) -> None:
    index = fill(cls, data)
    queries = data["vol004"][[3, 11]]
    m = index.search(queries, k=5)
    assert m.scores.shape == (2, 5) and m.scores.dtype == np.float32
    assert m.volume_ids.tolist()[0][0] == "vol004" and m.volume_ids[1, 0] == "vol004"
    assert m.slice_indices[:, 0].tolist() == [3, 11]
    np.testing.assert_allclose(m.z_mm[:, 0], [3 * 2.5 + 4, 11 * 2.5 + 4])
    np.testing.assert_allclose(m.scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(m.scores, axis=1) <= 1e-6).all()  # descending per row
    # scores are cosine similarities of the returned slices
    for q in range(2):
        for j in range(5):
            v = index.vectors(m.volume_ids[q, j])[m.slice_indices[q, j]]
            assert m.scores[q, j] == pytest.approx(float(unit(queries)[q] @ v), abs=1e-5)


@pytest.mark.parametrize("cls", KINDS)
def test_partial_slice_index_metadata(cls: type) -> None:
    index = cls(4)
    x = np.random.default_rng(1).normal(size=(3, 4))
    index.add("v", x, slice_meta={"slice_index": np.array([0, 5, 10])})
    m = index.search(x[1], k=1)
    assert m.slice_indices.tolist() == [[5]]
    assert np.isnan(m.z_mm).all()  # unknown positions stay NaN


@pytest.mark.parametrize("cls", KINDS)
def test_k_larger_than_index_and_empty_index(cls: type) -> None:
    index = cls(4)
    empty = index.search(np.ones((3, 4)), k=10)
    assert empty.scores.shape == (3, 0) and empty.volume_ids.shape == (3, 0)
    index.add("a", np.eye(4)[:3])
    m = index.search(np.ones((2, 4)), k=50)
    assert m.scores.shape == (2, 3)
    assert sorted(m.slice_indices[0].tolist()) == [0, 1, 2]
    assert index.search(np.ones(4), k=0).scores.shape == (1, 0)


@pytest.mark.parametrize("cls", KINDS)
def test_remove_hides_volume_and_allows_readding(cls: type, data: dict[str, np.ndarray]) -> None:
    index = fill(cls, data)
    index.remove("vol001")
    assert "vol001" not in index and len(index) == 100
    m = index.search(data["vol001"], k=len(index))
    assert "vol001" not in set(m.volume_ids.ravel())
    with pytest.raises(VolumeNotInIndexError, match="vol001"):
        index.vectors("vol001")
    index.add("vol001", data["vol001"][:5])
    assert index.volume_ids[-1] == "vol001" and len(index) == 105
    assert index.search(data["vol001"][2], k=1).slice_indices.tolist() == [[2]]


def test_search_after_removing_almost_everything_returns_all_live() -> None:
    # hnswlib raises "contiguous 2D array" when fewer than k live items are reachable
    rng = np.random.default_rng(3)
    index = SliceIndex(8, config=HnswConfig(M=4, ef_construction=10, ef_search=2))
    for v in range(40):
        index.add(f"v{v}", rng.normal(size=(10, 8)))
    for v in range(39):
        index.remove(f"v{v}")
    m = index.search(rng.normal(size=(5, 8)), k=10)
    assert m.scores.shape == (5, 10)
    assert set(m.volume_ids.ravel()) == {"v39"}
    assert all(sorted(row) == list(range(10)) for row in m.slice_indices.tolist())
    assert index.ef == 2  # the temporary larger ef was reset


@pytest.mark.parametrize("cls", KINDS)
def test_vectors_for_concatenates_with_offsets(cls: type, data: dict[str, np.ndarray]) -> None:
    index = fill(cls, data)
    matrix, offsets = index.vectors_for(["vol003", "vol000"])
    assert matrix.dtype == np.float32 and matrix.shape == (40, 16)
    assert offsets.tolist() == [0, 20, 40] and offsets.dtype == np.int64
    np.testing.assert_array_equal(matrix[20:], index.vectors("vol000"))
    empty, off = index.vectors_for([])
    assert empty.shape == (0, 16) and off.tolist() == [0]


@pytest.mark.parametrize("cls", KINDS)
def test_bad_inputs(cls: type) -> None:
    index = cls(4)
    with pytest.raises(DimensionMismatchError, match=r"\(n, 4\)"):
        index.add("a", np.ones((3, 5)))
    with pytest.raises(InvalidVolumeError, match="NaN"):
        index.add("a", np.array([[1.0, np.nan, 0, 0]]))
    with pytest.raises(InvalidVolumeError, match="Inf"):
        index.add("a", np.array([[1.0, np.inf, 0, 0]]))
    with pytest.raises(InvalidVolumeError, match="zero"):
        index.add("a", np.zeros((2, 4)))
    with pytest.raises(SliceIndexError, match="valid keys"):
        index.add("a", np.ones((2, 4)), slice_meta={"zmm": np.zeros(2)})
    with pytest.raises(SliceIndexError, match=r"shape \(2,\)"):
        index.add("a", np.ones((2, 4)), slice_meta={"z_mm": np.zeros(3)})
    assert len(index) == 0 and index.volume_ids == []  # failed adds change nothing
    index.add("a", np.ones((2, 4)))
    with pytest.raises(DuplicateVolumeError, match="'a'"):
        index.add("a", np.ones((2, 4)))
    with pytest.raises(VolumeNotInIndexError, match=r"'b'.*'a'"):
        index.remove("b")
    with pytest.raises(KeyError):  # also a KeyError
        index.slice_meta("b")
    with pytest.raises(DimensionMismatchError):
        index.search(np.ones((1, 3)), k=1)
    with pytest.raises(InvalidVolumeError):
        index.search(np.full((1, 4), np.nan), k=1)
    with pytest.raises(SliceIndexError, match="k must be"):
        index.search(np.ones((1, 4)), k=-1)
    with pytest.raises(SliceIndexError, match="ef must be"):
        index.ef = 0


def test_config_validation_and_round_trip() -> None:
    cfg = HnswConfig(M=8, ef_construction=50, ef_search=20, store_dtype="float16")
    assert HnswConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SliceIndexError, match="float32, float16"):
        HnswConfig(store_dtype="int8")
    with pytest.raises(SliceIndexError, match="M must be"):
        HnswConfig(M=1)
    with pytest.raises(SliceIndexError, match="valid keys"):
        HnswConfig.from_dict({"m": 3})


@pytest.mark.parametrize("cls", KINDS)
def test_float16_store(cls: type, data: dict[str, np.ndarray]) -> None:
    index = fill(cls, data, config=HnswConfig(store_dtype="float16"))
    v = index.vectors("vol002")
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, unit(data["vol002"]), atol=2e-3)
    m = index.search(data["vol002"][7], k=1)
    assert (m.volume_ids[0, 0], m.slice_indices[0, 0]) == ("vol002", 7)


def test_extractor_mismatch_warns_or_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    index = SliceIndex(4, extractor_config={"name": "dinov2", "window": (-100, 200)})
    index.check_extractor({"name": "dinov2", "window": [-100, 200]})  # JSON-equal: silent
    with pytest.raises(
        ExtractorMismatchError, match=r"built with 'dinov2' \(dim 4\), vectors come from 'x'"
    ):
        index.check_extractor({"name": "x", "window": [-100, 200]})  # another name: always
    with pytest.warns(ExtractorMismatchWarning, match="window: index has") as record:
        index.check_extractor({"name": "dinov2", "window": [0, 1]})
    assert record[0].filename == __file__  # the warning points at the caller's line
    with pytest.raises(ExtractorMismatchError, match="window"):
        index.check_extractor({"name": "dinov2"}, strict=True)
    monkeypatch.setenv("CBIRLIB_STRICT", "1")
    with pytest.raises(ExtractorMismatchError):
        index.check_extractor({"name": "x"})
    SliceIndex(4).check_extractor({"name": "x"})  # nothing stored: nothing to compare


def test_hnsw_recall_at_10_against_exact() -> None:
    rng = np.random.default_rng(7)
    data = clustered(rng, 24, 150, 32)  # 3,600 vectors
    hnsw, exact = SliceIndex(32), ExactIndex(32)
    for vid, x in data.items():
        hnsw.add(vid, x)
        exact.add(vid, x)
    all_x = np.concatenate(list(data.values()))
    queries = all_x[rng.choice(len(all_x), 200)] + rng.normal(scale=0.05, size=(200, 32))
    a, b = hnsw.search(queries, k=10), exact.search(queries, k=10)
    hits = [
        len(
            set(zip(a.volume_ids[i], a.slice_indices[i], strict=True))
            & set(zip(b.volume_ids[i], b.slice_indices[i], strict=True))
        )
        for i in range(len(queries))
    ]
    assert np.mean(hits) / 10 >= 0.99
    assert np.mean(np.abs(a.scores[:, 0] - b.scores[:, 0]) < 1e-5) >= 0.98


def test_vectors_of_unsaved_saved_and_loaded_index_agree(tmp_path: Path) -> None:
    # An in-memory index serves vectors from its own float32 copy, a saved or loaded one
    # from the graph file: both must give exactly the vectors the graph searches with.
    data = clustered(np.random.default_rng(4), 5, 30, 16)
    index = SliceIndex(16)
    for vid, x in list(data.items())[:3]:
        index.add(vid, x)
    data["vol000"][:] = 0.0  # the index holds its own copy
    before, offsets = index.vectors_for(["vol002", "vol000", "vol001"])
    assert offsets.tolist() == [0, 30, 60, 90]
    expected = unit(clustered(np.random.default_rng(4), 5, 30, 16)["vol000"])
    np.testing.assert_allclose(before[30:60], expected, atol=1e-6)
    assert not index.vectors("vol001").flags.owndata  # a view of a contiguous store
    m = index.search(before, k=1)  # each stored vector is its own nearest neighbour
    np.testing.assert_allclose(m.scores[:, 0], 1.0, atol=1e-6)
    index.save(tmp_path / "idx")
    np.testing.assert_array_equal(index.vectors_for(["vol002", "vol000", "vol001"])[0], before)
    index.remove("vol001")
    index.add("vol003", data["vol003"])  # after the save: mixed file-backed and fresh rows
    index.add("vol001", data["vol004"])
    mixed, _ = index.vectors_for(["vol001", "vol000", "vol003"])
    np.testing.assert_allclose(mixed[:30], unit(data["vol004"]), atol=1e-6)
    np.testing.assert_array_equal(mixed[30:60], before[30:60])
    np.testing.assert_allclose(mixed[60:], unit(data["vol003"]), atol=1e-6)
    index.save(tmp_path / "idx")
    for loaded in (
        index,
        SliceIndex.load(tmp_path / "idx"),
        SliceIndex.load(tmp_path / "idx", mmap=False),
    ):
        np.testing.assert_array_equal(loaded.vectors_for(["vol001", "vol000", "vol003"])[0], mixed)
        got = loaded.search(mixed, k=1)
        assert got.volume_ids[:, 0].tolist() == ["vol001"] * 30 + ["vol000"] * 30 + ["vol003"] * 30


def test_capacity_grows_beyond_initial_allocation() -> None:
    rng = np.random.default_rng(2)
    index = SliceIndex(8, config=HnswConfig(M=8, ef_construction=40))
    x = rng.normal(size=(2600, 8))
    for v in range(13):
        index.add(f"v{v}", x[v * 200 : (v + 1) * 200])
    assert len(index) == 2600
    m = index.search(x[[5, 2555]], k=1)
    assert m.volume_ids[:, 0].tolist() == ["v0", "v12"]
    assert m.slice_indices[:, 0].tolist() == [5, 155]


@pytest.mark.parametrize("cls", KINDS)
def test_concurrent_searches_match_serial(cls: type) -> None:
    rng = np.random.default_rng(5)
    data = clustered(rng, 10, 60, 16)
    index = cls(16)
    for vid, x in data.items():
        index.add(vid, x)
    index.remove("vol003")
    batches = [rng.normal(size=(int(rng.integers(1, 30)), 16)) for _ in range(40)]
    serial = [index.search(q, k=7) for q in batches]
    # concurrent callers, one of which changes nothing but reads ef
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda q: index.search(q, k=7), batches))
    for s, p in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(s.volume_ids, p.volume_ids)
        np.testing.assert_array_equal(s.slice_indices, p.slice_indices)
        np.testing.assert_array_equal(s.scores, p.scores)


# --- model-based property test: SliceIndex vs ExactIndex over add/remove/save/load --------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 7), st.integers(1, 12)),
        st.tuples(st.just("remove"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("save_load"), st.just(0), st.just(0)),
        st.tuples(st.just("save"), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops, seed=st.integers(0, 2**16))
def test_random_operations_match_exact_model(
    ops: list[tuple[str, int, int]], seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rng = np.random.default_rng(seed)
    # ef large enough that HNSW search on these tiny sets is exact
    index = SliceIndex(6, config=HnswConfig(M=8, ef_construction=64, ef_search=200))
    model = ExactIndex(6)
    path = tmp_path_factory.mktemp("prop") / "idx"
    for op, v, n in ops:
        vid = f"v{v}"
        if op == "add":
            if vid in model:
                with pytest.raises(DuplicateVolumeError):
                    index.add(vid, np.ones((1, 6)))
                continue
            x = rng.normal(size=(n, 6))
            z = rng.normal(size=n)
            index.add(vid, x, slice_meta={"z_mm": z})
            model.add(vid, x, slice_meta={"z_mm": z})
        elif op == "remove":
            if vid not in model:
                with pytest.raises(VolumeNotInIndexError):
                    index.remove(vid)
                continue
            index.remove(vid)
            model.remove(vid)
        elif op == "save":  # keep using the saved object (its vectors now come from the file)
            index.save(path)
        else:
            index.save(path)
            index = SliceIndex.load(path)
        assert index.volume_ids == model.volume_ids and len(index) == len(model)
    for vid in model.volume_ids:
        np.testing.assert_allclose(index.vectors(vid), model.vectors(vid), atol=1e-6)
        np.testing.assert_array_equal(index.slice_meta(vid)["z_mm"], model.slice_meta(vid)["z_mm"])
    q = rng.normal(size=(4, 6))
    a, b = index.search(q, k=5), model.search(q, k=5)
    assert a.scores.shape == b.scores.shape == (4, min(5, len(model)))
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_deterministic_builds_give_the_same_graph_and_results(tmp_path) -> None:
    """Issue 11, item 3: the same vectors in the same order give the same index."""
    from cbirlib.index import HnswConfig, SliceIndex

    rng = np.random.default_rng(5)
    data = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = rng.normal(size=(50, 32)).astype(np.float32)
    results = []
    for run in range(3):
        index = SliceIndex(32, config=HnswConfig(M=8, ef_construction=40))
        for v in range(30):
            index.add(f"v{v}", data[v * 100 : (v + 1) * 100])
        index.save(tmp_path / f"i{run}")
        hits = index.search(queries, k=10)
        results.append(((tmp_path / f"i{run}" / "hnsw.bin").read_bytes(), hits))
    for graph, hits in results[1:]:
        assert graph == results[0][0]
        np.testing.assert_array_equal(hits.volume_ids, results[0][1].volume_ids)
        np.testing.assert_array_equal(hits.slice_indices, results[0][1].slice_indices)
        np.testing.assert_array_equal(hits.scores, results[0][1].scores)


def test_search_retry_logs_a_warning_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11, item 3: a search that hnswlib cannot answer at ``ef`` says why, and still
    returns the exact answer."""
    rng = np.random.default_rng(0)
    # a degenerate graph (M=2) with most of it deleted: hnswlib finds fewer than k live items
    index = SliceIndex(16, config=HnswConfig(M=2, ef_construction=4, ef_search=1))
    model = ExactIndex(16)
    for v in range(200):
        x = rng.normal(size=(10, 16))
        index.add(f"v{v}", x)
        model.add(f"v{v}", x)
    for v in range(200):
        if v % 20:
            index.remove(f"v{v}")
            model.remove(f"v{v}")
    q = rng.normal(size=(20, 16))
    with caplog.at_level("WARNING", logger="cbirlib.index.hnsw"):
        got = index.search(q, k=len(index))
    retries = [r for r in caplog.records if "retrying with ef=" in r.getMessage()]
    assert retries and all(r.levelname == "WARNING" for r in retries)
    # the first try runs at ef = 4 * k (search_ef), not at the index's ef = 1
    assert "fewer than k=100 items at ef=400" in retries[0].getMessage()
    assert "contiguous" in retries[0].getMessage()  # hnswlib's own reason is kept
    want = model.search(q, k=len(model))
    np.testing.assert_array_equal(got.volume_ids, want.volume_ids)
    np.testing.assert_array_equal(got.slice_indices, want.slice_indices)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)


def test_search_for_many_neighbours_widens_ef_with_k(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/results/index_scale.md: a region query's SliceSearch(k=100) on the default
    ef = 128 (hnswlib uses max(ef, k)) lost recall on low-contrast embeddings, and with it
    region-query answers. A search for k neighbours now keeps at least 4 * k candidates."""
    from cbirlib.index import config

    rng = np.random.default_rng(0)
    dim, noise = 64, 1.2  # 16 "body positions" along a path, slices = position + noise
    path = np.cumsum(rng.normal(size=(16, dim)), axis=0) + 3 * rng.normal(size=(1, dim))
    centres = unit(path)

    def slices(n: int) -> np.ndarray:
        x = centres[rng.integers(0, 16, n)] + noise / np.sqrt(dim) * rng.normal(size=(n, dim))
        return unit(x).astype(np.float32)

    x, queries = slices(5000), slices(50)
    index = SliceIndex(dim)  # the default HnswConfig (ef_search = 128)
    index.add("v", x)
    want = np.sort(queries @ x.T, axis=1)[:, ::-1][:, :100]

    assert config.search_ef(index.ef, 100) == 400 and config.search_ef(index.ef, 10) == 128
    recall = _tie_aware_recall(index.search(queries, k=100).scores, want).mean()
    assert recall >= 0.99
    monkeypatch.setattr(config, "EF_PER_K", 1)  # the old rule, ef = max(ef, k) = 128
    old = _tie_aware_recall(index.search(queries, k=100).scores, want).mean()
    assert old < 0.98  # this data does tell the two apart (0.96 at ef = 128)


def _tie_aware_recall(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per query: the share of returned slices at least as similar as the true k-th."""
    k = want.shape[1]
    return np.minimum((got >= want[:, -1:] - 1e-5).sum(axis=1), k) / k


def test_duplicate_heavy_data_keeps_recall_without_the_exact_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11, item 3: 25 % exact duplicates (blank slices) keep recall@10 >= 0.99."""
    rng = np.random.default_rng(0)
    n, dim = 4000, 64
    unique = rng.normal(size=(3000, dim)).astype(np.float32)
    blank = np.full((1, dim), 0.1, np.float32)  # one shared "blank slice" vector
    copies = np.concatenate([unique[rng.integers(0, 5, 500)], np.repeat(blank, 500, axis=0)])
    data = np.concatenate([unique, copies])[rng.permutation(n)]
    index, model = SliceIndex(dim), ExactIndex(dim)
    for v in range(40):
        index.add(f"v{v}", data[v * 100 : (v + 1) * 100])
        model.add(f"v{v}", data[v * 100 : (v + 1) * 100])
    near = data[rng.integers(0, n, 200)] + 0.01 * rng.normal(size=(200, dim))
    queries = np.concatenate([near, blank, unique[:5]]).astype(np.float32)
    with caplog.at_level("WARNING", logger="cbirlib.index.hnsw"):
        for step in ("built", "removed", "reloaded", "re-added"):
            if step == "removed":
                for v in range(0, 40, 3):
                    index.remove(f"v{v}")
                    model.remove(f"v{v}")
            elif step == "reloaded":
                index.save(tmp_path / "idx")
                index = SliceIndex.load(tmp_path / "idx")
            elif step == "re-added":
                for v in range(0, 40, 3):
                    index.add(f"w{v}", data[v * 100 : (v + 1) * 100])
                    model.add(f"w{v}", data[v * 100 : (v + 1) * 100])
            for k in (10, 100):
                got, want = index.search(queries, k), model.search(queries, k)
                assert got.scores.shape == want.scores.shape
                recall = _tie_aware_recall(got.scores, want.scores)
                # k=100 at the default ef=128 gives 0.96 on these random vectors even
                # without duplicates; the requirement is on recall@10
                assert recall.mean() >= (0.99 if k == 10 else 0.95), (step, k, recall.mean())
                assert set(got.volume_ids.ravel()) <= set(model.volume_ids)
            assert len(index) == len(model) and index.volume_ids == model.volume_ids
    assert not caplog.records  # no retry and no exact fallback was needed
    for vid in model.volume_ids:
        np.testing.assert_array_equal(index.vectors(vid), model.vectors(vid))
    # the 500 blank slices still are 500 live hits of the blank query
    hits = index.search(blank, k=len(index))
    n_blank = int((model.search(blank, k=len(model)).scores[0] > 1 - 1e-6).sum())
    assert n_blank >= 300 and int((hits.scores[0] > 1 - 1e-6).sum()) == n_blank


@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
def test_duplicates_share_one_graph_element_across_adds_saves_and_removals(
    tmp_path: Path, store_dtype: str
) -> None:
    from cbirlib.index.store import hnsw_file_vectors

    rng = np.random.default_rng(3)
    u, other = rng.normal(size=(1, 8)), rng.normal(size=(2, 8))
    index = SliceIndex(8, config=HnswConfig(store_dtype=store_dtype))
    index.add("a", np.concatenate([u, u, other, u]))
    index.add("b", u)
    index.save(tmp_path / "i")
    index = SliceIndex.load(tmp_path / "i")
    index.add("c", np.concatenate([u, u]))
    index.save(tmp_path / "i")
    _, elements = hnsw_file_vectors(tmp_path / "i" / "hnsw.bin", 8)
    assert len(elements) == 3  # u once, and the two other vectors

    def copies() -> list[tuple[str, int]]:
        hits = index.search(u, k=len(index))
        same = hits.scores[0] > 1 - 1e-6
        return sorted(zip(hits.volume_ids[0][same], hits.slice_indices[0][same], strict=True))

    assert copies() == [("a", 0), ("a", 1), ("a", 4), ("b", 0), ("c", 0), ("c", 1)]
    index.remove("a")  # the element of u stays in the graph for b's and c's copies
    assert copies() == [("b", 0), ("c", 0), ("c", 1)]
    index.remove("b")
    index.remove("c")
    assert copies() == []
    index.add("d", u)  # u comes back into the graph through its old element
    assert copies() == [("d", 0)]
    index.save(tmp_path / "i")
    again = SliceIndex.load(tmp_path / "i")
    assert again.volume_ids == ["d"] and again.search(u, k=1).volume_ids[0, 0] == "d"
