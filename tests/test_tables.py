"""The benchmark summary table (cbirlib.tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cbirlib.evaluation import MEAN_ROW
from cbirlib.tables import summary_table


def test_summary_table_leaves_structures_without_queries_out_of_the_mean() -> None:
    table = pd.DataFrame(
        {"a": [0.5, 1.0, np.nan], "b": [0.0, 0.0, np.nan]}, index=["liver", "lung", "brain"]
    )
    table.loc[MEAN_ROW] = table.mean()
    summary = summary_table({"fine/volume/recall@1": table, "summary": pd.DataFrame()})
    assert list(summary.index) == [("fine", "volume", "recall@1")]
    assert list(summary.index.names) == ["level", "mode", "metric"]
    # mean and sample SD of the two structures with a query; brain (all NaN) is left out
    assert summary.loc[("fine", "volume", "recall@1")].tolist() == [".750 ± .354", ".000 ± .000"]
