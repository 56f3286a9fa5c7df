"""``cbirlib annotate``: the structures an unlabeled scan shows, and where (labeled index)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from cbirlib.annotation import annotate
from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_modality_option,
    add_nan_fill_option,
    load_index,
    modality_setting,
    positive_int,
)
from cbirlib.cli._output import write
from cbirlib.datasets.folders import open_volume
from cbirlib.modality import modality_for
from cbirlib.viz import annotation_figure

__all__ = ["COMMAND", "run"]


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib annotate``: print the structures found in ``args.scan`` with their spans."""
    from cbirlib.plugins import create_extractor  # lazy: torch

    setting = modality_setting(args)
    index = load_index(Path(args.index_dir))
    volume = open_volume(
        args.scan, modality=modality_for(args.scan, setting), nan_fill=args.nan_fill
    )
    config = index.extractor_config or {}
    extractor = create_extractor(**config) if "name" in config else None
    result = annotate(volume, index, extractor=extractor, k=args.k, granularity=args.granularity)
    if args.png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = annotation_figure(volume, result)
        figure.savefig(args.png, dpi=120)
        plt.close(figure)
    if args.json:
        write(out, json.dumps(result.to_dict(), indent=2))
        return 0
    extents = sorted(result.extents.values(), key=lambda e: (e.first, e.structure))
    write(out, f"{volume.id}: {len(extents)} structures found ({args.granularity}, k={args.k})")
    write(out, f"  {'structure':<28} {'slices':>9}  {'z (mm)':>17}  {'confidence':>10}")
    for e in extents:
        mm = f"{e.z_first_mm:.1f} to {e.z_last_mm:.1f}"
        write(
            out, f"  {e.structure:<28} {f'{e.first}-{e.last}':>9}  {mm:>17}  {e.confidence:>10.2f}"
        )
    if args.png is not None:
        write(out, f"picture: {args.png}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib annotate``."""
    parser.add_argument("index_dir", help="a labeled index (built from a labeled data set)")
    parser.add_argument("scan", help="a NIfTI file or DICOM folder to annotate")
    parser.add_argument(
        "--granularity", choices=("fine", "coarse"), default="fine", help="classes (fine)"
    )
    parser.add_argument("-k", type=positive_int, default=5, help="labeled neighbours (5)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--png", metavar="PNG", help="write a coronal picture with the spans")
    add_modality_option(parser)
    add_nan_fill_option(parser)


COMMAND = Command(
    name="annotate",
    help="the structures an unlabeled scan shows, and where (from a labeled index)",
    description="Predict which TotalSegmentator structures each slice of SCAN shows, from "
    "the labels of its nearest slices in a labeled index, and print each structure's "
    "span (slices and mm) with a confidence (cbirlib.annotate).",
    epilog="""examples:
  cbirlib annotate ref_idx scan.nii.gz
  cbirlib annotate ref_idx scan.nii.gz --granularity coarse --png scan.png --json

The index must hold labels: build it with `cbirlib index` from a labeled data set (a
TotalSegmentator-layout root).""",
    add_arguments=add_arguments,
    run=run,
)
