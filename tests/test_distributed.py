"""Distributed indexing on a real local Ray cluster (``cbirlib[ray]``, never skipped).

One two-CPU cluster is started for the module. The Ray build of a phantom set must give
the index that the single-process :func:`cbirlib.index.build_index` gives, and a build
whose driver is killed must resume without duplicating or losing a volume.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from cbirlib.datasets.phantom import make_phantoms
from cbirlib.datasets.totalsegmentator import IMAGE_FILE, TotalSegmentator
from cbirlib.distributed import ShardStore, build_index_ray, default_shard_dir, ray_sources
from cbirlib.errors import (
    ExtractorMismatchError,
    ShardError,
    UnknownExtractorError,
    VolumeNotFoundError,
    VolumeSourceError,
)
from cbirlib.index import BaseIndex, SliceIndex, build_index, load_index
from cbirlib.io import load_volume
from cbirlib.labels import SliceLabels
from cbirlib.plugins import create_extractor
from cbirlib.provenance import Source
from cbirlib.volume import Volume
from tests.fakes import start_local_ray

N_SUBJECTS = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local two-CPU Ray cluster for the module; yields its address."""
    context = start_local_ray()
    try:
        yield str(context.address_info["address"])
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> TotalSegmentator:
    return make_phantoms(tmp_path_factory.mktemp("phantoms") / "ds", N_SUBJECTS, shape=(32, 32))


@pytest.fixture(scope="module")
def reference(phantoms: TotalSegmentator, tmp_path_factory: pytest.TempPathFactory) -> BaseIndex:
    """The single-process build of the phantoms."""
    path = tmp_path_factory.mktemp("reference") / "idx"
    return build_index(phantoms, create_extractor("baseline"), path, verbose=False)


def assert_same_content(index: BaseIndex, reference: BaseIndex, *, provenance: bool = True) -> None:
    assert index.volume_ids == reference.volume_ids
    assert len(index) == len(reference)
    assert index.extractor_config == reference.extractor_config
    for vid in reference.volume_ids:
        np.testing.assert_allclose(index.vectors(vid), reference.vectors(vid), atol=1e-5)
        got, want = index.slice_meta(vid), reference.slice_meta(vid)
        np.testing.assert_array_equal(got["slice_index"], want["slice_index"])
        np.testing.assert_array_equal(got["z_mm"], want["z_mm"])
        np.testing.assert_array_equal(got["informative"], want["informative"])
    assert index.modalities == reference.modalities
    if not provenance:  # built from other files, without labels
        return
    assert index.sources == reference.sources  # where each volume came from
    assert all(source is not None for source in index.sources.values())
    assert index.labeled_volumes == reference.labeled_volumes == reference.volume_ids
    for vid in reference.volume_ids:
        got_labels, want_labels = index.labels(vid), reference.labels(vid)
        assert got_labels is not None and want_labels is not None
        assert got_labels.names == want_labels.names
        np.testing.assert_array_equal(got_labels.present, want_labels.present)


def test_ray_build_equals_the_single_process_build(
    cluster: str, phantoms: TotalSegmentator, reference: BaseIndex, tmp_path: Path
) -> None:
    path = tmp_path / "idx"
    index = build_index_ray(phantoms, "baseline", path, verbose=False)
    assert_same_content(index, reference)
    saved = load_index(path)  # a normal index folder
    assert isinstance(saved, SliceIndex)
    assert_same_content(saved, reference)
    query = reference.vectors(reference.volume_ids[1])[::10]
    got, want = saved.search(query, 5), reference.search(query, 5)
    np.testing.assert_array_equal(got.volume_ids, want.volume_ids)
    np.testing.assert_array_equal(got.slice_indices, want.slice_indices)
    assert not default_shard_dir(path).exists()  # merged, then removed


DRIVER = textwrap.dedent(
    """
    import sys, time
    from functools import partial
    import ray
    from cbirlib.datasets.totalsegmentator import TotalSegmentator
    from cbirlib.distributed import build_index_ray

    def slow_load(ds, subject):  # pickled by value: defined in __main__
        time.sleep(1.5)
        return ds.load(subject, labels=False)

    address, root, index = sys.argv[1:]
    ds = TotalSegmentator(root)
    ray.init(address=address, log_to_driver=False)
    sources = [(s, partial(slow_load, ds, s)) for s in ds.subjects]
    print("started", flush=True)
    build_index_ray(sources, "baseline", index, verbose=False)
    print("finished", flush=True)
    """
)


def test_a_killed_driver_resumes_without_duplicate_or_lost_volume(
    cluster: str, phantoms: TotalSegmentator, reference: BaseIndex, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(phantoms.root, root)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    path = tmp_path / "idx"
    store = ShardStore(default_shard_dir(path))
    proc = subprocess.Popen(
        [sys.executable, str(script), cluster, str(root), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 90
        while len(store) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    written = [s for s in reference.volume_ids if store.has(s)]
    assert 0 < len(written) < N_SUBJECTS, written  # killed mid-build
    assert not path.exists()  # the driver died before the merge
    for subject in written:  # a resumed build that read these again would fail
        (root / subject / IMAGE_FILE).unlink()
    sources = [
        (s, partial(load_volume, root / s / IMAGE_FILE, id=s, modality="CT"))
        for s in reference.volume_ids
    ]
    index = build_index_ray(sources, "baseline", path, verbose=False)
    assert_same_content(index, reference, provenance=False)  # every volume once, none lost
    assert_same_content(load_index(path), reference, provenance=False)


def test_errors_are_raised_as_themselves_and_keep_the_shards_before_them(
    cluster: str, phantoms: TotalSegmentator, tmp_path: Path
) -> None:
    path = tmp_path / "idx"
    good = [(s, partial(phantoms.load, s, labels=False)) for s in phantoms.subjects[:2]]
    bad = ("missing", partial(load_volume, tmp_path / "missing.nii.gz", id="missing"))
    with pytest.raises(VolumeNotFoundError, match="missing"):
        build_index_ray([*good, bad], "baseline", path, verbose=False, read_ahead=1)
    store = ShardStore(default_shard_dir(path))
    assert [store.has(s) for s, _ in good] == [True, True]
    with pytest.raises(ExtractorMismatchError, match="size"):  # shards made with size 64
        build_index_ray(good, "baseline", path, extractor_options={"size": 48}, verbose=False)
    with pytest.raises(UnknownExtractorError, match="no-such"):  # raised in the actor
        build_index_ray(good, "no-such-extractor", path, verbose=False)
    index = build_index_ray(good, "baseline", path, verbose=False, keep_shards=True)
    assert index.volume_ids == [s for s, _ in good]
    assert default_shard_dir(path).is_dir()


# --- without a cluster -----------------------------------------------------------------


def test_sources_need_known_unique_ids(phantoms: TotalSegmentator) -> None:
    volume = Volume("v", np.zeros((2, 4, 4), np.float32))
    pairs = ray_sources([volume, ("w", lambda: volume), phantoms.root / "s0000" / IMAGE_FILE])
    assert [vid for vid, _ in pairs] == ["v", "w", "ct"]
    assert [vid for vid, _ in ray_sources(phantoms)] == list(phantoms.subjects)
    with pytest.raises(VolumeSourceError, match="id before reading"):
        ray_sources([lambda: volume])
    with pytest.raises(VolumeSourceError, match="more than once"):
        ray_sources([volume, volume])


def test_shards_are_written_whole_and_checked_on_resume(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "shards")
    config: dict[str, Any] = {"name": "mean", "bins": 4}
    store.open(config, 3, resume=True)
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    store.write("a/b", emb, z_mm=[1.0, 3.5])
    leftover = store.directory / ".tmp-killed.npz"  # what a killed write leaves
    leftover.write_bytes(b"PK\x03")
    assert len(store) == 1  # the leftover is not a shard
    ShardStore(store.directory).open(config, 3, resume=True)
    assert not leftover.exists()
    shard = store.read("a/b")
    assert shard.volume_id == "a/b"
    np.testing.assert_array_equal(shard.embeddings, emb)
    np.testing.assert_array_equal(shard.slice_index, [0, 1])
    np.testing.assert_array_equal(shard.z_mm, [1.0, 3.5])
    np.testing.assert_array_equal(shard.informative, [True, True])  # the default
    assert shard.modality == "unknown"
    store.write("mr", emb, z_mm=[0.0, 1.0], informative=[False, True], modality="MR")
    assert store.read("mr").informative.tolist() == [False, True]
    assert store.read("mr").modality == "MR"
    assert shard.source is None and shard.labels is None  # none given
    source = Source(path="mr/s1.nii.gz", root="/data", subject="s1")
    labels = SliceLabels(("liver", "spleen"), np.array([[True, False], [False, True]]))
    store.write("kept", emb, z_mm=[0.0, 1.0], source=source, labels=labels)
    kept = store.read("kept")
    assert kept.source == source
    assert kept.labels is not None and set(kept.labels.names) == {"liver", "spleen"}
    assert [kept.labels.structures(i) for i in range(2)] == [{"liver"}, {"spleen"}]
    with np.load(store.path_of("a/b"), allow_pickle=False) as data:  # no pickled member
        assert sorted(data.files) == [
            "embeddings",
            "informative",
            "label_classes",
            "labels",
            "modality",
            "slice_index",
            "source",
            "volume_id",
            "z_mm",
        ]
    with pytest.raises(ExtractorMismatchError):
        store.open({"name": "mean", "bins": 8}, 3, resume=True)
    with pytest.raises(ShardError, match="no shard"):
        store.read("c")
    store.open({"name": "mean", "bins": 8}, 3, resume=False)  # starts over
    assert len(store) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="not empty"):
        ShardStore(tmp_path / "other").open(config, 3, resume=True)
