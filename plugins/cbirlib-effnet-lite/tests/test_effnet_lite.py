"""Tests of the cbirlib-effnet-lite plugin (installed, so its entry point is real)."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cbirlib_effnet_lite import (
    EfficientNetLite0Extractor,
    convert_state_dict,
    imagenet_classifier,
)

from cbirlib.errors import WeightsError
from cbirlib.plugins import create_extractor, list_extractors
from cbirlib.preprocess import InputConfig, prepare_slices
from cbirlib.volume import Volume

MILITARY_UNIFORM = 652


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return imagenet_classifier()


@pytest.fixture(scope="module")
def hopper() -> torch.Tensor:
    """matplotlib's sample photograph of Grace Hopper in uniform, (1, 3, H, W) in [0, 1]."""
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def _imagenet_input(image: torch.Tensor, cfg: InputConfig) -> torch.Tensor:
    x = torch.nn.functional.interpolate(
        image, size=cfg.size, mode="bicubic", antialias=True, align_corners=False
    )
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (x - mean) / std


def test_entry_point_is_installed() -> None:
    eps = importlib.metadata.entry_points(group="cbirlib")
    assert "cbirlib_effnet_lite" in {ep.value for ep in eps}
    [info] = list_extractors("efficientnet-lite0")
    assert info.plugin == "effnet-lite"
    assert info.weights_available


def test_predicts_military_uniform(classifier: torch.nn.Module, hopper: torch.Tensor) -> None:
    cfg = EfficientNetLite0Extractor(device="cpu").input_config
    with torch.no_grad():
        probs = classifier(_imagenet_input(hopper, cfg)).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.3


def test_extractor_uses_the_same_weights(classifier: torch.nn.Module) -> None:
    ex = create_extractor("efficientnet-lite0", device="cpu", img_size=64)
    assert isinstance(ex, EfficientNetLite0Extractor)
    rng = np.random.default_rng(0)
    vol = Volume("v", rng.normal(0, 300, size=(3, 40, 40)).astype(np.float32))
    emb = ex.extract(vol)
    assert emb.shape == (3, 1280)
    np.testing.assert_array_equal(emb, ex.extract(vol))  # deterministic on CPU
    cfg = ex.input_config
    batch = prepare_slices(torch.from_numpy(vol.array), cfg, bounds=(-1000.0, 1000.0))
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            classifier.forward_head(classifier.forward_features(batch), pre_logits=True), dim=1
        )
    np.testing.assert_allclose(emb, ref.numpy(), atol=1e-5)


def test_to_config_round_trip() -> None:
    ex = create_extractor("effnet-lite0", window="soft_tissue", device="cpu")
    cfg = ex.to_config()
    assert cfg["name"] == "efficientnet-lite0" and cfg["weights"] is None
    assert create_extractor(**cfg).to_config() == cfg


def test_layout_mismatch_is_a_weights_error() -> None:
    src = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    with pytest.raises(WeightsError, match="shape mismatches"):
        convert_state_dict(src, {"x": torch.zeros(3), "y": torch.zeros(4)})
    with pytest.raises(WeightsError, match="2 tensors"):
        convert_state_dict(src, {"x": torch.zeros(3)})


def test_given_file_in_another_layout_fails(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(3)}, path)
    ex = EfficientNetLite0Extractor(weights=str(path), device="cpu")
    with pytest.raises(WeightsError, match="1 tensors"):
        _ = ex.model


def test_it_builds_on_the_public_timm_extractor() -> None:
    import cbirlib

    assert issubclass(EfficientNetLite0Extractor, cbirlib.TimmExtractor)
    ex = EfficientNetLite0Extractor(device="cpu")
    # the registered name comes from the class attribute alone (no private override)
    assert ex.name == ex.to_config()["name"] == "efficientnet-lite0"
    assert type(create_extractor(**ex.to_config())) is EfficientNetLite0Extractor
