"""Developer sessions for cbirlib: ``nox -s lint mypy tests plugins examples docs build``.

Every session installs the package in editable mode, so ``nox -R`` (reuse the virtual
environments, skip installs) is fast on a second run. Model hubs are never contacted:
the sessions set ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("cbirlib-*") if (p / "pyproject.toml").exists())
OFFLINE = {"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}

nox.options.sessions = ["lint", "mypy", "tests", "plugins", "examples", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def _plugin_args() -> list[str]:
    return [arg for p in PLUGINS for arg in ("-e", str(p))]


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint and check formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def mypy(session: nox.Session) -> None:
    """Static types: mypy --strict on the package (config in pyproject.toml)."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite with the doctests (plugins installed, so their entry points load)."""
    session.install("-e", ".[test]", *_plugin_args())
    session.run("python", "-m", "pytest", *session.posargs, env=OFFLINE)


@nox.session
def plugins(session: nox.Session) -> None:
    """Each separately installable plugin's own tests."""
    if not PLUGINS:
        session.skip("no plugins/cbirlib-* distributions")
    session.install("-e", ".[test]", *_plugin_args())
    for plugin in PLUGINS:
        tests_dir = plugin / "tests"
        if tests_dir.exists():
            session.run(
                "python", "-m", "pytest", str(tests_dir), "-p", "no:cacheprovider", env=OFFLINE
            )


@nox.session
def examples(session: nox.Session) -> None:
    """Execute the example notebooks (phantom data, baseline extractor)."""
    session.install("-e", ".[test]", *_plugin_args())
    session.run("python", "-m", "pytest", "tests/test_notebooks.py", "-q", env=OFFLINE)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs with warnings as errors (notebooks executed by myst-nb)."""
    session.install("-e", ".[docs,test]", *_plugin_args())
    out = session.posargs[0] if session.posargs else "docs/_build/html"
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", out, env=OFFLINE)


@nox.session
def build(session: nox.Session) -> None:
    """Build the sdist and wheel (hatchling) into dist/."""
    session.install("build")
    session.run("python", "-m", "build", "--outdir", "dist")
