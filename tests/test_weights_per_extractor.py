"""Weights per extractor: the NAME=PATH parser, the pre-flight check, and benchmark()."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import cbirlib.datasets.totalsegmentator as totalseg_module
from cbirlib.benchmarking import benchmark
from cbirlib.datasets import make_phantoms
from cbirlib.errors import (
    ChecksumError,
    SharedWeightsError,
    WeightsError,
    WeightsSpecError,
)
from cbirlib.weights import check_weights, parse_weights_options


def _file(path: Path, data: bytes = b"weights") -> Path:
    path.write_bytes(data)
    return path


def test_parse_repeated_name_path_options() -> None:
    got = parse_weights_options(
        ["radimagenet-resnet50=/m/rin.pt", "fractaldb-resnet50=/m/a=b.pth"],
        extractors=["radimagenet-resnet50", "fractaldb-resnet50", "baseline"],
    )
    assert got == {"radimagenet-resnet50": "/m/rin.pt", "fractaldb-resnet50": "/m/a=b.pth"}


def test_parse_bare_path_only_with_one_extractor() -> None:
    assert parse_weights_options(["/m/rin.pt"], ["dinov2"]) == {"dinov2": "/m/rin.pt"}
    with pytest.raises(WeightsSpecError, match="NAME=PATH"):
        parse_weights_options(["/m/rin.pt"], ["dinov2", "baseline"])
    with pytest.raises(WeightsSpecError, match="NAME=PATH"):
        parse_weights_options(["/m/x=1/rin.pt"], ["dinov2", "baseline"])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["a=/x", "a=/y"], "twice"),
        (["c=/x"], "not among"),
        (["a="], "both NAME and PATH"),
    ],
)
def test_parse_rejects_bad_options(items: list[str], message: str) -> None:
    with pytest.raises(WeightsSpecError, match=message):
        parse_weights_options(items, ["a", "b"])


def test_same_file_for_two_extractors_is_refused_unless_forced(tmp_path: Path) -> None:
    f = _file(tmp_path / "r50.pt")
    link = tmp_path / "alias.pt"
    os.link(f, link)  # the same file under another name is still the same file
    with pytest.raises(SharedWeightsError, match="both 'a' and 'b'"):
        check_weights({"a": f, "b": link})
    got = check_weights({"a": f, "b": link}, force=True)
    assert got == {"a": str(f.resolve()), "b": str(link.resolve())}


def test_check_reports_missing_unreadable_and_bad_checksum(tmp_path: Path) -> None:
    f = _file(tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"'b'.*does not exist"):
        check_weights({"a": f, "b": tmp_path / "nope.pt"})
    with pytest.raises(WeightsError, match="directory"):
        check_weights({"a": tmp_path})
    with pytest.raises(ChecksumError):
        check_weights({"a": f}, sha256={"a": "0" * 64})
    good = hashlib.sha256(b"weights").hexdigest()
    assert check_weights({"a": f}, sha256={"a": good}) == {"a": str(f.resolve())}
    with pytest.raises(WeightsSpecError, match="not among"):
        check_weights({"z": f}, ["a"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    make_phantoms(tmp_path / "data", 6, shape=(32, 32), seed=1)
    return tmp_path / "data"


@pytest.fixture
def no_labels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every mask read: a weights error must come before the label pass."""
    read: list[str] = []
    real = totalseg_module.TotalSegmentator.labels

    def spy(self, subject, *args, **kwargs):  # type: ignore[no-untyped-def]
        read.append(subject)
        return real(self, subject, *args, **kwargs)

    monkeypatch.setattr(totalseg_module.TotalSegmentator, "labels", spy)
    return read


def test_benchmark_checks_weights_before_the_label_pass(
    data: Path, tmp_path: Path, no_labels: list[str]
) -> None:
    with pytest.raises(WeightsError, match=r"'radimagenet-resnet50'.*does not exist"):
        benchmark(
            data,
            ["baseline", "radimagenet-resnet50"],
            weights={"radimagenet-resnet50": tmp_path / "missing.pt"},
            verbose=False,
        )
    f = _file(tmp_path / "r50.pt")
    with pytest.raises(SharedWeightsError):
        benchmark(
            data,
            ["radimagenet-resnet50", "fractaldb-resnet50"],
            weights={"radimagenet-resnet50": f, "fractaldb-resnet50": f},
            verbose=False,
        )
    with pytest.raises(WeightsError, match="takes none"):
        benchmark(data, ["baseline"], weights={"baseline": f}, verbose=False)
    with pytest.raises(SharedWeightsError, match="every extractor"):
        benchmark(
            data,
            ["radimagenet-resnet50", "fractaldb-resnet50"],
            extractor_options={"weights": str(f)},
            verbose=False,
        )
    assert no_labels == []


def test_benchmark_refuses_a_model_without_local_weights_up_front(
    data: Path, tmp_path: Path, no_labels: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match="'radimagenet-resnet50' has no weights"):
        benchmark(data, ["baseline", "radimagenet-resnet50"], verbose=False)
    assert no_labels == []


def test_benchmark_passes_each_extractor_its_own_weights(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cbirlib.plugins as plugins_module

    seen: dict[str, dict[str, object]] = {}
    real = plugins_module.create_extractor

    def spy(name, **kwargs):  # type: ignore[no-untyped-def]
        seen[name] = kwargs
        return real("baseline", **{k: v for k, v in kwargs.items() if k == "bins"})

    monkeypatch.setattr(plugins_module, "create_extractor", spy)
    a, b = _file(tmp_path / "a.pt", b"a"), _file(tmp_path / "b.pt", b"b")
    benchmark(
        data,
        ["radimagenet-resnet50", "fractaldb-resnet50"],
        modes=("volume",),
        rerank=(False,),
        granularity="coarse",
        weights={"radimagenet-resnet50": a, "fractaldb-resnet50": b},
        sha256={"fractaldb-resnet50": hashlib.sha256(b"b").hexdigest()},
        extractor_options={"bins": 8},
        out_dir=tmp_path / "out",
        verbose=False,
    )
    assert seen["radimagenet-resnet50"] == {"bins": 8, "weights": str(a.resolve())}
    assert seen["fractaldb-resnet50"] == {
        "bins": 8,
        "weights": str(b.resolve()),
        "sha256": hashlib.sha256(b"b").hexdigest(),
    }


def test_one_model_in_memory_at_a_time(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All extractors are created up front (to check weights), but each is let go once
    it has run, so two large models are never held together."""
    import gc
    import weakref

    import cbirlib.plugins as plugins_module
    from cbirlib.extractors.baseline import BaselineExtractor

    made: list[weakref.ref[BaselineExtractor]] = []
    alive_at_second: list[bool] = []

    class Tracked(BaselineExtractor):
        def extract(self, volume, **kwargs):  # type: ignore[no-untyped-def]
            if made and made[-1]() is self and len(made) == 2 and not alive_at_second:
                gc.collect()
                alive_at_second.append(made[0]() is not None)
            return super().extract(volume, **kwargs)

    def factory(name, **kwargs):  # type: ignore[no-untyped-def]
        ex = Tracked(bins=8)
        made.append(weakref.ref(ex))
        return ex

    monkeypatch.setattr(plugins_module, "create_extractor", factory)
    benchmark(
        data,
        ["one", "two"],
        modes=("volume",),
        rerank=(False,),
        granularity="coarse",
        verbose=False,
    )
    assert alive_at_second == [False]
