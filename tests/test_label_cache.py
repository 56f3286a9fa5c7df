"""The per-subject cache of mask pixel counts behind TotalSegmentator labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cbirlib.io as io_module
from cbirlib.datasets import TotalSegmentator, make_phantoms


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_phantoms(tmp_path / "data", 2, shape=(32, 32), seed=5)
    return tmp_path / "data"


def _same(a, b) -> bool:  # type: ignore[no-untyped-def]
    return a.names == b.names and all(
        np.array_equal(a.slices_with(n), b.slices_with(n)) for n in a.names
    )


def test_cached_labels_equal_labels_read_from_the_masks(root: Path, tmp_path: Path) -> None:
    plain = TotalSegmentator(root)
    cached = TotalSegmentator(root, labels_cache=tmp_path / "cache")
    for subject in plain.subjects:
        first = cached.labels(subject)  # reads and stores
        assert _same(first, plain.labels(subject))
        assert _same(cached.labels(subject), first)  # from the cache
    # one cache serves every threshold: min_pixels is applied after reading
    strict = TotalSegmentator(root, labels_cache=tmp_path / "cache", min_pixels=50)
    assert _same(
        strict.labels(plain.subjects[0]),
        TotalSegmentator(root, min_pixels=50).labels(plain.subjects[0]),
    )


def test_a_damaged_cache_file_is_read_again(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = TotalSegmentator(root, labels_cache=tmp_path / "cache")
    subject = ds.subjects[0]
    expected = ds.labels(subject)
    (entry,) = (tmp_path / "cache").glob(f"{subject}-*.npy")
    entry.write_bytes(b"not an npy file")
    reads: list[str] = []
    real = io_module.load_mask
    monkeypatch.setattr(
        io_module, "load_mask", lambda p, **kw: reads.append(str(p)) or real(p, **kw)
    )
    assert _same(ds.labels(subject), expected)
    assert reads  # the masks were read again, and the entry rewritten
    assert np.load(entry, allow_pickle=False).dtype == np.int64
