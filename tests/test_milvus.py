"""MilvusIndex on a real Milvus Lite file: the chain as on SliceIndex, add/remove/reopen, checks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cbirlib.datasets import make_phantoms
from cbirlib.errors import (
    DimensionMismatchError,
    DuplicateVolumeError,
    ExtractorMismatchError,
    IndexFormatError,
    VolumeNotInIndexError,
)
from cbirlib.index import ExactIndex, SliceIndex, load_index, open_index
from cbirlib.index.milvus import MilvusIndex
from cbirlib.informative import slice_flags
from cbirlib.plugins import create_extractor
from cbirlib.presets import default_chain
from cbirlib.search import SliceSearch, region_query
from cbirlib.volume import Volume

CONFIG = {"name": "demo", "version": 1}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One Milvus Lite file for the module (each test uses its own collection)."""
    return str(tmp_path_factory.mktemp("milvus") / "slices.db")


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Volume], list[Volume]]:
    """The baseline extractor, 5 database phantoms and 2 query phantoms."""
    data = make_phantoms(tmp_path_factory.mktemp("phantoms"), 7, shape=(32, 32), seed=3)
    volumes = [data.load(s) for s in data.subjects]
    return create_extractor("baseline"), volumes[:5], volumes[5:]


def _volumes(n: int, rng: np.random.Generator, dim: int = 8) -> dict[str, np.ndarray]:
    return {f"v{i}": rng.normal(size=(int(rng.integers(3, 9)), dim)) for i in range(n)}


def test_chain_gives_the_same_results_as_slice_index(db: str, phantom_set: Any) -> None:
    extractor, database, queries = phantom_set
    hnsw = SliceIndex(extractor.dim, extractor_config=extractor.to_config())
    milvus = MilvusIndex(
        db, extractor.dim, collection="chain", extractor_config=extractor.to_config()
    )
    first = database[0]  # padded with blank air slices below, as real scans are
    air = np.full((6, *first.shape[1:]), -1000.0, np.float32)
    padded = Volume(
        first.id,
        np.concatenate([air, first.array]),
        first.spacing,
        z_positions=np.concatenate(
            [first.z_positions[0] - first.spacing[0] * np.arange(6, 0, -1), first.z_positions]
        ),
        modality="CT",
        source=first.source,
    )
    for vol in [padded, *database[1:]]:
        emb = extractor.extract(vol)
        meta = {"z_mm": vol.z_positions, "informative": slice_flags(extractor, vol)}
        hnsw.add(vol.id, emb, slice_meta=meta, modality="CT", source=vol.source)
        milvus.add(vol.id, emb, slice_meta=meta, modality="CT", source=vol.source)
    assert not milvus.slice_meta(first.id)["informative"][:6].any()
    np.testing.assert_array_equal(
        milvus.slice_meta(first.id)["informative"], hnsw.slice_meta(first.id)["informative"]
    )
    assert milvus.modalities == hnsw.modalities == {v.id: "CT" for v in database}
    assert milvus.sources == hnsw.sources and milvus.source(first.id) == first.source
    assert first.source is not None and first.source.subject == first.id
    region = region_query(queries[0], next(iter(queries[0].labels.volume_structures())))
    asked = [*queries, region]
    results = []
    for index in (hnsw, milvus):
        chain = default_chain(SliceSearch(extractor, index, k=30), top=4)
        results.append(chain.retrieve(asked).to_pandas())
    want, got = results
    assert len(want) == len(got) >= 2 * len(asked)
    assert got["query_id"].tolist() == want["query_id"].tolist()
    assert got["volume_id"].tolist() == want["volume_id"].tolist()
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-4)
    for column in ("loc_first", "loc_last"):
        assert got[column].tolist() == want[column].tolist()
    milvus.close()


def test_search_and_vectors_match_exact_search(db: str) -> None:
    rng = np.random.default_rng(0)
    exact = ExactIndex(8)
    milvus = MilvusIndex(db, 8, collection="exact")
    for vid, x in _volumes(12, rng).items():
        z = rng.normal(size=len(x))
        exact.add(vid, x, slice_meta={"z_mm": z, "slice_index": np.arange(len(x)) * 2})
        milvus.add(vid, x, slice_meta={"z_mm": z, "slice_index": np.arange(len(x)) * 2})
    q = rng.normal(size=(6, 8))
    a, b = milvus.search(q, k=7), exact.search(q, k=7)
    np.testing.assert_array_equal(a.volume_ids, b.volume_ids)
    np.testing.assert_array_equal(a.slice_indices, b.slice_indices)
    np.testing.assert_array_equal(a.z_mm, b.z_mm)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert milvus.search(q, k=10_000).k == len(exact) == len(milvus)
    ids = ["v3", "v0", "v3"]
    (m, mo), (e, eo) = milvus.vectors_for(ids), exact.vectors_for(ids)
    np.testing.assert_array_equal(mo, eo)
    np.testing.assert_array_equal(m, e)  # the stored float32 vectors, bit for bit
    for vid in ("v0", "v11"):
        for key, value in exact.slice_meta(vid).items():
            np.testing.assert_array_equal(milvus.slice_meta(vid)[key], value)
    milvus.close()


def test_searches_use_ef_of_at_least_4k(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As SliceIndex: a search for k neighbours keeps at least 4 * k candidates."""
    rng = np.random.default_rng(2)
    milvus = MilvusIndex(db, 8, collection="ef_floor")
    for vid, x in _volumes(6, rng).items():
        milvus.add(vid, x)
    seen: list[int] = []
    search = milvus._client.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["search_params"]["params"]["ef"])
        return search(*args, **kwargs)

    monkeypatch.setattr(milvus._client, "search", spy)
    milvus.search(rng.normal(size=(2, 8)), k=5)  # the default ef = 128 is above 4 * 5
    milvus.ef = 8
    milvus.search(rng.normal(size=(2, 8)), k=5)
    assert seen == [128, 20]
    milvus.close()


def test_metadata_fetched_with_the_vectors_never_goes_stale(db: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 8))
    with MilvusIndex(db, 8, collection="meta_cache") as index:
        index.add("a", rng.normal(size=(3, 8)), slice_meta={"z_mm": np.arange(3.0)})
        index.add("b", x, slice_meta={"z_mm": np.arange(5.0) + 10})
        index.vectors_for(["b", "a"])  # brings the metadata of both along
        meta = index.slice_meta("b")
        np.testing.assert_array_equal(meta["z_mm"], np.arange(5.0) + 10)
        meta["z_mm"][:] = -1.0  # a copy: the index's own record is untouched
        np.testing.assert_array_equal(index.slice_meta("b")["z_mm"], np.arange(5.0) + 10)
        # b's label range is freed and, after refresh, handed to the new b
        index.remove("b")
        index.refresh()
        index.add("b", x, slice_meta={"z_mm": np.arange(5.0) - 7, "slice_index": np.arange(5) + 3})
        for meta in (index.slice_meta("b"), index.slice_meta("b")):
            np.testing.assert_array_equal(meta["z_mm"], np.arange(5.0) - 7)
            np.testing.assert_array_equal(meta["slice_index"], np.arange(5) + 3)
        index.vectors_for(["b"])
        np.testing.assert_array_equal(index.slice_meta("b")["z_mm"], np.arange(5.0) - 7)
        index.drop()


def test_add_remove_and_reopen(db: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    volumes = _volumes(5, rng)
    with MilvusIndex(db, 8, collection="crud", extractor_config=CONFIG) as index:
        for vid, x in volumes.items():
            index.add(vid, x)
        with pytest.raises(DuplicateVolumeError):
            index.add("v1", volumes["v1"])
        index.remove("v1")
        with pytest.raises(VolumeNotInIndexError):
            index.remove("v1")
        with pytest.raises(VolumeNotInIndexError):
            index.vectors("v1")
        index.add("v5", volumes["v1"])  # new labels after a removal
        index.ef = 64
        hits = index.search(volumes["v1"], k=len(index))
        assert "v1" not in set(hits.volume_ids.ravel())
        index.save(tmp_path / "pointer")
    with MilvusIndex.open(db, collection="crud") as again:
        assert again.volume_ids == ["v0", "v2", "v3", "v4", "v5"]
        assert len(again) == sum(len(x) for x in volumes.values())
        assert again.n_volumes == 5 and again.ef == 64
        assert again.extractor_config == CONFIG
        np.testing.assert_allclose(
            again.vectors("v5"),
            volumes["v1"] / np.linalg.norm(volumes["v1"], axis=1, keepdims=True),
            atol=1e-6,
        )
        top = again.search(volumes["v1"][:1], k=1)
        assert top.volume_ids[0, 0] == "v5" and top.slice_indices[0, 0] == 0
    with pytest.raises(IndexFormatError, match="open_index"):
        load_index(tmp_path / "pointer")
    loaded = open_index(tmp_path / "pointer")
    assert isinstance(loaded, MilvusIndex) and loaded.volume_ids == again.volume_ids
    loaded.close()


def test_mismatched_extractor_and_dimension_raise(db: str) -> None:
    MilvusIndex(db, 8, collection="checks", extractor_config=CONFIG).close()
    with pytest.raises(ExtractorMismatchError, match="'demo'"):
        MilvusIndex.open(db, collection="checks", extractor_config={"name": "dinov2"})
    with pytest.raises(DimensionMismatchError):
        MilvusIndex(db, 16, collection="checks")
    with MilvusIndex.open(db, collection="checks") as index:
        with pytest.raises(ExtractorMismatchError):
            index.check_extractor(create_extractor("baseline").to_config())
        with pytest.raises(DimensionMismatchError):
            index.add("x", np.ones((2, 5)))
    with pytest.raises(IndexFormatError, match="no collection 'absent'"):
        MilvusIndex.open(db, collection="absent")


def test_another_format_version_is_refused(db: str) -> None:
    from pymilvus import MilvusClient

    MilvusIndex(db, 8, collection="old").close()
    client = MilvusClient(db)
    meta = json.loads(client.describe_collection("old")["properties"]["cbirlib.meta"])
    meta["format"] = 99
    client.alter_collection_properties("old", properties={"cbirlib.meta": json.dumps(meta)})
    client.close()
    with pytest.raises(IndexFormatError, match="format 99"):
        MilvusIndex.open(db, collection="old")


def test_a_second_process_gets_a_named_error(tmp_path: Path) -> None:
    uri = str(tmp_path / "locked.db")
    script = textwrap.dedent(
        f"""
        from cbirlib.errors import IndexInUseError
        from cbirlib.index.milvus import MilvusIndex
        try:
            MilvusIndex({uri!r}, 4)
        except IndexInUseError as exc:
            print("IN USE:", exc)
        else:
            print("OPENED")
        """
    )

    def other_process() -> str:
        run = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        return run.stdout

    index = MilvusIndex(uri, 4)
    out = other_process()
    assert "IN USE:" in out and "one process at a time" in out, out
    index.close()  # frees the file
    assert "OPENED" in other_process()


def test_an_add_cut_short_is_never_listed_and_is_swept(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pymilvus import MilvusClient

    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 8)).astype(np.float32)
    with MilvusIndex(db, 8, collection="crash") as index:
        index.add("v0", x)
    # what a crash between two insert batches leaves: rows of "cut" without its first row
    client = MilvusClient(db)
    client.insert(
        "crash",
        [
            {
                "label": 4 + i,
                "volume_id": "cut",
                "pos": i,
                "n_slices": 3,
                "slice_index": i,
                "z_mm": 0.0,
                "informative": True,
                "modality": "unknown",
                "source": "",
                "vector": x[i] / np.linalg.norm(x[i]),
            }
            for i in (1, 2)
        ],
    )
    client.close()
    with MilvusIndex.open(db, collection="crash") as index:
        assert index.volume_ids == ["v0"] and len(index) == 4
        assert set(index.search(x, k=4).volume_ids.ravel()) == {"v0"}
        with caplog.at_level("WARNING", logger="cbirlib.index.milvus"):
            index.add("cut", x[:3])
        assert "did not finish" in caplog.text
        assert index._count("label >= 0") == len(index) == 7
        np.testing.assert_allclose(
            index.vectors("cut"), x[:3] / np.linalg.norm(x[:3], axis=1, keepdims=True), atol=1e-6
        )
