"""``TimmExtractor``: any timm model as a slice extractor, and the base class for plugins.

``timm:<model>`` (registered through cbirlib's own ``cbirlib`` entry point ``timm``) embeds
each slice as the global pooled features of a timm model (``num_classes=0``); the study's
models (:mod:`cbirlib.extractors.study`) and third-party plugins such as
``cbirlib-effnet-lite`` are subclasses. Import it as ``from cbirlib.extractors import
TimmExtractor`` (or ``cbirlib.TimmExtractor``).

**What it does.**

* **Input** follows timm's ``pretrained_cfg`` of the model: mean/std, input size and
  interpolation (``bicubic`` where timm says so); ``img_size=`` overrides the size.
* **HU window**: ``"wide"`` (-1000..1000 HU) by default: whole-body retrieval must see
  lung, soft tissue and bone at once. MR volumes use the per-volume percentile window
  (see :mod:`cbirlib.preprocess`). Override with ``window=`` (``"multi"``: brain, soft
  tissue and lung windows as the three channels) or ``input_config=``.
* **Aspect ratio**: slices are padded with air to the input's aspect ratio
  (``InputConfig.aspect="pad"``), or resampled to a fixed field of view with
  ``InputConfig(fov_mm=...)``.
* **Memory format**: on the CPU, the families in :data:`CHANNELS_LAST_CPU_FAMILIES`
  (``resnet``, ``efficientnet``) run ``channels_last`` (measured 1.3-1.4x faster,
  ``benchmarks/channels_last.py``); ConvNeXt, ViTs and the others stay contiguous. On
  CUDA every model does.

**How weights are resolved** (on first use, in :meth:`TimmExtractor.build_model`):

1. ``weights="random"`` (:data:`RANDOM`): an untrained model, with a warning; for test
   fixtures and throughput benchmarks only, never a default.
2. ``weights=`` a path or an ``http(s)://`` / ``file://`` URL: that checkpoint
   (safetensors or torch; downloads are cached in :func:`cbirlib.weights.cache_dir`),
   checked against ``sha256=`` when given.
3. ``weights=None`` and :meth:`~TimmExtractor.cached_weights_path` returns a path: that
   file (a subclass's published checkpoint); a :class:`~cbirlib.errors.WeightsError`
   when it is absent.
4. Otherwise timm's pretrained weights from the Hugging Face hub repository
   :meth:`~TimmExtractor.hub_repo` (standard HF cache; ``HF_HUB_OFFLINE=1`` is honoured
   and a missing cached file is a ``WeightsError``, never a silent download or random
   weights).

A checkpoint file goes through :meth:`~TimmExtractor.convert_state_dict` (strips
``module.`` / ``backbone.`` / ``encoder.`` / ``model.`` prefixes), then the architecture's
own timm ``checkpoint_filter_fn``; the classifier head is dropped, and every other tensor
must fit the architecture exactly.

**Subclassing it (a plugin).** Set :attr:`~TimmExtractor.name` (the registered name;
the family itself names its instances ``"timm:<model>"``) and pass the timm architecture
to ``super().__init__``. Optionally override :meth:`~TimmExtractor.hub_repo` (``None``:
not on the hub),
:meth:`~TimmExtractor.cached_weights_path` (where default weights are looked for),
:meth:`~TimmExtractor.convert_state_dict` (another checkpoint layout), the class
attributes :attr:`~TimmExtractor.default_window` and
:attr:`~TimmExtractor.default_img_size`, and :meth:`~TimmExtractor.to_config` (extend
``super().to_config()`` with your own constructor arguments). See docs/plugins.md.

Examples
--------
>>> from cbirlib.extractors.timm import TimmExtractor
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
    download_path,
    hub_cache_dir,
    hub_errors,
    hub_file_cached,
    hub_offline,
    is_url,
    load_into,
    load_state_dict,
    strip_prefixes,
)

__all__ = [
    "CHANNELS_LAST_CPU_FAMILIES",
    "RANDOM",
    "TimmExtractor",
    "WeightsArg",
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
    ExtractorError
        ``model_name`` is not a timm model (similar names are listed).
    WeightsError
        On first use, when weights are missing (offline, not cached), do not fit, or fail
        their checksum. Never falls back to random weights.

    Notes
    -----
    To subclass it (see the module docstring and docs/plugins.md): set :attr:`name` (the
    registered name; left as ``"timm"``, instances are named ``"timm:<model>"``) and pass
    the architecture to ``super().__init__(model_name, **kwargs)``. The weight hooks are
    :meth:`hub_repo`, :meth:`cached_weights_path` and :meth:`convert_state_dict`; the
    defaults :attr:`default_window` and :attr:`default_img_size` are class attributes.
    :meth:`dim` is found from the architecture without loading weights, and
    :meth:`to_config` already records ``weights``, ``sha256`` and ``img_size``.

    Examples
    --------
    >>> class Tiny(TimmExtractor):
    ...     name = "tiny-resnet"
    ...     default_img_size = 64
    ...     def __init__(self, **kwargs):
    ...         super().__init__("resnet10t", **kwargs)
    >>> ex = Tiny(weights="random", device="cpu")
    >>> ex.name, ex.dim, ex.input_config.size, ex.to_config()["img_size"]
    ('tiny-resnet', 512, (64, 64), 64)
    """

    name = "timm"
    default_window: ClassVar[Window] = DEFAULT_WINDOW
    """HU window when ``window=None`` (``"wide"``)."""
    default_img_size: ClassVar[int | None] = None
    """Input size when ``img_size=None`` (``None``: the pretrained size)."""

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
        """The name of this instance: ``"timm:<model>"`` for the family itself, the class's
        own :attr:`name` for a subclass that sets one."""
        own = type(self).name
        return f"timm:{self.model_name}" if own == TimmExtractor.name else own

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
        if is_url(weights):
            return weights.startswith("file:") or download_path(weights).is_file()
        return Path(weights).expanduser().is_file()
    if local is not None:
        return local.is_file()
    if repo is None:
        return False
    return any(hub_file_cached(repo, f) for f in _HUB_FILES)


# --- registration --------------------------------------------------------------------------


def _timm_family(variant: str, **kwargs: Any) -> TimmExtractor:
    return TimmExtractor(variant, **kwargs)


@hookimpl
def register_extractors(register: Register) -> None:
    """Register the ``timm:`` family (cbirlib's own plugin ``timm``)."""
    register(
        "timm:",
        _timm_family,
        description="any timm model, pooled features: timm:<model name>",
    )
