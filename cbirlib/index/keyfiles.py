"""The files of an index's keys: volume ids, spans, per-volume records, per-slice metadata.

Every :class:`~cbirlib.index.BaseIndex` writes them beside ``meta.json`` and its
backend's files: ``volumes.npy`` and ``spans.npy`` (each volume's first label and slice
count), ``modalities.npy``, ``sources.json`` and ``label_classes.npy`` per volume, and
``slice_index.npy``, ``z_mm.npy``, ``informative.npy`` and ``labels.npy`` per label.
:func:`write_keys` writes a :class:`StoredKeys`; :func:`read_keys` reads one back,
checked against the counts of ``meta.json`` (files an older index lacks get their
defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._typing import I64
from cbirlib.errors import IndexFormatError, SettingError
from cbirlib.index.files import load_npy, read_json, save_npy, write_json
from cbirlib.index.meta import IndexMeta
from cbirlib.labels import PACKED_BYTES
from cbirlib.modality import UNKNOWN, normalize_modality
from cbirlib.provenance import Source

__all__ = [
    "INFORMATIVE_FILE",
    "LABELS_FILE",
    "LABEL_CLASSES_FILE",
    "MODALITY_FILE",
    "SOURCES_FILE",
    "StoredKeys",
    "read_keys",
    "write_keys",
]

#: Per-volume modality codes, aligned with ``volumes.npy``; absent in older indexes.
MODALITY_FILE = "modalities.npy"
INFORMATIVE_FILE = "informative.npy"  # absent in indexes written before the flags
#: Per-volume provenance (:class:`~cbirlib.provenance.Source` as JSON, ``null``:
#: unknown), aligned with ``volumes.npy``; absent in older indexes.
SOURCES_FILE = "sources.json"
#: Per-slice structure sets, ``(n_labels, 13)`` uint8 bits over the 104 v1 classes
#: (:func:`cbirlib.labels.pack_labels`); absent in indexes written before labels.
LABELS_FILE = "labels.npy"
#: Per-volume packed set of the classes its labels cover, ``(n_volumes, 13)`` uint8,
#: aligned with ``volumes.npy``; all zero: an unlabeled volume.
LABEL_CLASSES_FILE = "label_classes.npy"


@dataclass(frozen=True)
class StoredKeys:
    """The keys of an index as its files hold them.

    Per volume, in insertion order: ``volumes`` (ids), ``spans`` (``(n_volumes, 2)``
    int64 first label and slice count), ``modalities``, ``sources`` and
    ``label_classes`` (``(n_volumes, 13)`` uint8). Per label (``n_labels`` rows,
    removed volumes' labels included): ``slice_index``, ``z_mm``, ``informative`` and
    ``labels`` (``(n_labels, 13)`` uint8).
    """

    volumes: list[str]
    spans: I64
    modalities: list[str]
    sources: list[Source | None]
    label_classes: npt.NDArray[np.uint8]
    slice_index: I64
    z_mm: npt.NDArray[np.float64]
    informative: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.uint8]


def write_keys(directory: Path, keys: StoredKeys) -> None:
    """Write the key files of ``keys`` into ``directory`` (a folder being saved)."""
    save_npy(directory / "volumes.npy", np.array(keys.volumes, dtype=np.str_))
    save_npy(directory / "spans.npy", keys.spans)
    save_npy(directory / MODALITY_FILE, np.array(keys.modalities, dtype=np.str_))
    entries = [None if src is None else src.to_dict() for src in keys.sources]
    write_json(directory / SOURCES_FILE, entries)
    save_npy(directory / "slice_index.npy", keys.slice_index)
    save_npy(directory / "z_mm.npy", keys.z_mm)
    save_npy(directory / INFORMATIVE_FILE, keys.informative)
    save_npy(directory / LABELS_FILE, keys.labels)
    save_npy(directory / LABEL_CLASSES_FILE, keys.label_classes)


def read_keys(directory: Path, meta: IndexMeta) -> StoredKeys:
    """The key files of the index in ``directory``, checked against ``meta``'s counts.

    Raises
    ------
    IndexFormatError
        A file of the wrong type or shape, spans outside the labels or overlapping, a
        volume id twice, or a malformed modality or source file.
    """
    n_labels, n_vol = meta.n_labels, meta.n_volumes
    volumes = load_npy(directory / "volumes.npy")
    spans = load_npy(directory / "spans.npy")
    slice_index = load_npy(directory / "slice_index.npy")
    z_mm = load_npy(directory / "z_mm.npy")
    # indexes written before the flags existed: every slice is informative
    flags = (
        load_npy(directory / INFORMATIVE_FILE)
        if INFORMATIVE_FILE in meta.files
        else np.ones(n_labels, bool)
    )
    # indexes written before labels were stored: every volume is unlabeled
    has_labels = LABELS_FILE in meta.files and LABEL_CLASSES_FILE in meta.files
    bits = (
        load_npy(directory / LABELS_FILE)
        if has_labels
        else np.zeros((n_labels, PACKED_BYTES), np.uint8)
    )
    classes = (
        load_npy(directory / LABEL_CLASSES_FILE)
        if has_labels
        else np.zeros((n_vol, PACKED_BYTES), np.uint8)
    )
    checks = [
        ("volumes.npy", volumes.dtype.kind == "U" and volumes.shape == (n_vol,)),
        ("spans.npy", spans.dtype == np.int64 and spans.shape == (n_vol, 2)),
        ("slice_index.npy", slice_index.dtype == np.int64 and slice_index.shape == (n_labels,)),
        ("z_mm.npy", z_mm.dtype == np.float64 and z_mm.shape == (n_labels,)),
        (INFORMATIVE_FILE, flags.dtype == np.bool_ and flags.shape == (n_labels,)),
        (LABELS_FILE, bits.dtype == np.uint8 and bits.shape == (n_labels, PACKED_BYTES)),
        (
            LABEL_CLASSES_FILE,
            classes.dtype == np.uint8 and classes.shape == (n_vol, PACKED_BYTES),
        ),
    ]
    if n_vol and ((spans[:, 0] < 0).any() or (spans.sum(axis=1) > n_labels).any()):
        checks.append(("spans.npy", False))
    if volumes.shape == (n_vol,) and len(set(volumes.tolist())) != n_vol:
        raise IndexFormatError(
            f"index file {str(directory / 'volumes.npy')!r} lists a volume id twice"
        )
    if n_vol and spans.shape == (n_vol, 2) and _spans_overlap(spans):
        raise IndexFormatError(
            f"index file {str(directory / 'spans.npy')!r} gives two volumes the same slices"
        )
    if n_vol and spans.shape == (n_vol, 2) and int(spans[:, 1].sum()) != meta.n_slices:
        checks.append(("spans.npy", False))
    for name, ok in checks:
        if not ok:
            raise IndexFormatError(
                f"index file {str(directory / name)!r} does not match meta.json counts"
            )
    return StoredKeys(
        volumes=volumes.tolist(),
        spans=spans,
        modalities=_load_modalities(directory, meta),
        sources=_load_sources(directory, meta),
        label_classes=classes,
        slice_index=slice_index,
        z_mm=z_mm,
        informative=flags,
        labels=bits,
    )


def _load_modalities(directory: Path, meta: IndexMeta) -> list[str]:
    """Per-volume modalities; ``"unknown"`` for each volume of an older index."""
    if MODALITY_FILE not in meta.files:
        return [UNKNOWN] * meta.n_volumes
    codes = _modality_codes(load_npy(directory / MODALITY_FILE), meta.n_volumes)
    if codes is None:
        raise IndexFormatError(
            f"index file {str(directory / MODALITY_FILE)!r} does not match meta.json counts"
        )
    return codes


def _load_sources(directory: Path, meta: IndexMeta) -> list[Source | None]:
    """Per-volume sources; ``None`` for each volume of an index without the file."""
    if SOURCES_FILE not in meta.files:
        return [None] * meta.n_volumes
    raw = read_json(directory / SOURCES_FILE)
    try:
        if not isinstance(raw, list) or len(raw) != meta.n_volumes:
            raise TypeError("not one entry per volume")
        return [None if e is None else Source.from_dict(e) for e in raw]
    except (TypeError, AttributeError) as exc:
        raise IndexFormatError(
            f"index file {str(directory / SOURCES_FILE)!r} does not match meta.json "
            f"counts or is malformed: {exc}"
        ) from None


def _modality_codes(raw: npt.NDArray[Any], n_vol: int) -> list[str] | None:
    """``modalities.npy`` as codes, or None when it does not fit ``n_vol`` volumes."""
    if raw.dtype.kind != "U" or raw.shape != (n_vol,):
        return None
    try:
        return [normalize_modality(str(c)) for c in raw.tolist()]
    except SettingError:
        return None


def _spans_overlap(spans: I64) -> bool:
    """Whether any two ``(start, n)`` spans share a label (or a count is negative)."""
    if (spans[:, 1] < 0).any():
        return True
    order = np.argsort(spans[:, 0], kind="stable")
    starts, ends = spans[order, 0], spans[order].sum(axis=1)
    return bool((starts[1:] < ends[:-1]).any())
