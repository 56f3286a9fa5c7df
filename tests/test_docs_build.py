"""The Sphinx docs: every public name has an API page, and the build has no warning."""

from __future__ import annotations

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
    listed = set(re.findall(r"^\s+cbirlib\.(\w+)\s*$", (DOCS / "api.rst").read_text(), re.M))
    missing = sorted(set(cbirlib._LAZY) - listed)
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


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    pytest.importorskip("myst_nb")
    env = {**os.environ, "CBIRLIB_DOCS_EXECUTE": "off", "HF_HUB_OFFLINE": "1"}
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
