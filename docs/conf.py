"""Sphinx configuration for the cbirlib documentation (myst-nb, autodoc, autosummary).

The example notebooks live in ``examples/`` at the repository root (committed without
outputs); they are copied into ``docs/examples/`` at build time and executed by
myst-nb on the phantom data with the built-in baseline extractor.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# the notebook kernels inherit this: no tqdm bar (and no "IProgress not found" warning)
os.environ.setdefault("TQDM_DISABLE", "1")

# --- the example notebooks: copied from examples/ (the single source) -------------------
_nb_dir = DOCS / "examples"
_nb_dir.mkdir(exist_ok=True)
for _old in _nb_dir.glob("*.ipynb"):
    _old.unlink()
for _nb in sorted((ROOT / "examples").glob("*.ipynb")):
    shutil.copy2(_nb, _nb_dir / _nb.name)

import cbirlib  # noqa: E402

project = "cbirlib"
author = "cbirlib developers"
copyright = "cbirlib developers"
release = cbirlib.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = [
    "_build",
    "_templates",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "jupyter_execute",
]

# --- MyST / myst-nb ------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("CBIRLIB_DOCS_EXECUTE", "force")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# notebook outputs shown as Markdown (IPython.display.Markdown) hold GFM tables
nb_render_markdown_format = "gfm"

# --- API reference -------------------------------------------------------------------------
autosummary_generate = True
templates_path = ["_templates"]
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# dataclass fields and numpy aliases produce references Sphinx cannot always resolve
nitpicky = False

# --- HTML -----------------------------------------------------------------------------------
html_theme = "sphinx_rtd_theme"
html_title = f"cbirlib {release}"
html_static_path: list[str] = []

# docs/results/ is filled by the benchmark: an empty folder is not an error ("toc.empty_glob");
# names exported at the top level are also documented on their module page, so a type
# hint naming such a class (``Annotation``) has two targets of one object ("ref.python")
suppress_warnings = ["toc.empty_glob", "ref.python"]
