"""Tests of the cbirlib-dreamsim plugin (installed, so its entry point is real); offline."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cbirlib_dreamsim import DreamSimExtractor
from cbirlib_dreamsim.files import DINO_URL, VARIANTS, ensure_files
from dreamsim_fixtures import (  # noqa: F401 (weights_cache is a fixture)
    ALPHA,
    R,
    link_cache,
    random_adapter,
    random_backbone,
    weights_cache,
)

from cbirlib.errors import ExtractorError, WeightsError
from cbirlib.plugins import create_extractor, list_extractors
from cbirlib.volume import Volume

ADAPTER = "ensemble_lora/adapter_model.safetensors"


@pytest.fixture
def volume() -> Volume:
    rng = np.random.default_rng(0)
    return Volume("v", rng.normal(0, 400, size=(2, 48, 40)).astype(np.float32))


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CBIRLIB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "dreamsim"


def test_entry_point_is_installed(empty_cache: Path) -> None:
    eps = importlib.metadata.entry_points(group="cbirlib")
    assert "cbirlib_dreamsim" in {ep.value for ep in eps}
    [info] = list_extractors("dreamsim")
    assert info.plugin == "dreamsim"
    assert not info.weights_available  # the default cache is empty


def test_missing_weights_offline_raise(empty_cache: Path, volume: Volume) -> None:
    ex = create_extractor("dreamsim", device="cpu")
    assert isinstance(ex, DreamSimExtractor) and not ex.weights_available()
    with pytest.raises(WeightsError) as err:
        ex.extract(volume)
    msg = str(err.value)
    assert str(empty_cache) in msg and "switched off" in msg
    for needed in ("dino_vitbase16_pretrain.pth", "clip_vitb16_pretrain.pth.tar", ADAPTER):
        assert needed in msg
    assert VARIANTS["ensemble"].url in msg and DINO_URL in msg and "cache_dir=" in msg
    assert ex._model is None and not empty_cache.exists()  # nothing built, nothing fetched


def test_partial_cache_names_only_missing_files(
    weights_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = link_cache(weights_cache, tmp_path, skip=(ADAPTER,))
    ex = DreamSimExtractor(cache_dir=cache, device="cpu")
    assert not ex.weights_available()
    with pytest.raises(WeightsError, match=r"adapter_model\.safetensors") as err:
        _ = ex.model
    assert "open_clip_vitb16_pretrain.pth.tar;" not in str(err.value)


def test_ensemble_from_cache(weights_cache: Path, volume: Volume) -> None:
    ex = create_extractor("dreamsim", cache_dir=str(weights_cache), device="cpu")
    assert ex.weights_available()
    emb = ex.extract(volume)
    assert emb.shape == (2, 1792) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb.mean(axis=1), 0.0, atol=1e-6)  # DreamSim centres
    assert not np.allclose(emb[0], emb[1], atol=1e-3)

    # weights are the files' weights, the LoRA merged into qkv: W + alpha / r * B @ A
    model = ex.model
    clip_sd = random_backbone("clip", 2)
    lora = random_adapter(3, 10)
    key = "base_model.model.extractor_list.1.model.blocks.5.attn.qkv"
    a, b = lora[f"{key}.lora_A.weight"], lora[f"{key}.lora_B.weight"]
    expected = clip_sd["blocks.5.attn.qkv.weight"] + ALPHA / R * b @ a
    got = model.branches[1].vit.blocks[5].attn.qkv.weight
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (expected - clip_sd["blocks.5.attn.qkv.weight"]).abs().max() > 1e-3
    torch.testing.assert_close(model.branches[1].proj, clip_sd["proj"])
    torch.testing.assert_close(model.branches[1].vit.norm_pre.weight, clip_sd["pos_drop.weight"])
    assert isinstance(model.branches[0].vit.norm, torch.nn.Identity)  # DINO CLS before norm


def test_to_config_round_trip(weights_cache: Path) -> None:
    ex = create_extractor("dreamsim", cache_dir=str(weights_cache), window="soft_tissue")
    cfg = ex.to_config()
    assert cfg["name"] == "dreamsim" and cfg["variant"] == "ensemble"
    assert cfg["cache_dir"] == str(weights_cache)
    assert cfg["input_config"]["window"] == "soft_tissue"
    cfg = json.loads(json.dumps(cfg))
    again = create_extractor(**cfg)
    assert again.to_config() == cfg and again.dim == 1792
    single = create_extractor("dreamsim", variant="dino_vitb16").to_config()
    assert create_extractor(**single).to_config() == single


def test_single_dino_variant(weights_cache: Path, volume: Volume) -> None:
    ex = DreamSimExtractor(variant="dino_vitb16", cache_dir=weights_cache, device="cpu")
    emb = ex.extract(volume, slices=np.array([1]))
    assert emb.shape == (1, 768) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(emb, ex.extract(volume, slices=np.array([1])))  # deterministic


def test_bad_adapter_is_a_weights_error(weights_cache: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    config = "ensemble_lora/adapter_config.json"
    cache = link_cache(weights_cache, tmp_path, skip=(ADAPTER, config))  # links: never write
    (cache / "ensemble_lora").mkdir()
    (cache / config).write_text((weights_cache / config).read_text())
    save_file({"extractor_list.0.model.head.weight": torch.zeros(2, 2)}, str(cache / ADAPTER))
    with pytest.raises(WeightsError, match="unexpected keys"):
        _ = DreamSimExtractor(cache_dir=cache, device="cpu").model
    (cache / config).write_text(json.dumps({"r": 4, "use_dora": True}))
    with pytest.raises(WeightsError, match="use_dora"):
        _ = DreamSimExtractor(cache_dir=cache, device="cpu").model


def test_invalid_arguments() -> None:
    with pytest.raises(ExtractorError, match="valid: ensemble, dino_vitb16"):
        DreamSimExtractor(variant="vitl14")
    with pytest.raises(ExtractorError, match="224x224"):
        DreamSimExtractor(input_config={"size": [128, 128], "mean": [0.0], "std": [1.0]})


def test_download_unzips_release(
    weights_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online path with a file:// 'release': the zip is fetched, unpacked and removed."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CBIRLIB_OFFLINE", raising=False)
    release = tmp_path / "release.zip"
    with zipfile.ZipFile(release, "w") as zf:
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            zf.write(weights_cache / "dino_vitb16_single_lora" / f, f"dino_vitb16_single_lora/{f}")
    variant = dataclasses.replace(VARIANTS["dino_vitb16"], url=release.as_uri())
    monkeypatch.setitem(VARIANTS, "dino_vitb16", variant)
    cache = tmp_path / "cache"
    (cache / "checkpoints").mkdir(parents=True)
    (cache / "checkpoints/dino_vitbase16_pretrain.pth").symlink_to(
        weights_cache / "checkpoints/dino_vitbase16_pretrain.pth"
    )
    ex = DreamSimExtractor(variant="dino_vitb16", cache_dir=cache, device="cpu")
    assert not ex.weights_available()
    assert ensure_files("dino_vitb16", cache) == cache
    assert ex.weights_available()
    assert sorted(p.name for p in cache.iterdir()) == ["checkpoints", "dino_vitb16_single_lora"]
