"""Where pretrained weights come from, and how they get into a model.

One place resolves every weight source cbirlib knows:

* the Hugging Face hub (through timm / :mod:`huggingface_hub`, standard HF cache,
  honours ``HF_HUB_OFFLINE``): see :func:`hub_cache_dir`, :func:`hub_offline`,
  :func:`hub_errors`;
* a URL (``http(s)://`` or ``file://``): downloaded once into :func:`cache_dir`
  (``$CBIRLIB_CACHE`` or ``~/.cache/cbirlib``), under a sub-folder named after a hash
  of the URL (:func:`download_path`), under an inter-process lock, resumed when
  interrupted (:func:`download`), renamed into place when complete, with an optional
  sha256 check;
* a local file: safetensors, or a torch checkpoint read with
  ``torch.load(..., weights_only=True)`` (never unpickled freely).

Checkpoints are unwrapped (nested ``"state_dict"`` / ``"model"`` entries) and
``"module."`` prefixes (DataParallel) are stripped. :func:`load_into` loads a state
dict strictly and raises :class:`~cbirlib.errors.WeightsError` listing missing and
unexpected keys. Missing weights never fall back to random ones.

Import every name from ``cbirlib.weights``; the code lives in one module per concept:
``cache`` (where weights live: the cbirlib and Hugging Face caches, offline mode),
``downloads`` (locked, resumable downloads, sha256 checks, :func:`resolve_file`),
``options`` (the weights of several extractors: :func:`parse_weights_options`,
:func:`check_weights`) and ``checkpoint`` (reading a checkpoint into a model).

Examples
--------
>>> import torch
>>> from cbirlib.weights import remap_state_dict, strip_prefixes
>>> sd = {"module.backbone.fc.weight": torch.zeros(2, 2)}
>>> list(strip_prefixes(sd, ("module.", "backbone.")))
['fc.weight']
>>> list(remap_state_dict({"layer1.0.conv1.weight": torch.zeros(1)}, [(r"^layer", "stages.")]))
['stages.1.0.conv1.weight']
"""

from __future__ import annotations

from cbirlib._files import sha256_file
from cbirlib.weights import cache as _cache
from cbirlib.weights.cache import (
    cache_dir,
    hub_cache_dir,
    hub_errors,
    hub_file_cached,
    hub_offline,
    is_url,
)
from cbirlib.weights.checkpoint import (
    load_into,
    load_state_dict,
    remap_state_dict,
    strip_prefixes,
    unwrap_checkpoint,
)
from cbirlib.weights.downloads import download, download_path, resolve_file
from cbirlib.weights.options import check_weights, parse_weights_options

# bound here, with their docstrings, so that the API page of cbirlib.weights lists them
# (Sphinx reads an attribute's docstring beside its assignment in the documented module)
CACHE_ENV = _cache.CACHE_ENV
"""Environment variable that overrides the download cache directory."""

OFFLINE_ENV = _cache.OFFLINE_ENV
"""Environment variable that forbids downloads from URLs (as ``HF_HUB_OFFLINE`` does)."""

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "cache_dir",
    "check_weights",
    "download",
    "download_path",
    "hub_cache_dir",
    "hub_errors",
    "hub_file_cached",
    "hub_offline",
    "is_url",
    "load_into",
    "load_state_dict",
    "parse_weights_options",
    "remap_state_dict",
    "resolve_file",
    "sha256_file",
    "strip_prefixes",
    "unwrap_checkpoint",
]
