"""Regression tests for bugs a mutation audit planted and the suite did not catch."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cbirlib.errors import ChecksumError, WeightsError
from cbirlib.index import ExactIndex, SliceIndex
from cbirlib.index import files as persist
from cbirlib.index.build import build_index
from cbirlib.localize import matched_span
from cbirlib.plugins import PluginWarning, list_extractors, load_plugins
from cbirlib.search import SliceSearch
from cbirlib.weights import download, load_state_dict, sha256_file
from tests.fakes import (
    BASELINE_EP,
    FakeExtractor,
    PositionExtractor,
    body_volume,
    build,
    fake_entry_points,
    make_volumes,
)


# build.py: checkpoints every `checkpoint_every` added volumes (gap: > vs >=)
def test_checkpoint_saves_every_n_volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[int] = []
    real_save = SliceIndex.save

    def spy(self: SliceIndex, path: object) -> None:
        saved.append(self.n_volumes)
        real_save(self, path)

    monkeypatch.setattr(SliceIndex, "save", spy)
    build_index(
        make_volumes(7), FakeExtractor(), tmp_path / "idx", verbose=False, checkpoint_every=3
    )
    assert saved == [3, 6, 7]


# persist.py: every file and the directories are fsynced before the rename
def test_atomic_write_fsyncs_files_before_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(persist.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        persist.os, "rename", lambda a, b: (events.append("rename"), real_rename(a, b))[1]
    )

    def write(d: Path) -> None:
        for name in ("a.npy", "b.npy", "meta.json"):
            (d / name).write_bytes(b"x")

    persist.atomic_write_dir(tmp_path / "idx", write)
    first_rename = events.index("rename")
    assert events[:first_rename].count("fsync") >= 4  # 3 files + the temp directory


# plugins.py: ANY exception from a plugin import is skipped, not only ImportError
@pytest.mark.parametrize("exc", [AttributeError("x"), SyntaxError("bad"), RuntimeError("boom")])
def test_plugin_failing_with_any_exception_is_skipped(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    class EP:
        name, value, group = "exploding", "cbirlib_exploding:plugin", "cbirlib"

        def load(self) -> object:
            raise exc

    monkeypatch.delenv("CBIRLIB_PLUGINS", raising=False)
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(EP(), BASELINE_EP))
    with pytest.warns(PluginWarning, match="'exploding'"):
        load_plugins()
    assert [i.name for i in list_extractors()] == ["baseline"]


# weights/downloads.py: a cached file is re-checked against sha256
def test_cached_download_rechecked_against_sha256(tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"good")
    cache = tmp_path / "cache"
    got = download(src.as_uri(), sha256=sha256_file(src), directory=cache)
    got.write_bytes(b"evil")  # cache tampered / bit rot
    with pytest.raises(ChecksumError):
        download(src.as_uri(), sha256=sha256_file(src), directory=cache)


# weights/checkpoint.py: torch.load must use weights_only=True (no code runs while unpickling)
class _Boom:
    """Unpickling it creates the file named by $CBIRLIB_TEST_PWNED (a harmless side effect)."""

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (Path(os.environ["CBIRLIB_TEST_PWNED"]),))


def test_torch_checkpoint_never_executes_pickled_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CBIRLIB_TEST_PWNED", str(marker))
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Boom()}, p)
    with pytest.raises(WeightsError, match="weights_only"):
        load_state_dict(p)
    assert not marker.exists()


# localize.py: trim drops floor(trim * n) matches at each end
def test_matched_span_trim_uses_floor() -> None:
    s = np.arange(10)
    assert matched_span(s, trim=0.15) == (1, 8)  # floor(1.5) = 1 dropped per end
    assert matched_span(s, trim=0.05) == (0, 9)  # floor(0.5) = 0


# search.py: leave-one-out fetches enough for EVERY query, not only the last one
def test_exclude_source_keeps_k_for_every_query_in_a_batch() -> None:
    big = body_volume("big", 0.0, 1.0, 30)
    small = body_volume("small", 0.0, 1.0, 4)
    other = body_volume("other", 0.0, 1.0, 20)
    index = build(ExactIndex, [big, small, other])
    hits = SliceSearch(PositionExtractor(), index, k=5, exclude_source=True).retrieve([big, small])
    for q, n in (("big", 30), ("small", 4)):
        mine = hits.volume_id[hits.query_id == q]
        assert q not in set(mine)
        assert len(mine) == n * 5, q


def test_region_of_an_unknown_modality_volume_is_windowed_as_its_source() -> None:
    """A slab once re-guessed its own modality: CT guessed from fat below the region, a
    soft-tissue-only slab guessed MR and windowed by its own percentiles."""
    from cbirlib import SliceLabels, Volume, region_query
    from tests.fakes import TinyNet

    rng = np.random.default_rng(0)
    array = rng.normal(40.0, 20.0, (20, 32, 32)).astype(np.float32)
    array[:10, :, :8] = -100.0  # fat in the lower slices only
    present = np.r_[np.zeros(10, bool), np.ones(10, bool)][:, None]
    vol = Volume("ct", array, labels=SliceLabels(("liver",), present))  # modality unknown
    region = region_query(vol, "liver")
    assert region.modality == "CT"
    ex = TinyNet(device="cpu")
    np.testing.assert_allclose(ex.extract(region), ex.extract(vol)[10:], atol=1e-5)
