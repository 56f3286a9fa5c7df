"""``cbirlib benchmark`` (old name ``evaluate``): the study's per-class tables on a data set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_modality_option,
    extractor_options,
    modality_setting,
    parse_extractor_opt,
)
from cbirlib.cli._output import PROG, show_progress, write
from cbirlib.datasets.folders import check_split_root
from cbirlib.errors import UsageError
from cbirlib.weights import parse_weights_options

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["COMMAND", "MODES", "run"]

#: ``cbirlib.benchmarking.MODES``, copied: importing that module would load pandas at
#: the CLI start (``tests/test_benchmark.py`` keeps the two equal).
MODES = ("slice", "volume", "region", "localized")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib benchmark``: the study protocol, printed as a summary."""
    from cbirlib.benchmarking import benchmark  # lazy: pandas
    from cbirlib.tables import summary_table  # lazy: pandas (via cbirlib.evaluation)

    if args.command == "evaluate":
        sys.stderr.write(
            f"{PROG}: note: `{PROG} evaluate` is now `{PROG} benchmark`; the old name "
            "will be removed in the next release\n"
        )
    setting = modality_setting(args)
    weights = parse_weights_options(args.weights or [], extractors=args.extractor)
    check_split_root(args.data_dir)
    if args.baseline is not None:
        _check_baseline(args)
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
    if args.baseline is not None:
        _print_comparison(args, result, out)
    if args.out is not None:
        write(out, f"\nper-structure tables (CSV and Markdown): {Path(args.out) / 'tables'}")
    else:
        write(out, "\npass --out DIR to write the per-structure tables (CSV and Markdown)")
    return 0


def _systems(extractors: list[str]) -> list[str]:
    from cbirlib.benchmarking import system_name  # lazy: pandas

    return [system_name(e, r) for e in extractors for r in (False, True)]


def _check_baseline(args: argparse.Namespace) -> None:
    """The baseline is one of the run's systems, and ranx is installed: before any work."""
    systems = _systems(args.extractor)
    if args.baseline not in systems:
        raise UsageError(
            f"--baseline {args.baseline!r} is not a system of this run; its systems are "
            + ", ".join(repr(s) for s in systems)
        )
    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"--alpha must lie between 0 and 1, got {args.alpha}")
    from cbirlib.significance import paired_p_value  # lazy: pandas (via cbirlib.evaluation)

    paired_p_value([0.0, 1.0], [1.0, 0.0])  # raises OptionalDependencyError without ranx


def _print_comparison(
    args: argparse.Namespace, result: dict[str, pd.DataFrame], out: TextIO
) -> None:
    """Deltas and paired p-values against ``--baseline``, printed (and written as CSV)."""
    import numpy as np

    from cbirlib.significance import compare_tables  # lazy: pandas (via cbirlib.evaluation)

    table = compare_tables(
        result,
        args.baseline,
        stat_test=args.stat_test,
        alpha=args.alpha,
        correction=args.correction,
    )
    corrected = "" if args.correction == "none" else f", {args.correction}-corrected"
    write(
        out,
        f"\nagainst baseline {args.baseline!r}: mean over structures, delta, paired "
        f"{args.stat_test} test over the structures (p-values{corrected}; * p <= {args.alpha:g}):",
    )
    if table.empty:
        write(out, "(no other system to compare)")
    else:
        lines = table[["level", "mode", "metric", "system", "n", "baseline", "value", "delta"]]
        lines = lines.assign(p=table["p_corrected"], sig=np.where(table["significant"], "*", ""))
        write(out, lines.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out is not None:
        folder = Path(args.out) / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "significance.csv"
        table.to_csv(path, index=False)
        write(out, f"deltas and p-values (CSV, numeric): {path}")


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
    evaluate.add_argument(
        "--baseline",
        metavar="SYSTEM",
        help="compare every system with this one ('baseline', 'baseline + MaxSim', ...): "
        "delta and paired p-value per metric (needs ranx: pip install 'cbirlib[stats]')",
    )
    evaluate.add_argument(
        "--stat-test",
        choices=("student", "fisher"),
        default="student",
        help="paired test of --baseline: ranx's t-test or randomization test (default: student)",
    )
    evaluate.add_argument(
        "--alpha", type=float, default=0.05, help="significance level of --baseline (0.05)"
    )
    evaluate.add_argument(
        "--correction",
        choices=("none", "bonferroni", "holm"),
        default="none",
        help="multiple-comparison correction of --baseline, per metric (default: none)",
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
  cbirlib benchmark data --modes volume --baseline baseline --correction holm

DATA_DIR needs meta.csv with columns image_id and split (train/val/test): the test split
queries an index of the other subjects. `cbirlib evaluate` is the old name of this command
(deprecated; it will be removed in the next release).""",
    add_arguments=add_arguments,
    run=run,
    aliases=("evaluate",),
)
