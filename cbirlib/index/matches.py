"""What a slice search returns, and the brute-force kernel that finds it exactly.

:class:`SliceMatches` is the result of every index's ``search`` (SliceIndex, ExactIndex,
MilvusIndex); :func:`exact_search` is the blockwise cosine top-``k`` used by
:class:`~cbirlib.index.ExactIndex` and by an HNSW index's exact fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._typing import F32, I64

__all__ = ["SliceMatches", "exact_search"]


@dataclass(frozen=True)
class SliceMatches:
    """Result of :meth:`SliceIndex.search`: ``k`` nearest slices for each query row.

    All arrays have shape ``(n_queries, k)``; rows are sorted by descending score.
    ``informative`` says whether each matched slice is informative (see
    :mod:`cbirlib.informative`); ``None`` (a backend that does not store the flags)
    means all are.
    """

    volume_ids: npt.NDArray[np.object_]
    slice_indices: I64
    scores: F32
    z_mm: npt.NDArray[np.float64]
    informative: npt.NDArray[np.bool_] | None = None
    #: ``(n_queries, k, 13)`` uint8 packed structure sets of the matched slices
    #: (:func:`cbirlib.labels.pack_labels`), None from a backend without labels.
    labels: npt.NDArray[np.uint8] | None = None
    #: ``(n_queries, k, 13)`` uint8 packed classes the matched slice's volume has labels
    #: for (all zero: an unlabeled volume); None with ``labels``.
    label_known: npt.NDArray[np.uint8] | None = None

    @property
    def k(self) -> int:
        """Number of matches per query."""
        return int(self.scores.shape[1])

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _sorted_topk(scores: F32, labels: I64, k: int) -> tuple[I64, F32]:
    """Per row, the ``k`` best (score descending, label ascending on ties)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        labels = np.take_along_axis(labels, part, axis=1)
    order = np.lexsort((labels, -scores), axis=-1)
    return np.take_along_axis(labels, order, axis=1), np.take_along_axis(scores, order, axis=1)


def exact_search(
    queries: F32,
    rows: npt.NDArray[Any],
    labels: I64,
    k: int,
    *,
    alive: npt.NDArray[np.bool_] | None = None,
    block: int = 65536,
) -> tuple[I64, F32]:
    """Brute-force cosine top-``k`` of unit ``queries`` against unit ``rows``.

    ``rows`` may be float16 (converted block by block); rows where ``alive`` is False
    are skipped. ``k`` must not exceed the number of alive rows.
    """
    best_l = np.zeros((len(queries), 0), np.int64)
    best_s = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(rows), block):
        chunk = np.asarray(rows[start : start + block], dtype=np.float32)
        scores = queries @ chunk.T
        if alive is not None:
            scores[:, ~alive[start : start + block]] = -np.inf
        cand = np.broadcast_to(labels[start : start + block], scores.shape)
        best_l, best_s = _sorted_topk(
            np.concatenate([best_s, scores], axis=1),
            np.concatenate([best_l, cand], axis=1),
            k,
        )
    return best_l, best_s
