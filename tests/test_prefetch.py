"""Tests of cbirlib.prefetch and of Extractor.extract_many reading volumes ahead."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest

from cbirlib.errors import ExtractorError
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.prefetch import prefetch
from cbirlib.volume import Volume
from tests.fakes import TinyNet


class Recorder:
    """Loaders that record which ran, and in which thread."""

    def __init__(self, delays: list[float] | None = None) -> None:
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.delays = delays or []
        self.lock = threading.Lock()

    def load(self, i: int) -> int:
        with self.lock:
            self.calls.append(i)
            self.threads.add(threading.get_ident())
        if i < len(self.delays):
            time.sleep(self.delays[i])
        return i * 10

    def loaders(self, n: int) -> list[Callable[[], int]]:
        return [partial(self.load, i) for i in range(n)]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cbirlib-prefetch")]


def test_results_come_in_input_order_whatever_the_finishing_order() -> None:
    rec = Recorder(delays=[0.08, 0.0, 0.05, 0.0, 0.02, 0.0])
    assert list(prefetch(rec.loaders(9), workers=3, ahead=4)) == [i * 10 for i in range(9)]
    assert sorted(rec.calls) == list(range(9))
    assert threading.get_ident() not in rec.threads  # the loaders ran on the pool


def test_loaders_run_concurrently() -> None:
    started = threading.Event()

    def first() -> str:
        # deadlocks (and fails) unless the second loader runs while this one waits
        assert started.wait(timeout=5), "second loader did not run concurrently"
        return "a"

    def second() -> str:
        started.set()
        return "b"

    assert list(prefetch([first, second], workers=2)) == ["a", "b"]


def test_read_ahead_is_bounded_and_lazy() -> None:
    rec = Recorder()
    gen = prefetch(rec.loaders(20), workers=2, ahead=3)
    time.sleep(0.05)
    assert rec.calls == []  # nothing runs before the first request
    assert next(gen) == 0
    wait_until(lambda: len(rec.calls) >= 3)
    time.sleep(0.1)
    assert len(rec.calls) == 3  # item 0 yielded + 2 read ahead: at most `ahead` unyielded
    assert next(gen) == 10
    wait_until(lambda: len(rec.calls) >= 4)
    time.sleep(0.1)
    assert len(rec.calls) == 4
    gen.close()


def test_loader_exception_is_raised_at_its_position() -> None:
    def boom() -> int:
        raise ValueError("cannot read volume 2")

    loaders: list[Callable[[], int]] = [lambda: 0, lambda: 1, boom, lambda: 3]
    gen = prefetch(loaders, workers=2, ahead=4)
    assert [next(gen), next(gen)] == [0, 1]
    with pytest.raises(ValueError, match="volume 2"):
        next(gen)
    with pytest.raises(StopIteration):  # the generator ends at the failure
        next(gen)
    assert prefetch_threads() == []


def test_exception_while_iterating_loaders_is_raised_at_its_position() -> None:
    def loaders() -> Iterator[Callable[[], int]]:
        yield lambda: 1
        yield lambda: 2
        raise OSError("listing failed")

    gen = prefetch(loaders(), workers=2, ahead=5)
    assert [next(gen), next(gen)] == [1, 2]
    with pytest.raises(OSError, match="listing failed"):
        next(gen)


def test_early_close_cancels_pending_work_and_stops_threads() -> None:
    rec = Recorder(delays=[0.0] + [0.05] * 30)
    gen = prefetch(rec.loaders(30), workers=2, ahead=6)
    assert next(gen) == 0
    gen.close()
    after_close = len(rec.calls)
    time.sleep(0.2)
    assert len(rec.calls) == after_close < 30  # nothing runs after close() returned
    assert prefetch_threads() == []


def test_breaking_out_of_a_loop_cleans_up() -> None:
    rec = Recorder(delays=[0.02] * 30)
    for value in prefetch(rec.loaders(30), workers=2, ahead=4):
        if value == 20:
            break
    wait_until(lambda: prefetch_threads() == [])  # the generator is closed when collected
    assert len(rec.calls) < 30


def test_workers_zero_is_serial_in_the_callers_thread() -> None:
    rec = Recorder()
    gen = prefetch(rec.loaders(4), workers=0)
    assert rec.calls == []
    assert next(gen) == 0 and rec.calls == [0]  # no read-ahead
    assert list(gen) == [10, 20, 30]
    assert rec.threads == {threading.get_ident()}


@pytest.mark.parametrize(("workers", "ahead"), [(-1, 4), (2, 0)])
def test_invalid_settings_raise_at_call_time(workers: int, ahead: int) -> None:
    with pytest.raises(ValueError, match="workers" if workers < 0 else "ahead"):
        prefetch([], workers=workers, ahead=ahead)


# -- Extractor.extract_many with loaders ----------------------------------------------------


def volume(i: int, n: int = 5) -> Volume:
    rng = np.random.default_rng(i)
    arr = rng.normal(0.0, 150.0, size=(n, 20, 18)).astype(np.float32) + 30.0 * i
    return Volume(f"v{i}", arr, spacing=(2.0, 0.8, 0.8))


class VolumeLoader:
    """A zero-argument loader that counts its calls."""

    def __init__(self, i: int, calls: list[int]) -> None:
        self.i, self.calls = i, calls

    def __call__(self) -> Volume:
        self.calls.append(self.i)
        return volume(self.i, n=3 + self.i)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_extract_many_with_loaders_matches_volumes(workers: int) -> None:
    ex = TinyNet(device="cpu", batch_size=4)
    calls: list[int] = []
    loaders = [VolumeLoader(i, calls) for i in range(5)]
    got = list(ex.extract_many(loaders, workers=workers))
    ref = list(ex.extract_many([volume(i, n=3 + i) for i in range(5)], workers=0))
    assert [vid for vid, _ in got] == [f"v{i}" for i in range(5)]
    for (_, a), (_, b), i in zip(got, ref, range(5), strict=True):
        assert a.shape == (3 + i, 6)
        np.testing.assert_array_equal(a, b)
    assert sorted(calls) == list(range(5))


def test_extract_many_mixes_volumes_and_loaders_for_a_non_torch_extractor() -> None:
    ex = BaselineExtractor()
    vols = [volume(i, n=4) for i in range(3)]
    items: list[Volume | Callable[[], Volume]] = [vols[0], partial(volume, 1, 4), vols[2]]
    got = dict(ex.extract_many(items, workers=2))
    assert list(got) == ["v0", "v1", "v2"]
    for v in vols:
        np.testing.assert_array_equal(got[v.id], ex.extract(v))


def test_extract_many_workers_zero_reads_one_volume_at_a_time() -> None:
    calls: list[int] = []
    gen = TinyNet(device="cpu").extract_many([VolumeLoader(i, calls) for i in range(4)], workers=0)
    vid, _ = next(gen)
    assert vid == "v0" and calls == [0]
    gen.close()


def test_extract_many_reads_ahead_boundedly_and_stops_on_close() -> None:
    calls: list[int] = []
    gen = TinyNet(device="cpu").extract_many([VolumeLoader(i, calls) for i in range(12)], workers=2)
    assert next(gen)[0] == "v0"
    wait_until(lambda: len(calls) >= 2)
    time.sleep(0.1)
    assert 2 <= len(calls) <= 3  # read ahead, by at most max(2, workers) volumes
    gen.close()
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n < 12
    assert prefetch_threads() == []


def test_extract_many_failing_loader_raises_after_earlier_volumes() -> None:
    def broken() -> Volume:
        raise OSError("v1.nii.gz: truncated")

    gen = TinyNet(device="cpu").extract_many([partial(volume, 0), broken, partial(volume, 2)])
    assert next(gen)[0] == "v0"
    with pytest.raises(OSError, match="truncated"):
        next(gen)


@pytest.mark.parametrize("item", [42, "v0.nii.gz", lambda: np.zeros((2, 4, 4))])
def test_extract_many_rejects_what_is_not_a_volume(item: Any) -> None:
    with pytest.raises(ExtractorError, match=r"Volume"):
        list(TinyNet(device="cpu").extract_many([volume(0), item], workers=1))


def test_cuda_chunks_cover_the_selection_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA staging plan (checked without a GPU): chunks, first-chunk prep, last flags."""
    from cbirlib import _cuda_pipeline

    ex = TinyNet(device="cpu", batch_size=4)
    engine = _cuda_pipeline.CudaPipeline(ex.device)
    v = volume(0, n=11)
    sel = np.array([10, 3, 4, 5, 0, 0, 7], dtype=np.int64)
    items = [(v, np.arange(11)), (v, sel), (v, sel[:0])]
    jobs = list(engine.stage_jobs(items, batch_size=ex.batch_size, prepare=ex._prepare))
    parts = [
        (j.args[1].tolist(), j.keywords["prepare"] is not None, j.keywords["last"])  # type: ignore[attr-defined]
        for j in jobs
    ]
    assert parts == [
        ([0, 1, 2, 3], True, False),
        ([4, 5, 6, 7], False, False),
        ([8, 9, 10], False, True),
        ([10, 3, 4, 5], True, False),
        ([0, 0, 7], False, True),
        ([], True, True),  # an empty selection still ends its volume
    ]
    empty = jobs[-1]()  # stages nothing, so it runs without CUDA
    assert (empty.raw, empty.n, empty.last) == (None, 0, True)
    assert ex._window(v) == "soft_tissue" and empty.prep == ex._prepare(v)
    small = 3 * 20 * 18 * 4  # bytes of 3 slices: chunks shorter than a batch
    monkeypatch.setattr(_cuda_pipeline, "CHUNK_BYTES", small)
    plan = engine.stage_jobs([(v, np.arange(11))], batch_size=ex.batch_size, prepare=ex._prepare)
    sizes = [len(j.args[1]) for j in plan]  # type: ignore[attr-defined]
    assert sizes == [3, 3, 3, 2]
