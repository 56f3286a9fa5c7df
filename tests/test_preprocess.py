"""Tests of cbirlib.preprocess: windows, resizing, normalisation, configs, sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cbirlib.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WINDOW_PRESETS,
    InputConfig,
    InputConfigError,
    prepare_slices,
    slice_indices,
    window_bounds,
)


def test_input_config_json_round_trip() -> None:
    cfg = InputConfig(
        size=(96, 128),
        channels=1,
        mean=(0.5,),
        std=(0.25,),
        window=(-200, 300.5),
        interpolation="bicubic",
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["size"] == [96, 128] and d["window"] == [-200.0, 300.5]
    back = InputConfig.from_dict(d)
    assert back == cfg
    assert isinstance(back.size, tuple) and isinstance(back.window, tuple)
    default = InputConfig()
    assert InputConfig.from_dict(json.loads(json.dumps(default.to_dict()))) == default
    assert default.mean == IMAGENET_MEAN and default.std == IMAGENET_STD


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": "lungs"}, r"^unknown window 'lungs'; valid: 'soft_tissue', 'lung'"),
        ({"window": (100, -100)}, r"^window \(100, -100\) must be finite with low < high$"),
        ({"window": (0, float("nan"))}, r"^window \(0, nan\) must be finite"),
        ({"channels": 2}, r"^channels must be 1 or 3, got 2$"),
        # ImageNet mean/std have 3 values: the message names the mean it got
        ({"channels": 1}, r"^mean \(0\.485, 0\.456, 0\.406\) must have 1 "),
        ({"std": (0.0, 1.0, 1.0)}, r"^std \(0\.0, 1\.0, 1\.0\) must be positive$"),
        ({"size": (0, 10)}, r"^size must be two positive integers, got \(0, 10\)$"),
        ({"interpolation": "lanczos"}, r"^unknown interpolation 'lanczos'; valid: bilinear"),
    ],
)
def test_invalid_input_config_names_the_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputConfigError, match=match):
        InputConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_window_lists_presets() -> None:
    with pytest.raises(InputConfigError, match=r"soft_tissue.*percentile"):
        InputConfig(window="abdomen")


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(InputConfigError, match="colour"):
        InputConfig.from_dict({"colour": "red"})


def test_window_presets_and_bounds() -> None:
    assert WINDOW_PRESETS["soft_tissue"] == (-160.0, 240.0)
    assert window_bounds(None, "bone") == (-450.0, 1050.0)
    assert window_bounds(None, (-10, 10)) == (-10.0, 10.0)
    with pytest.raises(InputConfigError):
        window_bounds(None, "percentile")


def test_percentile_window_for_mr() -> None:
    rng = np.random.default_rng(0)
    vol = rng.uniform(100.0, 500.0, size=(20, 32, 32)).astype(np.float32)
    vol[0, 0, :5] = 1e6  # a few outliers must not stretch the window
    low, high = window_bounds(vol, "percentile")
    assert low == pytest.approx(np.percentile(vol, 0.5), rel=0.01)
    assert high == pytest.approx(np.percentile(vol, 99.5), rel=0.01)
    assert 100 <= low < 105 and 495 < high <= 500
    # torch input gives the same bounds
    assert window_bounds(torch.from_numpy(vol), "percentile") == pytest.approx((low, high))
    # a constant volume still gives a usable window
    assert window_bounds(np.full((2, 3, 3), 7.0), "percentile") == (7.0, 8.0)


def test_prepare_slices_windowing_and_normalisation() -> None:
    x = torch.tensor([[[-200.0, -160.0], [40.0, 1000.0]]])  # one 2x2 slice, HU
    cfg = InputConfig(size=(2, 2), window="soft_tissue")
    out = prepare_slices(x, cfg, bounds=window_bounds(None, cfg.window))
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    unit = np.array([[0.0, 0.0], [0.5, 1.0]])  # windowed and clipped to [0, 1]
    for c in range(3):
        expected = (unit - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(out[0, c].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_prepare_slices_single_channel_and_resize() -> None:
    cfg = InputConfig(
        size=(4, 6), channels=1, mean=(0.0,), std=(1.0,), window=(0, 100), aspect="stretch"
    )
    ramp = torch.linspace(0, 100, 16).repeat(16, 1)  # constant along rows, ramp along x
    out = prepare_slices(torch.stack([ramp, 100 - ramp]), cfg, bounds=(0.0, 100.0))
    assert out.shape == (2, 1, 4, 6)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    row = out[0, 0, 0]
    assert bool((row[1:] > row[:-1]).all())  # the ramp survives resizing
    np.testing.assert_allclose(out[0, 0, 0], out[0, 0, 3], atol=1e-6)
    np.testing.assert_allclose(out[0] + out[1], torch.ones(1, 4, 6), atol=1e-5)
    # upsampling (no antialias) works too
    up = prepare_slices(torch.zeros(1, 2, 2), cfg, bounds=(-1.0, 1.0))
    np.testing.assert_allclose(up.numpy(), 0.5)


def test_prepare_slices_channels_are_replicated() -> None:
    cfg = InputConfig(size=(8, 8), mean=(0.0,), std=(1.0,))
    x = torch.randn(3, 20, 20) * 500
    out = prepare_slices(x, cfg, bounds=(-1000.0, 1000.0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert out.is_contiguous()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "area"])
def test_prepare_slices_modes_stay_in_range(mode: str) -> None:
    cfg = InputConfig(size=(7, 5), channels=1, mean=(0.0,), std=(1.0,), interpolation=mode)
    x = torch.from_numpy(np.random.default_rng(1).choice([-2000.0, 2000.0], size=(2, 30, 30)))
    out = prepare_slices(x.float(), cfg, bounds=(-1000.0, 1000.0))
    assert out.shape == (2, 1, 7, 5)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_prepare_slices_rejects_bad_input() -> None:
    with pytest.raises(InputConfigError, match="shape"):
        prepare_slices(torch.zeros(4, 4), InputConfig(), bounds=(0.0, 1.0))
    with pytest.raises(InputConfigError, match="low < high"):
        prepare_slices(torch.zeros(1, 4, 4), InputConfig(), bounds=(1.0, 1.0))


def test_slice_indices() -> None:
    assert slice_indices(10, 3).tolist() == [0, 3, 6, 9]
    assert slice_indices(10).tolist() == list(range(10))
    assert slice_indices(0).tolist() == []
    assert slice_indices(5, 3).dtype == np.int64
    with pytest.raises(InputConfigError, match="stride"):
        slice_indices(10, 0)
