"""The Sphinx docs: every public name has an API page, and the build has no warning."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cbirlib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_api_reference_lists_every_public_name() -> None:
    lines = re.findall(r"^\s+cbirlib\.([\w.]+)\s*$", (DOCS / "api.rst").read_text(), re.M)
    # a name on its own line (``cbirlib.Hits``); a submodule may be listed through its
    # members instead (``cbirlib.distributed.ray_sources``)
    listed = set(lines) | {line.split(".")[0] for line in lines if "." in line}
    missing = [
        name
        for name in cbirlib.__all__
        if name != "__version__"
        and not (name in lines or (inspect.ismodule(getattr(cbirlib, name)) and name in listed))
    ]
    assert not missing, f"docs/api.rst lacks {missing}"


def test_every_page_in_a_toctree_exists() -> None:
    index = (DOCS / "index.md").read_text()
    entries = re.findall(r"^([\w/]+)$", index, re.M)
    assert "api" in entries and "method" in entries
    for entry in entries:
        if entry.startswith("examples/"):
            assert (ROOT / "examples" / (entry.split("/", 1)[1] + ".ipynb")).is_file(), entry
        else:
            assert any((DOCS / (entry + ext)).is_file() for ext in (".md", ".rst")), entry


_RAW_TABLE_LINE = re.compile(r"^\s*\|.*\|\s*$", re.M)


def notebook_page_problems(html: str) -> list[str]:
    """What is wrong with one built notebook page: raw Markdown table text, tqdm warnings.

    Parameters
    ----------
    html : str
        The page's HTML.

    Returns
    -------
    list of str
        One line per problem; empty when the page is fine.
    """
    text = re.sub(r"<[^>]+>", "", html)
    problems = [f"raw table line: {m.strip()!r}" for m in _RAW_TABLE_LINE.findall(text)]
    if "IProgress" in html:
        problems.append("tqdm 'IProgress not found' warning")
    return problems


def test_notebook_page_check_catches_raw_tables_and_tqdm_warnings() -> None:
    good = "<table><tr><td>liver</td><td>0.9</td></tr></table>"
    assert notebook_page_problems(good) == []
    raw = "<p>| structure | P@10 |\n|---|---|\n| liver | 0.9 |</p>"
    assert len(notebook_page_problems(raw)) == 3
    tqdm_warn = "<pre>TqdmWarning: IProgress not found. Please update jupyter</pre>"
    assert notebook_page_problems(tqdm_warn) == ["tqdm 'IProgress not found' warning"]


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    pytest.importorskip("myst_nb")
    # the notebooks are executed (conf.py's default), so their outputs are checked too
    env = {**os.environ, "CBIRLIB_DOCS_EXECUTE": "force", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    proc = subprocess.run(
        [*cmd, "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "html" / "generated" / "cbirlib.Hits.html").is_file()
    pages = sorted((tmp_path / "html" / "examples").glob("*.html"))
    assert pages, "no notebook page was built"
    problems = {p.name: notebook_page_problems(p.read_text()) for p in pages}
    assert not any(problems.values()), problems
    assert any("<table" in p.read_text() for p in pages), "no notebook shows a table"
