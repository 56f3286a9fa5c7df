"""Tests of the timm-backed extractors: weight sources, key layouts, configs (offline)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from cbirlib.errors import ChecksumError, ExtractorError, WeightsError
from cbirlib.extractors import TimmExtractor
from cbirlib.extractors.study import (
    DinoV1Extractor,
    DinoV2Extractor,
    FractalDBResNet50Extractor,
    RadImageNetResNet50Extractor,
    RadImageNetSwinExtractor,
)
from cbirlib.plugins import create_extractor, list_extractors
from cbirlib.preprocess import prepare_slices, window_bounds
from cbirlib.volume import Volume
from cbirlib.weights import sha256_file


@pytest.fixture(scope="module")
def volume() -> Volume:
    rng = np.random.default_rng(7)
    arr = rng.normal(0, 400, size=(4, 48, 48)).astype(np.float32)
    arr[:, 10:30, 12:36] += 600.0  # a bright "organ" so slices are not pure noise
    return Volume("v1", arr, spacing=(3.0, 1.0, 1.0))


def _random(model_name: str, img_size: int = 32, **kw: Any) -> TimmExtractor:
    torch.manual_seed(0)
    ex = TimmExtractor(model_name, weights="random", img_size=img_size, device="cpu", **kw)
    _ = ex.model
    return ex


def _manual_embedding(
    ex: TimmExtractor, volume: Volume, forward: torch.nn.Module
) -> np.ndarray[Any, Any]:
    """Embeddings computed outside the extractor: preprocess, forward, L2-normalise."""
    cfg = ex.input_config
    batch = prepare_slices(
        torch.from_numpy(volume.array), cfg, bounds=window_bounds(volume.array, cfg.window)
    )
    with torch.no_grad():
        out = forward.eval()(batch).flatten(1)
    return torch.nn.functional.normalize(out, dim=1).numpy()  # type: ignore[no-any-return]


def test_random_fixture_warns_and_is_deterministic(
    volume: Volume, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cbirlib.extractors.timm"):
        ex = _random("resnet10t")
    assert "RANDOM" in caplog.text
    a = ex.extract(volume)
    b = ex.extract(volume)
    assert a.shape == (4, ex.dim) == (4, 512)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1])  # slices differ, so embeddings differ


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_local_checkpoint_reproduces_source(volume: Volume, tmp_path: Path, fmt: str) -> None:
    src = _random("resnet10t")
    # .contiguous(): a resnet runs channels_last on the CPU; safetensors wants dense tensors
    sd = {f"module.{k}": v.contiguous() for k, v in src.model.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(1000, 512)  # a classifier head is dropped
    sd["module.fc.bias"] = torch.zeros(1000)
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": sd, "epoch": 3}, path)
    ex = TimmExtractor("resnet10t", weights=path, img_size=32, device="cpu")
    np.testing.assert_array_equal(ex.extract(volume), src.extract(volume))
    # sha256 is checked when given
    ok = TimmExtractor(
        "resnet10t", weights=path, sha256=sha256_file(path), img_size=32, device="cpu"
    )
    np.testing.assert_array_equal(ok.extract(volume), src.extract(volume))
    bad = TimmExtractor("resnet10t", weights=path, sha256="ab" * 32, img_size=32, device="cpu")
    with pytest.raises(ChecksumError, match="ab" * 32):
        bad.extract(volume)


def test_checkpoint_of_wrong_architecture(volume: Volume, tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(path))
    ex = TimmExtractor("resnet10t", weights=path, img_size=32, device="cpu")
    with pytest.raises(WeightsError, match=r"r18\.safetensors.*(missing|shape)"):
        ex.extract(volume)


def _torchvision_resnet50() -> torchvision.models.ResNet:
    torch.manual_seed(1)
    model = torchvision.models.resnet50(weights=None)
    # non-trivial BN statistics so that a wrong mapping shows
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_radimagenet_resnet50_sequential_backbone_layout(volume: Volume, tmp_path: Path) -> None:
    tv = _torchvision_resnet50()
    backbone = torch.nn.Sequential(*list(tv.children())[:-1])  # RadImageNet's Backbone module
    sd = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}
    assert "module.backbone.4.0.conv1.weight" in sd
    path = tmp_path / "ResNet50.pt"
    torch.save(sd, path)
    ex = RadImageNetResNet50Extractor(weights=str(path), img_size=32, device="cpu")
    assert ex.name == "radimagenet-resnet50" and ex.dim == 2048
    np.testing.assert_allclose(
        ex.extract(volume), _manual_embedding(ex, volume, backbone), atol=1e-5
    )


def test_fractaldb_resnet50_torchvision_layout(volume: Volume, tmp_path: Path) -> None:
    tv = _torchvision_resnet50()
    path = tmp_path / "FractalDB-1000_res50.pth"
    torch.save(tv.state_dict(), path)  # includes the 1000-class fc head
    ex = FractalDBResNet50Extractor(weights=str(path), img_size=32, device="cpu")
    pooled = torch.nn.Sequential(*list(tv.children())[:-1])
    np.testing.assert_allclose(ex.extract(volume), _manual_embedding(ex, volume, pooled), atol=1e-5)


def test_checkpoint_extractor_without_weights(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_CACHE", str(tmp_path / "cache"))
    ex = FractalDBResNet50Extractor(img_size=32, device="cpu")
    assert not ex.weights_available()
    with pytest.raises(WeightsError) as err:
        ex.extract(volume)
    msg = str(err.value)
    assert "fractaldb-resnet50" in msg and 'weights="path/to/checkpoint"' in msg
    assert str(tmp_path / "cache" / "fractaldb-resnet50.pth") in msg
    # the file put into the cache is then found
    (tmp_path / "cache").mkdir()
    torch.save(_torchvision_resnet50().state_dict(), tmp_path / "cache" / "fractaldb-resnet50.pth")
    assert ex.weights_available()
    assert ex.extract(volume).shape == (4, 2048)


def _to_original_swin_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert timm's conversion: downsample at the end of a stage, plain 'head.'."""
    import re

    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    return out


@pytest.fixture(scope="module")
def swin_source() -> torch.nn.Module:
    torch.manual_seed(2)
    return timm.create_model("swin_tiny_patch4_window7_224", num_classes=165).eval()


@pytest.mark.parametrize("layout", ["timm", "original"])
def test_radimagenet_swin_layouts(
    swin_source: torch.nn.Module, tmp_path: Path, layout: str
) -> None:
    sd = dict(swin_source.state_dict())
    if layout == "original":
        sd = _to_original_swin_layout(sd)
        assert "layers.0.downsample.reduction.weight" in sd
    path = tmp_path / "swin.pth"
    torch.save({"model": sd}, path)
    ex = RadImageNetSwinExtractor(weights=str(path), device="cpu")
    assert ex.input_config.size == (224, 224) and ex.dim == 768
    # a swin forward pass is slow on CPU: compare the loaded tensors instead (exact)
    loaded = ex.model.state_dict()
    expected = {k: v for k, v in swin_source.state_dict().items() if not k.startswith("head.fc.")}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def _fake_hub_cache(root: Path, repo_id: str, sd: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face hub cache holding ``model.safetensors`` of ``repo_id``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))
    (snap / "config.json").write_text('{"architecture": "test_resnet", "num_classes": 1000}')
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


def test_prepopulated_hub_cache_loads_offline(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = _random("test_resnet")
    full = timm.create_model("test_resnet")  # the hub file has the classifier
    sd = dict(full.state_dict())
    sd.update({k: v.contiguous() for k, v in src.model.state_dict().items()})  # channels_last
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    ex = TimmExtractor("test_resnet", img_size=32, device="cpu")
    assert not ex.weights_available()
    with pytest.raises(WeightsError) as err:
        ex.extract(volume)
    assert str(tmp_path / "empty") in str(err.value)
    assert 'weights="path/to/file"' in str(err.value)

    hub = _fake_hub_cache(tmp_path / "hub", "timm/test_resnet.r160_in1k", sd)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    ex = TimmExtractor("test_resnet", img_size=32, device="cpu")
    assert ex.weights_available()
    np.testing.assert_array_equal(ex.extract(volume), src.extract(volume))


def test_vit_checkpoint_resampled_to_smaller_input(volume: Volume, tmp_path: Path) -> None:
    src = timm.create_model("test_vit", num_classes=0)  # trained at 160 px
    path = tmp_path / "vit.safetensors"
    save_file(src.state_dict(), str(path))
    ex = TimmExtractor("test_vit", weights=str(path), img_size=32, device="cpu")
    emb = ex.extract(volume)
    assert emb.shape == (4, ex.dim)
    assert ex.model.pos_embed.shape[1] == (32 // 16) ** 2 + 1  # type: ignore[union-attr]


def test_study_extractor_configs() -> None:
    d1 = DinoV1Extractor(device="cpu")
    assert d1.model_name == "vit_base_patch16_224.dino" and d1.dim == 768
    assert d1.input_config.window == "wide" and d1.input_config.size == (224, 224)
    assert DinoV1Extractor(variant="vits8", device="cpu").dim == 384
    d2 = DinoV2Extractor(variant="vits14", device="cpu")
    assert d2.input_config.size == (224, 224) and d2.dim == 384
    assert d2.input_config.mean == (0.485, 0.456, 0.406)
    with pytest.raises(ExtractorError, match=r"'vitx'.*vits16"):
        DinoV1Extractor(variant="vitx")
    with pytest.raises(ExtractorError, match="unknown timm model 'resnet_nope'"):
        TimmExtractor("resnet_nope")


def test_registry_and_to_config_round_trip(tmp_path: Path) -> None:
    names = {info.name for info in list_extractors()}
    assert {
        "dinov1",
        "dinov2",
        "radimagenet-swin",
        "radimagenet-resnet50",
        "fractaldb-resnet50",
        "timm:",
    } <= names
    for ex in (
        create_extractor("timm:resnet10t", weights="random", img_size=32, device="cpu"),
        create_extractor("dinov1", variant="vits16", device="cpu"),
        create_extractor("dinov2", window="soft_tissue", device="cpu"),
        create_extractor("radimagenet-resnet50", weights=str(tmp_path / "x.pt"), device="cpu"),
    ):
        cfg = ex.to_config()
        again = create_extractor(**cfg)
        assert type(again) is type(ex)
        assert again.to_config() == cfg
    assert create_extractor("dinov2", window="soft_tissue").input_config.window == "soft_tissue"


def test_hub_extractor_offline_without_cache(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    ex = create_extractor("dinov1", device="cpu")
    assert [i.weights_available for i in list_extractors("dinov1")] == [False]
    with pytest.raises(WeightsError, match=str(tmp_path / "hf")):
        ex.extract(volume)


# --- module layout: the public base, the study's plugin, the deprecated alias --------------


def test_a_subclass_that_sets_name_is_registered_under_it() -> None:
    class Small(TimmExtractor):
        name = "small-resnet"
        default_img_size = 32

        def __init__(self, **kwargs: Any) -> None:
            super().__init__("resnet10t", **kwargs)

    ex = Small(weights="random", device="cpu")
    assert (ex.name, ex.input_config.size, ex.dim) == ("small-resnet", (32, 32), 512)
    assert ex.to_config()["name"] == "small-resnet"
    assert TimmExtractor("resnet10t", weights="random", device="cpu").name == "timm:resnet10t"
    import cbirlib

    assert cbirlib.TimmExtractor is TimmExtractor


def test_builtin_entry_points_register_the_family_and_the_study_apart(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What pyproject.toml declares: ``timm`` registers ``timm:``, ``study`` the five models."""
    tomllib = pytest.importorskip("tomllib")
    import importlib.metadata

    from tests.fakes import fake_entry_points

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["cbirlib"]
    assert declared == {
        "baseline": "cbirlib.extractors.baseline",
        "timm": "cbirlib.extractors.timm",
        "study": "cbirlib.extractors.study",
    }
    eps = [importlib.metadata.EntryPoint(k, v, "cbirlib") for k, v in declared.items()]
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(*eps))
    monkeypatch.delenv("CBIRLIB_PLUGINS", raising=False)
    by_plugin: dict[str, set[str]] = {}
    for info in list_extractors():
        by_plugin.setdefault(info.plugin, set()).add(info.name)
    assert by_plugin == {
        "baseline": {"baseline"},
        "timm": {"timm:"},
        "study": {
            "dinov1",
            "dinov2",
            "radimagenet-resnet50",
            "radimagenet-swin",
            "fractaldb-resnet50",
        },
    }


def test_the_old_module_path_is_a_deprecated_alias() -> None:
    import cbirlib.extractors.timm_models as old

    with pytest.warns(
        DeprecationWarning, match=r"import TimmExtractor from cbirlib\.extractors\.timm"
    ):
        from cbirlib.extractors.timm_models import TimmExtractor as OldTimm
    assert OldTimm is TimmExtractor
    with pytest.warns(DeprecationWarning, match=r"cbirlib\.extractors\.study"):
        assert old.RadImageNetSwinExtractor is RadImageNetSwinExtractor
    with pytest.raises(AttributeError, match="nosuch"):
        old.nosuch  # noqa: B018


def test_an_entry_point_written_before_the_split_still_loads_everything(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata of an install from before the split names the old module: no warning (they
    are errors here), every name is registered, under the one plugin ``timm``."""
    import importlib.metadata

    from tests.fakes import BASELINE_EP, fake_entry_points

    old = importlib.metadata.EntryPoint("timm", "cbirlib.extractors.timm_models", "cbirlib")
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(BASELINE_EP, old))
    monkeypatch.delenv("CBIRLIB_PLUGINS", raising=False)
    names = {info.name for info in list_extractors() if info.plugin == "timm"}
    assert {"timm:", "dinov2", "radimagenet-swin"} <= names
    ex = create_extractor("timm:resnet10t", weights="random", img_size=32, device="cpu")
    assert type(ex) is TimmExtractor
