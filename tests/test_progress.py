"""Progress bars: one meaning of ``verbose`` across the API, following tqdm's conventions."""

from __future__ import annotations

import ast
import io
from pathlib import Path
from typing import Any

import pytest

import cbirlib
from cbirlib._progress import progress
from cbirlib.index import build_index
from tests.fakes import FakeExtractor, make_volumes

PACKAGE = Path(cbirlib.__file__).parent


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as an interactive shell's is."""

    def isatty(self) -> bool:
        return True


def _build_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str], **kwargs: Any) -> str:
    build_index(make_volumes(3), FakeExtractor(), tmp_path / "idx", exact=True, **kwargs)
    return capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_tqdm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


def test_default_draws_no_bar_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pytest's captured stderr is not a terminal, like a log file or a SLURM output
    assert "indexing" not in _build_stderr(tmp_path, capsys)


def test_verbose_true_draws_a_bar_and_false_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _build_stderr(tmp_path / "a", capsys, verbose=True)
    assert "indexing" in shown and "3/3" in shown
    assert "indexing" not in _build_stderr(tmp_path / "b", capsys, verbose=False)


def test_default_draws_a_bar_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    build_index(make_volumes(3), FakeExtractor(), tmp_path / "idx", exact=True)
    assert "indexing" in terminal.getvalue()


def test_tqdm_disable_turns_off_the_default_not_an_explicit_true(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    terminal = Terminal()
    list(progress(range(2), verbose=None, desc="quiet", file=terminal))
    assert terminal.getvalue() == ""
    list(progress(range(2), verbose=True, desc="asked", file=terminal))
    assert "asked" in terminal.getvalue()


def _verbose_parameters() -> list[tuple[str, ast.arg, ast.expr | None]]:
    """``(where, argument, default)`` for every ``verbose`` parameter in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
            pairs = [
                *zip(positional, [*defaults, *args.defaults], strict=True),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]
            found += [
                (f"{path.relative_to(PACKAGE)}:{node.name}", arg, default)
                for arg, default in pairs
                if arg.arg == "verbose"
            ]
    return found


def test_every_verbose_parameter_defaults_to_none() -> None:
    params = _verbose_parameters()
    assert len(params) >= 10  # build_index, benchmark, evaluate, retrieve, embed, ...
    wrong = [
        where
        for where, arg, default in params
        if default is not None and not (isinstance(default, ast.Constant) and default.value is None)
    ]
    assert wrong == []
    # the public ones accept None: `bool | None`
    narrow = [
        where
        for where, arg, _ in params
        if not where.rsplit(":", 1)[1].startswith("_")
        and "None" not in ast.unparse(arg.annotation or ast.Constant(None))
    ]
    assert narrow == []
