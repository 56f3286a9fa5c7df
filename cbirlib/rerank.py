"""Late-interaction (ColBERT / C-MIR style MaxSim) re-ranking of candidate volumes.

For a query Q with slice embeddings q_1..q_m and a candidate volume V with stored slice
embeddings s_1..s_n::

    score(Q, V) = (1/m) * sum_t max_i <q_t, s_i>

All candidates of a query are scored together: the query slices are multiplied with the
candidates' stacked vectors in a few large matrix products (blocks of at most 64 MiB of
similarities), and each candidate's best match per query slice is read from its columns
of the product (its maximum and the position of that maximum). Blank candidate slices
are left out by setting their columns to ``-inf``, without copying any vectors. Float32
throughout with NumPy; a torch path (float32, float16 or bfloat16, on the CPU or a CUDA
device) computes the same in lower precision, within :data:`TOLERANCE`.

Examples
--------
>>> import numpy as np
>>> from cbirlib.rerank import maxsim_scores
>>> q = np.eye(2, dtype=np.float32)               # two query slices
>>> s = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
>>> scores, arg = maxsim_scores(q, s, np.array([0, 2, 3]))  # candidates: rows 0-1, row 2
>>> scores.tolist(), arg.tolist()
([1.0, 0.5], [[0, 0], [1, 0]])
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt

from cbirlib._progress import progress
from cbirlib.errors import ExtractorError, PipelineError, SettingError, SliceIndexError
from cbirlib.hits import Hits
from cbirlib.pipeline import SearchContext, Stage, StageLevel

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "TOLERANCE", "MaxSimMatch", "MaxSimRerank", "maxsim_match", "maxsim_scores"]

logger = logging.getLogger(__name__)

#: Number types of the torch path (the NumPy path is float32).
DTYPES = ("float32", "float16", "bfloat16")

#: Largest difference, per number type, of a score or a best-match similarity from the
#: float32 NumPy result, for unit vectors: rounding both inputs and the product to a
#: ``u``-precise type (``u = 2**-11`` for float16, ``2**-8`` for bfloat16) moves a
#: cosine by at most ``3 u``. float32: another BLAS summing in another order.
TOLERANCE: dict[str, float] = {"float32": 1e-5, "float16": 3 * 2.0**-11, "bfloat16": 3 * 2.0**-8}

_BLOCK_BYTES = 64 * 2**20  # similarities held at once (NumPy float32, or torch's type)


class MaxSimMatch(NamedTuple):
    """MaxSim of one query against ``c`` candidates (:func:`maxsim_match`)."""

    #: ``(c,)`` float64, the mean over query slices of the best similarity.
    scores: npt.NDArray[np.float64]
    #: ``(m, c)`` int64, for each query slice the row (within the candidate, 0-based, in
    #: the candidate's own rows, skipped ones counted) of its best match; first on ties.
    argmax: npt.NDArray[np.int64]
    #: ``(m, c)`` float32, the similarity of that best match.
    similarity: npt.NDArray[np.float32]


def maxsim_scores(
    queries: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """MaxSim scores of one query against several candidates, vectorised.

    Parameters
    ----------
    queries
        ``(m, dim)`` query-slice embeddings.
    vectors
        ``(n, dim)`` stored slice embeddings of all candidates, concatenated.
    offsets
        ``(c + 1,)`` row offsets: candidate ``j`` owns rows ``offsets[j]:offsets[j+1]``
        (each non-empty).

    Returns
    -------
    scores
        ``(c,)`` float64, ``mean_t max_i <q_t, s_i>`` per candidate.
    argmax
        ``(m, c)`` int64, for each query slice the row (within the candidate, 0-based) of
        its best-matching candidate slice (first one on ties).

    See Also
    --------
    maxsim_match : the same with the best similarities, skipped rows and a torch path.
    """
    match = maxsim_match(queries, vectors, offsets)
    return match.scores, match.argmax


def maxsim_match(
    queries: npt.ArrayLike,
    vectors: npt.ArrayLike,
    offsets: npt.ArrayLike,
    *,
    keep: npt.ArrayLike | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> MaxSimMatch:
    """Best match of every query slice in every candidate, and the MaxSim scores.

    Parameters
    ----------
    queries
        ``(m, dim)`` query-slice embeddings (unit vectors for :data:`TOLERANCE` to hold).
    vectors
        ``(n, dim)`` stored slice embeddings of all candidates, concatenated (used in
        place when float32 and C-contiguous, else converted once).
    offsets
        ``(c + 1,)`` row offsets: candidate ``j`` owns rows ``offsets[j]:offsets[j+1]``.
    keep
        Optional ``(n,)`` bool: rows with ``False`` take no part (blank slices). Every
        candidate needs at least one kept row.
    device
        ``None`` (default): NumPy, float32. A torch device (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ...): torch on that device, in ``dtype``.
    dtype
        Number type of the torch path, one of :data:`DTYPES`; ``None``: float32 on the
        CPU, float16 elsewhere. Ignored (must be None or ``"float32"``) without a device.

    Returns
    -------
    MaxSimMatch
        Scores, argmax rows and best similarities. With float16/bfloat16 they are within
        :data:`TOLERANCE` of the float32 result, and an argmax row may be another row
        whose float32 similarity is within twice that of the best.

    Raises
    ------
    SliceIndexError
        A candidate without (kept) rows, or shapes that do not fit together.
    SettingError
        An unknown ``dtype``, or a ``dtype`` other than float32 without a device.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    off = np.asarray(offsets, dtype=np.int64)
    _check_dtype(dtype)
    if device is None and dtype not in (None, "float32"):
        raise SettingError(f"dtype={dtype!r} needs a torch device (device='cpu' or 'cuda')")
    if q.ndim != 2 or v.ndim != 2 or q.shape[1] != v.shape[1]:
        raise SliceIndexError(
            f"MaxSim needs (m, dim) queries and (n, dim) vectors, got {q.shape} and {v.shape}"
        )
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(v):
        raise SliceIndexError(f"MaxSim offsets must run from 0 to {len(v)}, got {off.tolist()}")
    lengths = np.diff(off)
    if (lengths <= 0).any():
        raise SliceIndexError(
            f"MaxSim candidates {np.flatnonzero(lengths <= 0).tolist()} have no stored vectors"
        )
    blank = _blank_rows(keep, off)
    if device is None:
        best, arg = _numpy_best(q, v, off, blank)
    else:
        best, arg = _torch_best(q, v, off, blank, device, dtype)
    # best, arg: (c, m); the mean runs over each row (one candidate) in float64
    scores = best.mean(axis=1, dtype=np.float64) if len(q) else np.full(len(best), np.nan)
    return MaxSimMatch(scores, arg.T, best.T)


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise SettingError(f"unknown MaxSim dtype {dtype!r}; valid: {', '.join(DTYPES)}")


def _blank_rows(
    keep: npt.ArrayLike | None, offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Sorted row numbers that take no part (empty when all do)."""
    if keep is None:
        return np.zeros(0, np.int64)
    mask = np.asarray(keep, dtype=bool)
    if mask.shape != (int(offsets[-1]),):
        raise SliceIndexError(f"MaxSim keep flags of shape {mask.shape} for {offsets[-1]} rows")
    kept = np.add.reduceat(mask, offsets[:-1]) if len(offsets) > 1 else np.zeros(0, np.int64)
    if (kept == 0).any():
        raise SliceIndexError(
            f"MaxSim candidates {np.flatnonzero(kept == 0).tolist()} have no kept rows"
        )
    return np.flatnonzero(~mask).astype(np.int64)


def _blocks(offsets: npt.NDArray[np.int64], m: int, itemsize: int) -> Iterator[tuple[int, int]]:
    """Candidate ranges ``[j, k)`` whose similarities fit the block budget (>= 1 each)."""
    columns = max(1, _BLOCK_BYTES // (itemsize * max(m, 1)))
    c = len(offsets) - 1
    j = 0
    while j < c:
        k = int(np.searchsorted(offsets, offsets[j] + columns, side="right")) - 1
        k = min(max(k, j + 1), c)
        yield j, k
        j = k


def _numpy_best(
    q: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    off: npt.NDArray[np.int64],
    blank: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(c, m)`` best similarity and its row, one product per block of candidates."""
    m, c = len(q), len(off) - 1
    best = np.empty((c, m), np.float32)
    arg = np.empty((c, m), np.int64)
    if m == 0 or c == 0:
        return best, arg
    rows = np.arange(m)
    buffer = np.empty(0, np.float32)
    for j, k in _blocks(off, m, 4):
        a, b = int(off[j]), int(off[k])
        if buffer.size < m * (b - a):
            buffer = np.empty(m * (b - a), np.float32)  # reused: no page faults per block
        sims = np.matmul(q, v[a:b].T, out=buffer[: m * (b - a)].reshape(m, b - a))
        lo, hi = np.searchsorted(blank, [a, b])
        if hi > lo:
            sims[:, blank[lo:hi] - a] = -np.inf
        for i in range(j, k):  # per candidate: one argmax over its columns, in place
            seg = sims[:, off[i] - a : off[i + 1] - a]
            pos = seg.argmax(axis=1)
            arg[i] = pos
            best[i] = seg[rows, pos]
    return best, arg


def _torch_best(
    q: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    off: npt.NDArray[np.int64],
    blank: npt.NDArray[np.int64],
    device: str,
    dtype: str | None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """As :func:`_numpy_best`, on torch: a product per block, then one max over a padded view.

    Each candidate's columns are gathered into a ``(m, candidates, longest)`` view, the
    short ones padded with copies of their last column (which cannot win a tie: the
    maximum's first position is taken), and reduced with one ``max``.
    """
    import torch  # lazy: keeps import cbirlib cheap

    dev = _torch_device(device)
    kind = dtype or ("float32" if dev.type == "cpu" else "float16")
    tdtype: torch.dtype = getattr(torch, kind)
    m, c = len(q), len(off) - 1
    best = np.empty((c, m), np.float32)
    arg = np.empty((c, m), np.int64)
    if m == 0 or c == 0:
        return best, arg
    with torch.inference_mode():
        tq = _tensor(q).to(dev, tdtype)
        for j, k in _blocks(off, m, tdtype.itemsize):
            a, b = int(off[j]), int(off[k])
            tv = _tensor(v[a:b]).to(dev, tdtype)
            sims = tq @ tv.T  # (m, b - a)
            lo, hi = np.searchsorted(blank, [a, b])
            if hi > lo:
                sims[:, torch.from_numpy(blank[lo:hi] - a).to(dev)] = -torch.inf
            starts = off[j:k] - a
            lengths = np.diff(off[j : k + 1])
            steps = np.arange(int(lengths.max()))
            cols = starts[:, None] + np.minimum(steps[None, :], lengths[:, None] - 1)
            values, pos = sims[:, torch.from_numpy(cols).to(dev)].max(dim=2)  # (m, k - j)
            best[j:k] = values.T.float().cpu().numpy()
            arg[j:k] = pos.T.cpu().numpy()
    return best, arg


def _tensor(array: npt.NDArray[np.float32]) -> torch.Tensor:
    """A tensor sharing ``array``'s memory, also when it is read-only (never written)."""
    import torch  # lazy: keeps import cbirlib cheap

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        return torch.from_numpy(array)


def _torch_device(device: str) -> torch.device:
    """A usable torch device, or a :class:`SettingError` naming the setting."""
    from cbirlib.extractor import resolve_device  # lazy: torch

    try:
        return resolve_device(device)
    except ExtractorError as exc:
        raise SettingError(f"MaxSimRerank(device={device!r}): {exc}") from None


@dataclass(frozen=True, repr=False)
class MaxSimRerank(Stage):
    """Re-rank the ``top`` best candidate volumes of every query by MaxSim.

    Parameters
    ----------
    top
        Number of candidates per query to re-rank (by their current rank).
        **Candidates beyond ``top`` are dropped**: their first-stage scores (vote counts)
        are not comparable with MaxSim scores. Use a larger ``top`` to keep more.
    keep_blank
        ``False`` (default): blank slices take no part, neither query slices (the
        flags :class:`~cbirlib.search.SliceSearch` leaves in the context) nor candidate
        slices (the index's ``slice_meta(...)["informative"]``), so ``m`` counts the
        informative query slices only. A query or candidate with no informative slice
        at all is scored on all its slices. ``True``: every slice takes part.
    device
        Where the similarities are computed. ``None`` (default): on torch on the
        extractor's device when that is a CUDA device (``SearchContext.device``, set by
        :class:`~cbirlib.search.SliceSearch`), else with NumPy in float32. A torch device
        name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``): torch there.
    dtype
        Number type of the torch path: ``"float32"``, ``"float16"`` or ``"bfloat16"``;
        ``None``: float32 on the CPU, float16 on a GPU (unit vectors keep cosines in
        [-1, 1], where float16's 11 significant bits beat bfloat16's 8). Given without
        ``device``, torch runs on the extractor's CUDA device or the CPU. Scores and
        match similarities are then within :data:`TOLERANCE` of the float32 ones.

    Notes
    -----
    Output: volume-level hits ordered by MaxSim score (ties: earlier rank first) with extra
    column ``prior_rank`` (rank before re-ranking); other extra columns are carried along.
    For each ``(query_id, volume_id)`` the database slice that best matches each query
    slice goes to ``context.evidence["maxsim"]`` (slice indices in the candidate's own
    numbering, one per query slice taking part) and its similarity to
    ``context.evidence["maxsim_similarity"]`` (float64, one per query slice taking part;
    robust localization drops query slices whose best match is poor).

    All candidates of a query are scored with :func:`maxsim_match`: a few large matrix
    products over the vectors the index returns, no copy of them (see
    ``docs/results/rerank_speed.md`` for its speed against one matrix product).
    """

    top: int = 20
    keep_blank: bool = False
    device: str | None = None
    dtype: str | None = None

    input_level: ClassVar[StageLevel] = "volume"
    output_level: ClassVar[StageLevel] = "volume"
    provides: ClassVar[frozenset[str]] = frozenset({"maxsim", "maxsim_similarity"})

    def __post_init__(self) -> None:
        if not isinstance(self.top, (int, np.integer)) or isinstance(self.top, bool):
            raise PipelineError(f"MaxSimRerank(top=...) needs an integer >= 1, got {self.top!r}")
        if self.top < 1:
            raise PipelineError(f"MaxSimRerank(top=...) needs an integer >= 1, got {self.top!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise SettingError(
                f"MaxSimRerank(dtype={self.dtype!r}): valid: {', '.join(DTYPES)} or None"
            )
        if self.device is not None:
            if not isinstance(self.device, str):
                raise SettingError(
                    f"MaxSimRerank(device=...) needs a device name, got {self.device!r}"
                )
            _torch_device(self.device)

    def backend(self, context: SearchContext) -> tuple[str | None, str]:
        """Where and in which type this stage computes for ``context``.

        Returns
        -------
        tuple
            ``(device, dtype)``: ``device`` None for NumPy (float32), else the torch
            device name; ``dtype`` one of :data:`DTYPES`.
        """
        device = self.device
        if device is None:
            extractor = context.device
            if extractor is not None and extractor.startswith("cuda"):
                return extractor, self.dtype or "float16"
            if self.dtype is None:
                return None, "float32"
            device = "cpu"
        kind = self.dtype or ("float32" if _torch_device(device).type == "cpu" else "float16")
        return device, kind

    def transform(self, hits: Hits, context: SearchContext) -> Hits:
        """Score and re-order the top candidates of every query."""
        index = context.require_index(self)
        device, kind = self.backend(context)
        dtype = kind if device is not None else None
        evidence: dict[tuple[str, str], npt.NDArray[np.int64]] = {}
        context.evidence["maxsim"] = evidence
        best_sims: dict[tuple[str, str], npt.NDArray[np.float64]] = {}
        context.evidence["maxsim_similarity"] = best_sims
        kept = hits.top(int(self.top))
        parts: list[Hits] = []
        bar = progress(
            total=len(kept), desc="MaxSim re-ranking", unit="volume", verbose=context.verbose
        )
        for qid, cand in kept.split_by_query():
            cand = cand.take(np.argsort(cand.rank, kind="stable"))
            q = context.require_embeddings(qid, self)
            vids = [str(v) for v in cand.volume_id]
            vectors, offsets = index.vectors_for(vids)
            metas = [index.slice_meta(vid) for vid in vids]
            slice_ids = [np.asarray(m["slice_index"], dtype=np.int64) for m in metas]
            keep = None
            if not self.keep_blank:
                q = q[_usable(context.informative.get(qid), len(q))]
                rows = [
                    _usable(m.get("informative"), len(i))
                    for m, i in zip(metas, slice_ids, strict=True)
                ]
                if not all(r.all() for r in rows):
                    keep = np.concatenate(rows)
            match = maxsim_match(q, vectors, offsets, keep=keep, device=device, dtype=dtype)
            for j, vid in enumerate(vids):
                evidence[(qid, vid)] = slice_ids[j][match.argmax[:, j]]
                best_sims[(qid, vid)] = match.similarity[:, j].astype(np.float64)
            scores = match.scores
            order = np.argsort(-scores, kind="stable")
            parts.append(
                Hits(
                    query_id=cand.query_id[order],
                    volume_id=cand.volume_id[order],
                    score=scores[order],
                    level="volume",
                    extra={
                        **{k: v[order] for k, v in cand.extra.items() if k != "prior_rank"},
                        "prior_rank": cand.rank[order],
                    },
                )
            )
            bar.update(len(cand))
        bar.close()
        if not parts:
            return Hits.empty("volume", extra=(*hits.extra, "prior_rank"))
        logger.debug("MaxSim re-ranked %d candidates of %d queries", len(kept), len(parts))
        return Hits.concat(parts)

    def __repr__(self) -> str:
        blank = ", keep_blank=True" if self.keep_blank else ""
        device = f", device={self.device!r}" if self.device is not None else ""
        dtype = f", dtype={self.dtype!r}" if self.dtype is not None else ""
        return f"MaxSimRerank(top={self.top}{blank}{device}{dtype})"


def _usable(flags: npt.ArrayLike | None, n: int) -> npt.NDArray[np.bool_]:
    """The rows that take part: the informative ones, or all when none (or no flags)."""
    if flags is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(flags, dtype=bool)
    if mask.shape != (n,):
        raise PipelineError(f"informative flags of shape {mask.shape} for {n} slices")
    return mask if mask.any() else np.ones(n, dtype=bool)
