"""Search an unlabeled archive by structure name: which volumes show it, and where.

:func:`find` ranks the volumes of an archive index (no labels needed) that contain a
structure, from a labeled reference index. Two routes:

``"annotate"`` (default)
    Every archive volume is annotated once from its stored slice vectors
    (:func:`cbirlib.annotation.annotate_embeddings` against the reference; no image is
    read) and volumes are ranked by the confidence of the structure's predicted
    extent, which is also the localized span. Pass the archive's index directory as
    ``cache`` to keep the annotations there (:mod:`cbirlib.index.annotations`): the
    next call on the same archive and reference annotates nothing; or pass the result
    of :func:`annotate_index` as ``annotations`` to reuse them in memory.
``"exemplar"``
    The structure's slices in up to ``exemplars`` labeled reference volumes are region
    queries: each of their slices votes for its ``k`` nearest archive slices; an archive
    volume scores its mean vote share over the exemplars, and its span is the trimmed
    range of its voted slices. Volumes scoring at least a quarter of the best are kept.

The annotate route is the default: on the phantom benchmark it has the better recall
and localization (the exemplar route a slightly higher precision on coarse regions);
see ``docs/results/annotate.md``.

Examples
--------
>>> import tempfile
>>> from cbirlib.datasets import make_phantoms
>>> from cbirlib.index import build_index
>>> from cbirlib.plugins import create_extractor
>>> ds = make_phantoms(tempfile.mkdtemp(), 4, shape=(32, 32))
>>> ex = create_extractor("baseline")
>>> ref = build_index([ds.load(s) for s in ds.subjects[:2]], ex,
...                   tempfile.mkdtemp() + "/ref", verbose=False)
>>> archive = build_index([ds.load(s, labels=False) for s in ds.subjects[2:]], ex,
...                       tempfile.mkdtemp() + "/arc", verbose=False)
>>> hits = find(archive, "brain", reference=ref)
>>> hits.level, set(hits.volume_id) <= set(archive.volume_ids)
('volume', True)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from cbirlib.annotation import (
    _COARSE_NAMES,
    Annotation,
    Granularity,
    LabeledIndex,
    annotate_embeddings,
    extents_of,
)
from cbirlib.errors import LabelsError, SettingError, StructureNotPresentError
from cbirlib.hits import Hits
from cbirlib.index.annotations import (
    AnnotationCache,
    CachedVolume,
    cache_key,
    index_fingerprint,
    volume_fingerprint,
)
from cbirlib.localize import matched_span
from cbirlib.structures import COARSE_GROUPS, TOTALSEG_V1_CLASSES, resolve_structure

__all__ = ["ArchiveIndex", "annotate_index", "find"]

Method = Literal["annotate", "exemplar"]


class ArchiveIndex(Protocol):
    """What :func:`find` needs from the archive index."""

    @property
    def volume_ids(self) -> list[str]:
        """Ids of the indexed volumes."""
        ...

    def vectors(self, volume_id: str) -> npt.NDArray[np.float32]:
        """``(n_slices, dim)`` vectors of one volume."""
        ...

    def slice_meta(self, volume_id: str) -> Mapping[str, npt.NDArray[Any]]:
        """``slice_index``, ``z_mm`` and ``informative`` of one volume's slices."""
        ...

    def search(self, queries: npt.ArrayLike, k: int) -> Any:
        """The ``k`` nearest slices of each query vector."""
        ...


def _target(structure: str) -> tuple[Granularity, str]:
    """The granularity and column name that ``structure`` is found at."""
    kind, members = resolve_structure(structure)
    return ("fine", members[0]) if kind == "fine" else ("coarse", COARSE_GROUPS[members[0]])


def _positions(meta: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    z = np.asarray(meta["z_mm"], np.float64)
    if np.isfinite(z).all() and (np.diff(z) > 0).all():
        return z
    return np.asarray(meta["slice_index"], np.float64)  # positions unknown: slice numbers


def annotate_index(
    archive: ArchiveIndex,
    reference: LabeledIndex,
    *,
    granularity: Granularity = "fine",
    volume_ids: Sequence[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    **options: Any,
) -> dict[str, Annotation]:
    """Annotate every volume of ``archive`` from its stored vectors (no image read).

    Parameters
    ----------
    archive
        The index whose volumes are annotated.
    reference
        A labeled index built with the same extractor.
    granularity
        ``"fine"`` or ``"coarse"``.
    volume_ids
        Annotate only these volumes (default: all).
    cache
        The archive's index directory: annotations are read from and written to its
        ``annotations/`` folder (:mod:`cbirlib.index.annotations`), keyed by the
        reference's content, ``granularity``, ``options`` and the extractor config; a
        volume is taken from the cache only while its vectors and slice metadata are
        unchanged. None: no cache.
    **options
        Passed to :func:`cbirlib.annotation.annotate_embeddings` (``k``,
        ``threshold``, ``smooth_mm``, ``temperature``).

    Returns
    -------
    dict
        Volume id -> :class:`~cbirlib.annotation.Annotation`, to pass to :func:`find`
        as ``annotations``.

    Raises
    ------
    IndexFormatError
        ``cache`` is not an index directory.
    """
    ids = list(archive.volume_ids if volume_ids is None else volume_ids)
    store = None if cache is None else AnnotationCache(cache)

    def compute(vid: str) -> Annotation:
        meta = archive.slice_meta(vid)
        return annotate_embeddings(
            archive.vectors(vid),
            reference,
            volume_id=vid,
            z_mm=_positions(meta),
            informative=meta.get("informative"),
            granularity=granularity,
            **options,
        )

    if store is None:
        return {vid: compute(vid) for vid in ids}
    key = _cache_key(archive, reference, granularity, options)
    names = _names(granularity)
    cached = store.load(key, names=names)
    out: dict[str, Annotation] = {}
    entries: dict[str, CachedVolume] = {}
    fresh = 0
    for vid in ids:
        meta = archive.slice_meta(vid)
        fingerprint = volume_fingerprint(archive.vectors(vid), meta)
        hit = cached.get(vid)
        if (
            hit is not None
            and hit.fingerprint == fingerprint
            and len(hit.probabilities) == len(meta["slice_index"])
        ):
            out[vid] = _from_cache(vid, hit, names, meta, granularity, options)
        else:
            out[vid] = compute(vid)
            fresh += 1
        entries[vid] = CachedVolume(fingerprint, out[vid].probabilities)
    if volume_ids is not None:  # keep the other volumes' entries while they are indexed
        present = set(archive.volume_ids)
        entries = {**{v: c for v, c in cached.items() if v in present}, **entries}
    if fresh or set(entries) != set(cached):
        store.store(key, entries, names=names)
    return out


def _names(granularity: Granularity) -> tuple[str, ...]:
    """The structure columns of annotations at ``granularity``."""
    return tuple(TOTALSEG_V1_CLASSES if granularity == "fine" else _COARSE_NAMES)


def _resolved(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` completed with :func:`annotate_embeddings`' defaults."""
    unknown = set(options) - set(_ANNOTATE_DEFAULTS)
    if unknown:
        raise SettingError(f"unknown annotation options: {', '.join(sorted(unknown))}")
    return {**_ANNOTATE_DEFAULTS, **options}


_ANNOTATE_DEFAULTS: dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(annotate_embeddings).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("volume_id", "z_mm", "informative", "granularity")
}


def _cache_key(
    archive: ArchiveIndex, reference: LabeledIndex, granularity: Granularity, options: Any
) -> str:
    """The cache file key: the reference's content, the parameters, the extractor."""
    return cache_key(
        {
            "reference": index_fingerprint(reference),
            "granularity": granularity,
            "options": _resolved(options),
            "extractor_config": getattr(archive, "extractor_config", None),
        }
    )


def _from_cache(
    vid: str,
    hit: CachedVolume,
    names: tuple[str, ...],
    meta: Mapping[str, npt.NDArray[Any]],
    granularity: Granularity,
    options: Mapping[str, Any],
) -> Annotation:
    """The :class:`Annotation` of a cached volume (extents recomputed from probabilities)."""
    z = _positions(meta)
    threshold = float(_resolved(options)["threshold"])
    prob = hit.probabilities
    return Annotation(
        vid, names, prob, z, granularity, threshold, extents_of(names, prob, z, threshold)
    )


def _by_annotation(
    archive: ArchiveIndex,
    reference: LabeledIndex,
    granularity: Granularity,
    column: str,
    annotations: Mapping[str, Annotation] | None,
    k: int,
    cache: str | os.PathLike[str] | None,
) -> list[tuple[str, float, int, int, float, float]]:
    if annotations is None:
        annotations = annotate_index(archive, reference, granularity=granularity, k=k, cache=cache)
    rows = []
    for vid, ann in annotations.items():
        if ann.granularity != granularity and column not in ann.names:
            raise SettingError(
                f"annotations are {ann.granularity}; {column!r} is found on {granularity} "
                f"annotations (annotate_index(..., granularity={granularity!r}))"
            )
        ext = ann.extents.get(column)
        if ext is not None:
            rows.append((vid, ext.confidence, ext.first, ext.last, ext.z_first_mm, ext.z_last_mm))
    return rows


def _by_exemplars(
    archive: ArchiveIndex,
    reference: LabeledIndex,
    granularity: Granularity,
    column: str,
    k: int,
    exemplars: int,
) -> list[tuple[str, float, int, int, float, float]]:
    labels_of = getattr(reference, "labels", None)
    vectors_of = getattr(reference, "vectors", None)
    if labels_of is None or vectors_of is None:
        raise LabelsError("the reference index must give labels() and vectors()")
    votes: dict[str, float] = {}
    voted: dict[str, list[npt.NDArray[np.int64]]] = {}
    used = 0
    for rid in reference.labeled_volumes:
        lab = labels_of(rid, granularity=granularity)
        if lab is None or column not in lab.names or not lab.contains(column):
            continue
        rows = lab.slices_with(column)
        m = archive.search(vectors_of(rid)[rows], k)
        ok = m.informative if m.informative is not None else np.ones(m.scores.shape, bool)
        ids = m.volume_ids[ok]
        slices = m.slice_indices[ok]
        total = max(1, int(ok.sum()))
        for vid in set(ids.tolist()):
            sel = ids == vid
            votes[vid] = votes.get(vid, 0.0) + float(sel.sum()) / total
            voted.setdefault(vid, []).append(slices[sel])
        used += 1
        if used >= exemplars:
            break
    if not used:
        raise StructureNotPresentError(
            f"no labeled reference volume contains {column!r}; nothing to query with"
        )
    best = max(votes.values(), default=0.0)
    out = []
    for vid, v in votes.items():
        if v < 0.25 * best:
            continue
        first, last = matched_span(np.concatenate(voted[vid]), trim=0.1)
        meta = archive.slice_meta(vid)
        pos = {int(s): i for i, s in enumerate(np.asarray(meta["slice_index"]).tolist())}
        z = _positions(meta)
        z_first = float(z[pos[first]]) if first in pos else float("nan")
        z_last = float(z[pos[last]]) if last in pos else float("nan")
        out.append((vid, v / used, first, last, z_first, z_last))
    return out


def _check_same_extractor(archive: object, reference: object) -> None:
    """Both indexes must hold vectors of one extractor (when they record it)."""
    check = getattr(reference, "check_extractor", None)
    config = getattr(archive, "extractor_config", None)
    if callable(check) and config:
        check(config, dim=getattr(archive, "dim", None))


def find(
    archive_index: ArchiveIndex,
    structure: str,
    *,
    reference: LabeledIndex,
    top: int | None = 10,
    method: Method = "annotate",
    k: int = 5,
    exemplars: int = 8,
    annotations: Mapping[str, Annotation] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> Hits:
    """The archive volumes that contain ``structure``, ranked, with localized spans.

    Parameters
    ----------
    archive_index
        Index of the (unlabeled) archive, built with the reference's extractor.
    structure
        A TotalSegmentator v1 class (``"liver"``) or coarse region (``"lung"``).
    reference
        A labeled index (built from a labeled data set).
    top
        Keep the ``top`` best volumes (None: every volume found).
    method
        ``"annotate"`` (default) or ``"exemplar"``; see the module docstring.
    k
        Neighbours per slice (voting labeled neighbours in ``"annotate"``, archive
        neighbours per exemplar slice in ``"exemplar"``).
    exemplars
        Reference volumes used as region queries (``"exemplar"``).
    annotations
        Precomputed :func:`annotate_index` of the archive at the structure's
        granularity (``"annotate"``); computed here when None.
    cache
        The archive's index directory, to keep the annotations in (``"annotate"``,
        when ``annotations`` is None; see :func:`annotate_index`): a second call on the
        same archive, reference and parameters annotates nothing. None: no cache.

    Returns
    -------
    Hits
        Volume level, ``query_id`` = the structure name, ``score`` the confidence
        (annotate) or mean vote share (exemplar), and the localization columns
        ``loc_first``, ``loc_last`` (slice indices) and ``loc_z_first``,
        ``loc_z_last`` (mm).

    Raises
    ------
    UnknownStructureError
        ``structure`` is not a v1 class or coarse region.
    LabelsError
        The reference holds no labeled volume.
    SettingError
        Bad ``top``, ``k``, ``exemplars`` or ``method``.
    ExtractorMismatchError
        The two indexes were built with different extractors.
    IndexFormatError
        ``cache`` is not an index directory.
    """
    if method not in ("annotate", "exemplar"):
        raise SettingError(f"method must be 'annotate' or 'exemplar', got {method!r}")
    for name, value in (("k", k), ("exemplars", exemplars), ("top", 1 if top is None else top)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise SettingError(f"{name} must be an integer >= 1, got {value!r}")
    if not reference.labeled_volumes:
        raise LabelsError("the reference index holds no labeled volume")
    granularity, column = _target(structure)
    _check_same_extractor(archive_index, reference)
    if method == "annotate":
        rows = _by_annotation(archive_index, reference, granularity, column, annotations, k, cache)
    else:
        rows = _by_exemplars(archive_index, reference, granularity, column, k, exemplars)
    rows.sort(key=lambda r: (-r[1], r[0]))
    if top is not None:
        rows = rows[:top]
    return Hits(
        query_id=[column] * len(rows),
        volume_id=[r[0] for r in rows],
        score=[r[1] for r in rows],
        level="volume",
        extra={
            "loc_first": np.array([r[2] for r in rows], np.int64),
            "loc_last": np.array([r[3] for r in rows], np.int64),
            "loc_z_first": np.array([r[4] for r in rows], np.float64),
            "loc_z_last": np.array([r[5] for r in rows], np.float64),
        },
    )
