"""Saving and loading slice indexes: round trips, validation, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cbirlib.errors import DimensionMismatchError, IndexFormatError
from cbirlib.index import ExactIndex, HnswConfig, SliceIndex
from cbirlib.index.files import backup_path
from cbirlib.index.meta import meta_checksum

KINDS = [SliceIndex, ExactIndex]

MAKE_SRC = """
import numpy as np
from cbirlib.index import SliceIndex, HnswConfig

def make(seed, n_volumes=12, n_slices=60, dim=24):
    rng = np.random.default_rng(seed)
    index = SliceIndex(dim, config=HnswConfig(M=8, ef_construction=40, ef_search=30 + seed),
                       extractor_config={"name": "fake", "seed": seed})
    for v in range(n_volumes):
        x = rng.normal(size=(n_slices, dim)).cumsum(axis=0)
        index.add(f"s{seed}-v{v}", x, slice_meta={"z_mm": np.arange(n_slices) * 1.5})
    return index
"""
_ns: dict[str, object] = {}
exec(MAKE_SRC, _ns)
make = _ns["make"]


def assert_same(
    a: SliceIndex | ExactIndex, b: SliceIndex | ExactIndex, *, same_graph: bool = True
) -> None:
    assert type(a) is type(b)
    assert a.volume_ids == b.volume_ids and len(a) == len(b) and a.dim == b.dim
    assert a.ef == b.ef and a.config == b.config and a.extractor_config == b.extractor_config
    for vid in a.volume_ids:
        np.testing.assert_array_equal(a.vectors(vid), b.vectors(vid))
        for key, value in a.slice_meta(vid).items():
            np.testing.assert_array_equal(value, b.slice_meta(vid)[key])
    if not same_graph:  # a rebuilt HNSW graph (multithreaded insertion) may differ
        some = a.volume_ids[-1]
        m = b.search(a.vectors(some), k=1)
        assert (m.volume_ids[:, 0] == some).all()
        return
    q = np.random.default_rng(99).normal(size=(10, a.dim))
    ma, mb = a.search(q, k=8), b.search(q, k=8)
    np.testing.assert_array_equal(ma.volume_ids, mb.volume_ids)
    np.testing.assert_array_equal(ma.slice_indices, mb.slice_indices)
    np.testing.assert_array_equal(ma.scores, mb.scores)
    np.testing.assert_array_equal(ma.z_mm, mb.z_mm)


def filled(cls: type, store_dtype: str = "float32", seed: int = 0) -> SliceIndex | ExactIndex:
    rng = np.random.default_rng(seed)
    index = cls(
        16,
        config=HnswConfig(M=8, ef_construction=50, ef_search=77, store_dtype=store_dtype),
        extractor_config={"name": "fake", "window": [-1000, 1000]},
    )
    for v in range(8):
        n = int(rng.integers(5, 30))
        index.add(f"v{v}", rng.normal(size=(n, 16)), slice_meta={"z_mm": rng.normal(size=n)})
    index.remove("v2")
    index.remove("v5")
    index.add("v2", rng.normal(size=(4, 16)))  # re-added under fresh labels
    return index


@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
@pytest.mark.parametrize("cls", KINDS)
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(cls: type, store_dtype: str, mmap: bool, tmp_path: Path) -> None:
    index = filled(cls, store_dtype)
    index.ef = 91
    index.save(tmp_path / "idx")
    loaded = cls.load(tmp_path / "idx", mmap=mmap)
    assert loaded.ef == 91  # hnswlib does not save ef: we do
    assert_same(index, loaded)
    assert loaded.volume_ids == ["v0", "v1", "v3", "v4", "v6", "v7", "v2"]
    # the loaded index keeps working: add, remove, save again over itself
    loaded.add("new", np.ones((3, 16)))
    loaded.remove("v0")
    loaded.save(tmp_path / "idx")
    assert_same(loaded, cls.load(tmp_path / "idx"))


def test_directory_is_self_describing_and_pickle_free(tmp_path: Path) -> None:
    filled(SliceIndex).save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["format"] == 1 and meta["kind"] == "hnsw" and meta["dim"] == 16
    assert meta["ef"] == 77 and meta["config"]["M"] == 8
    assert meta["extractor_config"] == {"name": "fake", "window": [-1000, 1000]}
    assert meta["counts"]["volumes"] == 7
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert set(meta["files"]) == set(files) - {"meta.json"}
    assert "vectors.npy" not in files  # float32 vectors are read back from the graph file
    for name in files:
        if name.endswith(".npy"):
            np.load(tmp_path / "idx" / name, allow_pickle=False)
    assert np.load(tmp_path / "idx" / "volumes.npy").dtype.kind == "U"


def test_float32_vectors_are_memory_mapped_views(tmp_path: Path) -> None:
    index = filled(ExactIndex)
    index.save(tmp_path / "e")
    v = ExactIndex.load(tmp_path / "e").vectors("v3")
    assert isinstance(v.base, np.memmap) or isinstance(v, np.memmap)
    filled(SliceIndex).save(tmp_path / "h")
    loaded = SliceIndex.load(tmp_path / "h")
    assert not loaded.vectors("v1").flags.owndata


def test_exact_index_compacts_removed_rows_on_save(tmp_path: Path) -> None:
    index = filled(ExactIndex)
    index.save(tmp_path / "idx")
    rows = np.load(tmp_path / "idx" / "vectors.npy", mmap_mode="r").shape[0]
    assert rows == len(index)


@pytest.mark.parametrize("cls", KINDS)
def test_empty_index_round_trip(cls: type, tmp_path: Path) -> None:
    cls(5).save(tmp_path / "idx")
    loaded = cls.load(tmp_path / "idx")
    assert len(loaded) == 0 and loaded.search(np.ones((2, 5)), k=3).scores.shape == (2, 0)


def _meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def test_unknown_format_version(tmp_path: Path) -> None:
    filled(SliceIndex).save(tmp_path / "idx")
    meta = _meta(tmp_path / "idx")
    meta["format"] = 99
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=r"format 99.*format 1"):
        SliceIndex.load(tmp_path / "idx")


@pytest.mark.parametrize("name", ["hnsw.bin", "spans.npy", "z_mm.npy", "volumes.npy"])
def test_truncated_file(name: str, tmp_path: Path) -> None:
    filled(SliceIndex).save(tmp_path / "idx")
    file = tmp_path / "idx" / name
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(IndexFormatError, match=name):
        SliceIndex.load(tmp_path / "idx", verify=False)


@pytest.mark.parametrize("cls", KINDS)
def test_checksum_mismatch(cls: type, tmp_path: Path) -> None:
    filled(cls, "float16").save(tmp_path / "idx")
    file = tmp_path / "idx" / "vectors.npy" if cls is ExactIndex else tmp_path / "idx" / "hnsw.bin"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # same size, one flipped byte
    file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{file.name}.*sha256"):
        cls.load(tmp_path / "idx")


def test_missing_file_and_missing_index(tmp_path: Path) -> None:
    filled(SliceIndex, "float16").save(tmp_path / "idx")
    (tmp_path / "idx" / "vectors.npy").unlink()
    with pytest.raises(IndexFormatError, match=r"vectors\.npy.*missing"):
        SliceIndex.load(tmp_path / "idx")
    with pytest.raises(IndexFormatError, match="no index"):
        SliceIndex.load(tmp_path / "nothing")


def test_dimension_mismatch_on_load(tmp_path: Path) -> None:
    filled(SliceIndex).save(tmp_path / "idx")
    with pytest.raises(DimensionMismatchError, match="dimension 16, expected 32"):
        SliceIndex.load(tmp_path / "idx", dim=32)
    # a meta.json that lies about the dimension (checksums of the data files still match)
    meta = _meta(tmp_path / "idx")
    meta["dim"] = 8
    meta["checksum"] = meta_checksum(meta)  # crafted consistently: only the layout can tell
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DimensionMismatchError, match=r"hnsw\.bin.*dimension 16, expected 8"):
        SliceIndex.load(tmp_path / "idx")


def test_wrong_kind(tmp_path: Path) -> None:
    filled(ExactIndex).save(tmp_path / "idx")
    with pytest.raises(IndexFormatError, match=r"ExactIndex\.load"):
        SliceIndex.load(tmp_path / "idx")


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(IndexFormatError, match="refusing to overwrite"):
        filled(SliceIndex).save(tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"


def test_load_recovers_backup_left_between_renames(tmp_path: Path) -> None:
    index = filled(SliceIndex)
    index.save(tmp_path / "idx")
    os.rename(tmp_path / "idx", backup_path(tmp_path / "idx"))  # crash after 1st rename
    (tmp_path / ".idx.tmp-crashed").mkdir()  # and a half-written temp dir
    assert_same(index, SliceIndex.load(tmp_path / "idx"))
    index.add("later", np.ones((2, 16)))
    index.save(tmp_path / "idx")  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert_same(index, SliceIndex.load(tmp_path / "idx"))


SAVE_LOOP = (
    MAKE_SRC
    + """
import sys
a, b = make(0), make(1)
print("ready", flush=True)
i = 0
while True:
    (a if i % 2 else b).save(sys.argv[1])
    i += 1
"""
)


def test_sigkill_during_save_leaves_old_or_new_index(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    a, b = make(0), make(1)
    a.save(path)
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    rng = random.Random(1234)
    seen = {"s0-v0": 0, "s1-v0": 0}
    start = time.monotonic()
    trials = 0
    while trials < 20 and time.monotonic() - start < 25:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        loaded = SliceIndex.load(path)
        expected = a if loaded.volume_ids[0] == "s0-v0" else b
        assert_same(expected, loaded, same_graph=False)
        seen[loaded.volume_ids[0]] += 1
        trials += 1
    assert trials >= 10
    assert all(seen.values()), seen  # kills landed on both versions


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("counts"),
        lambda m: m.update(config={"M": 8, "bogus": 1}),
        lambda m: m.update(files=[1, 2]),
        lambda m: m["counts"].update(labels=3),
    ],
)
def test_malformed_meta(edit: Callable[[dict], object], tmp_path: Path) -> None:
    filled(SliceIndex).save(tmp_path / "idx")
    meta = _meta(tmp_path / "idx")
    edit(meta)
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=r"meta\.json"):
        SliceIndex.load(tmp_path / "idx")
