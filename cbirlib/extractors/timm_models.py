"""The study's pretrained extractors, built on timm.

Registered names (through cbirlib's own ``cbirlib`` entry point ``timm``):

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
``timm:<model>``            any timm model, pooled features (``num_classes=0``)    varies
==========================  =====================================================  ======

Choices (not published by the study, so documented here):

* **Input** follows timm's ``pretrained_cfg`` of each model: mean/std, input size and
  interpolation (``bicubic`` where timm says so). DINOv2 is trained at 518 px; it runs at
  224 px here (16x16 patches, as the other ViTs; the position embedding is resampled by
  timm), which is ~5x faster and keeps every extractor at the same input resolution.
* **HU window**: ``"wide"`` (-1000..1000 HU) for every extractor: whole-body retrieval
  must see lung, soft tissue and bone at once; a soft-tissue window would flatten the
  lungs and bone. MR volumes use the per-volume percentile window (see
  :mod:`cbirlib.preprocess`). Override with ``input_config=`` or ``window=``; the
  multi-window preset ``window="multi"`` (brain, soft tissue and lung windows as the
  three channels; ``"multi_bone"`` with the bone window) is offered for every extractor
  here, measured on the phantoms in docs/results/phantom_benchmark.md.
* **Aspect ratio**: slices are padded with air to the input's aspect ratio
  (``InputConfig.aspect="pad"``), or resampled to a fixed field of view with
  ``InputConfig(fov_mm=...)``.
* **Memory format**: on the CPU, the families in :data:`CHANNELS_LAST_CPU_FAMILIES`
  (``resnet``, ``efficientnet``) run ``channels_last`` (measured 1.3-1.4x faster,
  ``benchmarks/channels_last.py``); ConvNeXt, ViTs and the others stay contiguous.
* **Weights**: ``weights=None`` means timm's pretrained weights from the Hugging Face hub
  (standard HF cache; ``HF_HUB_OFFLINE=1`` is honoured). RadImageNet and FractalDB
  weights are not on the hub: pass the published checkpoint with ``weights="path"`` or a
  URL, or put it in :func:`cbirlib.weights.cache_dir` under the file name listed in the
  error message. ``weights="random"`` builds an untrained model: for test fixtures and
  throughput benchmarks only; it logs a warning and is never a default.

Examples
--------
>>> from cbirlib.extractors.timm_models import TimmExtractor
>>> ex = TimmExtractor("resnet10t", weights="random", img_size=64, device="cpu")
>>> ex.name, ex.dim, ex.input_config.size
('timm:resnet10t', 512, (64, 64))
>>> ex.to_config()["weights"]
'random'
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from cbirlib.errors import ExtractorError, WeightsError
from cbirlib.extractor import SliceExtractor
from cbirlib.hookspecs import Register, hookimpl
from cbirlib.preprocess import INTERPOLATIONS, InputConfig, Window
from cbirlib.weights import (
    cache_dir,
    hub_cache_dir,
    hub_errors,
    hub_file_cached,
    hub_offline,
    load_into,
    load_state_dict,
    remap_state_dict,
    strip_prefixes,
)

__all__ = [
    "CHANNELS_LAST_CPU_FAMILIES",
    "RANDOM",
    "DinoV1Extractor",
    "DinoV2Extractor",
    "FractalDBResNet50Extractor",
    "RadImageNetResNet50Extractor",
    "RadImageNetSwinExtractor",
    "TimmExtractor",
    "register_extractors",
]

logger = logging.getLogger(__name__)

RANDOM = "random"
"""``weights=RANDOM`` builds an untrained model (test fixtures, throughput only)."""

DEFAULT_WINDOW = "wide"

CHANNELS_LAST_CPU_FAMILIES: frozenset[str] = frozenset({"resnet", "efficientnet"})
"""timm model families (the module of the architecture: ``resnet``, ``efficientnet``...)
that run faster in the ``channels_last`` memory format on the CPU, measured with
``benchmarks/channels_last.py`` (docs/results/channels_last.md); the others stay
contiguous there. On CUDA every model runs channels_last."""
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")

WeightsArg = str | os.PathLike[str] | None


def _pretrained_cfg(model_name: str) -> Any:
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:6]}*")[:8]
        raise ExtractorError(
            f"unknown timm model {model_name!r}; similar names: {close or 'none'} "
            "(see timm.list_models())"
        )
    return get_pretrained_cfg(model_name)


class TimmExtractor(SliceExtractor):
    """Global pooled features of a timm model (``num_classes=0``) for every slice.

    Parameters
    ----------
    model_name
        timm model name, optionally with a pretrained tag (``"resnet50.a1_in1k"``).
    weights
        ``None``: timm's pretrained weights from the Hugging Face hub (HF cache, honours
        ``HF_HUB_OFFLINE``). A path or ``http(s)://`` / ``file://`` URL: that checkpoint
        (safetensors or torch; must fit the architecture exactly, classifier head
        excepted). ``"random"``: untrained, for tests and benchmarks only.
    sha256
        Expected sha256 of the ``weights`` file.
    img_size
        Input size in pixels (square); default the pretrained size.
    window
        HU window preset, ``(low, high)``, or a multi-window input (``"multi"``:
        brain, soft tissue and lung windows as the three channels; ``"multi_bone"``; or
        three windows); default ``"wide"``. See :mod:`cbirlib.preprocess`.
    device, batch_size, input_config, amp, channels_last
        See :class:`cbirlib.extractor.SliceExtractor`; ``channels_last=None`` uses it on
        the CPU for the families in :data:`CHANNELS_LAST_CPU_FAMILIES`.

    Raises
    ------
    WeightsError
        On first use, when weights are missing (offline, not cached), do not fit, or fail
        their checksum. Never falls back to random weights.
    """

    name = "timm"
    default_window: ClassVar[Window] = DEFAULT_WINDOW
    default_img_size: ClassVar[int | None] = None

    def __init__(
        self,
        model_name: str,
        *,
        weights: WeightsArg = None,
        sha256: str | None = None,
        img_size: int | None = None,
        window: Window | None = None,
        device: str = "auto",
        batch_size: int = 32,
        input_config: InputConfig | Mapping[str, Any] | None = None,
        amp: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        self.model_name = model_name
        self.name = self._registry_name()
        self.weights = os.fspath(weights) if weights is not None else None
        self.sha256 = sha256
        self.img_size = img_size if img_size is not None else self.default_img_size
        self.window = window if window is not None else self.default_window
        self._pcfg = _pretrained_cfg(model_name)
        self._dim: int | None = None
        self._family: str | None = None
        super().__init__(
            device=device,
            batch_size=batch_size,
            input_config=input_config,
            amp=amp,
            channels_last=channels_last,
        )

    def _registry_name(self) -> str:
        return f"timm:{self.model_name}"

    @property
    def family(self) -> str:
        """The timm family of the architecture (its module: ``"resnet"``, ``"efficientnet"``)."""
        if self._family is None:
            from timm.models import get_arch_name, model_entrypoint

            module: str = model_entrypoint(get_arch_name(self.model_name)).__module__
            self._family = module.rsplit(".", 1)[-1]
        return self._family

    def default_channels_last_cpu(self) -> bool:
        """Whether the family is in :data:`CHANNELS_LAST_CPU_FAMILIES` (measured faster)."""
        return self.family in CHANNELS_LAST_CPU_FAMILIES

    # -- configuration ------------------------------------------------------------------

    def _model_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_classes": 0}
        if self.img_size is not None and self._pcfg is not None and self._pcfg.fixed_input_size:
            kwargs["img_size"] = self.img_size
        return kwargs

    def default_input_config(self) -> InputConfig:
        """Mean, std, size and interpolation from timm's ``pretrained_cfg``; HU window."""
        pcfg = self._pcfg
        size: tuple[int, int] = (224, 224)
        mean: tuple[float, ...] = (0.485, 0.456, 0.406)
        std: tuple[float, ...] = (0.229, 0.224, 0.225)
        interpolation = "bilinear"
        if pcfg is not None:
            size = (int(pcfg.input_size[1]), int(pcfg.input_size[2]))
            mean, std = tuple(pcfg.mean), tuple(pcfg.std)
            if pcfg.interpolation in INTERPOLATIONS:
                interpolation = pcfg.interpolation
        if self.img_size is not None:
            size = (self.img_size, self.img_size)
        return InputConfig(
            size=size,
            channels=3,
            mean=mean,
            std=std,
            window=self.window,
            interpolation=interpolation,
        )

    @property
    def dim(self) -> int:
        """Pooled feature dimension (found on the meta device, without loading weights)."""
        if self._dim is None:
            if self._model is not None:
                model = self._model
            else:
                import timm

                with torch.device("meta"):
                    model = timm.create_model(
                        self.model_name, pretrained=False, **self._model_kwargs()
                    )
            dim: Any = getattr(model, "head_hidden_size", None) or model.num_features
            self._dim = int(dim)
        return self._dim

    @dim.setter
    def dim(self, value: int) -> None:
        self._dim = int(value)

    def to_config(self) -> dict[str, Any]:
        """Name, input config and the arguments that fix the embeddings."""
        cfg = super().to_config()
        cfg.update(weights=self.weights, sha256=self.sha256, img_size=self.img_size)
        return cfg

    # -- weights ------------------------------------------------------------------------

    def hub_repo(self) -> str | None:
        """The Hugging Face hub repository of the default weights, if any."""
        pcfg = self._pcfg
        return None if pcfg is None else pcfg.hf_hub_id

    def weights_available(self) -> bool:
        """Whether the weights are local: a given file, or the hub files in the HF cache."""
        return _weights_available(self.weights, self.hub_repo(), self.cached_weights_path())

    def cached_weights_path(self) -> Path | None:
        """Where default weights that are not on the hub are looked for (``None``: hub)."""
        return None

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint's keys onto the timm architecture (override for other layouts).

        The default strips ``module.`` / ``backbone.`` / ``encoder.`` / ``model.``
        prefixes; the architecture's own timm ``checkpoint_filter_fn`` and the removal of
        the classifier head follow in :meth:`build_model`.
        """
        return strip_prefixes(state_dict, _PREFIXES)

    def _missing_weights_error(self) -> WeightsError:
        return WeightsError(
            f"extractor {self.name!r}: no weights given and timm model {self.model_name!r} "
            "has no pretrained weights on the Hugging Face hub; pass weights='path/to/file' "
            "(or a URL)"
        )

    def build_model(self) -> torch.nn.Module:
        """Build the timm model and load its weights (hub, file, URL, or random)."""
        import timm

        kwargs = self._model_kwargs()
        if self.weights == RANDOM:
            logger.warning(
                "extractor %r: RANDOM (untrained) weights requested with weights='random': "
                "embeddings are meaningless for retrieval; use only for tests and benchmarks",
                self.name,
            )
            return timm.create_model(self.model_name, pretrained=False, **kwargs)
        source: str | None = self.weights
        if source is None:
            local = self.cached_weights_path()
            if local is not None:
                if not local.is_file():
                    raise self._missing_weights_error()
                source = str(local)
        if source is None:
            return self._build_from_hub(kwargs)
        sd = load_state_dict(source, sha256=self.sha256, strip=())
        sd = self.convert_state_dict(sd)
        model = timm.create_model(self.model_name, pretrained=False, **kwargs)
        filter_fn: Callable[..., dict[str, torch.Tensor]] | None = getattr(
            sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None
        )
        if filter_fn is not None:
            try:
                sd = filter_fn(sd, model)
            except Exception as exc:  # timm's converters assume their own layouts
                raise WeightsError(
                    f"extractor {self.name!r}: checkpoint {source!r} cannot be converted to "
                    f"timm {self.model_name!r}: {exc}"
                ) from exc
        classifier = self._pcfg.classifier if self._pcfg is not None else None
        if classifier:
            heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
            own = model.state_dict()
            sd = {
                k: v
                for k, v in sd.items()
                if k in own or not any(k.startswith(h + ".") for h in heads)
            }
        load_into(model, sd, source=repr(source))
        logger.info("extractor %r: loaded weights from %s", self.name, source)
        return model

    def _build_from_hub(self, kwargs: dict[str, Any]) -> torch.nn.Module:
        import timm

        repo = self.hub_repo()
        if repo is None:
            raise self._missing_weights_error()
        what = f"extractor {self.name!r} (timm {self.model_name!r}, hub repo {repo!r})"
        if hub_offline() and not any(hub_file_cached(repo, f) for f in _HUB_FILES):
            raise WeightsError(
                f"pretrained weights for {what} are not in the Hugging Face cache at "
                f"{hub_cache_dir()} and downloads are switched off (HF_HUB_OFFLINE=1); "
                "download them once with network access (unset HF_HUB_OFFLINE), point "
                "HF_HOME / HF_HUB_CACHE at a cache that holds them, or pass a local file "
                'with weights="path/to/file"'
            )
        with hub_errors(what):
            model = timm.create_model(
                self.model_name, pretrained=True, cache_dir=hub_cache_dir(), **kwargs
            )
        return model


def _weights_available(weights: str | None, repo: str | None, local: Path | None) -> bool:
    if weights == RANDOM:
        return True
    if weights is not None:
        from cbirlib.weights import is_url

        if is_url(weights):
            from cbirlib.weights import download_path

            return weights.startswith("file:") or download_path(weights).is_file()
        return Path(weights).expanduser().is_file()
    if local is not None:
        return local.is_file()
    if repo is None:
        return False
    return any(hub_file_cached(repo, f) for f in _HUB_FILES)


# --- the study's extractors ------------------------------------------------------------


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

    def _registry_name(self) -> str:
        return type(self).name

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

    def _registry_name(self) -> str:
        return type(self).name

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


def _timm_family(variant: str, **kwargs: Any) -> TimmExtractor:
    return TimmExtractor(variant, **kwargs)


def _available(cls: type[TimmExtractor], **kwargs: Any) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return cls(device="cpu", **kwargs).weights_available()
        except Exception:  # an availability check must never raise
            return False

    return check


@hookimpl
def register_extractors(register: Register) -> None:
    """Register the study's timm-backed extractors and the ``timm:`` family."""
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
    register(
        "timm:",
        _timm_family,
        description="any timm model, pooled features: timm:<model name>",
    )
