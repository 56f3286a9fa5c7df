"""The one-call benchmark on a small phantom data set with the baseline extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbirlib.benchmarking import benchmark, system_name
from cbirlib.datasets import TotalSegmentator, make_phantoms
from cbirlib.errors import CbirError, EvaluationError
from cbirlib.evaluation import MEAN_ROW
from cbirlib.index import SliceIndex
from cbirlib.structures import TOTALSEG_V1_CLASSES, coarse_regions

COUNT, RERANK = system_name("baseline", False), system_name("baseline", True)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    make_phantoms(root, 12, shape=(64, 64), seed=0)
    return root


@pytest.fixture(scope="module")
def run(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    tables = benchmark(phantoms, ["baseline"], out_dir=out, verbose=False)
    return tables, out


def _mean(tables: dict[str, pd.DataFrame], key: str, system: str) -> float:
    return float(tables[key].loc[MEAN_ROW, system])


@pytest.mark.slow
@pytest.mark.parametrize("level", ["coarse", "fine"])
def test_reranking_at_least_as_good_as_count_votes(run: tuple[dict, Path], level: str) -> None:
    tables, _ = run
    keys = [
        *(f"{level}/volume/volume_recall@{k}" for k in (1, 3, 5, 10)),
        f"{level}/region/region_recall",
        f"{level}/localized/localized_recall",
    ]
    for key in keys:
        count, rerank = _mean(tables, key, COUNT), _mean(tables, key, RERANK)
        assert 0.0 <= count <= 1.0 and 0.0 <= rerank <= 1.0, key
        assert rerank >= count - 1e-12, f"{key}: re-ranking {rerank:.3f} < count votes {count:.3f}"


@pytest.mark.slow
def test_localization_ratio_is_reported(run: tuple[dict, Path]) -> None:
    tables, _ = run
    table = tables["coarse/localized/localization_ratio"]
    assert list(table.columns) == [COUNT, RERANK]
    values = table.drop(index=MEAN_ROW).to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    assert finite.size > 0 and ((finite >= 0) & (finite <= 1)).all()
    for system in (COUNT, RERANK):
        assert 0.0 < _mean(tables, "coarse/localized/localization_ratio", system) <= 1.0


@pytest.mark.slow
def test_tables_layout_and_files(run: tuple[dict, Path]) -> None:
    tables, out = run
    table = tables["coarse/slice/slice_recall"]
    assert list(table.index) == [*coarse_regions(), MEAN_ROW]  # 29 rows + mean ± SD
    assert list(table.columns) == ["baseline"]
    fine = tables["fine/volume/volume_recall@1"]
    assert list(fine.index) == [*TOTALSEG_V1_CLASSES, MEAN_ROW]  # 104 rows + mean ± SD
    assert list(fine.columns) == [COUNT, RERANK]
    summary = tables["summary"]
    assert set(summary["mode"]) == {"slice", "volume", "region", "localized"}
    assert set(summary["level"]) == {"coarse", "fine"}
    assert (summary["n_classes"] > 0).all()
    md = (out / "tables" / "coarse_slice_slice_recall.md").read_text(encoding="utf-8")
    assert md.splitlines()[-1].startswith("| mean ± SD | ")
    assert " ± " in md.splitlines()[-1]
    assert (out / "tables" / "coarse_volume_volume_recall_at_1.csv").is_file()
    assert (out / "tables" / "tables.md").is_file()


@pytest.mark.slow
def test_queries_never_in_database(phantoms: Path, run: tuple[dict, Path]) -> None:
    _, out = run
    dataset = TotalSegmentator(phantoms)
    index = SliceIndex.load(out / "index-baseline")
    test_ids = set(dataset.subjects_in("test"))
    assert test_ids and not test_ids & set(index.volume_ids)
    assert set(index.volume_ids) == set(dataset.subjects) - test_ids


def test_bad_arguments_are_named(phantoms: Path) -> None:
    with pytest.raises(EvaluationError, match="'volumes'"):
        benchmark(phantoms, modes=("volumes",), verbose=False)
    with pytest.raises(CbirError, match="'holdout'"):
        benchmark(phantoms, split="holdout", verbose=False)
    with pytest.raises(EvaluationError, match="'medium'"):
        benchmark(phantoms, level="medium", verbose=False)  # type: ignore[arg-type]
