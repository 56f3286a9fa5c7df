"""The study's pretrained extractors: DINO, DINOv2, RadImageNet and FractalDB models.

Each is a :class:`~cbirlib.extractors.timm.TimmExtractor` (see there for the input, HU
window, aspect ratio, memory format and how weights are resolved), registered through
cbirlib's own ``cbirlib`` entry point ``study``:

==========================  =====================================================  ======
name                        model (timm architecture) and weights                  dim
==========================  =====================================================  ======
``dinov1``                  DINO ViT-B/16 ``vit_base_patch16_224.dino`` (hub);     768
                            ``variant=`` ``vits16``, ``vits8``, ``vitb16``, ``vitb8``
``dinov2``                  DINOv2 ViT-B/14 ``vit_base_patch14_dinov2.lvd142m``    768
                            (hub); ``variant=`` ``vits14``, ``vitb14``, ``vitl14``,
                            ``vitg14``; run at 224 px (see below)
``radimagenet-resnet50``    ResNet50 trained on RadImageNet (``resnet50``);        2048
                            weights by path / URL only
``radimagenet-swin``        Swin-T trained on RadImageNet                          768
                            (``swin_tiny_patch4_window7_224``); path / URL only
``fractaldb-resnet50``      ResNet50 pre-trained on FractalDB-1k (``resnet50``);    2048
                            path / URL only
==========================  =====================================================  ======

Any other timm model is ``timm:<model>`` (:mod:`cbirlib.extractors.timm`).

Choices (not published by the study, so documented here):

* **Resolution**: DINOv2 is trained at 518 px; it runs at 224 px here (16x16 patches, as
  the other ViTs; the position embedding is resampled by timm), which is ~5x faster and
  keeps every extractor at the same input resolution.
* **HU window**: ``"wide"`` (-1000..1000 HU) for every extractor; the multi-window preset
  ``window="multi"`` (brain, soft tissue and lung windows as the three channels;
  ``"multi_bone"`` with the bone window) is offered for every extractor here, measured on
  the phantoms in docs/results/phantom_benchmark.md.
* **Weights**: DINO and DINOv2 come from the Hugging Face hub (``HF_HUB_OFFLINE=1`` is
  honoured). RadImageNet and FractalDB weights are not on the hub: pass the published
  checkpoint with ``weights="path"`` or a URL, or put it in
  :func:`cbirlib.weights.cache_dir` under the file name listed in the error message.

Examples
--------
>>> from cbirlib.extractors.study import DinoV2Extractor
>>> ex = DinoV2Extractor(variant="vits14", weights="random", device="cpu")
>>> ex.name, ex.dim, ex.input_config.size, ex.to_config()["variant"]
('dinov2', 384, (224, 224), 'vits14')
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from cbirlib.errors import ExtractorError, WeightsError
from cbirlib.extractors.timm import TimmExtractor
from cbirlib.hookspecs import Register, hookimpl
from cbirlib.weights import cache_dir, remap_state_dict

__all__ = [
    "DinoV1Extractor",
    "DinoV2Extractor",
    "FractalDBResNet50Extractor",
    "RadImageNetResNet50Extractor",
    "RadImageNetSwinExtractor",
    "register_extractors",
]


class _VariantExtractor(TimmExtractor):
    """A registered extractor whose architecture is chosen by ``variant``."""

    variants: ClassVar[dict[str, str]] = {}
    default_variant: ClassVar[str] = ""

    def __init__(self, variant: str | None = None, **kwargs: Any) -> None:
        variant = variant or self.default_variant
        if variant not in self.variants:
            raise ExtractorError(
                f"extractor {type(self).name!r}: unknown variant {variant!r}; "
                f"valid: {', '.join(self.variants)}"
            )
        self.variant = variant
        super().__init__(self.variants[variant], **kwargs)

    def to_config(self) -> dict[str, Any]:
        """Adds ``variant``."""
        return {**super().to_config(), "variant": self.variant}


class DinoV1Extractor(_VariantExtractor):
    """DINO (self-supervised on ImageNet) ViT; CLS token features. Default ViT-B/16."""

    name = "dinov1"
    variants: ClassVar[dict[str, str]] = {
        "vits16": "vit_small_patch16_224.dino",
        "vits8": "vit_small_patch8_224.dino",
        "vitb16": "vit_base_patch16_224.dino",
        "vitb8": "vit_base_patch8_224.dino",
    }
    default_variant = "vitb16"


class DinoV2Extractor(_VariantExtractor):
    """DINOv2 (self-supervised on LVD-142M) ViT at 224 px; CLS token. Default ViT-B/14."""

    name = "dinov2"
    variants: ClassVar[dict[str, str]] = {
        "vits14": "vit_small_patch14_dinov2.lvd142m",
        "vitb14": "vit_base_patch14_dinov2.lvd142m",
        "vitl14": "vit_large_patch14_dinov2.lvd142m",
        "vitg14": "vit_giant_patch14_dinov2.lvd142m",
    }
    default_variant = "vitb14"
    default_img_size = 224


class _CheckpointExtractor(TimmExtractor):
    """An extractor whose weights are a published checkpoint that is not on the hub."""

    architecture: ClassVar[str] = ""
    cache_file: ClassVar[str] = ""
    where: ClassVar[str] = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.architecture, **kwargs)

    def hub_repo(self) -> str | None:
        return None

    def cached_weights_path(self) -> Path | None:
        """``<cache_dir()>/<cache_file>``, where default weights are looked for."""
        return cache_dir() / self.cache_file

    def _missing_weights_error(self) -> WeightsError:
        return WeightsError(
            f"extractor {self.name!r} needs its published weights, which are not on the "
            f"Hugging Face hub: {self.where} Pass them with "
            f'create_extractor("{self.name}", weights="path/to/checkpoint") (a local file or a '
            f"URL, optionally sha256=...), or copy the file to {self.cached_weights_path()} "
            f"(set CBIRLIB_CACHE to use another folder). No file was found there."
        )


# torchvision-style ResNet state dicts as nn.Sequential(*children()[:-1]) index them
_RESNET_SEQUENTIAL = [
    (r"^0\.", "conv1."),
    (r"^1\.", "bn1."),
    (r"^4\.", "layer1."),
    (r"^5\.", "layer2."),
    (r"^6\.", "layer3."),
    (r"^7\.", "layer4."),
]


class _ResNet50Checkpoint(_CheckpointExtractor):
    architecture = "resnet50"

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision ResNet50 keys (timm uses the same names); ``nn.Sequential``
        indices (``backbone.0.weight`` = ``conv1.weight``, ``backbone.4`` = ``layer1``)
        mapped to names; the ``fc`` head dropped."""
        sd = super().convert_state_dict(state_dict)
        if "conv1.weight" not in sd and "0.weight" in sd:
            sd = remap_state_dict(sd, _RESNET_SEQUENTIAL)
        return remap_state_dict(sd, [(r"^fc\.", None)])


class RadImageNetResNet50Extractor(_ResNet50Checkpoint):
    """ResNet50 trained supervised on RadImageNet (1.35 M radiology images, 165 classes)."""

    name = "radimagenet-resnet50"
    cache_file = "radimagenet-resnet50.pt"
    where = (
        "download the RadImageNet PyTorch ResNet50 checkpoint (ResNet50.pt) from the "
        "RadImageNet project (https://github.com/BMEII-AI/RadImageNet, after accepting its "
        "terms of use)."
    )


class FractalDBResNet50Extractor(_ResNet50Checkpoint):
    """ResNet50 pre-trained on FractalDB-1k (formula-generated fractal images)."""

    name = "fractaldb-resnet50"
    cache_file = "fractaldb-resnet50.pth"
    where = (
        "download the FractalDB-1k pre-trained ResNet50 (a torchvision-style state dict) "
        "from the FractalDB project (https://github.com/hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch)."
    )


class RadImageNetSwinExtractor(_CheckpointExtractor):
    """Swin-T trained supervised on RadImageNet, as timm ``swin_tiny_patch4_window7_224``.

    Checkpoints in timm's layout and in the original Swin layout (downsampling at the end
    of a stage, ``relative_position_index`` buffers) are both accepted; timm's own
    converter maps the latter.
    """

    name = "radimagenet-swin"
    architecture = "swin_tiny_patch4_window7_224"
    cache_file = "radimagenet-swin.pth"
    where = (
        "obtain the RadImageNet-trained Swin-T checkpoint (Swin-T, patch 4, window 7, 224 px) "
        "from the RadImageNet project or the authors of the benchmark study."
    )

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Strip prefixes; keep the head so timm's converter can tell the layouts apart."""
        return super().convert_state_dict(state_dict)


# --- registration --------------------------------------------------------------------------


def _available(cls: type[TimmExtractor], **kwargs: Any) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return cls(device="cpu", **kwargs).weights_available()
        except Exception:  # an availability check must never raise
            return False

    return check


@hookimpl
def register_extractors(register: Register) -> None:
    """Register the study's five extractors (cbirlib's own plugin ``study``)."""
    register(
        "dinov1",
        DinoV1Extractor,
        aliases=("dino",),
        description="DINO ViT-B/16 (self-supervised, ImageNet); variant= vits16/vits8/vitb16/vitb8",
        weights_available=_available(DinoV1Extractor),
    )
    register(
        "dinov2",
        DinoV2Extractor,
        description="DINOv2 ViT-B/14 at 224 px (self-supervised, LVD-142M); "
        "variant= vits14/vitb14/vitl14/vitg14",
        weights_available=_available(DinoV2Extractor),
    )
    for cls, description in (
        (RadImageNetSwinExtractor, "Swin-T trained on RadImageNet (weights= path or URL)"),
        (RadImageNetResNet50Extractor, "ResNet50 trained on RadImageNet (weights= path or URL)"),
        (FractalDBResNet50Extractor, "ResNet50 pre-trained on FractalDB-1k (weights= path or URL)"),
    ):
        register(cls.name, cls, description=description, weights_available=_available(cls))
