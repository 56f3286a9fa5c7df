"""``cbirlib benchmark --baseline``: deltas and paired p-values, through the real entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbirlib.cli import main
from cbirlib.datasets import make_phantoms

ranx = pytest.importorskip("ranx")
pytestmark = pytest.mark.filterwarnings("ignore:.*unsafe cast:Warning")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    make_phantoms(root, 8, shape=(48, 48), seed=0)
    return root


def test_baseline_adds_deltas_and_p_values_to_the_printed_and_csv_tables(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    argv = ["benchmark", str(data), "--modes", "volume", "--out", str(out), "--quiet"]
    assert main([*argv, "--baseline", "baseline", "--correction", "holm"]) == 0
    text = capsys.readouterr().out
    assert "against baseline 'baseline'" in text and "holm-corrected" in text
    printed = [ln for ln in text.splitlines() if "baseline + MaxSim" in ln and " volume " in ln]
    # coarse and fine x recall@1,3,5,10, AP and nDCG@10
    assert len(printed) == 2 * 6 and all(
        ln.split()[:2] in (["coarse", "volume"], ["fine", "volume"]) for ln in printed
    )

    table = pd.read_csv(out / "tables" / "significance.csv")
    assert len(table) == len(printed) and set(table.system) == {"baseline + MaxSim"}
    for name in ("n", "baseline", "value", "delta", "p_value", "p_corrected"):
        assert pd.api.types.is_numeric_dtype(table[name]), name  # numbers, not strings
    assert table.significant.dtype == bool
    for row in table.itertuples():
        stem = f"{row.level}_{row.mode}_{row.metric.replace('@', '_at_')}"
        classes = pd.read_csv(out / "tables" / f"{stem}.csv", index_col="structure")
        mean = classes.loc["mean"]
        # the delta is the difference of the two systems' means over the structures
        assert row.baseline == pytest.approx(mean["baseline"], abs=1e-12)
        assert row.value == pytest.approx(mean["baseline + MaxSim"], abs=1e-12)
        assert row.delta == pytest.approx(row.value - row.baseline, abs=1e-12)
        paired = classes.drop(index=["mean", "sd"])[["baseline", "baseline + MaxSim"]].dropna()
        assert row.n == len(paired)
        a, b = (paired[c].to_numpy(dtype=float) for c in paired.columns)
        if np.array_equal(a, b):
            assert row.p_value == 1.0 and not row.significant
            continue
        expected, _ = ranx.statistical_tests.paired_student_t_test(a, b)
        assert row.p_value == pytest.approx(expected, rel=1e-9)
    for (_lv, _mode), group in table.groupby(["level", "mode"]):
        # Holm: never below the raw p-value, never above Bonferroni's
        m = group.p_value.notna().sum()
        assert (group.p_corrected >= group.p_value - 1e-15).all()
        assert (group.p_corrected <= np.minimum(1, group.p_value * m) + 1e-15).all()


def test_an_unknown_baseline_is_refused_before_any_work(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    argv = ["benchmark", str(data), "--out", str(out), "--baseline", "dinov2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--baseline 'dinov2' is not a system of this run" in err
    assert "'baseline + MaxSim'" in err
    assert not out.exists()
