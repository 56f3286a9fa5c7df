"""Settings of the slice indexes (:class:`HnswConfig`), saved in every index's ``meta.json``.

Examples
--------
>>> from cbirlib.index import HnswConfig
>>> HnswConfig(M=16, store_dtype="float16").store_dtype
'float16'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cbirlib.errors import SliceIndexError
from cbirlib.index.store import STORE_DTYPES

__all__ = ["HnswConfig"]

#: A search for ``k`` neighbours keeps at least ``EF_PER_K * k`` candidates
#: (:func:`search_ef`). With ``ef`` just above ``k`` an HNSW search misses many of the
#: ``k`` nearest: on 10^6 synthetic slices (``docs/results/index_scale.md``) recall@100
#: was 0.91 at ef = 128, and 3 % of the region queries' top-10 volumes were wrong;
#: at ef = 256 the top 10 were right, at ef = 512 recall@100 was 0.998.
EF_PER_K = 4


def search_ef(ef: int, k: int) -> int:
    """The ``ef`` a search for ``k`` neighbours uses: ``max(ef, EF_PER_K * k)``.

    Examples
    --------
    >>> search_ef(128, 10), search_ef(128, 100), search_ef(1000, 100)
    (128, 400, 1000)
    """
    return max(int(ef), EF_PER_K * int(k))


@dataclass(frozen=True, kw_only=True)
class HnswConfig:
    """Settings of the slice index.

    Parameters
    ----------
    M
        HNSW graph degree (hnswlib ``M``); larger is more accurate, bigger and slower.
        Each vector costs ``4 * (2 * M + 1) + 4 * dim + 8`` bytes in the graph; the
        default 16 keeps an index at about 1.1x the raw float32 vectors for dim 384
        (1.05x for dim 768), where M=32 costs 1.17x.
    ef_construction
        Candidate list size while building the graph.
    ef_search
        Default candidate list size while searching (``SliceIndex.ef``). A search for
        ``k`` neighbours uses at least ``4 * k`` (:data:`EF_PER_K`), so this value
        governs small ``k``: with the defaults, on 300,000 synthetic slice vectors
        (``benchmarks/index_scale.py``, see ``docs/results/index_benchmark.md``),
        recall@10 is >= 0.998 at about 25x the speed of exact search; a region query's
        ``SliceSearch(k=100)`` searches with ef = 400.
    store_dtype
        ``"float32"`` or ``"float16"``: precision of the stored vectors used for
        re-ranking and exact search. With float32 an HNSW index reads its vectors back
        from the graph file (no second copy on disk).
    deterministic
        Insert vectors into the graph with one thread (default), so that the same
        vectors added in the same order give the same graph, byte for byte, and the
        same search results. hnswlib's multithreaded insertion builds a different graph
        each time. ``False`` inserts with every core, which is faster to build and not
        reproducible. Searches always use every core.

    Examples
    --------
    >>> HnswConfig(M=16).to_dict()["M"]
    16
    >>> HnswConfig.from_dict(HnswConfig().to_dict()) == HnswConfig()
    True
    """

    M: int = 16
    ef_construction: int = 200
    ef_search: int = 128
    store_dtype: str = "float32"
    deterministic: bool = True

    def __post_init__(self) -> None:
        for name, low in (("M", 2), ("ef_construction", 1), ("ef_search", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SliceIndexError(
                    f"HnswConfig.{name} must be an integer >= {low}, got {value!r}"
                )
        if not isinstance(self.deterministic, bool):
            raise SliceIndexError(
                f"HnswConfig.deterministic must be True or False, got {self.deterministic!r}"
            )
        if self.store_dtype not in STORE_DTYPES:
            raise SliceIndexError(
                f"HnswConfig.store_dtype {self.store_dtype!r} is not supported; "
                f"valid: {', '.join(STORE_DTYPES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HnswConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are refused."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise SliceIndexError(
                f"unknown HnswConfig keys {unknown}; valid keys: {', '.join(valid)}"
            )
        return cls(**data)
