"""The one default retrieval chain, used by the ``cbirlib`` command and the study harness.

Examples
--------
>>> import numpy as np
>>> from cbirlib.index import ExactIndex
>>> from cbirlib.search import SliceSearch
>>> class Stub:
...     name, dim = "stub", 4
...     def to_config(self): return {"name": "stub"}
>>> default_chain(SliceSearch(Stub(), ExactIndex(4), k=50), top=5)
SliceSearch(k=50) >> CountVotes() >> MaxSimRerank(top=20) >> Localize() >> Cutoff(5)
"""

from __future__ import annotations

from cbirlib.aggregate import NORMALIZATIONS, CountVotes
from cbirlib.localize import Localize
from cbirlib.pipeline import Cutoff, Pipeline, Retriever
from cbirlib.rerank import MaxSimRerank

__all__ = ["default_chain"]


def default_chain(
    search: Retriever,
    *,
    top: int = 10,
    rerank: bool = True,
    candidates: int | None = None,
    localize: bool = True,
    trim: float = 0.0,
    normalize: str = NORMALIZATIONS[0],
) -> Pipeline:
    """The study's chain after a slice search: count votes, MaxSim re-ranking, localization.

    Parameters
    ----------
    search
        The source stage, usually :class:`~cbirlib.search.SliceSearch`.
    top
        Volumes returned per query.
    rerank
        Re-rank the count-vote candidates with MaxSim (late interaction) and localize
        with the MaxSim span; ``False`` keeps the count-vote ranking and localizes with
        the voting slices.
    candidates
        Count-vote candidates that MaxSim re-ranks (default ``max(20, top)``).
    localize
        Add the :class:`~cbirlib.localize.Localize` stage.
    trim
        Fraction of outlying voting slices that vote-based localization drops
        (``rerank=False`` only).
    normalize
        How :class:`~cbirlib.aggregate.CountVotes` makes votes fair to slice thickness
        (``"none"``: the study's raw count).
    """
    if rerank:
        votes = CountVotes(normalize=normalize)
        chain = search >> votes >> MaxSimRerank(top=candidates or max(20, top))
        if localize:
            chain = chain >> Localize()
        return chain >> Cutoff(top)
    chain = search >> CountVotes(normalize=normalize) >> Cutoff(top)
    return chain >> Localize(method="votes", trim=trim) if localize else chain
