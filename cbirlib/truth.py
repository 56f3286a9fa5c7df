"""Ground truth for evaluation: the labels of database volumes and queries, and regions.

:class:`Truth` is what every metric of :mod:`cbirlib.metrics` reads besides the
:class:`~cbirlib.hits.Hits`: which structures each database volume and each query holds,
slice by slice, and which structure each region query was made for.

Examples
--------
>>> import numpy as np
>>> from cbirlib.labels import SliceLabels
>>> lab = SliceLabels(("liver", "lung"), np.array([[1, 0], [0, 0]], bool))
>>> truth = Truth(database={"a": lab}, queries={"q": lab})
>>> truth.volume_contains("a", "liver"), truth.volume_contains("a", "lung")
(True, False)
>>> sorted(truth.query_structures("q"))
['liver']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cbirlib.errors import EvaluationError
from cbirlib.labels import SliceLabels

__all__ = ["Truth"]


@dataclass(frozen=True)
class Truth:
    """Ground truth for evaluation.

    Parameters
    ----------
    database
        Database volume id -> its :class:`~cbirlib.labels.SliceLabels`.
    queries
        Query id -> the labels of the query *as it was queried* (the slices that
        ``query_slice`` indexes; for a region query, the labels of the slab).
    regions
        Region query id -> the structure the region query was made for. Queries not
        in this mapping are volume queries.
    """

    database: Mapping[str, SliceLabels]
    queries: Mapping[str, SliceLabels] = field(default_factory=dict)
    regions: Mapping[str, str] = field(default_factory=dict)

    def grouped(self, mapping: Mapping[str, str]) -> Truth:
        """The same truth on grouped labels (e.g. fine -> coarse).

        Region structures that are keys of ``mapping`` are mapped too; names that are
        already group names are kept.

        Examples
        --------
        >>> import numpy as np
        >>> from cbirlib.labels import SliceLabels
        >>> lab = SliceLabels(("lung_upper_lobe_left", "liver"), np.ones((2, 2), bool))
        >>> t = Truth({"a": lab}, {"q": lab}, {"q": "lung_upper_lobe_left"})
        >>> g = t.grouped({"lung_upper_lobe_left": "lung", "liver": "liver"})
        >>> g.database["a"].names, dict(g.regions)
        (('liver', 'lung'), {'q': 'lung'})
        """
        return Truth(
            database={k: v.grouped(mapping) for k, v in self.database.items()},
            queries={k: v.grouped(mapping) for k, v in self.queries.items()},
            regions={k: mapping.get(c, c) for k, c in self.regions.items()},
        )

    def query_structures(self, query_id: str) -> frozenset[str]:
        """The structures a query is evaluated on (see the module docstring)."""
        if query_id in self.regions:
            return frozenset({self.regions[query_id]})
        return self.query_labels(query_id).volume_structures()

    def query_labels(self, query_id: str) -> SliceLabels:
        """Labels of a query; raises :class:`EvaluationError` if there are none."""
        try:
            return self.queries[query_id]
        except KeyError:
            raise EvaluationError(
                f"no ground-truth labels for query {query_id!r}; "
                f"known queries: {_preview(self.queries)}"
            ) from None

    def volume_labels(self, volume_id: str) -> SliceLabels:
        """Labels of a database volume; raises :class:`EvaluationError` if unknown."""
        try:
            return self.database[volume_id]
        except KeyError:
            raise EvaluationError(
                f"retrieved volume {volume_id!r} has no ground-truth labels; "
                f"known database volumes: {_preview(self.database)}"
            ) from None

    def volume_contains(self, volume_id: str, structure: str) -> bool:
        """Whether a database volume contains ``structure`` (False if it lacks the name)."""
        cache: dict[str, frozenset[str]] = self.__dict__.setdefault("_structures", {})
        if volume_id not in cache:
            cache[volume_id] = self.volume_labels(volume_id).volume_structures()
        return structure in cache[volume_id]

    def n_relevant(self, structure: str) -> int:
        """Number of database volumes that contain ``structure``."""
        return sum(self.volume_contains(v, structure) for v in self.database)


def _preview(keys: Mapping[str, object], n: int = 8) -> str:
    names = sorted(keys)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return (", ".join(repr(k) for k in names[:n]) + more) if names else "none"
