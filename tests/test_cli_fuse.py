"""``cbirlib query --fuse``: the rankings of several indexes of one archive, fused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cbirlib.cli import main
from cbirlib.cli._options import chain
from cbirlib.datasets import make_phantoms
from cbirlib.datasets.folders import open_volume
from cbirlib.fusion import Fuse
from cbirlib.index import build_index, load_index
from cbirlib.pipeline import Cutoff
from cbirlib.plugins import create_extractor

TOP = 4


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """Two indexes of the same phantoms (two baseline settings) and two query files."""
    root = tmp_path_factory.mktemp("fuse")
    data = make_phantoms(root / "ph", 9, shape=(40, 40), seed=4)
    database = data.subjects[2:]
    dirs = []
    for name, options in (("a", {}), ("b", {"bins": 8, "grid": 4})):
        ex = create_extractor("baseline", **options)
        sources = [(s, lambda s=s: data.load(s, labels=False)) for s in database]
        build_index(sources, ex, root / name, verbose=False, labels=False)
        dirs.append(root / name)
    return dirs[0], dirs[1], [data.image_path(s) for s in data.subjects[:2]]


def _python_fusion(dirs: list[Path], query: Path, method: str) -> Any:
    """What the CLI should print, computed with the Python API."""
    chains = []
    for d in dirs:
        index = load_index(d)
        assert index.extractor_config is not None
        chains.append(chain(create_extractor(**index.extractor_config), index, top=TOP))
    return (Fuse(*chains, method=method) >> Cutoff(TOP)).retrieve(open_volume(query))


@pytest.mark.parametrize("method", ["rrf", "combsum"])
def test_query_fuse_prints_the_fused_ranking(
    indexes: tuple[Path, Path, list[Path]], method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, queries = indexes
    argv = ["query", str(a), str(queries[0]), "--fuse", str(b), "--top", str(TOP), "--json"]
    assert main([*argv, "--fusion", method, "--quiet"]) == 0
    answer = json.loads(capsys.readouterr().out)
    expected = _python_fusion([a, b], queries[0], method).ranked()
    assert answer["score"] == method and answer["extractor"] == "baseline+baseline"
    got = answer["results"]
    assert [r["volume_id"] for r in got] == expected.volume_id.tolist()
    assert [r["score"] for r in got] == pytest.approx(expected.score.tolist(), abs=1e-6)
    assert [r["loc_first"] for r in got] == expected.extra["loc_first"].tolist()
    # every fused volume comes from the rankings of the parts
    parts = []
    for d in (a, b):
        assert main(["query", str(d), str(queries[0]), "--top", str(TOP), "--json"]) == 0
        parts.append([r["volume_id"] for r in json.loads(capsys.readouterr().out)["results"]])
    assert len(got) == TOP and set(r["volume_id"] for r in got) <= set(parts[0]) | set(parts[1])


def test_query_fuse_defaults_to_rrf_for_several_queries(
    indexes: tuple[Path, Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, queries = indexes
    argv = ["query", str(a), *map(str, queries), "--fuse", str(b), "--top", str(TOP), "--jsonl"]
    assert main([*argv, "--quiet"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    for line, query in zip(lines, queries, strict=True):
        expected = _python_fusion([a, b], query, "rrf").ranked()
        assert line["score"] == "rrf"
        assert [r["volume_id"] for r in line["results"]] == expected.volume_id.tolist()
    assert main(["query", str(a), str(queries[0]), "--fuse", str(b), "--top", "2"]) == 0
    assert "reciprocal rank fusion" in capsys.readouterr().out


def test_query_fuse_refuses_bad_combinations(
    indexes: tuple[Path, Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, queries = indexes
    assert main(["query", str(a), str(queries[0]), "--fusion", "rrf"]) != 0
    assert "--fuse" in capsys.readouterr().err
    other = load_index(b)
    other.remove(other.volume_ids[0])
    other.save(tmp_path / "smaller")
    assert main(["query", str(a), str(queries[0]), "--fuse", str(tmp_path / "smaller")]) != 0
    assert "same archive" in capsys.readouterr().err
