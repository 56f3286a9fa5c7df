"""Per-volume embedding shards on disk: written atomically, read back for the merge.

A distributed build writes the embeddings of each finished volume as one ``.npz`` file
(NumPy arrays only, never pickled) in a shard folder, next to a ``manifest.json`` that
records the extractor config and dimension. A shard is written under a temporary name
and renamed into place, so a build killed at any moment leaves either the whole shard
or none: a restarted build skips exactly the volumes whose shard exists.

Examples
--------
>>> import tempfile, numpy as np
>>> store = ShardStore(tempfile.mkdtemp() + "/shards")
>>> store.open({"name": "mean"}, 2, resume=True)
>>> store.write("ct/001", np.eye(2, dtype=np.float32), z_mm=np.array([0.0, 2.5])).suffix
'.npz'
>>> store.has("ct/001"), store.has("ct/002")
(True, False)
>>> store.read("ct/001").z_mm.tolist()
[0.0, 2.5]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib.errors import IndexFormatError, ShardError
from cbirlib.index.files import fsync_dir, read_json, write_json
from cbirlib.index.meta import check_compatible, normalise_config
from cbirlib.labels import PACKED_BYTES, SliceLabels, pack_labels, unpack_labels
from cbirlib.provenance import Source

__all__ = ["SHARD_FORMAT", "Shard", "ShardStore", "default_shard_dir"]

#: Version of the shard folder layout, stored in its manifest.
SHARD_FORMAT = 2
MANIFEST = "manifest.json"
_SUFFIX = ".npz"
_TMP_PREFIX = ".tmp-"
_ADVICE = "pass another shard folder, or resume=False to start over"


def default_shard_dir(index_path: str | os.PathLike[str]) -> Path:
    """The shard folder of an index folder: its sibling ``<name>.shards``.

    Examples
    --------
    >>> default_shard_dir("/data/idx").as_posix()
    '/data/idx.shards'
    """
    path = Path(index_path)
    return path.with_name(path.name + ".shards")


@dataclass(frozen=True)
class Shard:
    """The embeddings of one volume, as written by :meth:`ShardStore.write`.

    Attributes
    ----------
    volume_id
        The volume's id.
    embeddings
        ``(n, dim)`` float32 slice embeddings.
    slice_index
        ``(n,)`` int64 slice numbers within the volume.
    z_mm
        ``(n,)`` float64 slice positions in mm (NaN: unknown).
    informative
        ``(n,)`` bool, ``False`` for blank slices
        (:func:`cbirlib.informative.slice_flags`).
    modality
        The volume's modality as the index records it (``"CT"``, ``"MR"``, ...).
    source
        Where the volume was read from (None: unknown, or a shard written before
        sources were kept).
    labels
        The volume's slice labels (None: unlabeled), columns in v1 class order.
    """

    volume_id: str
    embeddings: npt.NDArray[np.float32]
    slice_index: npt.NDArray[np.int64]
    z_mm: npt.NDArray[np.float64]
    informative: npt.NDArray[np.bool_]
    modality: str
    source: Source | None = None
    labels: SliceLabels | None = None


def _source(data: Any) -> Source | None:
    text = str(data["source"]) if "source" in data.files else ""
    return Source.from_dict(json.loads(text)) if text else None


def _labels(data: Any) -> SliceLabels | None:
    if "labels" not in data.files or not data["label_classes"].any():
        return None
    return unpack_labels(data["labels"], data["label_classes"])


class ShardStore:
    """A folder of per-volume embedding shards with a manifest.

    Parameters
    ----------
    directory
        The shard folder (created by :meth:`open`).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"ShardStore({str(self.directory)!r})"

    def open(self, extractor_config: Mapping[str, Any], dim: int, *, resume: bool) -> None:
        """Create the folder and its manifest, or check the manifest of an existing one.

        Parameters
        ----------
        extractor_config
            Config of the extractor that makes the embeddings (``to_config()``).
        dim
            Embedding dimension.
        resume
            Keep the shards already there (their manifest must match); ``False``
            deletes them first.

        Raises
        ------
        ExtractorMismatchError, DimensionMismatchError
            Resuming shards written with another extractor config or dimension.
        ShardError
            The folder exists but is not a shard folder, or its manifest is unreadable.
        """
        manifest = self.directory / MANIFEST
        if self.directory.exists() and not self.directory.is_dir():
            raise ShardError(f"shard folder {str(self.directory)!r} is a file")
        if self.directory.is_dir() and any(self.directory.iterdir()) and not manifest.is_file():
            raise ShardError(
                f"refusing to use {str(self.directory)!r} as a shard folder: it is not empty "
                f"and has no {MANIFEST}"
            )
        if manifest.is_file() and not resume:
            self.clear()
        if manifest.is_file():
            stored = self._manifest()
            check_compatible(
                stored["extractor_config"],
                stored["dim"],
                extractor_config,
                int(dim),
                strict=True,
                advice=_ADVICE,
            )
            self._remove_temporaries()
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}.json"
        write_json(
            tmp,
            {
                "format": SHARD_FORMAT,
                "dim": int(dim),
                "extractor_config": normalise_config(dict(extractor_config)),
            },
        )
        os.replace(tmp, manifest)
        fsync_dir(self.directory)

    def _manifest(self) -> dict[str, Any]:
        path = self.directory / MANIFEST
        try:
            data = read_json(path)
        except IndexFormatError as exc:
            raise ShardError(str(exc)) from None
        if (
            not isinstance(data, dict)
            or data.get("format") != SHARD_FORMAT
            or not isinstance(data.get("dim"), int)
            or not isinstance(data.get("extractor_config"), dict)
        ):
            raise ShardError(
                f"{str(path)!r} is not a shard manifest of format {SHARD_FORMAT}; "
                "remove the folder or pass resume=False"
            )
        return data

    def _remove_temporaries(self) -> None:
        """Delete half-written files left by a killed build."""
        for tmp in self.directory.glob(f"{_TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)

    def path_of(self, volume_id: str) -> Path:
        """The shard file of a volume (named by a hash: ids may hold ``/``)."""
        digest = hashlib.sha256(volume_id.encode("utf-8")).hexdigest()[:40]
        return self.directory / f"{digest}{_SUFFIX}"

    def has(self, volume_id: str) -> bool:
        """Whether the shard of ``volume_id`` is written."""
        return self.path_of(volume_id).is_file()

    def __len__(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(1 for p in self.directory.glob(f"*{_SUFFIX}") if not p.name.startswith("."))

    def write(
        self,
        volume_id: str,
        embeddings: npt.ArrayLike,
        *,
        z_mm: npt.ArrayLike,
        slice_index: npt.ArrayLike | None = None,
        informative: npt.ArrayLike | None = None,
        modality: str = "unknown",
        source: Source | None = None,
        labels: SliceLabels | None = None,
    ) -> Path:
        """Write the shard of one volume atomically (temporary file, fsync, rename).

        Parameters
        ----------
        volume_id
            The volume's id.
        embeddings
            ``(n, dim)`` slice embeddings (stored as float32).
        z_mm
            ``(n,)`` slice positions in mm.
        slice_index
            ``(n,)`` slice numbers (default ``0..n-1``).
        informative
            ``(n,)`` flags, ``False`` for blank slices (default all ``True``).
        modality
            The volume's modality.
        source, labels
            Where the volume was read from, and its slice labels (optional; TotalSegmentator
            v1 class names, packed as :func:`cbirlib.labels.pack_labels` packs them).

        Returns
        -------
        pathlib.Path
            The shard file.
        """
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        n = len(emb)
        idx = np.arange(n, dtype=np.int64) if slice_index is None else np.asarray(slice_index)
        flags = np.ones(n, bool) if informative is None else np.asarray(informative, bool)
        if labels is not None:  # packed as the index stores them
            bits, classes = pack_labels(labels)
        else:
            bits, classes = np.zeros((n, PACKED_BYTES), np.uint8), np.zeros(PACKED_BYTES, np.uint8)
        final = self.path_of(volume_id)
        tmp = self.directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}{_SUFFIX}"
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                volume_id=np.array(volume_id),
                embeddings=emb,
                slice_index=idx.astype(np.int64),
                z_mm=np.asarray(z_mm, dtype=np.float64),
                informative=flags,
                modality=np.array(str(modality)),
                source=np.array(json.dumps(source.to_dict()) if source is not None else ""),
                labels=bits,
                label_classes=classes,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(self.directory)
        return final

    def read(self, volume_id: str) -> Shard:
        """Read the shard of one volume.

        Raises
        ------
        ShardError
            No shard for it, or an unreadable one, or one written for another id.
        """
        path = self.path_of(volume_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                shard = Shard(
                    volume_id=str(data["volume_id"]),
                    embeddings=data["embeddings"].astype(np.float32, copy=False),
                    slice_index=data["slice_index"].astype(np.int64, copy=False),
                    z_mm=data["z_mm"].astype(np.float64, copy=False),
                    informative=data["informative"].astype(bool, copy=False),
                    modality=str(data["modality"]),
                    source=_source(data),
                    labels=_labels(data),
                )
        except FileNotFoundError:
            raise ShardError(f"no shard for volume {volume_id!r} in {self}") from None
        except (ValueError, OSError, KeyError, EOFError) as exc:
            raise ShardError(f"shard {str(path)!r} is unreadable: {exc}") from None
        if shard.volume_id != volume_id:
            raise ShardError(
                f"shard {str(path)!r} holds volume {shard.volume_id!r}, not {volume_id!r}"
            )
        return shard

    def clear(self) -> None:
        """Delete the shard folder and everything in it."""
        if self.directory.is_dir():
            shutil.rmtree(self.directory)
