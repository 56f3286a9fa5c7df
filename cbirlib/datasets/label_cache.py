"""A cache of the per-slice pixel counts read from a subject's masks.

Reading every mask of the full TotalSegmentator release takes hours; the labels of a
subject only change when its mask files do. The cache keeps, per subject, one ``.npy``
file of per-slice pixel counts (``(n_classes, n_slices)`` int64, never pickled), named
after a key made of the class list and each mask file's name, size and modification
time (and the image's), so that a changed, added or removed mask makes a new entry and
the old one is never used again. ``min_pixels`` is applied after reading, so one cache
serves every threshold.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> from cbirlib.datasets.label_cache import LabelCache
>>> cache = LabelCache(tempfile.mkdtemp())
>>> f = Path(tempfile.mkdtemp()) / "liver.nii.gz"
>>> _ = f.write_bytes(b"mask")
>>> key = cache.key("s1", ("liver",), [f])
>>> cache.get("s1", key, 1) is None
True
>>> cache.put("s1", key, np.array([[0, 3]]))
>>> cache.get("s1", key, 1).tolist()
[[0, 3]]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["LabelCache"]

logger = logging.getLogger(__name__)

#: Bumped when the meaning of the cached counts changes.
CACHE_VERSION = 1


class LabelCache:
    """Per-subject ``.npy`` files of per-slice mask pixel counts in ``directory``.

    Parameters
    ----------
    directory
        Created on first write.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def key(self, subject_id: str, classes: Sequence[str], files: Iterable[Path]) -> str:
        """A digest of the class list and each file's name, size and mtime."""
        stamps = []
        for path in sorted(set(files)):
            try:
                st = path.stat()
            except OSError:
                stamps.append([path.name, -1, -1])
                continue
            stamps.append([path.name, st.st_size, st.st_mtime_ns])
        text = json.dumps([CACHE_VERSION, subject_id, list(classes), stamps])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

    def _path(self, subject_id: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject_id)
        return self.directory / f"{safe}-{key}.npy"

    def get(self, subject_id: str, key: str, n_classes: int) -> npt.NDArray[np.int64] | None:
        """The cached counts, or None (absent, unreadable or of the wrong shape)."""
        path = self._path(subject_id, key)
        if not path.is_file():
            return None
        try:
            counts: npt.NDArray[np.int64] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("label cache %s is unreadable (%s); reading the masks", path, exc)
            return None
        if counts.dtype != np.int64 or counts.ndim != 2 or counts.shape[0] != n_classes:
            logger.warning("label cache %s does not fit; reading the masks", path)
            return None
        return counts

    def put(self, subject_id: str, key: str, counts: npt.NDArray[np.int64]) -> None:
        """Store counts atomically (a temporary file renamed into place); stale entries
        of the subject are removed. A cache that cannot be written only logs a warning."""
        target = self._path(subject_id, key)
        tmp: str | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".part-", suffix=".npy")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(counts, np.int64), allow_pickle=False)
            os.replace(tmp, target)
            tmp = None
            prefix = target.name[: -len(key) - len(".npy")]
            for old in self.directory.glob(f"{prefix}*.npy"):
                if old != target and len(old.name) == len(target.name):
                    old.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot write the label cache %s: %s", target, exc)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
