"""build_index: embedding, lazy sources, checkpoints, crash and resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cbirlib.errors import DimensionMismatchError, ExtractorError, ExtractorMismatchError
from cbirlib.index import ExactIndex, HnswConfig, SliceIndex
from cbirlib.index.build import build_index
from cbirlib.volume import Volume
from tests.fakes import FAKE_SRC, FakeExtractor, make_volumes


class FakeDataset:
    """A TotalSegmentator-like source: subjects listed, volumes read on demand."""

    def __init__(self, volumes: list[Volume]) -> None:
        self._volumes = {v.id: v for v in volumes}
        self.loaded: list[str] = []

    @property
    def subjects(self) -> list[str]:
        return list(self._volumes)

    def load(self, subject_id: str, *, labels: bool = True) -> Volume:
        # build_index asks for labels (stored when the data set has them, since #13)
        self.loaded.append(subject_id)
        return self._volumes[subject_id]


def check_complete(index: SliceIndex | ExactIndex, volumes: list[Volume]) -> None:
    """Every volume exactly once, in input order, with its own embeddings and z positions.

    Read-ahead loads volumes on threads but yields them in input order, and a resumed
    build appends the rest in order after the saved prefix: the order is the input's.
    """
    assert index.volume_ids == [v.id for v in volumes]
    assert index.n_volumes == len(volumes)
    assert len(index) == sum(v.n_slices for v in volumes)
    ref = FakeExtractor()
    for v in volumes:
        np.testing.assert_allclose(index.vectors(v.id), ref.extract(v), atol=1e-6)
        np.testing.assert_array_equal(index.slice_meta(v.id)["z_mm"], v.z_positions)


def test_build_from_volumes(tmp_path: Path) -> None:
    volumes = make_volumes()
    ex = FakeExtractor()
    index = build_index(volumes, ex, tmp_path / "idx", verbose=False, checkpoint_every=3)
    assert isinstance(index, SliceIndex)
    assert index.volume_ids == [v.id for v in volumes]
    check_complete(index, volumes)
    loaded = SliceIndex.load(tmp_path / "idx")
    check_complete(loaded, volumes)
    assert loaded.extractor_config == ex.to_config()
    m = loaded.search(ex.extract(volumes[4])[2], k=1)
    assert (m.volume_ids[0, 0], m.slice_indices[0, 0]) == ("case04", 2)
    assert m.z_mm[0, 0] == pytest.approx(2 * 6.0)


def test_build_exact_and_config(tmp_path: Path) -> None:
    cfg = HnswConfig(M=8, ef_search=40, store_dtype="float16")
    index = build_index(
        make_volumes(4), FakeExtractor(), tmp_path / "e", config=cfg, exact=True, verbose=False
    )
    assert isinstance(ExactIndex.load(tmp_path / "e"), ExactIndex)
    assert index.config == cfg


def test_resume_skips_without_reading(tmp_path: Path) -> None:
    volumes = make_volumes()
    build_index(volumes[:6], FakeExtractor(), tmp_path / "idx", verbose=False)
    data = FakeDataset(volumes)
    ex = FakeExtractor()
    index = build_index(data, ex, tmp_path / "idx", verbose=False)
    assert data.loaded == [v.id for v in volumes[6:]]  # indexed subjects were never read
    assert ex.calls == [v.id for v in volumes[6:]]
    check_complete(index, volumes)
    # (id, loader) pairs and mappings are lazy too
    calls: list[str] = []

    def loader(v: Volume):
        def load() -> Volume:
            calls.append(v.id)
            return v

        return load

    build_index(
        [(v.id, loader(v)) for v in volumes], FakeExtractor(), tmp_path / "idx", verbose=False
    )
    build_index(
        {v.id: loader(v) for v in volumes}, FakeExtractor(), tmp_path / "idx", verbose=False
    )
    assert calls == []


def test_extractor_error_mid_build_then_resume(tmp_path: Path) -> None:
    volumes = make_volumes(10)
    with pytest.raises(RuntimeError, match="extractor crashed"):
        build_index(
            volumes,
            FakeExtractor(fail_after=7),
            tmp_path / "idx",
            verbose=False,
            checkpoint_every=3,
        )
    partial = SliceIndex.load(tmp_path / "idx")
    assert partial.volume_ids == [v.id for v in volumes[:7]]  # saved on the way out
    ex = FakeExtractor()
    index = build_index(volumes, ex, tmp_path / "idx", verbose=False, checkpoint_every=3)
    assert ex.calls == [v.id for v in volumes[7:]]
    check_complete(index, volumes)


def test_resume_refuses_other_extractor_or_dim(tmp_path: Path) -> None:
    volumes = make_volumes(3)
    build_index(volumes[:2], FakeExtractor(), tmp_path / "idx", verbose=False)
    with pytest.raises(ExtractorMismatchError, match="version"):
        build_index(volumes, FakeExtractor(version=2), tmp_path / "idx", verbose=False)
    other = FakeExtractor()
    other.dim = 16
    with pytest.raises(DimensionMismatchError):
        build_index(volumes, other, tmp_path / "idx", verbose=False)
    # resume=False starts over with the new extractor
    index = build_index(
        volumes, FakeExtractor(version=2), tmp_path / "idx", verbose=False, resume=False
    )
    assert index.extractor_config["version"] == 2 and index.n_volumes == 3


def test_duplicate_ids_in_input_are_indexed_once(tmp_path: Path) -> None:
    volumes = make_volumes(3)
    ex = FakeExtractor()
    index = build_index(
        [*volumes, volumes[1], lambda: volumes[2]], ex, tmp_path / "idx", verbose=False
    )
    check_complete(index, volumes)
    assert ex.calls == [v.id for v in volumes]


def test_bad_extractor_output(tmp_path: Path) -> None:
    class Short(FakeExtractor):  # type: ignore[misc, valid-type]
        def extract(self, volume: Volume) -> np.ndarray:
            return super().extract(volume)[:-1]

    with pytest.raises(ExtractorError, match=r"case00.*slices"):
        build_index(make_volumes(2), Short(), tmp_path / "idx", verbose=False)
    with pytest.raises(TypeError, match="cannot index 'int'"):
        build_index([1], FakeExtractor(), tmp_path / "idx2", verbose=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        build_index([], FakeExtractor(), tmp_path / "idx3", checkpoint_every=0)


BUILD_LOOP = (
    FAKE_SRC
    + """
import sys
from cbirlib.index.build import build_index
print("ready", flush=True)
build_index(make_volumes(12), FakeExtractor(delay=0.02), sys.argv[1], verbose=False,
            checkpoint_every=2)
print("finished", flush=True)
"""
)


def test_sigkill_mid_build_then_resume(tmp_path: Path) -> None:
    script = tmp_path / "build.py"
    script.write_text(BUILD_LOOP)
    volumes = make_volumes(12)
    rng = random.Random(7)
    redone = []
    for trial in range(4):
        path = tmp_path / f"idx{trial}"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        ex = FakeExtractor()
        index = build_index(volumes, ex, path, verbose=False)
        check_complete(index, volumes)
        redone.append(len(ex.calls))
        check_complete(SliceIndex.load(path), volumes)
    assert any(0 < n < 12 for n in redone), redone  # some kill landed mid-build


@pytest.mark.parametrize("workers", [0, 2])
def test_volumes_are_read_ahead_of_the_extractor(tmp_path: Path, workers: int) -> None:
    import threading

    volumes = make_volumes(3)
    second_loading = threading.Event()

    def loader(i: int):  # type: ignore[no-untyped-def]
        def load() -> Volume:
            if i == 1:
                second_loading.set()
            return volumes[i]

        return load

    seen: list[bool] = []

    class Waiting(FakeExtractor):  # type: ignore[misc, valid-type]
        def extract(self, volume):  # type: ignore[no-untyped-def]
            if volume.id == volumes[0].id:
                # with read-ahead, volume 1 is being read while volume 0 is embedded
                seen.append(second_loading.wait(timeout=0.5 if workers == 0 else 5.0))
            return super().extract(volume)

    items = [(v.id, loader(i)) for i, v in enumerate(volumes)]
    index = build_index(items, Waiting(), tmp_path / "idx", verbose=False, workers=workers)
    check_complete(index, volumes)
    assert seen == [workers > 0]


def test_volumes_read_out_of_order_are_indexed_in_input_order(tmp_path: Path) -> None:
    import threading

    volumes = make_volumes(4)
    second_read = threading.Event()
    finished: list[str] = []

    def loader(i: int):  # type: ignore[no-untyped-def]
        def load() -> Volume:
            if i == 0:  # the first read ends only after the second one
                assert second_read.wait(timeout=5.0)
            finished.append(volumes[i].id)
            if i == 1:
                second_read.set()
            return volumes[i]

        return load

    items = [(v.id, loader(i)) for i, v in enumerate(volumes)]
    index = build_index(items, FakeExtractor(), tmp_path / "idx", verbose=False, workers=2)
    assert finished[:2] == ["case01", "case00"]
    check_complete(index, volumes)


def test_resume_with_another_extractor_is_refused_before_any_work(tmp_path: Path) -> None:
    volumes = make_volumes(3)
    build_index(volumes[:2], FakeExtractor(), tmp_path / "idx", verbose=False)
    other = FakeExtractor()
    other.name, other.dim = "wide", 16
    other.to_config = lambda: {"name": "wide"}  # type: ignore[method-assign]
    with pytest.raises(ExtractorMismatchError) as info:
        build_index(volumes, other, tmp_path / "idx", verbose=False)
    message = str(info.value)
    assert "built with 'fake' (dim 8)" in message and "vectors come from 'wide' (dim 16)" in message
    assert "--no-resume" in message and "another index folder" in message
    assert other.calls == []
    with pytest.raises(DimensionMismatchError, match="--no-resume"):
        same_name = FakeExtractor()
        same_name.dim = 16
        build_index(volumes, same_name, tmp_path / "idx", verbose=False)


class Interrupting:
    """FakeExtractor that raises ``exc`` when asked for its third volume."""

    name, dim = "fake", 8

    def __init__(self, exc: BaseException) -> None:
        self.inner, self.exc = FakeExtractor(), exc

    def to_config(self) -> dict[str, object]:
        return dict(self.inner.to_config())

    def extract(self, volume: Volume) -> np.ndarray:
        if len(self.inner.calls) == 2:
            raise self.exc
        return np.asarray(self.inner.extract(volume))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KeyboardInterrupt(), "build interrupted: 2 of 5 volumes saved in"),
        (RuntimeError("bad file"), "stopped by an error at volume 'case02' (RuntimeError: bad"),
    ],
)
def test_stop_message_counts_volumes_and_tells_how_to_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exc: BaseException, expected: str
) -> None:
    volumes = make_volumes(5)
    with caplog.at_level("WARNING", logger="cbirlib.index.build"), pytest.raises(type(exc)):
        build_index(volumes, Interrupting(exc), tmp_path / "idx", verbose=False, workers=0)
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert expected in record.getMessage()
    assert "to resume" in record.getMessage()
    assert ("fix it" in record.getMessage()) == isinstance(exc, Exception)
    assert SliceIndex.load(tmp_path / "idx").n_volumes == 2


def test_resume_says_how_many_were_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volumes = make_volumes(4)
    with caplog.at_level("INFO", logger="cbirlib.index.build"):
        build_index(volumes[:3], FakeExtractor(), tmp_path / "idx", verbose=False)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cbirlib.index.build"):
        build_index(volumes, FakeExtractor(), tmp_path / "idx", verbose=False)
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("1 new volume into" in m and "3 already indexed, skipped" in m for m in messages)


def test_build_from_a_real_totalsegmentator_folder(tmp_path: Path) -> None:
    """TotalSegmentator is also a Mapping; it must be read as a data set (issue 10, item 2)."""
    from cbirlib.datasets import make_phantoms

    dataset = make_phantoms(tmp_path / "data", 2, shape=(16, 16), seed=3)
    extractor = CoarseExtractor()
    index = build_index(dataset, extractor, tmp_path / "idx", verbose=False)
    assert sorted(index.volume_ids) == sorted(dataset.subjects)
    for sid in dataset.subjects:
        vol = dataset.load(sid, labels=False)
        np.testing.assert_allclose(index.vectors(sid), extractor.extract(vol), atol=1e-6)


class CoarseExtractor:
    """Embeds any slice as its 2x4 block means (plus a constant): dim 8."""

    name = "coarse"
    dim = 8

    def to_config(self) -> dict[str, object]:
        return {"name": "coarse"}

    def extract(self, volume: Volume) -> np.ndarray:
        z, h, w = volume.array.shape
        a = volume.array[:, : h - h % 2, : w - w % 4].reshape(z, 2, h // 2, 4, w // 4)
        x = a.mean(axis=(2, 4)).reshape(z, 8) + 3000.0
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
