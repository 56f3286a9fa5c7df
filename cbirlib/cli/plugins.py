"""``cbirlib plugins``: the loaded plugins, their versions and the extractors they register."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._output import write

__all__ = ["COMMAND", "run"]


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib plugins``: print :func:`cbirlib.plugins.list_plugins`."""
    from cbirlib.plugins import list_plugins  # lazy: torch (keeps the CLI start cheap)

    infos = list_plugins()
    if args.json:
        write(out, json.dumps([asdict(info) for info in infos], indent=2))
        return 0
    write(out, f"{'plugin':<16} {'version':<10} {'module':<32} extractors")
    for info in infos:
        version = info.version or "-"
        extractors = ", ".join(info.extractors) or "-"
        write(out, f"{info.name:<16} {version:<10} {info.module:<32} {extractors}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib plugins``."""
    parser.add_argument("--json", action="store_true", help="print JSON")


COMMAND = Command(
    name="plugins",
    help="list the loaded plugins and the extractors they register",
    description="List the loaded cbirlib plugins (entry points of the 'cbirlib' group, "
    "cbirlib's own included): name, version, module and the extractors each registers. "
    "CBIRLIB_PLUGINS selects which ones load.",
    epilog="""examples:
  cbirlib plugins
  cbirlib plugins --json""",
    add_arguments=add_arguments,
    run=run,
)
