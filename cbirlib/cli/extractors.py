"""``cbirlib extractors``: the registered extractors and whether their weights are here."""

from __future__ import annotations

import argparse
from typing import TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._output import write

__all__ = ["COMMAND", "run"]


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib extractors``: print the registered extractors."""
    from cbirlib.plugins import list_extractors

    infos = list_extractors()
    write(out, f"{'name':<24} {'weights':<8} {'plugin':<12} description")
    for info in infos:
        weights = "family" if info.is_family else ("yes" if info.weights_available else "no")
        aliases = f" (aliases: {', '.join(info.aliases)})" if info.aliases else ""
        write(out, f"{info.name:<24} {weights:<8} {info.plugin:<12} {info.description}{aliases}")
    write(out, "\nweights: 'yes' = present locally or not needed; nothing is downloaded to check")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``cbirlib extractors`` takes no arguments."""


COMMAND = Command(
    name="extractors",
    help="list extractors and local weights",
    description="List the registered extractors and whether their weights are present locally.",
    epilog="""example:
  cbirlib extractors""",
    add_arguments=add_arguments,
    run=run,
)
