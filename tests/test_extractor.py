"""Tests of cbirlib.extractor: the Extractor ABC and the SliceExtractor torch base."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from cbirlib.errors import ExtractorError
from cbirlib.extractor import SliceExtractor, resolve_device
from cbirlib.preprocess import InputConfig
from cbirlib.volume import Volume
from tests.fakes import TinyNet, ct_volume


class BrokenNet(TinyNet):
    """Returns whatever ``output`` says, to exercise the output checks."""

    name = "broken"

    def __init__(self, output: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output = output

    def embed_slices(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        if self.output == "shape":
            return torch.ones(n, 2, 3)
        if self.output == "rows":
            return torch.ones(n + 1, self.dim)
        if self.output == "nan":
            return torch.full((n, self.dim), float("nan"))
        if self.output == "zero":
            return torch.zeros(n, self.dim)
        return torch.ones(n, self.dim + 1)  # wrong dim


def test_device_auto_resolves_to_cpu_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert TinyNet(device="auto").device == torch.device("cpu")


def test_device_auto_prefers_cuda_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None:
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ExtractorError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("auto").type == "cuda"


def test_unknown_device_lists_valid_ones() -> None:
    with pytest.raises(ExtractorError, match=r"'gpu'.*auto.*cpu.*cuda"):
        resolve_device("gpu")


def test_extract_shape_dtype_and_unit_rows() -> None:
    emb = TinyNet(device="cpu").extract(ct_volume())
    assert emb.shape == (9, 6) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[-1])  # different slices, different vectors


def test_slices_selects_rows_in_given_order() -> None:
    ex = TinyNet(device="cpu")
    vol = ct_volume()
    full = ex.extract(vol)
    part = ex.extract(vol, slices=np.array([7, 2, 2]))
    np.testing.assert_allclose(part, full[[7, 2, 2]], atol=1e-6)
    assert ex.extract(vol, slices=np.array([], dtype=np.int64)).shape == (0, 6)


@pytest.mark.parametrize(
    "bad", [np.array([0, 9]), np.array([-1]), np.array([0.5]), np.zeros((2, 2), int)]
)
def test_bad_slices_raise_extractor_error(bad: np.ndarray) -> None:
    with pytest.raises(ExtractorError, match="'tiny'"):
        TinyNet(device="cpu").extract(ct_volume(), slices=bad)


def test_batch_size_does_not_change_embeddings() -> None:
    vol = ct_volume(n=11)
    a = TinyNet(device="cpu", batch_size=1).extract(vol)
    b = TinyNet(device="cpu", batch_size=4).extract(vol)
    c = TinyNet(device="cpu", batch_size=64).extract(vol)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_model_is_built_lazily_once() -> None:
    TinyNet.builds = 0
    ex = TinyNet(device="cpu")
    assert TinyNet.builds == 0 and ex._model is None
    ex.extract(ct_volume())
    ex.extract(ct_volume(seed=1))
    assert TinyNet.builds == 1
    assert not ex.model.training


def test_extract_many_yields_one_volume_at_a_time() -> None:
    ex = TinyNet(device="cpu")
    seen: list[str] = []

    def volumes() -> Iterator[Volume]:
        for i in range(3):
            seen.append(f"v{i}")
            yield ct_volume(f"v{i}", n=4 + i, seed=i)

    gen = ex.extract_many(volumes(), workers=0)
    vid, emb = next(gen)
    assert (vid, emb.shape) == ("v0", (4, 6)) and seen == ["v0"]  # lazy
    rest = list(gen)
    assert [r[0] for r in rest] == ["v1", "v2"]
    assert [r[1].shape[0] for r in rest] == [5, 6]
    np.testing.assert_allclose(rest[1][1], ex.extract(ct_volume("v2", n=6, seed=2)), atol=1e-6)
    assert len(list(ex.extract_many([ct_volume()], verbose=True))) == 1


def test_mr_volumes_use_a_percentile_window() -> None:
    ex = TinyNet(device="cpu")
    vol = ct_volume(modality="MR")
    scaled = Volume("s", vol.array * 10 + 500, modality="MR")
    # a per-volume percentile window makes the embedding invariant to intensity scale
    np.testing.assert_allclose(ex.extract(vol), ex.extract(scaled), atol=1e-4)
    ct_scaled = Volume("c", vol.array * 10 + 500, modality="CT")
    assert not np.allclose(ex.extract(Volume("c0", vol.array)), ex.extract(ct_scaled), atol=1e-3)


def test_input_config_from_dict_and_to_config() -> None:
    cfg = InputConfig(size=(12, 12), window="lung")
    ex = TinyNet(device="cpu", input_config=cfg.to_dict(), seed=3)
    assert ex.input_config == cfg
    config = ex.to_config()
    assert config == {"name": "tiny", "input_config": cfg.to_dict(), "seed": 3}
    rebuilt = TinyNet(device="cpu", **{k: v for k, v in config.items() if k != "name"})
    np.testing.assert_allclose(rebuilt.extract(ct_volume()), ex.extract(ct_volume()), atol=1e-6)
    with pytest.raises(ExtractorError, match="input_config"):
        TinyNet(input_config=42)  # type: ignore[arg-type]
    with pytest.raises(ExtractorError, match="batch_size"):
        TinyNet(batch_size=0)


@pytest.mark.parametrize("output", ["shape", "rows", "nan", "zero", "dim"])
def test_bad_model_output_raises_naming_the_extractor(output: str) -> None:
    with pytest.raises(ExtractorError, match="'broken'"):
        BrokenNet(output, device="cpu").extract(ct_volume())


def test_build_model_must_return_a_module() -> None:
    class NotAModel(TinyNet):
        name = "notamodel"

        def build_model(self) -> torch.nn.Module:
            return "model"  # type: ignore[return-value]

    with pytest.raises(ExtractorError, match=r"'notamodel'.*str"):
        NotAModel(device="cpu").extract(ct_volume())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embeddings_match_cpu() -> None:
    vol = ct_volume(n=40)
    cpu = TinyNet(device="cpu").extract(vol)
    exact = TinyNet(device="cuda", amp=False, batch_size=16).extract(vol)
    np.testing.assert_allclose(exact, cpu, atol=1e-4)
    mixed = TinyNet(device="cuda", amp=True, batch_size=16).extract(vol)
    assert mixed.dtype == np.float32
    assert float((mixed * cpu).sum(axis=1).min()) > 0.99  # bf16/fp16 autocast, same vectors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_chunked_pinned_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    from cbirlib import _cuda_pipeline

    monkeypatch.setattr(_cuda_pipeline, "CHUNK_BYTES", 3 * 24 * 20 * 4)  # 3-slice chunks
    cpu, gpu = TinyNet(device="cpu"), TinyNet(device="cuda", amp=False, batch_size=2)
    for vol in (ct_volume(n=13), Volume("w", np.random.default_rng(5).normal(size=(9, 30, 26)))):
        for sel in (None, np.array([8, 0, 3, 4, 5, 1, 1])):
            np.testing.assert_allclose(
                gpu.extract(vol, slices=sel), cpu.extract(vol, slices=sel), atol=1e-4
            )


# --- aspect ratio, multi-window, channels_last ----------------------------------------------


class GridPool(TinyNet):
    """Embeds the model input as its 6x6 block means: sensitive to geometry, no weights."""

    name = "gridpool"

    @property
    def dim(self) -> int:
        return 3 * 36

    def default_input_config(self) -> InputConfig:
        return InputConfig(size=(48, 48), window="soft_tissue")

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(6), torch.nn.Flatten())


def _body(n: int = 3, size: int = 40) -> np.ndarray:
    """Square slices of air with an off-centre soft-tissue body that changes along z."""
    yy, xx = np.mgrid[:size, :size]
    arr = np.full((n, size, size), -1000.0, np.float32)
    for z in range(n):
        arr[z][((yy - 18) / (10 + 2 * z)) ** 2 + ((xx - 22) / 14) ** 2 <= 1] = 40.0 + 20 * z
    return arr


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


def test_padded_copy_embeds_like_its_square_crop() -> None:
    square = _body()
    wide = np.full((3, 40, 64), -1000.0, np.float32)  # the same slices in a wider field
    wide[:, :, 12:52] = square
    crop, padded = Volume("sq", square), Volume("wide", wide)
    fov = GridPool(device="cpu", input_config=InputConfig(size=(48, 48), fov_mm=64.0))
    assert _cos(fov.extract(crop), fov.extract(padded)).min() > 0.999
    stretch = GridPool(device="cpu", input_config=InputConfig(size=(48, 48), aspect="stretch"))
    assert _cos(stretch.extract(crop), stretch.extract(padded)).max() < 0.99
    # pad (the default): the padded copy is the square crop seen in a 64 mm field
    pad = GridPool(device="cpu")
    framed = np.full((3, 64, 64), -1000.0, np.float32)
    framed[:, 12:52, 12:52] = square
    np.testing.assert_allclose(
        pad.extract(padded), pad.extract(Volume("framed", framed)), atol=1e-6
    )


def test_pad_background_is_air_for_ct_and_the_low_end_for_mr() -> None:
    ex = GridPool(device="cpu")
    vol = ct_volume(modality="MR")  # 24 x 20: padded to 24 x 24
    scaled = Volume("s", vol.array * 10 + 500, spacing=vol.spacing, modality="MR")
    np.testing.assert_allclose(ex.extract(vol), ex.extract(scaled), atol=1e-4)


def test_multi_window_input_for_ct_and_percentile_for_mr() -> None:
    multi = GridPool(device="cpu", input_config=InputConfig(size=(48, 48), window="multi"))
    ct = Volume("ct", _body())
    wide = GridPool(device="cpu", input_config=InputConfig(size=(48, 48), window="wide"))
    assert _cos(multi.extract(ct), wide.extract(ct)).max() < 0.99  # three windows differ
    mr = ct_volume(modality="MR")
    scaled = Volume("s", mr.array * 10 + 500, spacing=mr.spacing, modality="MR")
    np.testing.assert_allclose(multi.extract(mr), multi.extract(scaled), atol=1e-4)
    np.testing.assert_allclose(multi.extract(mr), wide.extract(mr), atol=1e-6)  # one window
    assert multi.to_config()["input_config"]["window"] == "multi"


def test_an_old_input_config_rebuilds_the_stretched_extractor() -> None:
    from cbirlib.errors import ExtractorMismatchWarning
    from cbirlib.index.meta import check_compatible

    old = {k: v for k, v in InputConfig(size=(16, 16), window="soft_tissue").to_dict().items()}
    del old["aspect"]  # as written before the setting existed
    ex = TinyNet(device="cpu", input_config=old)
    assert ex.input_config.aspect == "stretch"
    stored = {"name": "tiny", "input_config": old, "seed": 0}
    assert ex.to_config() == stored
    check_compatible(stored, 6, ex.to_config(), 6, strict=True)  # no false mismatch
    with pytest.warns(ExtractorMismatchWarning, match="input_config"):
        check_compatible(stored, 6, TinyNet(device="cpu").to_config(), 6)  # pad vs stretch


def test_channels_last_gives_the_same_embeddings() -> None:
    from cbirlib.extractors import TimmExtractor

    vol = Volume("v", _body(n=4, size=48) + np.random.default_rng(0).normal(0, 50, (4, 48, 48)))
    kwargs: dict[str, Any] = {"weights": "random", "img_size": 64, "device": "cpu"}
    default = TimmExtractor("resnet10t", **kwargs)  # random weights: a fixture, not pretrained
    contiguous = TimmExtractor("resnet10t", channels_last=False, **kwargs)
    assert default.uses_channels_last and not contiguous.uses_channels_last
    for ex in (default, contiguous):  # the same random weights
        torch.manual_seed(0)
        ex.model  # noqa: B018 (builds it)
    assert default.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    a, b = default.extract(vol), contiguous.extract(vol)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() < 1e-4
    assert not TimmExtractor("vit_tiny_patch16_224", **kwargs).uses_channels_last
    assert TimmExtractor("vit_tiny_patch16_224", channels_last=True, **kwargs).uses_channels_last


def test_dim_can_come_from_a_constructor_argument() -> None:
    class Projector(SliceExtractor):
        name = "projector"

        def __init__(self, *, width: int = 5, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.dim = width

        def default_input_config(self) -> InputConfig:
            return InputConfig(size=(8, 8), channels=1)

        def build_model(self) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, self.dim))

    ex = Projector(width=7, device="cpu")
    assert ex.dim == 7
    volume = Volume("v", np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32))
    assert ex.extract(volume).shape == (3, 7)
    with pytest.raises(ExtractorError, match="dim must be a positive integer"):
        Projector(width=0, device="cpu")
