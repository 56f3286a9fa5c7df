"""``cbirlib extractors``: the registered extractors, their dimension, input and weights."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING, Any, TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._output import cli_syntax, write
from cbirlib.errors import CbirError

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.plugins import ExtractorInfo

__all__ = ["COMMAND", "describe", "run"]

logger = logging.getLogger(__name__)

#: How the table shows ``ExtractorInfo.weights_available`` (None: the plugin did not say).
_WEIGHTS_WORD = {True: "yes", False: "no", None: "unknown"}


def describe(info: ExtractorInfo) -> dict[str, Any]:
    """One extractor as a JSON-ready dict, with its ``dim`` and input size.

    The extractor is created with its default options to read them; its model is not
    built, and no weights are read or downloaded. A family (``timm:``) or an extractor
    that cannot be created without options has ``dim`` and ``input`` None.
    """
    from cbirlib.plugins import create_extractor  # lazy: torch (keeps the CLI start cheap)

    dim = size = channels = None
    if not info.is_family:
        try:
            extractor = create_extractor(info.name)
        except (CbirError, TypeError, ValueError) as exc:
            logger.debug("extractor %r: not created with defaults (%s)", info.name, exc)
        else:
            dim = int(extractor.dim)
            config = getattr(extractor, "input_config", None)
            if config is not None:
                size, channels = list(config.size), int(config.channels)
    return {
        "name": info.name,
        "aliases": list(info.aliases),
        "family": info.is_family,
        "weights": info.weights_available,
        "dim": dim,
        "input": None if size is None else {"size": size, "channels": channels},
        "plugin": info.plugin,
        "description": info.description,
    }


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib extractors``: print the registered extractors (matching a pattern)."""
    from cbirlib.plugins import list_extractors  # lazy: torch (keeps the CLI start cheap)

    rows = [describe(info) for info in list_extractors(args.pattern)]
    if args.json:
        write(out, json.dumps(rows, indent=2))
        return 0
    if not rows:
        write(out, f"no extractor matches {args.pattern!r}; `cbirlib extractors` lists them all")
        return 0
    write(out, f"{'name':<24} {'weights':<8} {'dim':>5} {'input':>11} {'plugin':<12} description")
    for row in rows:
        weights = "family" if row["family"] else _WEIGHTS_WORD[row["weights"]]
        dim = "-" if row["dim"] is None else str(row["dim"])
        shape = row["input"]
        size = (
            "-" if shape is None else f"{shape['channels']}x{shape['size'][0]}x{shape['size'][1]}"
        )
        aliases = f" (aliases: {', '.join(row['aliases'])})" if row["aliases"] else ""
        write(
            out,
            f"{row['name']:<24} {weights:<8} {dim:>5} {size:>11} {row['plugin']:<12} "
            f"{cli_syntax(row['description'])}{aliases}",
        )
    write(
        out,
        "\nweights: 'yes' = present locally or not needed; 'unknown' = the plugin has no "
        "check (try it, or pass --weights); nothing is downloaded to check",
    )
    write(out, "input: channels x height x width of the slices the model sees")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib extractors``."""
    parser.add_argument(
        "pattern",
        nargs="?",
        help="keep names or aliases that match: a glob (res*) or a case-insensitive substring",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


COMMAND = Command(
    name="extractors",
    help="list extractors: weights, dimension, input size",
    description="List the registered extractors, whether their weights are present locally, "
    "their embedding dimension and input size. Nothing is downloaded.",
    epilog="""examples:
  cbirlib extractors
  cbirlib extractors resnet --json""",
    add_arguments=add_arguments,
    run=run,
)
