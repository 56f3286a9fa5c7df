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

import contextlib
import hashlib
import logging
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbirlib._files import sha256_file
from cbirlib.errors import (
    CbirError,
    ChecksumError,
    SharedWeightsError,
    WeightsError,
    WeightsSpecError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

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

logger = logging.getLogger(__name__)

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


# --- locations ------------------------------------------------------------------------


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


# --- files ----------------------------------------------------------------------------


def _check_sha256(path: Path, sha256: str | None) -> None:
    if sha256 is None:
        return
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    if actual.lower() != sha256.strip().lower():
        raise ChecksumError(
            f"weights file {str(path)!r} has sha256 {actual}, expected {sha256.strip().lower()}"
        )


def download_path(
    url: str,
    *,
    directory: str | os.PathLike[str] | None = None,
    filename: str | None = None,
) -> Path:
    """Where :func:`download` keeps ``url``.

    ``<directory>/<sha256(url)[:16]>/<name>`` when the name comes from the URL: the
    folder named after a hash of the whole URL keeps two URLs that end in the same file
    name (``.../v1/model.pth`` and ``.../v2/model.pth``) apart. When the caller names the
    file (``filename=``), it is exactly ``<directory>/<filename>``.

    Parameters
    ----------
    url
        The URL.
    directory
        Cache directory; default :func:`cache_dir`.
    filename
        Name in the cache; default the last part of the URL path (in a hashed folder).

    Examples
    --------
    >>> p = download_path("https://example.org/v1/model.pth", directory="/cache")
    >>> p.name, p.parent.parent.as_posix(), len(p.parent.name)
    ('model.pth', '/cache', 16)
    >>> download_path("https://example.org/x", directory="/cache", filename="m.pth").as_posix()
    '/cache/m.pth'
    """
    target_dir = Path(directory) if directory is not None else cache_dir()
    if filename:
        return target_dir / filename
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise WeightsError(f"cannot derive a file name from URL {url!r}; pass filename=")
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return target_dir / key / name


def download(
    url: str,
    *,
    sha256: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    filename: str | None = None,
) -> Path:
    """Download ``url`` once into the cache and return the local path.

    Safe for several processes at once (cluster jobs fetching one file): an
    inter-process lock (:mod:`filelock`, ``.<file>.lock`` beside the file, removed once
    the file is in place) lets one process download while the others wait and then use
    its file. The bytes go to
    ``<file>.part``, which is renamed into place only when complete and matching
    ``sha256`` (when given), so a broken download never leaves a file that looks valid.
    ``http(s)`` downloads are made by :func:`huggingface_hub.file_download.http_get`: an
    interrupted transfer is retried and resumed with an HTTP ``Range`` request, and a
    ``.part`` file left by an earlier run is resumed the same way (downloaded again from
    the start when the server ignores the range, or when the resumed file fails its
    sha256). A file already in the cache is re-used (and re-checked against ``sha256``).

    Parameters
    ----------
    url
        ``http(s)://`` or ``file://`` URL.
    sha256
        Expected hex digest; :class:`~cbirlib.errors.ChecksumError` on mismatch (the
        downloaded bytes are then deleted).
    directory
        Cache directory; default :func:`cache_dir`. The file goes to
        :func:`download_path`: a sub-folder named after a hash of the URL.
    filename
        Name in the cache; default the last part of the URL path.

    Raises
    ------
    WeightsError
        Downloads are switched off and the file is not cached, or the download failed
        (a ``.part`` file is kept to resume from).
    ChecksumError
        The file does not match ``sha256``; nothing is left at the final path.
    """
    target = download_path(url, directory=directory, filename=filename)
    if target.is_file():
        _check_sha256(target, sha256)
        logger.debug("using cached %s", target)
        return target
    if hub_offline() and not url.startswith("file:"):
        raise WeightsError(
            f"weights {url!r} are not in the cache at {target} and downloads are switched off "
            f"(HF_HUB_OFFLINE / {OFFLINE_ENV}); put the file there, set {CACHE_ENV} to a folder "
            f"that holds it, or {HOW_TO_PASS}."
        )
    from filelock import FileLock, Timeout

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights cache at {target.parent}: {exc}") from exc
    lock_path = target.with_name(f".{target.name}.lock")
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process downloading %s to %s", url, target)
        lock.acquire()
    try:
        if not target.is_file():  # another process may have finished it meanwhile
            _download_locked(url, target, sha256)
        else:
            _check_sha256(target, sha256)
        # safe once the file is in place: whoever holds or takes any lock now finds it
        lock_path.unlink(missing_ok=True)
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # only when empty: leave no trace of a failed download
    return target


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _download_locked(url: str, target: Path, sha256: str | None) -> None:
    """Download ``url`` to ``target`` through its ``.part`` file (the lock is held)."""
    part = _part_path(target)
    resumed = part.is_file() and part.stat().st_size > 0 and not url.startswith("file:")
    logger.info("downloading %s to %s%s", url, target, " (resuming)" if resumed else "")
    try:
        _fetch(url, part, resume=resumed)
        try:
            _check_sha256(part, sha256)
        except ChecksumError:
            if not resumed:
                raise
            logger.info("resumed download of %s fails its sha256; downloading it again", url)
            _fetch(url, part, resume=False)
            _check_sha256(part, sha256)
        os.replace(part, target)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    except CbirError:
        raise
    except Exception as exc:  # network, HTTP status and file errors of several libraries
        if url.startswith("file:"):
            part.unlink(missing_ok=True)
        kept = f" ({part.stat().st_size} bytes kept in {part} to resume)" if part.is_file() else ""
        raise WeightsError(
            f"could not download weights from {url!r}: {exc}{kept}; run again to resume, "
            f"put the file at {target} yourself, or {HOW_TO_PASS}."
        ) from exc


def _fetch(url: str, part: Path, *, resume: bool) -> None:
    """Write ``url`` to ``part``: appended after its bytes when ``resume``, else from 0."""
    if url.startswith("file:"):
        import shutil

        with urllib.request.urlopen(url, timeout=60) as resp, part.open("wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        return
    from huggingface_hub.file_download import http_get

    size = part.stat().st_size if resume and part.is_file() else 0
    try:
        with part.open("ab" if size else "wb") as out:
            http_get(url, out, resume_size=size, displayed_filename=part.name[: -len(".part")])
    except Exception as exc:
        if not size:
            raise
        # e.g. 416 for a .part that is already whole, or a server that refuses ranges
        logger.info("resuming %s failed (%s); downloading it again", url, exc)
        with part.open("wb") as out:
            http_get(url, out, displayed_filename=part.name[: -len(".part")])


def resolve_file(source: str | os.PathLike[str], *, sha256: str | None = None) -> Path:
    """The local path of a weights ``source`` (a file path or a URL), checked against sha256.

    Raises
    ------
    WeightsError
        The file does not exist.
    ChecksumError
        The file does not match ``sha256``.
    """
    if is_url(source):
        return download(str(source), sha256=sha256)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {str(source)!r} does not exist"
            + (" (it is a directory)" if path.is_dir() else "")
            + f"; {HOW_TO_PASS}."
        )
    _check_sha256(path, sha256)
    return path


# --- weights per extractor -------------------------------------------------------------


def parse_weights_options(
    items: Iterable[str], extractors: Sequence[str] | None = None
) -> dict[str, str]:
    """Repeated ``NAME=PATH`` options (``--weights radimagenet-resnet50=rin.pt``) as a mapping.

    Parameters
    ----------
    items
        The option values, in the order given. ``NAME`` is an extractor name; ``PATH``
        a local file or a URL (everything after the first ``=``). A bare ``PATH`` (no
        ``NAME=``) is accepted only when ``extractors`` names exactly one extractor.
    extractors
        The extractors of the run; when given, every ``NAME`` must be one of them.

    Returns
    -------
    dict
        Extractor name -> weights source, as given (see :func:`check_weights`).

    Raises
    ------
    WeightsSpecError
        An item without ``NAME=`` (and not exactly one extractor), an empty name or
        path, a name given twice, or a name that is not among ``extractors``.

    Examples
    --------
    >>> parse_weights_options(["a=/w/a.pt", "b=https://x.org/b.pth?v=2"])
    {'a': '/w/a.pt', 'b': 'https://x.org/b.pth?v=2'}
    >>> parse_weights_options(["/w/a.pt"], extractors=["a"])
    {'a': '/w/a.pt'}
    """
    known = None if extractors is None else list(dict.fromkeys(extractors))
    out: dict[str, str] = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or is_url(item) or "/" in name or "\\" in name:
            if known is not None and len(known) == 1 and not out:
                name, source = known[0], item
            else:
                raise WeightsSpecError(
                    f"weights {item!r} name no extractor; give them as NAME=PATH "
                    f"(e.g. --weights radimagenet-resnet50=/models/rin-r50.pt), one per "
                    f"extractor; a bare PATH is accepted only with a single extractor"
                )
        name, source = name.strip(), source.strip()
        if not name or not source:
            raise WeightsSpecError(f"weights {item!r}: both NAME and PATH of NAME=PATH are needed")
        if name in out:
            raise WeightsSpecError(f"weights for extractor {name!r} are given twice")
        if known is not None and name not in known:
            raise WeightsSpecError(
                f"weights given for {name!r}, which is not among the extractors of this run "
                f"({', '.join(map(repr, known))})"
            )
        out[name] = source
    return out


def _same_file_key(source: str) -> str:
    """What two weights sources share when they are the same file."""
    if is_url(source):
        return source
    path = Path(source).expanduser()
    try:
        st = path.stat()
    except OSError:
        return str(path.resolve())
    return f"{st.st_dev}:{st.st_ino}"


def check_weights(
    weights: Mapping[str, str | os.PathLike[str]],
    extractors: Sequence[str] | None = None,
    *,
    sha256: Mapping[str, str] | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Check the weights of several extractors before any work starts.

    Every local file must exist and be readable, and match its sha256 when one is known
    (``sha256[name]``); URLs are checked when they are loaded (:func:`download`). One
    file given to two extractors is refused: in a comparison of two models of the same
    architecture (two ResNet50s) it would label one model's results with the other's
    name.

    Parameters
    ----------
    weights
        Extractor name -> local path or URL (e.g. from :func:`parse_weights_options`).
    extractors
        The extractors of the run; every name of ``weights`` must be one of them.
    sha256
        Extractor name -> expected sha256 of its file, where known.
    force
        Allow one file for several extractors.

    Returns
    -------
    dict
        Extractor name -> the source to load: local files as absolute paths (an index
        records its extractor's config, so a relative path would not find the file from
        another folder), URLs unchanged.

    Raises
    ------
    WeightsSpecError
        A name that is not among ``extractors``.
    SharedWeightsError
        The same file given to two extractors, without ``force=True``.
    WeightsError
        A file that does not exist or cannot be read.
    ChecksumError
        A file that does not match its sha256.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
    >>> _ = f.write_bytes(b"x")
    >>> try:
    ...     check_weights({"a": f, "b": f})
    ... except SharedWeightsError as exc:
    ...     print(type(exc).__name__)
    SharedWeightsError
    >>> sorted(check_weights({"a": f, "b": f}, force=True))
    ['a', 'b']
    """
    known = None if extractors is None else set(extractors)
    sums = dict(sha256 or {})
    out: dict[str, str] = {}
    owners: dict[str, str] = {}
    for name, raw in weights.items():
        if known is not None and name not in known:
            raise WeightsSpecError(
                f"weights given for {name!r}, which is not among the extractors of this run "
                f"({', '.join(map(repr, sorted(known)))})"
            )
        source = os.fspath(raw)
        key = _same_file_key(source)
        if key in owners and not force:
            raise SharedWeightsError(
                f"weights file {source!r} is given to both {owners[key]!r} and {name!r}; "
                f"each extractor needs its own weights (the comparison would otherwise "
                f"report one model under two names); pass force=True (--force-weights) if "
                f"this is really meant"
            )
        owners.setdefault(key, name)
        if is_url(source):
            out[name] = source
            continue
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file {source!r} for extractor {name!r} does not exist"
                + (" (it is a directory)" if path.is_dir() else "")
            )
        try:
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise WeightsError(
                f"weights file {source!r} for extractor {name!r} cannot be read: {exc}"
            ) from None
        _check_sha256(path, sums.get(name))
        out[name] = str(path.resolve())
    return out


# --- state dicts ----------------------------------------------------------------------


def unwrap_checkpoint(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor state dict inside a loaded checkpoint.

    Descends into nested ``"state_dict"``, ``"model"`` (and similar) entries until a
    mapping of tensors is found; non-tensor entries (epoch counters, optimiser
    hyper-parameters) beside the tensors are dropped.
    """
    import torch

    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    keys = list(obj)[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
    raise WeightsError(
        f"{source} holds no state dict of tensors (found {keys}); expected a mapping of "
        f"parameter names to tensors, possibly under one of {list(_NESTED_KEYS)}"
    )


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str] = ("module.",)
) -> dict[str, torch.Tensor]:
    """Remove leading ``prefixes`` (repeatedly, in any order) from every key."""
    prefixes = tuple(prefixes)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def remap_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    rules: Sequence[tuple[str, str | None]],
) -> dict[str, torch.Tensor]:
    """Rename keys by regular-expression rules, applied in order to every key.

    Parameters
    ----------
    state_dict
        The source state dict.
    rules
        ``(pattern, replacement)`` pairs for :func:`re.sub`; a ``None`` replacement
        drops every key that matches ``pattern``.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new: str | None = key
        for pattern, repl in compiled:
            assert new is not None
            if repl is None:
                if pattern.search(new):
                    new = None
                    break
            else:
                new = pattern.sub(repl, new)
        if new is not None:
            out[new] = value
    return out


def load_state_dict(
    source: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    strip: Iterable[str] = ("module.",),
) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file or URL (safetensors or torch checkpoint).

    Parameters
    ----------
    source
        Path or ``http(s)://`` / ``file://`` URL.
    sha256
        Expected hex digest of the file.
    strip
        Key prefixes to strip (default DataParallel's ``"module."``).

    Returns
    -------
    dict
        Parameter name -> CPU tensor.
    """
    import torch

    path = resolve_file(source, sha256=sha256)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, unsafe pickle, wrong format
        raise WeightsError(
            f"cannot read weights file {str(path)!r} as "
            f"{'safetensors' if path.suffix == '.safetensors' else 'a torch checkpoint'}: "
            f"{_load_failure(exc)}. "
            f"Supported: .safetensors, and torch checkpoints ({', '.join(_SUFFIXES[1:])}) "
            f"that load with torch.load(weights_only=True)"
        ) from None
    sd = unwrap_checkpoint(raw, source=f"weights file {str(path)!r}")
    return strip_prefixes(sd, strip)


def _load_failure(exc: Exception) -> str:
    """One line on why a weights file did not load, without torch's unsafe advice."""
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        return (
            "it holds Python objects besides tensors, which would run code when unpickled, "
            "so it is refused; in an environment you trust, re-save its state dict with "
            "safetensors or torch.save(model.state_dict())"
        )
    return " ".join(text.split())[:300] or type(exc).__name__


def _show(keys: Sequence[str]) -> str:
    head = ", ".join(keys[:_SHOW])
    return f"{len(keys)} ({head}{', ...' if len(keys) > _SHOW else ''})"


def load_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "checkpoint",
) -> None:
    """Load ``state_dict`` into ``model``, failing clearly when they do not fit.

    Parameters
    ----------
    model
        Target module.
    state_dict
        Parameter name -> tensor.
    strict
        If true, any missing or unexpected key is an error; otherwise they are logged.
        Shape mismatches are always errors.
    source
        Where the weights come from, for messages.

    Raises
    ------
    WeightsError
        Missing or unexpected keys (first few of each and their counts), or tensors
        whose shapes differ.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if shapes:
        problems.append(f"shape mismatches {_show(shapes)}")
    if strict and missing:
        problems.append(f"missing keys {_show(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_show(unexpected)}")
    if problems:
        raise WeightsError(
            f"weights from {source} do not fit {type(model).__name__}: " + "; ".join(problems)
        )
    if missing or unexpected:
        logger.warning(
            "loading %s non-strictly: missing %s, unexpected %s",
            source,
            _show(missing),
            _show(unexpected),
        )
    model.load_state_dict(dict(state_dict), strict=strict)
