"""One sub-command of ``cbirlib``: its name, help texts, arguments and what it runs.

Each command module (``demo``, ``index``, ...) defines one :class:`Command` named
``COMMAND``; :func:`cbirlib.cli.build_parser` adds them in order.

Examples
--------
>>> import argparse
>>> hello = Command("hello", "say hello", "Say hello.", "example:\\n  cbirlib hello",
...                 lambda parser: None, lambda args, out: 0)
>>> hello.name, hello.aliases
('hello', ())
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Command"]


@dataclass(frozen=True)
class Command:
    """A sub-command of ``cbirlib``.

    Attributes
    ----------
    name
        The sub-command's name (``cbirlib NAME``).
    help
        One line for ``cbirlib --help``.
    description
        The paragraph at the top of ``cbirlib NAME --help``.
    epilog
        Examples and notes at the end of ``cbirlib NAME --help``.
    add_arguments
        Adds the command's arguments to its parser.
    run
        Runs the command with the parsed arguments, printing to ``out``; returns the
        exit status.
    aliases
        Other names of the command (kept for compatibility).
    """

    name: str
    help: str
    description: str
    epilog: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, TextIO], int]
    aliases: tuple[str, ...] = ()
