"""The persistent annotation cache of ``find`` (:mod:`cbirlib.index.annotations`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cbirlib import finder
from cbirlib.cli import main
from cbirlib.errors import IndexFormatError
from cbirlib.hits import Hits
from cbirlib.index import SliceIndex, build_index, load_index
from cbirlib.index.annotations import CACHE_DIR


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path, list[str]]:
    """A labeled reference index, a saved unlabeled archive (its directory), the phantoms."""
    from cbirlib.datasets import make_phantoms
    from cbirlib.plugins import create_extractor

    root = tmp_path_factory.mktemp("cache")
    data = make_phantoms(root / "ph", 10, shape=(40, 40), seed=2)
    ex = create_extractor("baseline")
    held, rest = data.subjects[:3], data.subjects[3:]
    reference = build_index(
        [(s, lambda s=s: data.load(s)) for s in rest], ex, root / "ref", verbose=False
    )
    build_index(
        [(s, lambda s=s: data.load(s, labels=False)) for s in held],
        ex,
        root / "arc",
        verbose=False,
        labels=False,
    )
    return data, reference, root / "arc", held


class Counter:
    """Wraps the real ``annotate_embeddings`` and counts the volumes it annotates."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.volumes: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.volumes.append(kwargs["volume_id"])
        return self.real(*args, **kwargs)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter = Counter(finder.annotate_embeddings)
    monkeypatch.setattr(finder, "annotate_embeddings", counter)
    return counter


@pytest.fixture
def archive_dir(indexes: tuple[Any, Any, Path, list[str]], tmp_path: Path) -> Path:
    """A fresh copy of the archive index, with no cache."""
    _, _, arc, _ = indexes
    target = tmp_path / "arc"
    load_index(arc).save(target)
    assert not (target / CACHE_DIR).exists()
    return target


def _frame(hits: Hits) -> pd.DataFrame:
    return hits.to_pandas().reset_index(drop=True)


def test_second_find_is_served_from_the_cache_with_equal_hits(
    indexes: tuple[Any, Any, Path, list[str]], archive_dir: Path, calls: Counter
) -> None:
    _, reference, _, held = indexes
    archive = load_index(archive_dir)
    first = finder.find(archive, "liver", reference=reference, top=None, cache=archive_dir)
    assert sorted(calls.volumes) == sorted(held)  # every archive volume annotated once
    assert len(list((archive_dir / CACHE_DIR).glob("*.npz"))) == 1
    calls.volumes.clear()
    again = finder.find(load_index(archive_dir), "liver", reference=reference, top=None,
                        cache=archive_dir)  # fmt: skip
    assert calls.volumes == []  # no annotation work at all
    pd.testing.assert_frame_equal(_frame(again), _frame(first))
    assert len(first) > 0
    # another structure at the same granularity shares the cached annotations
    kidney = finder.find(archive, "kidney_left", reference=reference, top=None, cache=archive_dir)
    assert calls.volumes == []
    uncached = finder.find(archive, "kidney_left", reference=reference, top=None)
    pd.testing.assert_frame_equal(_frame(kidney), _frame(uncached))
    # the cached annotations are the computed ones
    cached = finder.annotate_index(archive, reference, cache=archive_dir)
    fresh = finder.annotate_index(archive, reference)
    for vid, ann in fresh.items():
        np.testing.assert_array_equal(cached[vid].probabilities, ann.probabilities)
        assert cached[vid].extents == ann.extents


def test_changed_parameters_or_reference_annotate_again(
    indexes: tuple[Any, Any, Path, list[str]], archive_dir: Path, calls: Counter
) -> None:
    _, reference, _, held = indexes
    archive = load_index(archive_dir)
    finder.find(archive, "liver", reference=reference, cache=archive_dir)
    calls.volumes.clear()
    k3 = finder.find(archive, "liver", reference=reference, top=None, k=3, cache=archive_dir)
    assert sorted(calls.volumes) == sorted(held)  # another k: annotated afresh
    pd.testing.assert_frame_equal(
        _frame(k3), _frame(finder.find(archive, "liver", reference=reference, top=None, k=3))
    )
    calls.volumes.clear()
    finder.find(archive, "lung", reference=reference, cache=archive_dir)  # coarse
    assert sorted(calls.volumes) == sorted(held)
    # a different reference: the same volumes less one
    smaller = SliceIndex(reference.dim, extractor_config=reference.extractor_config)
    for vid in reference.volume_ids[1:]:
        meta = dict(reference.slice_meta(vid))
        smaller.add(vid, reference.vectors(vid), labels=reference.labels(vid), slice_meta=meta)
    calls.volumes.clear()
    other = finder.find(archive, "liver", reference=smaller, top=None, cache=archive_dir)
    assert sorted(calls.volumes) == sorted(held)
    pd.testing.assert_frame_equal(
        _frame(other), _frame(finder.find(archive, "liver", reference=smaller, top=None))
    )
    # the first setting is still cached beside the others
    calls.volumes.clear()
    finder.find(archive, "liver", reference=reference, cache=archive_dir)
    assert calls.volumes == []
    assert len(list((archive_dir / CACHE_DIR).glob("*.npz"))) == 4


def test_a_removed_or_replaced_volume_is_never_served_from_the_cache(
    indexes: tuple[Any, Any, Path, list[str]], archive_dir: Path, calls: Counter
) -> None:
    _, reference, _, held = indexes
    archive = load_index(archive_dir)
    first = finder.find(archive, "liver", reference=reference, top=None, cache=archive_dir)
    gone, donor = held[0], held[1]
    assert gone in set(first.volume_id)
    archive.remove(gone)  # in memory; the cache on disk still holds its annotation
    calls.volumes.clear()
    hits = finder.find(archive, "liver", reference=reference, top=None, cache=archive_dir)
    assert gone not in set(hits.volume_id)
    assert calls.volumes == []  # the others still come from the cache
    # the same id back, with another volume's vectors: annotated again, not served stale
    meta = dict(archive.slice_meta(donor))
    archive.add(gone, archive.vectors(donor)[::-1].copy(), slice_meta=meta)
    calls.volumes.clear()
    cached = finder.annotate_index(archive, reference, cache=archive_dir)
    assert calls.volumes == [gone]
    fresh = finder.annotate_index(archive, reference)
    assert set(cached) == set(archive.volume_ids)
    for vid, ann in fresh.items():
        np.testing.assert_array_equal(cached[vid].probabilities, ann.probabilities)


def test_cli_rm_leaves_no_stale_annotation(
    indexes: tuple[Any, Any, Path, list[str]],
    archive_dir: Path,
    calls: Counter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, _, _, held = indexes
    ref = str(indexes[2].parent / "ref")
    argv = ["find", str(archive_dir), "femur", "--reference", ref, "--top", "10", "--json"]
    assert main(argv) == 0
    before = json.loads(capsys.readouterr().out)
    assert sorted(calls.volumes) == sorted(held)
    assert list((archive_dir / CACHE_DIR).glob("*.npz"))
    calls.volumes.clear()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == before and calls.volumes == []
    gone = before["results"][0]["volume_id"]
    assert main(["rm", str(archive_dir), gone]) == 0
    capsys.readouterr()
    assert main(argv) == 0
    after = json.loads(capsys.readouterr().out)
    assert gone not in [r["volume_id"] for r in after["results"]]
    assert [r["volume_id"] for r in after["results"]] == [
        r["volume_id"] for r in before["results"] if r["volume_id"] != gone
    ]
    calls.volumes.clear()
    assert main([*argv, "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out) == after
    assert len(calls.volumes) == len(held) - 1


def test_an_unreadable_cache_file_is_a_miss(
    indexes: tuple[Any, Any, Path, list[str]], archive_dir: Path, calls: Counter
) -> None:
    _, reference, _, held = indexes
    archive = load_index(archive_dir)
    first = finder.find(archive, "liver", reference=reference, cache=archive_dir)
    (file,) = (archive_dir / CACHE_DIR).glob("*.npz")
    file.write_bytes(b"not a zip file")
    calls.volumes.clear()
    again = finder.find(archive, "liver", reference=reference, cache=archive_dir)
    assert sorted(calls.volumes) == sorted(held)
    pd.testing.assert_frame_equal(_frame(again), _frame(first))
    with np.load(file, allow_pickle=False) as data:  # rewritten, readable, no pickles
        assert sorted(data["volume_ids"].tolist()) == sorted(held)
    with pytest.raises(IndexFormatError, match="not an index directory"):
        finder.find(archive, "liver", reference=reference, cache=archive_dir / "nowhere")
