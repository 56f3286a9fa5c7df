"""The :class:`Hits` table: the one typed result every retrieval stage takes and returns.

A :class:`Hits` holds equal-length numpy columns, one row per retrieved item:

=========== ============ ==================================================================
column      dtype        meaning
=========== ============ ==================================================================
query_id    object (str) id of the query volume (or region query)
volume_id   object (str) id of the retrieved database volume
slice_index int64        retrieved slice in ``volume_id`` (``-1`` at volume level)
query_slice int64        query slice that produced the row (``-1`` at volume level)
score       float64      similarity; higher is better
rank        int64        1-based rank within its group, by score (descending)
=========== ============ ==================================================================

A **group** is one ``(query_id, query_slice)`` pair: at slice level every query slice
ranks its own neighbours (rank 1 = its nearest database slice); at volume level
``query_slice`` is ``-1`` everywhere, so a group is one query. ``level`` is ``"slice"`` or
``"volume"``. Optional ``extra`` columns (same length) carry stage-specific data, for
example the localization columns ``loc_first``, ``loc_last`` (slice indices, inclusive)
and ``loc_z_first``, ``loc_z_last`` (mm) written by :class:`cbirlib.localize.Localize`.

Examples
--------
>>> from cbirlib.hits import Hits
>>> hits = Hits(query_id=["q", "q", "r"], volume_id=["a", "b", "a"],
...             score=[0.2, 0.9, 0.5], level="volume")
>>> hits.rank.tolist()
[2, 1, 1]
>>> hits.ranked().volume_id.tolist()
['b', 'a', 'a']
>>> len(hits.top(1)), hits.query_ids()
(2, ['q', 'r'])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from cbirlib.errors import HitsError, UnknownColumnError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["LOCALIZATION_COLUMNS", "Hits", "HitsError", "Level", "UnknownColumnError"]

Level = Literal["slice", "volume"]
LEVELS: tuple[str, ...] = ("slice", "volume")
CORE_COLUMNS: tuple[str, ...] = (
    "query_id",
    "volume_id",
    "slice_index",
    "query_slice",
    "score",
    "rank",
)
#: Names of the extra columns written by :class:`cbirlib.localize.Localize`.
LOCALIZATION_COLUMNS: tuple[str, ...] = ("loc_first", "loc_last", "loc_z_first", "loc_z_last")


def _str_column(name: str, values: Any) -> npt.NDArray[np.object_]:
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise HitsError(f"Hits column {name!r} must be 1-D, got shape {arr.shape}")
    bad = [v for v in arr if not isinstance(v, str)]
    if bad:
        raise HitsError(
            f"Hits column {name!r} must hold str, got {type(bad[0]).__name__} {bad[0]!r}"
        )
    return arr


def _num_column(name: str, values: Any, dtype: type[np.generic]) -> npt.NDArray[Any]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise HitsError(f"Hits column {name!r} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.number):
        raise HitsError(f"Hits column {name!r} must be numeric, got dtype {arr.dtype}")
    integral = np.issubdtype(arr.dtype, np.integer)
    if dtype is np.int64 and arr.size and not integral and not np.array_equal(arr, np.round(arr)):
        raise HitsError(f"Hits column {name!r} must hold integers, got {arr[:3]}")
    return arr.astype(dtype, copy=False)


def _first_appearance_codes(values: npt.NDArray[np.object_]) -> tuple[npt.NDArray[np.int64], int]:
    """Integer codes of ``values`` numbered in order of first appearance."""
    if values.size == 0:
        return np.zeros(0, np.int64), 0
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique values by first appearance
    code_of_sorted = np.empty(len(uniq), np.int64)
    code_of_sorted[order] = np.arange(len(uniq))
    return code_of_sorted[inverse.reshape(-1)], len(uniq)


class Hits:
    """Ranked retrieval results as equal-length numpy columns.

    Parameters
    ----------
    query_id, volume_id
        Query and retrieved volume ids (str).
    score
        Similarity of each row; higher is better.
    slice_index, query_slice
        Retrieved and query slice indices; default ``-1`` (not applicable).
    rank
        1-based rank within each ``(query_id, query_slice)`` group. When omitted it is
        computed from ``score`` (descending; ties keep row order).
    level
        ``"slice"`` or ``"volume"``.
    extra
        Further named columns of the same length.

    Raises
    ------
    HitsError
        On columns of different lengths, wrong types, non-finite scores, ranks below 1,
        an unknown level or an extra column that shadows a core column.

    Examples
    --------
    >>> h = Hits(query_id=["q"], volume_id=["a"], score=[1.0], level="volume")
    >>> h.to_pandas().columns.tolist()
    ['query_id', 'volume_id', 'slice_index', 'query_slice', 'score', 'rank']
    """

    __slots__ = (*CORE_COLUMNS, "extra", "level")

    query_id: npt.NDArray[np.object_]
    volume_id: npt.NDArray[np.object_]
    slice_index: npt.NDArray[np.int64]
    query_slice: npt.NDArray[np.int64]
    score: npt.NDArray[np.float64]
    rank: npt.NDArray[np.int64]
    level: Level
    extra: dict[str, npt.NDArray[Any]]

    def __init__(
        self,
        *,
        query_id: npt.ArrayLike,
        volume_id: npt.ArrayLike,
        score: npt.ArrayLike,
        slice_index: npt.ArrayLike | None = None,
        query_slice: npt.ArrayLike | None = None,
        rank: npt.ArrayLike | None = None,
        level: Level = "slice",
        extra: Mapping[str, npt.ArrayLike] | None = None,
    ) -> None:
        if level not in LEVELS:
            raise HitsError(f"unknown Hits level {level!r}; valid: {', '.join(LEVELS)}")
        qid = _str_column("query_id", query_id)
        vid = _str_column("volume_id", volume_id)
        n = len(qid)
        score_col = _num_column("score", score, np.float64)
        cols: dict[str, npt.NDArray[Any]] = {"volume_id": vid, "score": score_col}
        for name, value in (
            ("slice_index", slice_index),
            ("query_slice", query_slice),
            ("rank", rank),
        ):
            cols[name] = _num_column(
                name, np.full(n, -1, np.int64) if value is None else value, np.int64
            )
        extra_cols: dict[str, npt.NDArray[Any]] = {}
        for name, value in dict(extra or {}).items():
            if name in CORE_COLUMNS or name in ("level", "extra"):
                raise HitsError(f"extra column {name!r} shadows a core Hits column")
            arr = np.asarray(value)
            if arr.ndim != 1:
                raise HitsError(f"Hits column {name!r} must be 1-D, got shape {arr.shape}")
            extra_cols[name] = arr
        for name, arr in {**cols, **extra_cols}.items():
            if len(arr) != n:
                raise HitsError(
                    f"Hits column {name!r} has {len(arr)} rows, query_id has {n}; "
                    "all columns must have the same length"
                )
        if not np.isfinite(score_col).all():
            bad = score_col[~np.isfinite(score_col)][:3]
            raise HitsError(f"Hits scores must be finite, got {bad}")
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "query_id", qid)
        for name, arr in cols.items():
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "extra", extra_cols)
        if rank is None:
            object.__setattr__(self, "rank", self._compute_ranks(order=None))
        elif n and cols["rank"].min() < 1:
            raise HitsError(f"Hits ranks must be >= 1, got {int(cols['rank'].min())}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Hits is immutable; cannot set {name!r}")

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def empty(cls, level: Level = "slice", extra: Iterable[str] = ()) -> Hits:
        """A table with no rows (and the named float extra columns, if any)."""
        return cls(
            query_id=np.zeros(0, object),
            volume_id=np.zeros(0, object),
            score=np.zeros(0),
            level=level,
            extra={name: np.zeros(0) for name in extra},
        )

    @classmethod
    def concat(cls, parts: Sequence[Hits]) -> Hits:
        """Stack tables of one level with the same extra columns (ranks are kept).

        Examples
        --------
        >>> a = Hits(query_id=["q"], volume_id=["x"], score=[1.0], level="volume")
        >>> len(Hits.concat([a, a]))
        2
        """
        if not parts:
            raise HitsError("Hits.concat needs at least one table")
        level, names = parts[0].level, set(parts[0].extra)
        for p in parts[1:]:
            if p.level != level:
                raise HitsError(f"cannot concat Hits of levels {level!r} and {p.level!r}")
            if set(p.extra) != names:
                raise HitsError(
                    f"cannot concat Hits with extra columns {sorted(names)} and {sorted(p.extra)}"
                )
        columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in CORE_COLUMNS}
        extra = {name: np.concatenate([p.extra[name] for p in parts]) for name in parts[0].extra}
        return cls(**columns, level=level, extra=extra)

    @classmethod
    def from_pandas(cls, frame: pd.DataFrame, *, level: Level | None = None) -> Hits:
        """Rebuild a table from :meth:`to_pandas` output (other columns become extras).

        ``level`` defaults to ``frame.attrs["level"]``.
        """
        missing = [c for c in ("query_id", "volume_id", "score") if c not in frame.columns]
        if missing:
            raise HitsError(f"DataFrame lacks Hits columns {missing}; has {list(frame.columns)}")
        if level is None:
            level = frame.attrs.get("level", "slice")
        core = {c: frame[c].to_numpy() for c in CORE_COLUMNS if c in frame.columns}
        extra = {str(c): frame[c].to_numpy() for c in frame.columns if c not in CORE_COLUMNS}
        return cls(**core, level=level, extra=extra)

    # -- access -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.query_id)

    @property
    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """All columns by name (core columns first, then extras)."""
        return {**{name: getattr(self, name) for name in CORE_COLUMNS}, **self.extra}

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        """One column by name (core or extra)."""
        columns = self.columns
        if name not in columns:
            raise UnknownColumnError(f"no Hits column {name!r}; columns: {', '.join(columns)}")
        return columns[name]

    def query_ids(self) -> list[str]:
        """Distinct query ids in order of first appearance."""
        codes, n = _first_appearance_codes(self.query_id)
        if not n:
            return []
        first = np.full(n, len(codes), np.int64)
        np.minimum.at(first, codes, np.arange(len(codes)))
        return [str(q) for q in self.query_id[first]]

    # -- row selection ------------------------------------------------------------------

    @classmethod
    def _trusted(
        cls, columns: Mapping[str, npt.NDArray[Any]], level: Level, extra: dict[str, Any]
    ) -> Hits:
        """A table from columns already validated (row subsets of a valid table)."""
        out = object.__new__(cls)
        for name in CORE_COLUMNS:
            object.__setattr__(out, name, columns[name])
        object.__setattr__(out, "level", level)
        object.__setattr__(out, "extra", extra)
        return out

    def take(self, rows: npt.ArrayLike) -> Hits:
        """The rows at integer positions (or a boolean mask) ``rows``, ranks unchanged."""
        idx = np.asarray(rows)
        if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
            if idx.size:
                raise HitsError(f"take() needs integer positions or a mask, got {idx.dtype}")
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or (idx.dtype == bool and len(idx) != len(self)):
            raise HitsError(f"take() needs a 1-D selection of {len(self)} rows, got {idx.shape}")
        return Hits._trusted(
            {name: getattr(self, name)[idx] for name in CORE_COLUMNS},
            self.level,
            {name: col[idx] for name, col in self.extra.items()},
        )

    def split_by_query(self) -> list[tuple[str, Hits]]:
        """``(query_id, rows of that query)`` for every query, in order of first appearance.

        One pass over the table (unlike calling :meth:`for_query` per query).
        """
        codes, n = _first_appearance_codes(self.query_id)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(1, n))
        parts = [self.take(rows) for rows in np.split(order, bounds)] if n else []
        return [(str(p.query_id[0]), p) for p in parts]

    def with_columns(self, **columns: npt.ArrayLike) -> Hits:
        """A copy with extra columns added or replaced."""
        return Hits(
            **{name: getattr(self, name) for name in CORE_COLUMNS},
            level=self.level,
            extra={**self.extra, **{k: np.asarray(v) for k, v in columns.items()}},
        )

    def with_paths(self, index: Any, *, root: str | os.PathLike[str] | None = None) -> Hits:
        """A copy with a ``path`` column: the file or folder each hit volume was read from.

        Taken from the index's recorded sources (``index.sources``, see
        :func:`cbirlib.build_index`): the recorded path under ``root`` (default: the
        data root recorded with it), ``""`` where the index has no source for a volume
        (an index saved before sources were recorded, or a volume added without one).
        :func:`cbirlib.viz.montage` loads the hit volumes from this column when it is
        given no loader.

        Parameters
        ----------
        index
            The index that was searched (anything with a ``sources`` mapping of volume
            id -> :class:`~cbirlib.provenance.Source` or ``None``).
        root
            The data root to resolve relative paths against, when the data moved.

        Examples
        --------
        >>> from cbirlib.provenance import Source
        >>> class Index:
        ...     sources = {"a": Source(path="a/ct.nii.gz", root="/data"), "b": None}
        >>> h = Hits(query_id=["q", "q"], volume_id=["a", "b"], score=[0.9, 0.5], level="volume")
        >>> h.with_paths(Index()).extra["path"].tolist()
        ['/data/a/ct.nii.gz', '']
        >>> h.with_paths(Index(), root="/mnt").extra["path"].tolist()
        ['/mnt/a/ct.nii.gz', '']
        """
        sources: Mapping[str, Any] = getattr(index, "sources", None) or {}
        cache: dict[str, str] = {}
        for vid in dict.fromkeys(self.volume_id.tolist()):
            src = sources.get(vid)
            where = src.resolve(root) if src is not None else None
            cache[vid] = "" if where is None else where.as_posix()
        paths = np.array([cache[v] for v in self.volume_id.tolist()], dtype=object)
        return self.with_columns(path=paths)

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as JSON-ready dicts, under the same column names as everywhere else.

        Core columns first, then the extra columns (``loc_first``, ``loc_last``,
        ``loc_z_first``, ``loc_z_last``, ``path``, ...), as Python ``int``, ``float`` and
        ``str``; a NaN or infinite float becomes ``None`` (JSON has no NaN), as does a
        localization slice of ``-1`` (no span). Rows keep their order (call
        :meth:`ranked` first for rank order).

        Examples
        --------
        >>> h = Hits(query_id=["q"], volume_id=["a"], score=[0.5], level="volume",
        ...          extra={"loc_first": [2], "loc_last": [4], "loc_z_first": [float("nan")]})
        >>> h.to_records()[0]["loc_first"], h.to_records()[0]["loc_z_first"]
        (2, None)
        """
        names = [*CORE_COLUMNS, *self.extra]
        columns = [getattr(self, n) if n in CORE_COLUMNS else self.extra[n] for n in names]
        records: list[dict[str, Any]] = []
        for values in zip(*(c.tolist() for c in columns), strict=True):
            row: dict[str, Any] = {}
            for name, value in zip(names, values, strict=True):
                nan = isinstance(value, float) and not np.isfinite(value)
                no_span = name in ("loc_first", "loc_last") and value == -1
                row[name] = None if nan or no_span else value
            records.append(row)
        return records

    def for_query(self, query_id: str) -> Hits:
        """The rows of one query."""
        return self.take(self.query_id == query_id)

    def top(self, k: int) -> Hits:
        """The rows with ``rank <= k`` in every group."""
        if k < 1:
            raise HitsError(f"top(k) needs k >= 1, got {k}")
        return self.take(self.rank <= k)

    def ranked(self) -> Hits:
        """Rows sorted by group then score (descending), with ranks recomputed.

        Groups keep the order of first appearance of their query and ascending
        ``query_slice``; equal scores keep their current row order.
        """
        order = self._group_order()
        out = self.take(order)
        object.__setattr__(out, "rank", out._compute_ranks(order=np.arange(len(out))))
        return out

    def _group_codes(self) -> npt.NDArray[np.int64]:
        qcode, _ = _first_appearance_codes(self.query_id)
        return qcode

    def _group_order(self) -> npt.NDArray[np.intp]:
        keys = (np.arange(len(self)), -self.score, self.query_slice, self._group_codes())
        return np.lexsort(keys)

    def _compute_ranks(self, order: npt.NDArray[Any] | None) -> npt.NDArray[np.int64]:
        """Ranks by score within groups; ``order`` is the sorted row order if known."""
        n = len(self)
        if order is None:
            order = self._group_order()
        q = self._group_codes()[order]
        s = self.query_slice[order]
        new_group = np.ones(n, bool)
        new_group[1:] = (q[1:] != q[:-1]) | (s[1:] != s[:-1])
        starts = np.flatnonzero(new_group)
        lengths = np.diff(np.append(starts, n))
        pos = np.arange(n) - np.repeat(starts, lengths)
        rank = np.empty(n, np.int64)
        rank[order] = pos + 1
        return rank

    # -- display ---------------------------------------------------------------------------

    def to_pandas(self) -> pd.DataFrame:
        """The table as a pandas DataFrame (``attrs["level"]`` holds the level)."""
        import pandas as pd

        frame = pd.DataFrame(self.columns)
        frame.attrs["level"] = self.level
        return frame

    def __repr__(self, max_rows: int = 5) -> str:
        n = len(self)
        head = (
            f"Hits(level={self.level!r}, rows={n}, queries={len(set(self.query_id.tolist()))}"
            + (f", extra={list(self.extra)}" if self.extra else "")
            + ")"
        )
        lines = [head]
        for i in range(min(n, max_rows)):
            row = (
                f"  {self.query_id[i]!s} q{self.query_slice[i]} -> {self.volume_id[i]!s}"
                f"[{self.slice_index[i]}] score={self.score[i]:.4g} rank={self.rank[i]}"
            )
            lines.append(row)
        if n > max_rows:
            lines.append(f"  ... {n - max_rows} more rows")
        return "\n".join(lines)
