"""Tables of a benchmark's results: the compact mean ± SD summary over structures.

Examples
--------
>>> import pandas as pd
>>> from cbirlib.evaluation import MEAN_ROW
>>> table = pd.DataFrame({"a": [0.5, 1.0, float("nan")]}, index=["liver", "lung", "brain"])
>>> table.loc[MEAN_ROW] = table.mean()
>>> summary_table({"coarse/volume/recall@1": table}).to_dict("index")
{('coarse', 'volume', 'recall@1'): {'a': '.750 ± .354'}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cbirlib.evaluation import MEAN_ROW, format_table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["summary_table"]


def summary_table(tables: Mapping[str, pd.DataFrame], *, digits: int = 3) -> pd.DataFrame:
    """``"mean ± SD"`` over structures: one row per (level, mode, metric), one column per system.

    Parameters
    ----------
    tables
        :func:`~cbirlib.benchmarking.benchmark`'s result: ``"<level>/<mode>/<metric>"``
        -> a per-class table with a :data:`~cbirlib.evaluation.MEAN_ROW` row; the
        ``"summary"`` entry is skipped.
    digits
        Decimals of the formatted values.

    Returns
    -------
    pandas.DataFrame
        Strings like ``.863 ± .107``, indexed by a ``(level, mode, metric)``
        MultiIndex. Structures that no query contains (all-NaN rows) are left out of the
        mean and SD.
    """
    import pandas as pd

    rows = {}
    for key, table in tables.items():
        if key == "summary":
            continue
        level, mode, metric = key.split("/", 2)
        classes = table.drop(index=MEAN_ROW, errors="ignore").dropna(how="all")
        formatted = format_table(pd.concat([classes, table.loc[[MEAN_ROW]]]), digits=digits)
        rows[(level, mode, metric)] = formatted.loc[MEAN_ROW]
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index = pd.MultiIndex.from_tuples(list(rows), names=["level", "mode", "metric"])
    return summary
