"""Annotate an unlabeled volume from the labels of its nearest labeled database slices.

Every slice of the volume is embedded and searched in a labeled index (one built with
labels stored, see :meth:`cbirlib.index.SliceIndex.labels`). Each of its ``k`` nearest
labeled slices votes for the structures it contains, weighted by a softmax of the
similarities; the vote shares, smoothed along z, are the per-slice probabilities of
each structure. Per structure, the longest run of slices with probability at least
``threshold`` gives its predicted z extent, and the mean probability over that run is
its confidence. :meth:`Annotation.to_labels` turns the result into
:class:`~cbirlib.labels.SliceLabels`, so region queries and metrics work on annotated
volumes as on labeled ones.

Examples
--------
>>> import tempfile, numpy as np
>>> from cbirlib.datasets import make_phantoms
>>> from cbirlib.index import build_index
>>> from cbirlib.plugins import create_extractor
>>> ds = make_phantoms(tempfile.mkdtemp(), 3, shape=(32, 32))
>>> ex = create_extractor("baseline")
>>> db = build_index([ds.load(s) for s in ds.subjects[1:]], ex,
...                  tempfile.mkdtemp() + "/db", verbose=False)
>>> ann = annotate(ds.load(ds.subjects[0], labels=False), db, extractor=ex,
...                granularity="coarse")
>>> ann.probabilities.shape[1] == len(ann.names)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from cbirlib._typing import F64
from cbirlib.errors import LabelsError, SettingError
from cbirlib.informative import slice_flags
from cbirlib.labels import PACKED_BYTES, SliceLabels
from cbirlib.structures import COARSE_GROUPS, TOTALSEG_V1_CLASSES
from cbirlib.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.index.matches import SliceMatches

__all__ = ["Annotation", "Extent", "LabeledIndex", "annotate", "annotate_embeddings"]

Granularity = Literal["fine", "coarse"]
_N_FINE = len(TOTALSEG_V1_CLASSES)
_COARSE_NAMES: tuple[str, ...] = tuple(sorted(set(COARSE_GROUPS.values())))


class LabeledIndex(Protocol):
    """What :func:`annotate` needs from an index (``SliceIndex``, ``ExactIndex``)."""

    @property
    def labeled_volumes(self) -> list[str]:
        """Ids of the volumes stored with labels."""
        ...

    @property
    def n_labeled_slices(self) -> int:
        """Number of slices of the labeled volumes."""
        ...

    @property
    def extractor_config(self) -> dict[str, Any] | None:
        """Config of the extractor that made the vectors."""
        ...

    def __len__(self) -> int: ...

    def search(self, queries: npt.ArrayLike, k: int) -> SliceMatches:
        """The ``k`` nearest slices of each query vector."""
        ...


class _Embedder(Protocol):
    def extract(self, volume: Volume) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class Extent:
    """Predicted z extent of one structure in an annotated volume.

    ``first`` and ``last`` are slice indices (inclusive); ``z_first_mm`` and
    ``z_last_mm`` their positions; ``confidence`` the mean probability over the span.
    """

    structure: str
    first: int
    last: int
    z_first_mm: float
    z_last_mm: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return {
            "structure": self.structure,
            "first": self.first,
            "last": self.last,
            "z_first_mm": self.z_first_mm,
            "z_last_mm": self.z_last_mm,
            "confidence": self.confidence,
        }


@dataclass(frozen=True, eq=False)
class Annotation:
    """Per-slice structure probabilities of one volume, and per-structure z extents.

    Attributes
    ----------
    volume_id
        The annotated volume.
    names
        Structure names, one per column of ``probabilities`` (v1 classes or coarse
        regions, by ``granularity``).
    probabilities
        ``(n_slices, len(names))`` float64 in ``[0, 1]``.
    z_mm
        Slice positions in mm.
    granularity
        ``"fine"`` or ``"coarse"``.
    threshold
        Probability at and above which a structure is predicted present in a slice.
    extents
        Structure -> :class:`Extent`, for the structures predicted present somewhere,
        in order of their first slice.
    """

    volume_id: str
    names: tuple[str, ...]
    probabilities: F64
    z_mm: F64
    granularity: Granularity
    threshold: float
    extents: Mapping[str, Extent] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.probabilities.shape[0])

    def structures(self) -> list[str]:
        """The structures predicted present, in order of their first slice."""
        return list(self.extents)

    def probability(self, structure: str) -> F64:
        """``(n_slices,)`` probabilities of one structure (name matched as in SliceLabels)."""
        return self.probabilities[:, self.to_labels().column(structure)].copy()

    def to_labels(self, threshold: float | None = None) -> SliceLabels:
        """The predicted presence (``probability >= threshold``) as :class:`SliceLabels`.

        ``threshold`` defaults to the annotation's own.
        """
        t = self.threshold if threshold is None else float(threshold)
        return SliceLabels(self.names, self.probabilities >= t)

    def to_volume(self, volume: Volume) -> Volume:
        """``volume`` carrying the predicted labels (for region queries, evaluation)."""
        return volume.with_labels(self.to_labels())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the volume, granularity and the extents (no probabilities)."""
        return {
            "volume_id": self.volume_id,
            "granularity": self.granularity,
            "n_slices": len(self),
            "threshold": self.threshold,
            "structures": [e.to_dict() for e in self.extents.values()],
        }

    def __repr__(self) -> str:
        return (
            f"Annotation({self.volume_id!r}, n_slices={len(self)}, {self.granularity}, "
            f"{len(self.extents)} structures found)"
        )


def _check_args(k: int, granularity: str, threshold: float, smooth_mm: float) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise SettingError(f"k must be an integer >= 1, got {k!r}")
    if granularity not in ("fine", "coarse"):
        raise SettingError(f"granularity must be 'fine' or 'coarse', got {granularity!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise SettingError(f"threshold must be in (0, 1], got {threshold!r}")
    if not float(smooth_mm) >= 0.0:
        raise SettingError(f"smooth_mm must be >= 0, got {smooth_mm!r}")


def _grouping() -> npt.NDArray[np.bool_]:
    """``(104, n_coarse)`` membership of the v1 classes in the coarse regions."""
    member = np.zeros((_N_FINE, len(_COARSE_NAMES)), bool)
    col = {name: j for j, name in enumerate(_COARSE_NAMES)}
    for i, name in enumerate(TOTALSEG_V1_CLASSES):
        member[i, col[COARSE_GROUPS[name]]] = True
    return member


def _votes(
    matches: SliceMatches, k: int, granularity: Granularity, temperature: float
) -> tuple[F64, npt.NDArray[np.bool_]]:
    """Vote shares ``(n, n_structures)`` over the ``k`` best labeled, informative matches.

    Also returns, per query row, whether any labeled neighbour voted.
    """
    if matches.labels is None or matches.label_known is None:
        raise LabelsError("this index backend stores no slice labels; annotate needs them")
    n, fetched = matches.scores.shape
    bits = matches.labels.reshape(n * fetched, PACKED_BYTES)
    known = matches.label_known.reshape(n * fetched, PACKED_BYTES)
    present = np.unpackbits(bits, axis=1, count=_N_FINE).astype(bool).reshape(n, fetched, _N_FINE)
    covered = np.unpackbits(known, axis=1, count=_N_FINE).astype(bool).reshape(n, fetched, _N_FINE)
    usable = covered.any(axis=2)
    if matches.informative is not None:
        usable &= matches.informative
    # the k best usable neighbours of each row (rows are sorted by descending score)
    usable &= np.cumsum(usable, axis=1) <= k
    scores = np.where(usable, matches.scores.astype(np.float64), -np.inf)
    top = scores.max(axis=1, keepdims=True) if fetched else np.zeros((n, 1))
    with np.errstate(invalid="ignore"):
        weight = np.where(
            usable, np.exp((scores - np.where(np.isfinite(top), top, 0)) / temperature), 0
        )
    if granularity == "coarse":
        member = _grouping()
        weights = member.astype(np.float32)
        present = np.asarray(present.astype(np.float32) @ weights > 0)
        covered = np.asarray(covered.astype(np.float32) @ weights > 0)
    num = np.einsum("nk,nkc->nc", weight, present & covered)
    den = np.einsum("nk,nkc->nc", weight, covered.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return np.asarray(share, np.float64), np.asarray(usable.any(axis=1), bool)


def _smooth(prob: F64, z_mm: F64, sigma_mm: float) -> F64:
    """Gaussian smoothing of each column along z (positions in mm; edges renormalised)."""
    if sigma_mm <= 0 or len(prob) < 2:
        return prob
    d = z_mm[:, None] - z_mm[None, :]
    kernel = np.exp(-0.5 * (d / sigma_mm) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    return np.asarray(kernel @ prob, dtype=np.float64)


def _longest_run(mask: npt.NDArray[np.bool_], weight: F64) -> tuple[int, int] | None:
    """The run of True slices with the largest total ``weight`` (inclusive bounds)."""
    if not mask.any():
        return None
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    starts, stops = edges[0::2], edges[1::2]
    cum = np.concatenate([[0.0], np.cumsum(weight)])
    best = int(np.argmax(cum[stops] - cum[starts]))
    return int(starts[best]), int(stops[best] - 1)


def extents_of(
    names: tuple[str, ...], probabilities: F64, z_mm: F64, threshold: float
) -> dict[str, Extent]:
    """Per structure present somewhere, its :class:`Extent` (ordered by first slice).

    The extent is the run of slices with probability at least ``threshold`` that holds
    the most probability mass; the confidence is the mean probability over it.
    """
    found: list[Extent] = []
    for j, name in enumerate(names):
        p = probabilities[:, j]
        run = _longest_run(p >= threshold, p)
        if run is None:
            continue
        first, last = run
        found.append(
            Extent(
                name,
                first,
                last,
                float(z_mm[first]),
                float(z_mm[last]),
                float(p[first : last + 1].mean()),
            )
        )
    found.sort(key=lambda e: (e.first, e.last, e.structure))
    return {e.structure: e for e in found}


def annotate_embeddings(
    embeddings: npt.ArrayLike,
    index: LabeledIndex,
    *,
    volume_id: str = "query",
    z_mm: npt.ArrayLike | None = None,
    informative: npt.ArrayLike | None = None,
    k: int = 5,
    granularity: Granularity = "fine",
    threshold: float = 0.5,
    smooth_mm: float = 3.0,
    temperature: float = 0.02,
) -> Annotation:
    """:func:`annotate` from precomputed slice embeddings (one row per slice).

    ``z_mm`` defaults to ``0, 1, 2, ...``; ``informative`` (bool per slice, default all
    True) marks blank slices, which get probability 0. The other parameters are those
    of :func:`annotate`.
    """
    _check_args(k, granularity, threshold, smooth_mm)
    if not temperature > 0:
        raise SettingError(f"temperature must be > 0, got {temperature!r}")
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise SettingError(f"embeddings must be a non-empty (n_slices, dim) array, got {emb.shape}")
    n = len(emb)
    z = np.arange(n, dtype=np.float64) if z_mm is None else np.asarray(z_mm, np.float64)
    flags = np.ones(n, bool) if informative is None else np.asarray(informative, bool)
    if z.shape != (n,) or flags.shape != (n,):
        raise SettingError(f"z_mm and informative must have shape ({n},)")
    labeled = index.labeled_volumes
    if not labeled:
        raise LabelsError(
            "the index holds no labeled volume; build it from a labeled data set "
            "(cbirlib.build_index stores labels when the volumes have them)"
        )
    # fetch enough neighbours that k of them are labeled when some volumes are not
    share = max(1, round(len(index) / max(1, index.n_labeled_slices)))
    fetch = min(len(index), k * min(share, 8) + 8)
    matches = index.search(emb, fetch)
    prob, voted = _votes(matches, k, granularity, temperature)
    prob[~(flags & voted)] = 0.0
    prob = _smooth(prob, z, float(smooth_mm))
    prob[~flags] = 0.0
    prob = np.clip(prob, 0.0, 1.0)
    names = TOTALSEG_V1_CLASSES if granularity == "fine" else _COARSE_NAMES
    return Annotation(
        volume_id,
        tuple(names),
        prob,
        z,
        granularity,
        float(threshold),
        extents_of(tuple(names), prob, z, float(threshold)),
    )


def annotate(
    volume: Volume,
    index: LabeledIndex,
    *,
    extractor: _Embedder | None = None,
    k: int = 5,
    granularity: Granularity = "fine",
    threshold: float = 0.5,
    smooth_mm: float = 3.0,
    temperature: float = 0.02,
) -> Annotation:
    """Predict which structures each slice of ``volume`` shows, and their z extents.

    Parameters
    ----------
    volume
        The (unlabeled) volume; its own labels, if any, are ignored.
    index
        A labeled index (built from a labeled data set; unlabeled volumes in it are
        skipped as neighbours).
    extractor
        The extractor the index was built with; default: recreated from the index's
        extractor config (:func:`cbirlib.plugins.create_extractor`).
    k
        Labeled, non-blank neighbours that vote for each slice.
    granularity
        ``"fine"``: the 104 TotalSegmentator v1 classes; ``"coarse"``: the coarse
        regions of :data:`cbirlib.structures.COARSE_GROUPS`.
    threshold
        Probability from which a structure is predicted present in a slice.
    smooth_mm
        Standard deviation, in mm along z, of the Gaussian that smooths the
        probabilities (0: none).
    temperature
        Softmax temperature of the similarity weights (smaller: the nearest
        neighbours count more).

    Returns
    -------
    Annotation
        Per-slice probabilities and per-structure extents;
        :meth:`Annotation.to_labels` gives :class:`~cbirlib.labels.SliceLabels`.

    Raises
    ------
    LabelsError
        The index holds no labeled volume (or its backend stores no labels).
    SettingError
        A bad ``k``, ``granularity``, ``threshold``, ``smooth_mm`` or ``temperature``.
    ExtractorMismatchError
        ``extractor`` is not the one the index was built with (another name or
        dimension; other config differences warn).
    """
    if extractor is None:
        extractor = _extractor_for(index)
    check = getattr(index, "check_extractor", None)
    to_config = getattr(extractor, "to_config", None)
    if callable(check) and callable(to_config):
        check(to_config(), dim=getattr(extractor, "dim", None))

    emb = np.asarray(extractor.extract(volume), dtype=np.float32)
    flags = slice_flags(extractor, volume)
    return annotate_embeddings(
        emb,
        index,
        volume_id=volume.id,
        z_mm=volume.z_positions,
        informative=flags,
        k=k,
        granularity=granularity,
        threshold=threshold,
        smooth_mm=smooth_mm,
        temperature=temperature,
    )


def _extractor_for(index: LabeledIndex) -> _Embedder:
    config = index.extractor_config
    if not config:
        raise SettingError(
            "the index records no extractor config; pass extractor= (the one it was built with)"
        )
    from cbirlib.plugins import create_extractor  # lazy: torch

    return create_extractor(**config)
