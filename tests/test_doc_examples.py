"""The ```python examples of README.md and docs/*.md run as written.

Complete examples run in a fresh namespace; the chain fragments of the concepts page and
the docs' front page run in the namespace the getting-started example leaves (their
``extractor``, ``index`` and query). A block that cannot run here is listed in
:data:`NOT_RUN` with the reason, and the test checks that the list stays accurate.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)

#: (page, block number) -> why it does not run here, and a string the block contains
NOT_RUN = {
    ("weights.md", 0): ("needs a local RadImageNet weights file", "weights="),
    ("weights.md", 1): ("needs the TotalSegmentator data and two weights files", "sha256="),
    ("plugins.md", 2): ("needs an installed plugin package", "import cbirlib_myextractor"),
    ("scaling.md", 2): ("needs a Ray cluster with GPUs and a data set", 'address="auto"'),
    ("scaling.md", 3): ("needs a Ray cluster", "ray://head-node:10001"),
}
#: fragments that run after the getting-started example, in its namespace
AFTER_GETTING_STARTED = {
    ("concepts.md", 0),
    ("concepts.md", 1),
    ("concepts.md", 2),
    ("index.md", 0),
}


def _blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [textwrap.dedent(m.group("body")) for m in FENCE.finditer(text)]


BLOCKS = {(page.name, i): code for page in PAGES for i, code in enumerate(_blocks(page))}


def test_the_examples_are_found_and_compile() -> None:
    assert ("README.md", 0) in BLOCKS and ("getting_started.md", 0) in BLOCKS
    for (page, i), code in BLOCKS.items():
        compile(code, f"{page}[{i}]", "exec")
    for key, (_, marker) in NOT_RUN.items():
        assert marker in BLOCKS[key], f"{key} changed; update NOT_RUN"
    assert set(BLOCKS) >= AFTER_GETTING_STARTED


def _run(key: tuple[str, int], namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(BLOCKS[key], f"{key[0]}[{key[1]}]", "exec"), namespace)
    return namespace


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Examples run in an empty folder, their temporary folders under ``tmp_path``."""
    import tempfile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize(
    "key",
    [k for k in BLOCKS if k not in NOT_RUN and k not in AFTER_GETTING_STARTED],
    ids=lambda k: f"{k[0]}[{k[1]}]",
)
def test_example_runs(key: tuple[str, int], in_tmp: Path, capsys) -> None:
    namespace = _run(key, {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    if key[0] in ("README.md", "getting_started.md"):
        # the examples print ranked volumes with their localized spans
        assert "volume_id" in out and "loc_first" in out and "score" in out
        assert "..." not in out.splitlines()[0]  # no column hidden behind '...'
        assert list(in_tmp.iterdir()), "the example writes into a temporary folder"
        assert not (in_tmp / "my-index").exists()
    if key[0] == "getting_started.md":
        query = namespace["query"]
        for fragment in sorted(AFTER_GETTING_STARTED):
            result = _run(fragment, {**namespace, "query_volume": query})
            hits = result.get("hits")
            if hits is not None:
                assert len(hits) > 0 and query.id not in set(hits.volume_id.tolist())
