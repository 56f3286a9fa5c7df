"""``cbirlib index --backend milvus`` and ``--ray``: the same answers as the default backend.

Real Milvus Lite (a file in tmp_path) and a real local Ray cluster; no mocks, no skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbirlib.cli import main
from cbirlib.index import load_index, open_index
from cbirlib.index.milvus import MilvusIndex
from tests.dicom_helpers import write_nifti
from tests.fakes import start_local_ray

SLICES = {"a": 5, "b": 7, "c": 6}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three distinct CT-like NIfTI volumes, one of them padded with blank air slices."""
    folder = tmp_path_factory.mktemp("backends") / "data"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i, (name, n) in enumerate(SLICES.items()):
        array = rng.normal(-300 + 250 * i, 200, size=(n, 32, 32)).astype(np.float32)
        array[:, 4 + 6 * i : 14 + 6 * i, 6:26] = 400.0 * (i + 1)
        if name == "b":
            array[:2] = -1000.0  # blank padding
        write_nifti(folder / f"{name}.nii.gz", array, spacing=(2.0, 1.0, 1.0))
    return folder


def _answers(index: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    paths = [str(data / f"{name}.nii.gz") for name in SLICES]
    assert main(["query", str(index), *paths, "--jsonl", "--modality", "CT"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _same(got: list[dict], want: list[dict]) -> None:
    assert [a["query"] for a in got] == [a["query"] for a in want] == list(SLICES)
    for g, w in zip(got, want, strict=True):
        assert [r["volume_id"] for r in g["results"]] == [r["volume_id"] for r in w["results"]]
        np.testing.assert_allclose(
            [r["score"] for r in g["results"]], [r["score"] for r in w["results"]], atol=1e-4
        )


def test_milvus_backend_answers_as_the_default_index(data: Path, tmp_path: Path, capsys) -> None:
    hnsw, milvus = tmp_path / "hnsw", tmp_path / "milvus"
    assert main(["index", str(data), str(hnsw), "--quiet", "--modality", "CT"]) == 0
    argv = ["index", str(data), str(milvus), "--backend", "milvus", "--quiet", "--modality", "CT"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Milvus collection 'cbirlib'" in out and "3 volumes" in out
    assert (milvus / "slices.db").exists()
    with open_index(milvus) as index:
        assert isinstance(index, MilvusIndex)
        assert index.volume_ids == sorted(SLICES)
        assert not index.slice_meta("b")["informative"][:2].any()  # blank flags stored
        assert set(index.modalities.values()) == {"CT"}
    _same(_answers(milvus, data, capsys), _answers(hnsw, data, capsys))
    # a rerun resumes: every volume is already in the collection
    assert main(argv) == 0
    with open_index(milvus) as index:
        assert len(index) == sum(SLICES.values())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--uri", "x.db"], "--uri needs --backend milvus"),
        (["--backend", "milvus", "--ray"], "--ray builds a SliceIndex"),
    ],
)
def test_backend_option_clashes_are_usage_errors(
    data: Path, tmp_path: Path, extra: list[str], message: str, capsys
) -> None:
    assert main(["index", str(data), str(tmp_path / "idx"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()


def test_ray_build_from_the_cli_equals_the_default_build(data: Path, tmp_path: Path) -> None:
    import ray

    hnsw, on_ray = tmp_path / "hnsw", tmp_path / "ray"
    assert main(["index", str(data), str(hnsw), "--quiet", "--modality", "CT"]) == 0
    start_local_ray()
    try:
        argv = ["index", str(data), str(on_ray), "--ray", "--quiet", "--modality", "CT"]
        assert main(argv) == 0
    finally:
        ray.shutdown()
    want, got = load_index(hnsw), load_index(on_ray)
    assert got.volume_ids == want.volume_ids
    assert got.sources == want.sources  # results lead back to the files either way
    assert all(source is not None for source in got.sources.values())
    first = want.sources["a"]  # recorded relative to DATA_DIR, as docs/cli.md says
    assert first is not None and first.path == "a.nii.gz" and Path(str(first.root)) == data
    for vid in want.volume_ids:
        np.testing.assert_allclose(got.vectors(vid), want.vectors(vid), atol=1e-5)
        np.testing.assert_array_equal(
            got.slice_meta(vid)["informative"], want.slice_meta(vid)["informative"]
        )
