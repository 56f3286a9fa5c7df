"""The one owner of an index's ``meta.json``: read, validate, compare extractors.

An index directory is self-describing: ``meta.json`` names its format version, kind
(``"hnsw"`` or ``"exact"``), dimension, settings, the config of the extractor that made
its vectors, counts and a sha256 of every other file. :func:`read_meta` reads and
validates it into an :class:`IndexMeta` without touching a vector, and
:func:`check_compatible` is the one check that vectors from an extractor fit an index
(used by the indexes, the query chain and resumed builds).

Examples
--------
>>> stored = {"name": "baseline", "bins": 64}
>>> check_compatible(stored, 130, {"name": "baseline", "bins": 64}, 130)
>>> check_compatible(stored, 130, {"name": "dinov2"}, 384)
Traceback (most recent call last):
...
cbirlib.errors.ExtractorMismatchError: index built with 'baseline' (dim 130), ...
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbirlib._files import sha256_file
from cbirlib.errors import (
    DimensionMismatchError,
    ExtractorMismatchError,
    ExtractorMismatchWarning,
    IndexFormatError,
    SliceIndexError,
)
from cbirlib.index.config import HnswConfig
from cbirlib.index.files import META_NAME, read_json, resolve_dir

__all__ = ["FEATURE_VERSION_KEY", "FORMAT_VERSION", "IndexMeta", "check_compatible", "read_meta"]

FORMAT_VERSION = 1
KINDS = ("hnsw", "exact")
MAX_DIM = 1 << 16  # widest embedding meta.json may declare
MAX_EF = 1 << 20
MAX_LABELS = 1 << 40
_PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep
#: Config key of an extractor's feature version: embeddings of two versions of the same
#: extractor do not compare (``1`` when the key is missing, as in configs written before it).
FEATURE_VERSION_KEY = "feature_version"
#: What to do about an extractor that does not fit an index.
ADVICE = (
    "use the index's extractor (cbirlib.create_extractor(**index.extractor_config)) "
    "or build an index with this one"
)


@dataclass(frozen=True)
class IndexMeta:
    """What an index's ``meta.json`` says, validated.

    Attributes
    ----------
    path
        The directory it was read from (``path.old`` after a crashed save).
    kind
        ``"hnsw"`` (:class:`~cbirlib.index.SliceIndex`) or ``"exact"``
        (:class:`~cbirlib.index.ExactIndex`).
    dim, config, ef
        Vector dimension, index settings and the saved search ``ef``.
    extractor_config
        Config of the extractor that made the vectors (``create_extractor(**it)``
        rebuilds it), or None.
    n_volumes, n_slices, n_labels
        Volumes, live slice entries, and labels ever used (removed ones included).
    files
        ``{name: {"sha256": ..., "bytes": ...}}`` of every other file.
    cbirlib_version
        The cbirlib that wrote it (None if not recorded).
    """

    path: Path
    format: int
    kind: str
    dim: int
    config: HnswConfig
    ef: int
    extractor_config: dict[str, Any] | None
    n_volumes: int
    n_slices: int
    n_labels: int
    files: dict[str, dict[str, Any]]
    cbirlib_version: str | None = None

    @property
    def extractor_name(self) -> str | None:
        """The extractor's registered name, or None if none is recorded."""
        name = (self.extractor_config or {}).get("name")
        return str(name) if name is not None else None


def read_meta(path: str | os.PathLike[str], *, verify: bool = False) -> IndexMeta:
    """Read and validate the ``meta.json`` of the index at ``path`` (no vector is read).

    Parameters
    ----------
    path
        Index directory (recovered from ``path + '.old'`` after a crashed save).
    verify
        Also check the sha256 of every file (sizes are always checked).

    Raises
    ------
    IndexFormatError
        No index there, or a missing, malformed or inconsistent file.
    """
    directory = resolve_dir(path)
    return parse_meta(directory, verify=verify)


def parse_meta(directory: Path, *, verify: bool) -> IndexMeta:
    """:func:`read_meta` on a directory already resolved (and possibly pinned)."""
    meta = _checked_meta(directory, verify=verify)
    try:
        config = HnswConfig.from_dict(meta["config"])
    except (TypeError, SliceIndexError) as exc:
        raise IndexFormatError(
            f"index file {str(directory / META_NAME)!r} is malformed: {exc}"
        ) from None
    counts = meta["counts"]
    version = meta.get("cbirlib_version")
    return IndexMeta(
        path=directory,
        format=meta["format"],
        kind=meta["kind"],
        dim=meta["dim"],
        config=config,
        ef=meta["ef"],
        extractor_config=meta["extractor_config"],
        n_volumes=counts["volumes"],
        n_slices=counts["entries"],
        n_labels=counts["labels"],
        files=meta["files"],
        cbirlib_version=str(version) if version is not None else None,
    )


def normalise_config(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON round trip of ``config``, so stored and given configs compare equal."""
    if config is None:
        return None
    try:
        result: dict[str, Any] = json.loads(json.dumps(dict(config), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise SliceIndexError(f"extractor config is not JSON-serialisable: {exc}") from None
    return result


def check_compatible(
    stored: Mapping[str, Any] | None,
    stored_dim: int | None,
    given: Mapping[str, Any],
    given_dim: int | None = None,
    *,
    strict: bool | None = None,
    advice: str = ADVICE,
) -> None:
    """Check that vectors from extractor config ``given`` fit an index built with ``stored``.

    Another extractor ``name`` raises :class:`~cbirlib.errors.ExtractorMismatchError`,
    another dimension :class:`~cbirlib.errors.DimensionMismatchError`, both before any
    work; so does another ``"feature_version"`` of the same extractor (``ExtractorMismatchError``
    saying to rebuild the index; a config without the key is version 1). Other config
    differences (preprocessing, options) warn with
    :class:`~cbirlib.errors.ExtractorMismatchWarning`, attributed to the first caller
    outside cbirlib, or raise ``ExtractorMismatchError`` in strict mode (``strict=None``
    reads the environment variable ``CBIRLIB_STRICT=1``). A missing ``stored`` config
    or dimension is not checked.
    """

    def side(name: object, dim: int | None) -> str:
        shown = repr(name) if name is not None else "an unnamed extractor"
        return f"{shown} (dim {dim})" if dim is not None else shown

    stored_cfg = normalise_config(stored)
    given_cfg = normalise_config(given) or {}
    built, used = (stored_cfg or {}).get("name"), given_cfg.get("name")
    name_differs = built is not None and used is not None and built != used
    dim_differs = stored_dim is not None and given_dim is not None and stored_dim != given_dim
    if name_differs:
        raise ExtractorMismatchError(
            f"index built with {side(built, stored_dim)}, vectors come from "
            f"{side(used, given_dim)}; {advice}"
        )
    if dim_differs:
        raise DimensionMismatchError(
            f"index built with {side(built, stored_dim)}, vectors come from "
            f"{side(used, given_dim)}; {advice}"
        )
    if stored_cfg is None or given_cfg == stored_cfg:
        return
    built_version = stored_cfg.get(FEATURE_VERSION_KEY, 1)
    used_version = given_cfg.get(FEATURE_VERSION_KEY, 1)
    if built_version != used_version:
        raise ExtractorMismatchError(
            f"index built with {side(built, stored_dim)} features of version "
            f"{built_version!r}, vectors come from version {used_version!r} of it: the two do "
            "not compare; rebuild the index with this cbirlib (build_index(..., resume=False), "
            "CLI: cbirlib index --no-resume)"
        )
    keys = sorted(
        k
        for k in set(stored_cfg) | set(given_cfg)
        if stored_cfg.get(k, "<missing>") != given_cfg.get(k, "<missing>")
    )
    diff = "; ".join(
        f"{k}: index has {stored_cfg.get(k, '<missing>')!r}, "
        f"given {given_cfg.get(k, '<missing>')!r}"
        for k in keys
    )
    message = f"extractor config differs from the one the index was built with ({diff})"
    if strict is None:
        strict = os.environ.get("CBIRLIB_STRICT", "") == "1"
    if strict:
        raise ExtractorMismatchError(f"{message}; {advice}")
    warnings.warn(message, ExtractorMismatchWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """``stacklevel`` for a warning raised by the caller: the first frame outside cbirlib."""
    frame = sys._getframe(1)  # the function that calls warnings.warn
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def meta_checksum(meta: dict[str, Any]) -> str:
    """sha256 of ``meta.json``'s content without its own ``checksum`` entry."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _validate_meta(meta: dict[str, Any], meta_path: Path) -> None:
    """Types and ranges of ``meta.json`` values, checked before anything is allocated."""

    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"index file {str(meta_path)!r}: {what}")

    if not _is_int(meta["dim"], 1, MAX_DIM):
        raise bad(f"'dim' must be an integer in 1..{MAX_DIM}, got {meta['dim']!r}")
    if not _is_int(meta["ef"], 1, MAX_EF):
        raise bad(f"'ef' must be an integer in 1..{MAX_EF}, got {meta['ef']!r}")
    if not isinstance(meta["config"], dict):
        raise bad(f"'config' must be an object, got {type(meta['config']).__name__}")
    extractor = meta["extractor_config"]
    if extractor is not None and not isinstance(extractor, dict):
        raise bad(f"'extractor_config' must be an object or null, got {type(extractor).__name__}")
    counts = meta["counts"]
    if not isinstance(counts, dict) or not all(
        _is_int(counts.get(key), 0, MAX_LABELS) for key in ("volumes", "entries", "labels")
    ):
        raise bad(f"'counts' must hold integers volumes, entries, labels >= 0, got {counts!r}")
    if counts["entries"] > counts["labels"] or counts["volumes"] > counts["labels"]:
        raise bad(f"'counts' are inconsistent: {counts!r}")
    files = meta["files"]
    if not isinstance(files, dict) or not all(
        isinstance(name, str)
        and name == Path(name).name
        and name not in ("", ".", "..", META_NAME)
        and isinstance(info, dict)
        and _is_int(info.get("bytes"), 0, 1 << 62)
        and isinstance(info.get("sha256"), str)
        for name, info in files.items()
    ):
        raise bad("has a malformed 'files' entry")
    for name in ("slice_index.npy", "z_mm.npy"):
        if name not in files or files[name]["bytes"] < 8 * counts["labels"]:
            raise bad(f"'counts' say {counts['labels']} slices, more than {name} can hold")


def _checked_meta(directory: Path, *, verify: bool) -> dict[str, Any]:
    meta_path = directory / META_NAME
    meta = read_json(meta_path)
    required = ("format", "kind", "dim", "config", "ef", "extractor_config", "counts", "files")
    if not isinstance(meta, dict) or any(key not in meta for key in required):
        raise IndexFormatError(f"index file {str(meta_path)!r} lacks keys; needs {required}")
    if meta["format"] != FORMAT_VERSION:
        raise IndexFormatError(
            f"index {str(directory)!r} has format {meta['format']!r}; this cbirlib reads "
            f"format {FORMAT_VERSION} only"
        )
    if meta["kind"] not in KINDS:
        raise IndexFormatError(
            f"index {str(directory)!r} is of unknown kind {meta['kind']!r}; "
            f"this cbirlib reads {', '.join(KINDS)}"
        )
    if verify and "checksum" in meta and meta["checksum"] != meta_checksum(meta):
        raise IndexFormatError(f"index file {str(meta_path)!r} fails its sha256 checksum")
    _validate_meta(meta, meta_path)
    files = meta["files"]
    for name, info in files.items():
        file = directory / name
        if not file.is_file():
            raise IndexFormatError(f"index file {str(file)!r} is missing")
        if file.stat().st_size != info["bytes"]:
            raise IndexFormatError(
                f"index file {str(file)!r} is truncated or altered: {file.stat().st_size} "
                f"bytes, expected {info['bytes']}"
            )
        if verify and sha256_file(file) != info["sha256"]:
            raise IndexFormatError(f"index file {str(file)!r} fails its sha256 checksum")
    return meta
