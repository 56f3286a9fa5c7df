"""Reliability: concurrent save/load, hostile index folders (issue 10)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cbirlib.errors import CbirError, IndexFormatError, VolumeNotInIndexError
from cbirlib.index import ExactIndex, SliceIndex
from tests.fakes import META_EDITS, small_index, write_meta

SAVER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from cbirlib.index import SliceIndex, HnswConfig

    def version(tag, n_vol):
        rng = np.random.default_rng(tag)
        index = SliceIndex(8, config=HnswConfig(M=8, ef_construction=40))
        for v in range(n_vol):
            x = rng.normal(size=(20, 8)) + 0.0
            x[:, 0] = tag * 100 + v  # each row tells its version and volume
            index.add(f"t{tag}-v{v}", x)
        return index

    path, seconds = sys.argv[1], float(sys.argv[2])
    versions = [version(1, 6), version(2, 9)]
    versions[0].save(path)
    print("ready", flush=True)
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        versions[i % 2].save(path)
        i += 1
    print(i, flush=True)
    """
)


_ns: dict[str, Any] = {}
exec(SAVER.split("path, seconds")[0], _ns)
EXPECTED = {tag: _ns["version"](tag, n) for tag, n in ((1, 6), (2, 9))}


def _check_whole(index: SliceIndex) -> int:
    """The version an index is, raising AssertionError if it mixes two."""
    tags = {vid.split("-")[0] for vid in index.volume_ids}
    assert len(tags) == 1, index.volume_ids
    tag = int(next(iter(tags))[1:])
    expected = EXPECTED[tag]
    assert index.volume_ids == expected.volume_ids
    for vid in index.volume_ids:
        np.testing.assert_array_equal(index.vectors(vid), expected.vectors(vid))
    some = index.volume_ids[-1]
    assert (index.search(index.vectors(some)[:3], k=1).volume_ids[:, 0] == some).all()
    return tag


def test_loads_during_saves_are_never_mixed(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(path), "8"], stdout=subprocess.PIPE, text=True
    )
    assert saver.stdout is not None
    try:
        assert saver.stdout.readline().strip() == "ready"
        seen: dict[int, int] = {1: 0, 2: 0}
        loads = 0
        end = time.monotonic() + 7
        while time.monotonic() < end:
            index = SliceIndex.load(path)  # any exception fails the test
            seen[_check_whole(index)] += 1
            loads += 1
        saves = int(saver.stdout.readline())
        saver.wait(timeout=30)
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.wait()
        saver.stdout.close()
    assert loads >= 20 and saves >= 20, (loads, saves)
    assert seen[1] and seen[2], seen


def _meta(path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
    return meta


def _replace_file(path: Path, name: str, data: bytes) -> None:
    """Swap one index file and update meta.json to match, as a crafted index would."""
    (path / name).write_bytes(data)
    meta = _meta(path)
    meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_meta(path, meta)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(META_EDITS))
def test_malformed_meta_values_are_named_errors(case: str, tmp_path: Path) -> None:
    path = tmp_path / "idx"
    small_index().save(path)
    meta = _meta(path)
    META_EDITS[case](meta)
    write_meta(path, meta)
    t0 = time.monotonic()
    with pytest.raises(IndexFormatError) as info:
        SliceIndex.load(path)
    assert time.monotonic() - t0 < 2
    assert "\n" not in str(info.value)


def test_meta_json_is_covered_by_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    small_index().save(path)
    meta = _meta(path)
    meta["ef"] = 12  # a valid value, but not the saved one
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=r"meta\.json.*checksum"):
        SliceIndex.load(path)
    assert SliceIndex.load(path, verify=False).ef == 12


def test_duplicate_volume_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    small_index().save(path)
    _replace_file(path, "volumes.npy", _npy(np.array(["v0", "v1", "v1", "v3"])))
    with pytest.raises(IndexFormatError, match="twice"):
        SliceIndex.load(path)


def test_overlapping_spans_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    small_index(ExactIndex).save(path)
    spans = np.array([[0, 10], [5, 10], [20, 10], [30, 10]], np.int64)
    _replace_file(path, "spans.npy", _npy(spans))
    with pytest.raises(IndexFormatError, match="same slices"):
        ExactIndex.load(path)


def _patch_graph(path: Path, offset: int, value: bytes) -> None:
    data = bytearray((path / "hnsw.bin").read_bytes())
    data[offset : offset + len(value)] = value
    _replace_file(path, "hnsw.bin", bytes(data))


def test_graph_entry_point_out_of_range_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    small_index().save(path)
    _patch_graph(path, 52, np.uint32(10**6).tobytes())
    with pytest.raises(IndexFormatError, match="entry point"):
        SliceIndex.load(path)


def test_graph_link_out_of_range_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    small_index().save(path)
    _patch_graph(path, 96 + 4, np.uint32(10**6).tobytes())  # first neighbour of element 0
    with pytest.raises(IndexFormatError, match="links"):
        SliceIndex.load(path)


def test_graph_labels_duplicated_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    index = small_index()
    index.save(path)
    header = np.frombuffer((path / "hnsw.bin").read_bytes()[:48], "<u8")
    per_element, label_offset = int(header[3]), int(header[4])
    second_label = 96 + per_element + label_offset
    _patch_graph(path, second_label, (path / "hnsw.bin").read_bytes()[96 + label_offset :][:8])
    with pytest.raises(IndexFormatError, match="twice"):
        SliceIndex.load(path)


def test_a_genuinely_corrupt_index_fails_fast(tmp_path: Path) -> None:
    """A missing file is reported at once, not retried as if a save were running."""
    path = tmp_path / "idx"
    small_index().save(path)
    (path / "z_mm.npy").unlink()
    t0 = time.monotonic()
    with pytest.raises(IndexFormatError, match=r"z_mm\.npy.*missing") as info:
        SliceIndex.load(path)
    assert time.monotonic() - t0 < 1
    assert "/proc/self" not in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, CbirError)


def test_os_errors_become_named_errors_keeping_errno(tmp_path: Path) -> None:
    import errno

    from cbirlib.errors import IndexStorageError
    from cbirlib.index.files import atomic_write_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexStorageError) as info:
        small_index().save(tmp_path / "file" / "idx")  # the parent is a file
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST) and isinstance(info.value, OSError)
    assert "file" in str(info.value) and isinstance(info.value, CbirError)

    path = tmp_path / "idx"
    small_index().save(path)

    def full_disk(directory: Path) -> None:
        (directory / "a.npy").write_bytes(b"1")
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "a.npy"))

    with pytest.raises(IndexStorageError, match="No space left") as info:
        atomic_write_dir(path, full_disk)
    assert info.value.errno == errno.ENOSPC
    assert SliceIndex.load(path).n_volumes == 4  # the old index is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "idx"]  # no temp left


def test_index_folder_follows_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        small_index().save(tmp_path / "idx")
    finally:
        os.umask(old)
    assert (tmp_path / "idx").stat().st_mode & 0o777 == 0o755


def test_a_volume_removed_under_a_running_query_is_named_as_such() -> None:
    index = small_index()
    index.remove("v1")
    with pytest.raises(VolumeNotInIndexError, match="was removed from the index"):
        index.vectors("v1")
    with pytest.raises(VolumeNotInIndexError, match="is not in the index"):
        index.vectors("never")
    index.add("v1", np.ones((2, 8)))
    assert index.vectors("v1").shape == (2, 8)


def test_a_half_deleted_backup_is_removed_by_the_next_save(tmp_path: Path) -> None:
    """A kill during the final clean-up leaves INDEX.old half deleted; the next save ends it."""
    path = tmp_path / "idx"
    small_index().save(path)
    half = tmp_path / "idx.old"
    half.mkdir()
    (half / "hnsw.bin").write_bytes(b"partial")  # meta.json already gone
    index = SliceIndex.load(path)  # a reader leaves it (a save may be mid-swap)
    assert half.exists() and index.n_volumes == 4
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
