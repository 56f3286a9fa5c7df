"""cbirlib plugin: DreamSim perceptual embeddings, rebuilt on timm from the published weights.

Registers the extractor ``dreamsim`` (``variant="ensemble"``, default: DINO + CLIP +
OpenCLIP ViT-B/16 with DreamSim's LoRA, 1792-d; ``variant="dino_vitb16"``: the
single-branch DINO model, 768-d). The model is the one the ``dreamsim`` package (0.2.x)
builds, computed with timm ViTs and the LoRA merged into the weights, so neither peft,
transformers nor open_clip is needed; weights come from the same files, in the same
cache layout (:mod:`cbirlib_dreamsim.files`).

Examples
--------
>>> import cbirlib
>>> ex = cbirlib.create_extractor("dreamsim", device="cpu")
>>> type(ex).__name__, ex.dim
('DreamSimExtractor', 1792)
"""

from __future__ import annotations

from cbirlib.hookspecs import Register, hookimpl
from cbirlib_dreamsim.extractor import DEFAULT_VARIANT, DreamSimExtractor
from cbirlib_dreamsim.files import VARIANTS, default_cache_dir, ensure_files, missing_files
from cbirlib_dreamsim.model import DreamSimModel, load_dreamsim

__all__ = [
    "DEFAULT_VARIANT",
    "VARIANTS",
    "DreamSimExtractor",
    "DreamSimModel",
    "default_cache_dir",
    "ensure_files",
    "load_dreamsim",
    "missing_files",
    "register_extractors",
]


def _weights_available() -> bool:
    return not missing_files(DEFAULT_VARIANT, default_cache_dir())


@hookimpl
def register_extractors(register: Register) -> None:
    """Register ``dreamsim``."""
    register(
        "dreamsim",
        DreamSimExtractor,
        description="DreamSim ensemble (DINO+CLIP+OpenCLIP ViT-B/16, LoRA), 1792-d; "
        "variant='dino_vitb16' for the single DINO branch (768-d)",
        weights_available=_weights_available,
    )
