"""Tests of cbirlib.weights: resolving, checking and loading weight files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cbirlib.errors import ChecksumError, WeightsError
from cbirlib.weights import (
    cache_dir,
    download,
    download_path,
    hub_cache_dir,
    hub_errors,
    hub_offline,
    load_into,
    load_state_dict,
    remap_state_dict,
    resolve_file,
    sha256_file,
    strip_prefixes,
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    data = bytes(range(256)) * 5000
    p.write_bytes(data)
    assert sha256_file(p, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_safetensors_round_trip_and_sha(tmp_path: Path) -> None:
    src = _model()
    p = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(p))
    sd = load_state_dict(p, sha256=sha256_file(p))
    dst = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    load_into(dst, sd)
    x = torch.randn(5, 4)
    assert torch.equal(src(x), dst(x))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "nested_module"])
def test_torch_checkpoint_unwrapped_and_prefix_stripped(tmp_path: Path, wrap: str) -> None:
    src = _model()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    obj: object = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 90},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "nested_module": {"checkpoint": 1, "state_dict": {"model": sd}},
    }[wrap]
    p = tmp_path / "w.pth"
    torch.save(obj, p)
    loaded = load_state_dict(p)
    assert set(loaded) == set(src.state_dict())
    dst = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    load_into(dst, loaded)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": _model()}, p)  # a whole module needs full unpickling
    with pytest.raises(WeightsError, match=r"evil\.pth") as err:
        load_state_dict(p)
    message = str(err.value)
    assert "weights_only=False" not in message and "\n" not in message
    assert "would run code" in message


def test_wrong_sha256_rejected(tmp_path: Path) -> None:
    p = tmp_path / "w.safetensors"
    save_file(_model().state_dict(), str(p))
    with pytest.raises(ChecksumError) as err:
        load_state_dict(p, sha256="0" * 64)
    msg = str(err.value)
    assert "w.safetensors" in msg and "0" * 64 in msg and sha256_file(p) in msg


def test_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"nope\.pth.*weights="):
        resolve_file(tmp_path / "nope.pth")


def test_corrupt_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=r"bad\.safetensors"):
        load_state_dict(p)


def test_no_tensors_in_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "arch": "resnet50"}, p)
    with pytest.raises(WeightsError, match="no state dict"):
        load_state_dict(p)


def test_load_into_reports_missing_and_unexpected() -> None:
    model = _model()
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    del sd["0.bias"]
    with pytest.raises(WeightsError) as err:
        load_into(model, sd, source="test.pth")
    msg = str(err.value)
    assert "missing keys 1 (0.bias)" in msg
    assert "unexpected keys 1 (extra.weight)" in msg
    assert "test.pth" in msg


def test_load_into_shape_mismatch_even_non_strict() -> None:
    model = _model()
    sd = dict(model.state_dict())
    sd["0.weight"] = torch.zeros(7, 4)
    with pytest.raises(WeightsError, match=r"0\.weight: \(7, 4\)"):
        load_into(model, sd, strict=False)


def test_load_into_many_keys_truncated() -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(10)])
    with pytest.raises(WeightsError, match=r"missing keys 20 \(.*, \.\.\.\)"):
        load_into(model, {})


def test_remap_and_strip() -> None:
    t = torch.zeros(1)
    sd = {"module.backbone.a.w": t, "backbone.fc.w": t, "b.w": t}
    stripped = strip_prefixes(sd, ("module.", "backbone."))
    assert set(stripped) == {"a.w", "fc.w", "b.w"}
    remapped = remap_state_dict(stripped, [(r"^fc\.", None), (r"^a\.", "x.")])
    assert set(remapped) == {"x.w", "b.w"}


def test_download_file_url_atomic_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src" / "w.safetensors"
    src.parent.mkdir()
    save_file(_model().state_dict(), str(src))
    monkeypatch.setenv("CBIRLIB_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    url = src.as_uri()
    got = download(url, sha256=sha256_file(src))
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    assert got == tmp_path / "cache" / key / "w.safetensors"
    assert got == download_path(url)
    assert got.read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "cache" / key).iterdir()] == ["w.safetensors"]  # no temp
    src.unlink()  # the cached copy is re-used
    assert load_state_dict(url).keys() == _model().state_dict().keys()


def test_download_same_file_name_from_two_urls_kept_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_CACHE", str(tmp_path / "cache"))
    paths = []
    for version in ("v1", "v2"):
        src = tmp_path / version / "model.bin"
        src.parent.mkdir()
        src.write_bytes(version.encode())
        paths.append(download(src.as_uri()))
    assert paths[0] != paths[1] and paths[0].name == paths[1].name == "model.bin"
    assert [p.read_bytes() for p in paths] == [b"v1", b"v2"]  # v2 did not reuse v1's file


def test_download_bad_checksum_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"abc")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError):
        download(src.as_uri(), sha256="1" * 64, directory=cache)
    # no download and no .part: only the lock of the failed download (kept: a process
    # waiting on it must not race one that creates a new lock file)
    files = [p.relative_to(cache) for p in cache.rglob("*") if p.is_file()]
    assert [f.name for f in files] == [".w.bin.lock"]


def test_download_offline_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    with pytest.raises(WeightsError, match=r"not in the cache at .*cache.*switched off"):
        download("https://example.invalid/w.pth", directory=tmp_path / "cache")


def test_hub_errors_names_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf"
    with pytest.raises(WeightsError) as err, hub_errors("model 'x'"):
        raise OSError("connection refused")
    assert str(tmp_path / "hf") in str(err.value)
    assert 'weights="path/to/file"' in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
