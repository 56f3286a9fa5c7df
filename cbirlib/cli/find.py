"""``cbirlib find``: the volumes of an unlabeled archive that show a structure, and where."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import canonical_structure, load_index, positive_int
from cbirlib.cli._output import print_results, result_rows, write

__all__ = ["COMMAND", "run"]


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib find``: rank the archive's volumes that contain ``args.structure``."""
    from cbirlib.finder import find  # lazy: hnswlib (via cbirlib.index)

    structure = canonical_structure(args.structure)
    archive = load_index(Path(args.index_dir))
    reference = load_index(Path(args.reference))
    # the cache lives in the archive's folder (not in a backup a crashed save left)
    usable = (Path(args.index_dir) / "meta.json").is_file()
    cache = args.index_dir if args.cache and usable and args.method == "annotate" else None
    hits = find(
        archive, structure, reference=reference, top=args.top, method=args.method, cache=cache
    )
    rows = result_rows(hits, structure, index=archive)
    if args.json:
        answer = {"structure": structure, "method": args.method, "results": rows}
        write(out, json.dumps(answer, indent=2))
        return 0
    print_results(out, f"volumes showing {structure} ({args.method}):", rows, score=args.method)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib find``."""
    parser.add_argument("index_dir", help="index of the archive to search (no labels needed)")
    parser.add_argument("structure", help="a TotalSegmentator class or coarse region")
    parser.add_argument(
        "--reference", required=True, help="a labeled index built with the same extractor"
    )
    parser.add_argument("--top", type=positive_int, default=10, help="volumes to return (10)")
    parser.add_argument(
        "--method", choices=("annotate", "exemplar"), default="annotate", help="route (annotate)"
    )
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the archive's annotations in INDEX_DIR/annotations/ and reuse them "
        "while the reference and the volumes are unchanged (default); --no-cache: "
        "annotate afresh and write nothing",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


COMMAND = Command(
    name="find",
    help="the archive volumes that show a structure, and where",
    description="Search an index of unlabeled volumes for those that show STRUCTURE, using "
    "a labeled reference index built with the same extractor; each result has the "
    "predicted span (cbirlib.find).",
    epilog="""examples:
  cbirlib find archive_idx liver --reference ref_idx
  cbirlib find archive_idx pancreas --reference ref_idx --top 20 --json

The annotate route annotates every archive volume once; the annotations are kept in
INDEX_DIR/annotations/, so the next find with the same reference is fast.""",
    add_arguments=add_arguments,
    run=run,
)
