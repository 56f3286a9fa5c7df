"""Where pretrained weights live: the cbirlib download cache, the Hugging Face cache, offline mode.

:func:`cache_dir` is the folder for weights downloaded from URLs (``$CBIRLIB_CACHE``);
:func:`hub_cache_dir` and :func:`hub_file_cached` read the standard Hugging Face hub
cache; :func:`hub_offline` says whether downloads are switched off (``HF_HUB_OFFLINE``,
``CBIRLIB_OFFLINE``); :func:`hub_errors` turns failed hub downloads into
:class:`~cbirlib.errors.WeightsError` naming the cache.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from cbirlib.errors import CbirError, WeightsError

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "cache_dir",
    "hub_cache_dir",
    "hub_errors",
    "hub_file_cached",
    "hub_offline",
    "is_url",
]

CACHE_ENV = "CBIRLIB_CACHE"
"""Environment variable that overrides the download cache directory."""

OFFLINE_ENV = "CBIRLIB_OFFLINE"
"""Environment variable that forbids downloads from URLs (as ``HF_HUB_OFFLINE`` does)."""

_TRUE = {"1", "on", "yes", "true"}
_NESTED_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net", "module")
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")
_SHOW = 5

HOW_TO_PASS = (
    'pass a local file with weights="path/to/file" (.safetensors or a torch checkpoint) '
    'or a URL with weights="https://..."'
)


def cache_dir() -> Path:
    """The directory where weights downloaded from URLs are kept.

    ``$CBIRLIB_CACHE`` if set, else ``$XDG_CACHE_HOME/cbirlib``, else ``~/.cache/cbirlib``.
    Read at call time; the directory is not created here.

    Examples
    --------
    >>> import os
    >>> from cbirlib.weights import cache_dir
    >>> os.environ["CBIRLIB_CACHE"] = "/tmp/cbir-cache"
    >>> str(cache_dir())
    '/tmp/cbir-cache'
    >>> del os.environ["CBIRLIB_CACHE"]
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cbirlib"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment at call time.

    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else :mod:`huggingface_hub`'s default.
    """
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether downloads are switched off (``HF_HUB_OFFLINE``, ``CBIRLIB_OFFLINE``)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", OFFLINE_ENV):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    return False


def is_url(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is an ``http``, ``https`` or ``file`` URL.

    Examples
    --------
    >>> from cbirlib.weights import is_url
    >>> is_url("https://example.org/w.pth"), is_url("weights/w.pth")
    (True, False)
    """
    return isinstance(source, str) and urllib.parse.urlparse(source).scheme in {
        "http",
        "https",
        "file",
    }


def hub_file_cached(repo_id: str, filename: str = "model.safetensors") -> bool:
    """Whether ``filename`` of hub repository ``repo_id`` is in the local HF cache.

    ``repo_id`` may end with ``@revision``.
    """
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    found = try_to_load_from_cache(
        repo, filename, cache_dir=str(hub_cache_dir()), revision=revision or None
    )
    return isinstance(found, str) and Path(found).is_file()


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn errors of a hub download (offline, no connection, missing file) into WeightsError.

    Parameters
    ----------
    what
        What is being loaded, for the message (e.g. ``"timm model 'resnet50.a1_in1k'"``).
    """
    try:
        yield
    except CbirError:
        raise
    except Exception as exc:  # hub, network and file errors of many libraries
        reason = "downloads are switched off (HF_HUB_OFFLINE=1)" if hub_offline() else str(exc)
        raise WeightsError(
            f"pretrained weights for {what} are not available: {reason}. "
            f"They are looked up in the Hugging Face cache at {hub_cache_dir()} "
            f"(set HF_HOME or HF_HUB_CACHE to use another); download them once with network "
            f"access, or {HOW_TO_PASS}."
        ) from exc
