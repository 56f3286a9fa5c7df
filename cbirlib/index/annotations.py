"""A persistent cache of per-volume annotation probabilities, kept in an index directory.

:func:`cbirlib.find` (annotate route) annotates every volume of an archive index from
its stored vectors. This module keeps those annotations between calls, in the archive
index's directory::

    <index dir>/annotations/<key>.npz

``key`` is a hash of everything the annotations depend on besides the archive volume
itself: the reference index's content (:func:`index_fingerprint`), the annotation
parameters (``k``, granularity, threshold, ...) and the extractor config. Inside one
file, each volume's probabilities are stored with a fingerprint of that volume's vectors
and slice metadata (:func:`volume_fingerprint`); an entry is served only while the
volume in the index still has that fingerprint, so a volume removed from the index, or
replaced by another under the same id, is never answered from the cache.

Files are written with :func:`numpy.savez_compressed` (no object arrays; read back with
``allow_pickle=False``) to a temporary name and renamed into place, so a reader sees
the old file or the new one. An unreadable or mismatching file is a cache miss, never
an error. Only the most recent :data:`MAX_FILES` keys are kept.

Saving an index replaces its directory (:mod:`cbirlib.index.files`), which starts its
cache afresh.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from cbirlib.index.files import write_json
>>> d = pathlib.Path(tempfile.mkdtemp()); write_json(d / "meta.json", {})
>>> cache = AnnotationCache(d)
>>> key = cache_key({"k": 5})
>>> cache.store(key, {"v": CachedVolume("f1", np.zeros((3, 2)))}, names=("a", "b"))
>>> got = cache.load(key, names=("a", "b"))
>>> got["v"].fingerprint, got["v"].probabilities.shape
('f1', (3, 2))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._typing import F64
from cbirlib.errors import IndexFormatError
from cbirlib.index.files import META_NAME, fsync_dir

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR",
    "MAX_FILES",
    "AnnotationCache",
    "CachedVolume",
    "cache_key",
    "index_fingerprint",
    "volume_fingerprint",
]

#: Name of the cache folder inside an index directory.
CACHE_DIR = "annotations"
#: Cache files (keys) kept per index; older ones are deleted when a new one is written.
MAX_FILES = 8
#: Version of the file layout; a file of another version is a miss.
_FORMAT = 1


@dataclass(frozen=True, eq=False)
class CachedVolume:
    """One volume's cached annotation.

    Attributes
    ----------
    fingerprint
        :func:`volume_fingerprint` of the volume when it was annotated.
    probabilities
        ``(n_slices, n_structures)`` float64 probabilities.
    """

    fingerprint: str
    probabilities: F64


def _update(h: Any, array: npt.ArrayLike) -> None:
    a = np.ascontiguousarray(array)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)


def volume_fingerprint(
    vectors: npt.ArrayLike, slice_meta: Mapping[str, npt.ArrayLike] | None = None
) -> str:
    """A hash of one volume's vectors and slice metadata (what its annotation reads).

    Examples
    --------
    >>> a = np.ones((2, 3), np.float32)
    >>> volume_fingerprint(a) == volume_fingerprint(a.copy()) != volume_fingerprint(a * 2)
    True
    """
    h = hashlib.blake2b(digest_size=16)
    _update(h, np.asarray(vectors, np.float32))
    for name in sorted(slice_meta or {}):
        h.update(name.encode())
        _update(h, np.asarray((slice_meta or {})[name]))
    return h.hexdigest()


def index_fingerprint(index: Any) -> str:
    """A hash of an index's content: its settings, every volume's vectors, metadata, labels.

    Two indexes with the same volumes, vectors, slice metadata, labels, extractor config
    and search settings have the same fingerprint, wherever they are stored. It reads
    every vector once (about as long as copying them).
    """
    h = hashlib.blake2b(digest_size=16)
    config = getattr(index, "config", None)
    settings = {
        "kind": type(index).__name__,
        "dim": getattr(index, "dim", None),
        "extractor_config": getattr(index, "extractor_config", None),
        "config": config.to_dict() if config is not None and hasattr(config, "to_dict") else None,
        "ef": getattr(index, "ef", None),
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    labels_of = getattr(index, "labels", None)
    for vid in index.volume_ids:
        h.update(b"\0" + str(vid).encode())
        h.update(volume_fingerprint(index.vectors(vid), index.slice_meta(vid)).encode())
        labels = labels_of(vid) if callable(labels_of) else None
        if labels is not None:
            h.update(json.dumps(list(labels.names)).encode())
            _update(h, np.asarray(labels.present, bool))
    return h.hexdigest()


def cache_key(parts: Mapping[str, Any]) -> str:
    """The file key for a set of parameters (JSON-serialisable values).

    Examples
    --------
    >>> cache_key({"k": 5, "g": "fine"}) == cache_key({"g": "fine", "k": 5}) != cache_key({"k": 3})
    True
    """
    text = json.dumps({"format": _FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class AnnotationCache:
    """The annotation cache of one index directory (see the module docstring).

    Parameters
    ----------
    index_dir
        The directory of the (archive) index, as written by ``save``.

    Raises
    ------
    IndexFormatError
        ``index_dir`` is not an index directory (no ``meta.json``).
    """

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        root = Path(index_dir)
        if not (root / META_NAME).is_file():
            raise IndexFormatError(
                f"annotation cache: {str(root)!r} is not an index directory (no {META_NAME})"
            )
        self.directory = root / CACHE_DIR

    def __repr__(self) -> str:
        return f"AnnotationCache({str(self.directory)!r})"

    def path(self, key: str) -> Path:
        """The file of ``key``."""
        return self.directory / f"{key}.npz"

    def load(self, key: str, *, names: tuple[str, ...]) -> dict[str, CachedVolume]:
        """The cached volumes of ``key`` (empty when absent, unreadable or of other names)."""
        path = self.path(key)
        if not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != _FORMAT or tuple(data["names"].tolist()) != names:
                    return {}
                ids = data["volume_ids"].tolist()
                prints = data["fingerprints"].tolist()
                offsets = data["offsets"]
                prob = np.asarray(data["probabilities"], np.float64)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable annotation cache %s: %s", path, exc)
            return {}
        n = len(ids)
        if len(prints) != n or offsets.shape != (n + 1,) or prob.ndim != 2:
            logger.warning("ignoring inconsistent annotation cache %s", path)
            return {}
        if prob.shape[1] != len(names) or int(offsets[-1]) != len(prob) or (n and offsets[0]):
            logger.warning("ignoring inconsistent annotation cache %s", path)
            return {}
        return {
            str(v): CachedVolume(str(f), prob[int(offsets[i]) : int(offsets[i + 1])])
            for i, (v, f) in enumerate(zip(ids, prints, strict=True))
        }

    def store(
        self, key: str, entries: Mapping[str, CachedVolume], *, names: tuple[str, ...]
    ) -> None:
        """Write ``entries`` as the file of ``key`` atomically (replacing it whole).

        A failure to write (read-only folder, full disk) is logged, not raised: the
        cache is an optimisation.
        """
        ids = list(entries)
        sizes = [len(entries[v].probabilities) for v in ids]
        offsets = np.zeros(len(ids) + 1, np.int64)
        offsets[1:] = np.cumsum(sizes)
        prob = (
            np.concatenate([entries[v].probabilities for v in ids])
            if ids
            else np.zeros((0, len(names)))
        )
        arrays = {
            "format": np.array(_FORMAT),
            "names": np.array(names, dtype=np.str_),
            "volume_ids": np.array(ids, dtype=np.str_),
            "fingerprints": np.array([entries[v].fingerprint for v in ids], dtype=np.str_),
            "offsets": offsets,
            "probabilities": np.asarray(prob, np.float64),
        }
        tmp: str | None = None
        try:
            self.directory.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.directory)
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, allow_pickle=False, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
            tmp = None
            fsync_dir(self.directory)
            self._prune(keep=key)
        except OSError as exc:
            logger.warning("cannot write annotation cache %s: %s", self.path(key), exc)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _prune(self, keep: str) -> None:
        """Delete all but the :data:`MAX_FILES` most recent files (never ``keep``)."""
        files = sorted(
            (p for p in self.directory.glob("*.npz") if p.name != f"{keep}.npz"),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in files[MAX_FILES - 1 :]:
            old.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete every cache file."""
        if self.directory.is_dir():
            for p in self.directory.glob("*.npz"):
                p.unlink(missing_ok=True)
