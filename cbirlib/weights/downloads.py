"""Getting a weights file: locked, resumable downloads into the cache, sha256 checks.

:func:`download` fetches a URL once into :func:`~cbirlib.weights.cache.cache_dir` under
an inter-process lock (:mod:`filelock`), through a ``.part`` file resumed with
:mod:`huggingface_hub`'s ``http_get``; :func:`resolve_file` turns a path or URL into a
checked local file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import urllib.parse
import urllib.request
from pathlib import Path

from cbirlib._files import sha256_file
from cbirlib.errors import CbirError, ChecksumError, WeightsError
from cbirlib.weights.cache import (
    CACHE_ENV,
    HOW_TO_PASS,
    OFFLINE_ENV,
    cache_dir,
    hub_offline,
    is_url,
)

__all__ = ["check_sha256", "download", "download_path", "resolve_file"]

logger = logging.getLogger(__name__)


def check_sha256(path: Path, sha256: str | None) -> None:
    """Raise :class:`~cbirlib.errors.ChecksumError` unless ``path`` has digest ``sha256``.

    ``None`` checks nothing; a file that cannot be read is a
    :class:`~cbirlib.errors.WeightsError`.
    """
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
        check_sha256(target, sha256)
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
            check_sha256(target, sha256)
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
            check_sha256(part, sha256)
        except ChecksumError:
            if not resumed:
                raise
            logger.info("resumed download of %s fails its sha256; downloading it again", url)
            _fetch(url, part, resume=False)
            check_sha256(part, sha256)
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
    check_sha256(path, sha256)
    return path
