"""The ``cbirlib`` command and its sub-commands (``demo``, ``index``, ``query``, ``info``, ...).

This package holds :func:`main` and :func:`build_parser`; each sub-command is a module
(:mod:`~cbirlib.cli.demo`, :mod:`~cbirlib.cli.index`, :mod:`~cbirlib.cli.query`,
:mod:`~cbirlib.cli.info`, :mod:`~cbirlib.cli.rm`, :mod:`~cbirlib.cli.benchmark`,
:mod:`~cbirlib.cli.extractors`, :mod:`~cbirlib.cli.plugins`) that parses its options,
calls the library and prints.
Progress bars follow tqdm's conventions (``--quiet``, ``TQDM_DISABLE``, off when stderr
is not a terminal); log messages are written above them, never into them. Errors are
one line on stderr (``cbirlib: error: ...``), in the command line's spelling of options,
and a non-zero exit status (1 for a failed command, 2 for bad arguments, 130 when
interrupted); ``--debug`` (before or after the sub-command) shows debug logging and the
traceback.

Examples
--------
>>> from cbirlib.cli import build_parser
>>> args = build_parser().parse_args(["query", "idx", "scan.nii.gz", "--top", "3"])
>>> args.command, args.top, args.structure
('query', 3, None)
>>> build_parser().parse_args(["index", "d", "i", "--extractor-opt", "bins=8"]).extractor_opt
[('bins', 8)]
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

from cbirlib._version import __version__
from cbirlib.cli import (
    annotate,
    benchmark,
    demo,
    extractors,
    find,
    index,
    info,
    plugins,
    query,
    rm,
)
from cbirlib.cli._command import Command
from cbirlib.cli._options import parse_extractor_opt
from cbirlib.cli._output import PROG, cli_syntax
from cbirlib.datasets.folders import discover_volumes
from cbirlib.errors import CbirError, CliError, UsageError

__all__ = ["CliError", "build_parser", "discover_volumes", "main", "parse_extractor_opt"]

#: The sub-commands, in the order of ``cbirlib --help``.
COMMANDS: tuple[Command, ...] = (
    demo.COMMAND,
    index.COMMAND,
    query.COMMAND,
    annotate.COMMAND,
    find.COMMAND,
    info.COMMAND,
    rm.COMMAND,
    benchmark.COMMAND,
    extractors.COMMAND,
    plugins.COMMAND,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cbirlib`` command."""

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a sub-command without --debug keeps the value set before it
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="debug log and traceback"
    )
    common.add_argument(
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Content-based retrieval of 3D medical images (CT/MR).",
        epilog="run `cbirlib COMMAND --help` for the options and examples of a command",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (they are also off when stderr is not a terminal, or "
        "TQDM_DISABLE is set)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command_parser = sub.add_parser(
            command.name,
            aliases=list(command.aliases),
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run)
    return parser


def _setup_logging(debug: bool) -> Callable[[], None]:
    """Send cbirlib's log records to stderr; returns a function that restores the logger."""
    package = logging.getLogger("cbirlib")
    saved = (package.handlers[:], package.level, package.propagate)

    def restore() -> None:
        package.handlers[:], package.level, package.propagate = saved

    level = logging.DEBUG if debug else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False
    return restore


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A Python warning as one ``cbirlib: WARNING: ...`` line, in the CLI's spelling."""
    text = cli_syntax(" ".join(str(message).split()))
    logging.getLogger("cbirlib").warning("%s (%s)", text, category.__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cbirlib`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error, 2 on bad arguments (argparse's
        or a :class:`~cbirlib.errors.UsageError`), 130 when interrupted. Error messages
        name options as the command line spells them (``--weights PATH``, not
        ``weights="..."``; :func:`~cbirlib.cli._output.cli_syntax`).
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or bad arguments (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    restore_logging = _setup_logging(args.debug)
    try:
        # log records go through tqdm.write: above the progress bars, never inside them;
        # Python warnings become one-line log records too
        with (
            logging_redirect_tqdm(loggers=[logging.getLogger("cbirlib")]),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            status: int = args.func(args, sys.stdout)
        return status
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, CbirError | OSError):
            message = str(exc)
        else:
            message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"
        message = " ".join(message.split())  # one line, whatever a dependency wrote
        sys.stderr.write(f"{PROG}: error: {cli_syntax(message)}\n")
        return 2 if isinstance(exc, UsageError) else 1
    finally:
        restore_logging()
