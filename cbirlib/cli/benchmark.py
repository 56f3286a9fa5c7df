"""``cbirlib benchmark`` (old name ``evaluate``): the study's per-class tables on a data set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_modality_option,
    extractor_options,
    modality_setting,
    parse_extractor_opt,
)
from cbirlib.cli._output import PROG, show_progress, write
from cbirlib.datasets.folders import check_split_root

__all__ = ["COMMAND", "MODES", "run"]

MODES = ("slice", "volume", "region", "localized")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib benchmark``: the study protocol, printed as a summary."""
    from cbirlib.benchmarking import benchmark
    from cbirlib.tables import summary_table
    from cbirlib.weights import parse_weights_options

    if args.command == "evaluate":
        sys.stderr.write(
            f"{PROG}: note: `{PROG} evaluate` is now `{PROG} benchmark`; the old name "
            "will be removed in the next release\n"
        )
    setting = modality_setting(args)
    weights = parse_weights_options(args.weights or [], extractors=args.extractor)
    check_split_root(args.data_dir)
    options = extractor_options(argparse.Namespace(extractor_opt=args.extractor_opt))
    result = benchmark(
        args.data_dir,
        extractors=args.extractor,
        modes=args.modes,
        out_dir=args.out,
        extractor_options=options,
        weights=weights,
        force=args.force_weights,
        modality=setting,
        verbose=show_progress(args),
    )
    write(out, "mean ± SD over structures (structures without a query left out):")
    write(out, summary_table(result).to_string())
    if args.out is not None:
        write(out, f"\nper-structure tables (CSV and Markdown): {Path(args.out) / 'tables'}")
    else:
        write(out, "\npass --out DIR to write the per-structure tables (CSV and Markdown)")
    return 0


def add_arguments(evaluate: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib benchmark``."""
    evaluate.add_argument(
        "data_dir", help="TotalSegmentator-layout root with meta.csv (image_id, split)"
    )
    evaluate.add_argument(
        "--extractor", nargs="+", default=["baseline"], help="extractors (default: baseline)"
    )
    evaluate.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="retrieval modes"
    )
    evaluate.add_argument("--out", help="folder for the indexes and tables (CSV and Markdown)")
    evaluate.add_argument(
        "--weights",
        metavar="NAME=PATH",
        action="append",
        help="weights file of one extractor, repeatable (--weights radimagenet-resnet50=rin.pt "
        "--weights fractaldb-resnet50=fdb.pth); a bare PATH only with one --extractor",
    )
    evaluate.add_argument(
        "--force-weights",
        action="store_true",
        help="allow one weights file for several extractors (normally an error)",
    )
    evaluate.add_argument(
        "--extractor-opt",
        metavar="KEY=VALUE",
        type=parse_extractor_opt,
        action="append",
        help="option of every extractor, repeatable (VALUE read as JSON when it parses)",
    )
    add_modality_option(evaluate)


COMMAND = Command(
    name="benchmark",
    help="the study's per-class tables on a data set (old name: evaluate)",
    description="Index the non-test subjects of a TotalSegmentator-layout data set with each "
    "extractor, query with the test subjects and report per-structure recall.",
    epilog="""examples:
  cbirlib benchmark /data/Totalsegmentator_dataset --out results
  cbirlib benchmark data --extractor baseline dinov2 --modes volume region --out results
  cbirlib benchmark data --extractor radimagenet-resnet50 fractaldb-resnet50 \
      --weights radimagenet-resnet50=rin-r50.pt --weights fractaldb-resnet50=fdb-r50.pth

DATA_DIR needs meta.csv with columns image_id and split (train/val/test): the test split
queries an index of the other subjects. `cbirlib evaluate` is the old name of this command
(deprecated; it will be removed in the next release).""",
    add_arguments=add_arguments,
    run=run,
    aliases=("evaluate",),
)
