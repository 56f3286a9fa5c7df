"""Where DreamSim's published weights live on disk, and how they get there.

The layout is the one the ``dreamsim`` package (0.2.x) uses for its ``cache_dir``, so a
folder prepared by ``dreamsim.dreamsim(cache_dir=...)`` works here unchanged::

    <cache>/
        checkpoints/dino_vitbase16_pretrain.pth     DINO ViT-B/16 backbone (torch hub file)
        clip_vitb16_pretrain.pth.tar                CLIP ViT-B/16 image tower as a DINO-style ViT
        open_clip_vitb16_pretrain.pth.tar           OpenCLIP ViT-B/16 (LAION-400M) likewise
        ensemble_lora/adapter_config.json           the DreamSim LoRA adapter (peft format)
        ensemble_lora/adapter_model.safetensors     (or adapter_model.bin)
        dino_vitb16_single_lora/...                 adapter of the single-branch variant

Everything except the DINO backbone comes in one zip from DreamSim's GitHub release
(:data:`VARIANTS` lists the URLs); the DINO backbone is Meta's released DINO ViT-B/16
(``dl.fbaipublicfiles.com``), which the ``dreamsim`` package fetches through torch hub.
The default cache is ``<cbirlib cache>/dreamsim`` (``$CBIRLIB_CACHE/dreamsim`` or
``~/.cache/cbirlib/dreamsim``).

Examples
--------
>>> from cbirlib_dreamsim.files import VARIANTS, required_files
>>> [p.as_posix() for p in required_files("ensemble")]  # doctest: +NORMALIZE_WHITESPACE
['checkpoints/dino_vitbase16_pretrain.pth', 'clip_vitb16_pretrain.pth.tar',
 'open_clip_vitb16_pretrain.pth.tar', 'ensemble_lora/adapter_config.json']
>>> VARIANTS["ensemble"].dim, VARIANTS["dino_vitb16"].dim
(1792, 768)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cbirlib.errors import ExtractorError, WeightsError
from cbirlib.weights import cache_dir, download, hub_offline

__all__ = [
    "ADAPTER_FILES",
    "BRANCH_FILES",
    "DINO_URL",
    "VARIANTS",
    "Variant",
    "adapter_file",
    "default_cache_dir",
    "ensure_files",
    "get_variant",
    "missing_files",
    "required_files",
]

logger = logging.getLogger(__name__)

_RELEASE = "https://github.com/ssundaram21/dreamsim/releases/download"

DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
"""Meta's DINO ViT-B/16 backbone, the file torch hub caches as ``checkpoints/...``."""

BRANCH_FILES: dict[str, str] = {
    "dino": "checkpoints/dino_vitbase16_pretrain.pth",
    "clip": "clip_vitb16_pretrain.pth.tar",
    "open_clip": "open_clip_vitb16_pretrain.pth.tar",
}
"""Backbone checkpoint of each branch, relative to the cache directory."""

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
"""Names peft gives the LoRA weights, in order of preference."""


@dataclass(frozen=True)
class Variant:
    """One published DreamSim model.

    Attributes
    ----------
    name
        ``dreamsim_type`` of the ``dreamsim`` package.
    branches
        Backbones in the order of the adapter's ``extractor_list`` and of the embedding.
    adapter
        Folder of the LoRA adapter in the cache.
    url
        The release zip that holds the adapter and the CLIP / OpenCLIP backbones.
    dim
        Embedding dimension (DINO CLS 768, CLIP and OpenCLIP projections 512 each).
    """

    name: str
    branches: tuple[str, ...]
    adapter: str
    url: str
    dim: int


VARIANTS: dict[str, Variant] = {
    "ensemble": Variant(
        "ensemble",
        ("dino", "clip", "open_clip"),
        "ensemble_lora",
        f"{_RELEASE}/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip",
        768 + 512 + 512,
    ),
    "dino_vitb16": Variant(
        "dino_vitb16",
        ("dino",),
        "dino_vitb16_single_lora",
        f"{_RELEASE}/v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip",
        768,
    ),
}
"""The supported DreamSim variants (the package's ``dreamsim_type``)."""


def get_variant(name: str) -> Variant:
    """The :class:`Variant` called ``name``; :class:`ExtractorError` listing valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ExtractorError(
            f"unknown DreamSim variant {name!r}; valid: {', '.join(VARIANTS)}"
        ) from None


def default_cache_dir() -> Path:
    """``<cbirlib.weights.cache_dir()>/dreamsim``, read at call time."""
    return cache_dir() / "dreamsim"


def required_files(variant: str) -> list[Path]:
    """Files (relative to the cache) a variant needs; the adapter weights come on top."""
    v = get_variant(variant)
    return [Path(BRANCH_FILES[b]) for b in v.branches] + [Path(v.adapter) / "adapter_config.json"]


def adapter_file(variant: str, root: Path) -> Path | None:
    """The adapter's weight file in ``root`` (safetensors preferred), or ``None``."""
    folder = root / get_variant(variant).adapter
    return next((folder / f for f in ADAPTER_FILES if (folder / f).is_file()), None)


def missing_files(variant: str, root: str | os.PathLike[str]) -> list[Path]:
    """Absolute paths of the files of ``variant`` that are not in ``root``."""
    base = Path(root).expanduser()
    missing = [base / p for p in required_files(variant) if not (base / p).is_file()]
    if adapter_file(variant, base) is None:
        folder = base / get_variant(variant).adapter
        missing.append(folder / f"{ADAPTER_FILES[0]} (or {ADAPTER_FILES[1]})")
    return missing


def _missing_error(variant: str, root: Path, missing: list[Path], reason: str) -> WeightsError:
    v = get_variant(variant)
    shown = "; ".join(str(p) for p in missing)
    return WeightsError(
        f"DreamSim {variant!r} weights are not complete in the cache {root} ({reason}); "
        f"missing: {shown}. Provide them with network access once (they are downloaded "
        f"on first use), or by hand: unzip {v.url} into {root}, and save {DINO_URL} as "
        f"{root / BRANCH_FILES['dino']}. A cache_dir prepared by the 'dreamsim' package "
        f"(dreamsim.dreamsim(cache_dir=...)) has the same layout: pass "
        f'cache_dir="path/to/it", or set CBIRLIB_CACHE so that <CBIRLIB_CACHE>/dreamsim '
        f"holds the files. Random weights are never used instead."
    )


def _unzip(archive: Path, root: Path) -> None:
    """Extract ``archive`` into a temporary folder of ``root``, then move entries in place."""
    tmp = Path(tempfile.mkdtemp(prefix=".unzip.", dir=root))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as exc:
            raise WeightsError(f"cannot unzip DreamSim weights {archive}: {exc}") from exc
        for entry in tmp.iterdir():
            target = root / entry.name
            if target.is_dir() and entry.is_dir():
                for sub in entry.iterdir():
                    if not (target / sub.name).exists():
                        os.replace(sub, target / sub.name)
            elif not target.exists():
                os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_files(variant: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Make sure every file of ``variant`` is in ``root``; download what is missing.

    Parameters
    ----------
    variant
        A key of :data:`VARIANTS`.
    root
        Cache directory; default :func:`default_cache_dir`.

    Returns
    -------
    pathlib.Path
        The cache directory.

    Raises
    ------
    WeightsError
        Files are missing and downloads are switched off (``HF_HUB_OFFLINE=1`` /
        ``CBIRLIB_OFFLINE=1``) or fail; the message names the cache, the missing files
        and how to provide them.
    """
    base = Path(root).expanduser() if root is not None else default_cache_dir()
    missing = missing_files(variant, base)
    if not missing:
        return base
    if hub_offline():
        raise _missing_error(variant, base, missing, "downloads are switched off")
    v = get_variant(variant)
    try:
        dino = base / BRANCH_FILES["dino"]
        if dino in missing:
            download(DINO_URL, directory=dino.parent, filename=dino.name)
        if [p for p in missing_files(variant, base) if p != dino]:
            archive = download(v.url, directory=base, filename=f".{v.name}_checkpoint.zip")
            try:
                _unzip(archive, base)
            finally:
                archive.unlink(missing_ok=True)
    except WeightsError as exc:
        raise _missing_error(variant, base, missing, f"download failed: {exc}") from exc
    still = missing_files(variant, base)
    if still:
        raise _missing_error(variant, base, still, f"not in the downloaded {v.url}")
    logger.info("DreamSim %r weights downloaded to %s", variant, base)
    return base
