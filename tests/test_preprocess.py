"""Tests of cbirlib.preprocess: windows, resizing, normalisation, configs, sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cbirlib.preprocess import (
    IMAGENET_GREY_MEAN,
    IMAGENET_GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MULTI_WINDOW_PRESETS,
    WINDOW_PRESETS,
    InputConfig,
    InputConfigError,
    is_multi_window,
    prepare_slices,
    slice_indices,
    window_bounds,
    window_channels,
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
        # a mean of the wrong length: the message names the mean it got
        ({"channels": 1, "mean": (0.1, 0.2)}, r"^mean \(0\.1, 0\.2\) must have 1 "),
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


# --- aspect ratio, field of view, multi-window --------------------------------------------

GREY = {"channels": 1, "mean": (0.0,), "std": (1.0,), "window": (-1000, 1000)}


def _disk(shape: tuple[int, int], radius_mm: float, spacing: tuple[float, float]) -> torch.Tensor:
    """A (1, Y, X) slice of air with a centred soft-tissue disk of ``radius_mm``."""
    rows = (torch.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
    cols = (torch.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
    inside = rows[:, None] ** 2 + cols[None, :] ** 2 <= radius_mm**2
    return torch.where(inside, 40.0, -1000.0)[None]


def _extent(image: torch.Tensor) -> tuple[int, int]:
    """Rows and columns of a (H, W) model input covered by the disk (above half-grey)."""
    mask = image > 0.5
    return int(mask.any(1).sum()), int(mask.any(0).sum())


def test_pad_keeps_the_proportions_of_a_non_square_slice() -> None:
    slice_ = _disk((197, 233), 80.0, (1.0, 1.0))  # a round body in a wide field of view
    pad = prepare_slices(slice_, InputConfig(size=(224, 224), **GREY), bounds=(-1000, 1000))
    rows, cols = _extent(pad[0, 0])
    assert abs(rows - cols) <= 1  # still round
    assert abs(cols - 160 * 224 / 233) <= 2  # scaled by the longer side, not stretched
    stretch = InputConfig(size=(224, 224), aspect="stretch", **GREY)
    rows, cols = _extent(prepare_slices(slice_, stretch, bounds=(-1000, 1000))[0, 0])
    assert rows - cols > 20  # the old behaviour: squashed sideways by 197/233
    # the padding is air, windowed like the slice: the corners are the background
    assert float(pad[0, 0, 0, 0]) == pytest.approx(0.0)
    assert float(pad[0, 0, 112, 0]) == pytest.approx(0.0)


def test_pad_uses_the_physical_pixel_spacing() -> None:
    # a round 80 mm body stored with 0.5 mm rows and 1 mm columns is tall in pixels
    slice_ = _disk((400, 200), 80.0, (0.5, 1.0))
    out = prepare_slices(
        slice_, InputConfig(size=(64, 64), **GREY), bounds=(-1000, 1000), spacing=(0.5, 1.0)
    )
    rows, cols = _extent(out[0, 0])
    assert abs(rows - cols) <= 1 and rows > 45  # round, 160 of 200 mm
    ignored = prepare_slices(slice_, InputConfig(size=(64, 64), **GREY), bounds=(-1000, 1000))
    rows, cols = _extent(ignored[0, 0])
    assert rows > 1.8 * cols  # square pixels assumed: an ellipse


def test_pad_fill_is_the_background_in_each_window() -> None:
    slice_ = torch.full((1, 8, 4), 40.0)
    cfg = InputConfig(size=(8, 8), channels=3, mean=(0.0,), std=(1.0,), window="multi")
    out = prepare_slices(slice_, cfg, bounds=window_channels(None, "multi"))
    lung_low, lung_high = WINDOW_PRESETS["lung"]
    air_in_lung = (-1000 - lung_low) / (lung_high - lung_low)
    np.testing.assert_allclose(out[0, :, 4, 0].numpy(), [0.0, 0.0, air_in_lung], atol=1e-6)
    # background=None (the percentile window): the low end of the window
    grey = InputConfig(size=(8, 8), **GREY)
    low_end = prepare_slices(slice_, grey, bounds=(0.0, 100.0), background=None)
    assert float(low_end[0, 0, 4, 0]) == 0.0 and float(low_end[0, 0, 4, 4]) == pytest.approx(0.4)


def test_fov_mm_gives_every_volume_the_same_physical_scale() -> None:
    cfg = InputConfig(size=(112, 112), fov_mm=300.0, **GREY)
    fine = _disk((256, 256), 50.0, (0.8, 0.8))
    coarse = _disk((197, 233), 50.0, (1.5, 1.2))
    a = prepare_slices(fine, cfg, bounds=(-1000, 1000), spacing=(0.8, 0.8))
    b = prepare_slices(coarse, cfg, bounds=(-1000, 1000), spacing=(1.5, 1.2))
    expected = 100.0 / 300.0 * 112  # a 100 mm disk in a 300 mm field of 112 pixels
    for out in (a, b):
        rows, cols = _extent(out[0, 0])
        assert abs(rows - expected) <= 2 and abs(cols - expected) <= 2
    assert float((a - b).abs().mean()) < 0.02  # nearly the same model input
    # a field smaller than the slice crops it (centred)
    crop = InputConfig(size=(16, 16), fov_mm=50.0, **GREY)
    assert float(prepare_slices(fine, crop, bounds=(-1000, 1000), spacing=(0.8, 0.8)).min()) > 0.5


def test_multi_window_stacks_three_windows_as_channels() -> None:
    tissue = torch.linspace(-1000, 1000, 256).repeat(8, 1)[None]  # a HU ramp
    cfg = InputConfig(size=(8, 256), mean=(0.0,), std=(1.0,), window="multi")
    out = prepare_slices(tissue, cfg, bounds=window_channels(None, cfg.window))[0, :, 4]
    hu = tissue[0, 4]
    for c, name in enumerate(MULTI_WINDOW_PRESETS["multi"]):
        low, high = WINDOW_PRESETS[name]
        expected = ((hu - low) / (high - low)).clamp(0, 1)
        np.testing.assert_allclose(out[c].numpy(), expected.numpy(), atol=1e-5)
    brain = (hu >= 0) & (hu <= 80)  # brain tissue spans the whole first channel ...
    assert float(out[0][brain].max() - out[0][brain].min()) > 0.85
    wide = prepare_slices(
        tissue, InputConfig(size=(8, 256), mean=(0.0,), std=(1.0,)), bounds=(-1000, 1000)
    )
    assert float(wide[0, 0, 4][brain].max() - wide[0, 0, 4][brain].min()) < 0.05  # ... not 4 %
    assert is_multi_window(("brain", (-100, 300), "bone")) and not is_multi_window("wide")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aspect": "crop"}, r"^unknown aspect 'crop'; valid: 'pad', 'stretch'$"),
        ({"fov_mm": -5}, r"^fov_mm must be positive and finite, got -5$"),
        ({"fov_mm": "wide"}, r"^fov_mm must be a number, got 'wide'$"),
        ({"fov_mm": 300, "aspect": "stretch"}, r"cannot be combined with aspect='stretch'$"),
        ({"window": "multi", "channels": 1, "mean": (0,), "std": (1,)}, r"needs channels=3, got"),
        ({"window": ("brain", "percentile", "bone")}, r"HU windows, not 'percentile'"),
        ({"window": ("brain", "lungs", "bone")}, r"^unknown window 'lungs'"),
    ],
)
def test_invalid_framing_and_multi_window(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputConfigError, match=match):
        InputConfig(**kwargs)  # type: ignore[arg-type]


def test_window_bounds_refuses_a_multi_window_and_bounds_must_fit_channels() -> None:
    with pytest.raises(InputConfigError, match="window_channels"):
        window_bounds(None, "multi")
    cfg = InputConfig(size=(4, 4), channels=1, mean=(0.0,), std=(1.0,))
    with pytest.raises(InputConfigError, match="3 window bounds for 1 channels"):
        prepare_slices(torch.zeros(1, 4, 4), cfg, bounds=window_channels(None, "multi"))
    with pytest.raises(InputConfigError, match="spacing"):
        prepare_slices(torch.zeros(1, 4, 4), cfg, bounds=(0, 1), spacing=(0.0, 1.0))


def test_old_configs_read_as_stretched_and_round_trip_unchanged() -> None:
    # the input config of an index written before aspect/fov_mm existed
    old = {
        "size": [224, 224],
        "channels": 3,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "window": "wide",
        "interpolation": "bilinear",
    }
    cfg = InputConfig.from_dict(old)
    assert cfg.aspect == "stretch" and cfg.fov_mm is None
    assert cfg.to_dict() == old  # compares equal to the stored config: no false mismatch
    new = InputConfig()
    assert new.aspect == "pad" and new.to_dict() == {**old, "aspect": "pad"}
    multi = InputConfig(window=("brain", (-100, 300), "bone"), fov_mm=350)
    d = json.loads(json.dumps(multi.to_dict()))
    assert d["window"] == ["brain", [-100.0, 300.0], "bone"] and d["fov_mm"] == 350.0
    assert InputConfig.from_dict(d) == multi


def test_one_channel_config_gets_grey_defaults() -> None:
    cfg = InputConfig(channels=1)
    assert cfg.mean == IMAGENET_GREY_MEAN and cfg.std == IMAGENET_GREY_STD
    assert cfg.mean[0] == pytest.approx(np.mean(IMAGENET_MEAN))
    assert InputConfig.from_dict(cfg.to_dict()) == cfg
    x = prepare_slices(torch.full((1, 8, 8), 40.0), cfg, bounds=window_bounds(None, "wide"))
    assert x.shape == (1, 1, 224, 224)
    # explicit values are kept, and a wrong count still fails
    assert InputConfig(channels=1, mean=(0.5,), std=(0.25,)).mean == (0.5,)
    with pytest.raises(InputConfigError, match="1 or 1"):
        InputConfig(channels=1, mean=(0.1, 0.2))
