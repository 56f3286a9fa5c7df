"""Crash-safe persistence of index directories.

An index is a directory of plain files (``meta.json`` beside ``.npy`` and binary
files). :func:`atomic_write_dir` writes such a directory so that a crash at any moment
leaves either the old or the new directory, never a mix: files are written into a
temporary sibling directory, flushed to disk, and swapped in by two renames
(``path -> path.old``, ``tmp -> path``). :func:`resolve_dir` finds the directory to
read, falling back to ``path.old`` when a crash happened between the two renames.

Nothing here pickles: arrays go through ``np.save``/``np.load`` with
``allow_pickle=False``.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from cbirlib.index.files import atomic_write_dir, load_npy, resolve_dir, save_npy, write_json
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> def write(d):
...     save_npy(d / "a.npy", np.arange(3))
...     write_json(d / "meta.json", {"format": 1})
>>> atomic_write_dir(root / "idx", write)
>>> load_npy(resolve_dir(root / "idx") / "a.npy").tolist()
[0, 1, 2]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib.errors import CbirError, IndexFormatError, IndexStorageError

logger = logging.getLogger(__name__)

META_NAME = "meta.json"
BACKUP_SUFFIX = ".old"
TMP_MARK = ".tmp-"

__all__ = [
    "META_NAME",
    "atomic_write_dir",
    "backup_path",
    "check_target",
    "save_in_progress",
    "fsync_dir",
    "PinnedDir",
    "load_npy",
    "pinned_dir",
    "read_json",
    "resolve_dir",
    "save_npy",
    "write_json",
]


def backup_path(path: Path) -> Path:
    """The sibling that holds the previous version during a swap (``path + '.old'``)."""
    return path.with_name(path.name + BACKUP_SUFFIX)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def save_npy(path: Path, array: npt.ArrayLike) -> None:
    """Write one array as ``.npy`` (never pickled; object arrays are refused)."""
    arr = np.asarray(array)
    if arr.dtype == object:
        raise TypeError(f"{path.name}: object arrays cannot be saved without pickle")
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def load_npy(path: Path, *, mmap: bool = False) -> npt.NDArray[Any]:
    """Read one ``.npy`` file; any failure becomes :class:`IndexFormatError` naming it."""
    if not path.is_file():
        raise IndexFormatError(f"index file {str(path)!r} is missing")
    try:
        arr: npt.NDArray[Any] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"index file {str(path)!r} is unreadable: {exc}") from None
    return arr


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (sorted keys, indented)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path: Path) -> Any:
    """Read JSON; a missing or malformed file becomes :class:`IndexFormatError`."""
    if not path.is_file():
        raise IndexFormatError(f"index file {str(path)!r} is missing")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"index file {str(path)!r} is not valid JSON: {exc}") from None


def _is_index_dir(path: Path) -> bool:
    return (path / META_NAME).is_file()


def _remove_stale(path: Path) -> None:
    """Delete leftovers of crashed saves: temp dirs, and a backup when ``path`` is whole."""
    for tmp in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    backup = backup_path(path)
    if backup.exists() and _is_index_dir(path):
        shutil.rmtree(backup, ignore_errors=True)


def atomic_write_dir(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Create or replace directory ``path`` atomically.

    Parameters
    ----------
    path
        Target directory. If it exists it must be an index directory (holding
        ``meta.json``) or empty; anything else is refused rather than overwritten.
    write
        Called with a fresh temporary directory (a sibling of ``path``, so on the same
        filesystem) that it fills with files. Every file is then fsynced.

    Notes
    -----
    One writer per path at a time; concurrent saves to the same path are not supported.
    """
    path = Path(path).absolute()
    try:
        _write_dir(path, write)
    except CbirError:
        raise
    except OSError as exc:
        raise IndexStorageError(
            exc.errno,
            f"cannot write index {str(path)!r}: {exc.strerror or exc}",
            str(exc.filename or path),
        ) from None
    logger.debug("wrote %s atomically", path)


@dataclass
class PinnedDir:
    """One version of an index directory, held open while it is read.

    Attributes
    ----------
    path
        Path to read the files through. Where the platform allows (Linux
        ``/proc/self/fd``), it goes through an open handle on the directory, so every
        file comes from the same version even if a save renames it meanwhile.
    held
        Whether ``path`` goes through such a handle.
    """

    path: Path
    held: bool
    _fd: int
    _origin: Path

    def replaced(self) -> bool:
        """Whether the folder the index was resolved from now holds another version."""
        try:
            here = os.stat(resolve_dir(self._origin))
        except (IndexFormatError, OSError):
            return True
        mine = os.fstat(self._fd)
        return (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino) or mine.st_nlink == 0


@contextmanager
def pinned_dir(directory: Path, origin: str | os.PathLike[str]) -> Iterator[PinnedDir]:
    """Hold ``directory`` (resolved from ``origin``) open for a consistent read.

    See :class:`PinnedDir`.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise IndexFormatError(f"index {str(directory)!r} cannot be opened: {exc}") from None
    try:
        alias = Path(f"/proc/self/fd/{fd}")
        held = (alias / META_NAME).is_file()
        yield PinnedDir(alias if held else directory, held, fd, Path(origin))
    finally:
        os.close(fd)


def save_in_progress(path: str | os.PathLike[str]) -> bool:
    """Whether a save may be swapping ``path`` now (a temporary or backup sibling exists)."""
    path = Path(path)
    return backup_path(path).exists() or any(path.parent.glob(f".{path.name}{TMP_MARK}*"))


def check_target(path: str | os.PathLike[str]) -> None:
    """Raise :class:`IndexFormatError` unless ``path`` is absent, empty or an index folder."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and (_is_index_dir(path) or not any(path.iterdir()))):
        raise IndexFormatError(
            f"refusing to overwrite {str(path)!r}: it exists and is not an index directory"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_dir(path: Path, write: Callable[[Path], None]) -> None:
    """The body of :func:`atomic_write_dir`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    check_target(path)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would; mkdtemp makes it private (0700)
    try:
        write(tmp)
        for file in tmp.iterdir():
            _fsync_file(file)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = backup_path(path)
    if path.exists():
        if backup.exists():  # path is whole here, so the backup is a stale copy
            shutil.rmtree(backup)
        os.rename(path, backup)
        fsync_dir(path.parent)
    os.rename(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(backup, ignore_errors=True)


def resolve_dir(path: str | os.PathLike[str]) -> Path:
    """The directory to read for ``path``, recovering from an interrupted swap.

    Returns ``path`` when it holds ``meta.json``; else ``path + '.old'`` when a crash
    left only the previous version there. Raises :class:`IndexFormatError` otherwise.
    """
    path = Path(path)
    if _is_index_dir(path):
        return path
    backup = backup_path(path)
    if not path.exists() and _is_index_dir(backup):
        saving = path.exists() or save_in_progress(path)
        logger.log(
            logging.DEBUG if saving else logging.WARNING,
            "index %s missing; reading the previous version %s%s",
            path,
            backup,
            " (a save is swapping it in)" if saving else "",
        )
        return backup
    if path.exists():
        raise IndexFormatError(f"{str(path)!r} is not an index directory (no {META_NAME})")
    raise IndexFormatError(f"no index at {str(path)!r}")
