"""The ``dreamsim`` extractor: DreamSim embeddings of every axial slice.

Examples
--------
>>> from cbirlib_dreamsim import DreamSimExtractor
>>> ex = DreamSimExtractor(device="cpu")
>>> ex.name, ex.variant, ex.dim, ex.input_config.size, ex.input_config.interpolation
('dreamsim', 'ensemble', 1792, (224, 224), 'bicubic')
>>> DreamSimExtractor(variant="dino_vitb16", device="cpu").dim
768
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cbirlib.errors import ExtractorError
from cbirlib.extractor import SliceExtractor
from cbirlib.preprocess import InputConfig
from cbirlib_dreamsim.files import default_cache_dir, ensure_files, get_variant, missing_files
from cbirlib_dreamsim.model import load_dreamsim

__all__ = ["DEFAULT_VARIANT", "DreamSimExtractor"]

logger = logging.getLogger(__name__)

DEFAULT_VARIANT = "ensemble"
SIZE = (224, 224)


class DreamSimExtractor(SliceExtractor):
    """DreamSim (Fu et al., 2023) perceptual embeddings of CT/MR slices.

    Parameters
    ----------
    variant
        ``"ensemble"`` (default; DINO + CLIP + OpenCLIP ViT-B/16, 1792-d) or
        ``"dino_vitb16"`` (single DINO ViT-B/16 branch, 768-d).
    cache_dir
        Folder with the published weights (layout of :mod:`cbirlib_dreamsim.files`, the
        same as the ``dreamsim`` package's ``cache_dir``); default
        ``<cbirlib cache>/dreamsim``. Missing files are downloaded on first use unless
        ``HF_HUB_OFFLINE=1`` / ``CBIRLIB_OFFLINE=1``.
    window
        HU window preset or ``(low, high)``; default ``"wide"`` (as cbirlib's other
        natural-image extractors).
    device, batch_size, input_config, amp
        See :class:`cbirlib.extractor.SliceExtractor`.

    Notes
    -----
    Input follows DreamSim's preprocessing: 224x224 bicubic RGB in ``[0, 1]``; the
    per-backbone mean/std normalisation happens inside the model, so the input config
    has ``mean=0, std=1``. The input size is fixed by the checkpoints.

    Raises
    ------
    WeightsError
        On first use, when weights are missing (offline, or the download fails) or do not
        fit; the message names the cache and how to provide the files. Random weights
        are never used.
    """

    name = "dreamsim"

    def __init__(
        self,
        variant: str = DEFAULT_VARIANT,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        window: str | tuple[float, float] | None = None,
        device: str = "auto",
        batch_size: int = 32,
        input_config: InputConfig | Mapping[str, Any] | None = None,
        amp: bool = True,
    ) -> None:
        self.variant = get_variant(variant).name
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self.window = window if window is not None else "wide"
        super().__init__(device=device, batch_size=batch_size, input_config=input_config, amp=amp)
        if self.input_config.size != SIZE or self.input_config.channels != 3:
            raise ExtractorError(
                f"extractor 'dreamsim' needs 3-channel {SIZE[0]}x{SIZE[1]} input (fixed by its "
                f"weights), got channels={self.input_config.channels} size={self.input_config.size}"
            )

    @property
    def dim(self) -> int:
        """1792 for ``"ensemble"``, 768 for ``"dino_vitb16"``."""
        return get_variant(self.variant).dim

    @property
    def weights_dir(self) -> Path:
        """The cache directory the weights are read from."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def default_input_config(self) -> InputConfig:
        """224x224 bicubic RGB in ``[0, 1]`` (mean 0, std 1), HU window ``"wide"``."""
        return InputConfig(
            size=SIZE,
            channels=3,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            window=self.window,
            interpolation="bicubic",
        )

    def weights_available(self) -> bool:
        """Whether every file of the variant is in :attr:`weights_dir` (no download)."""
        return not missing_files(self.variant, self.weights_dir)

    def build_model(self) -> torch.nn.Module:
        """Fetch missing files (unless offline), then build DreamSim from them."""
        root = ensure_files(self.variant, self.weights_dir)
        model = load_dreamsim(self.variant, root)
        logger.info("extractor 'dreamsim' (%s): loaded weights from %s", self.variant, root)
        return model

    def to_config(self) -> dict[str, Any]:
        """Name, input config, ``variant`` and ``cache_dir``."""
        return {**super().to_config(), "variant": self.variant, "cache_dir": self.cache_dir}
