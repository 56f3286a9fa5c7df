"""``cbirlib query``: the volumes of an index most similar to a query, with spans."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_modality_option,
    canonical_structure,
    chain,
    load_index,
    positive_int,
)
from cbirlib.cli._output import print_results, result_rows, show_progress, write
from cbirlib.datasets.folders import open_volume
from cbirlib.errors import CliError

__all__ = ["COMMAND", "run"]


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib query``: print the volumes most similar to ``args.query``."""
    from cbirlib.plugins import create_extractor
    from cbirlib.search import region_query

    index = load_index(Path(args.index_dir))
    config = index.extractor_config
    if not config or "name" not in config:
        raise CliError(f"index {args.index_dir!r} does not record the extractor it was built with")
    extractor = create_extractor(**config)
    query = open_volume(args.query, series_uid=args.series_uid, modality=args.modality)
    span = None
    structure = None
    if args.structure is not None:
        structure = canonical_structure(args.structure)
        if query.labels is None:
            raise CliError(
                f"--structure needs segmentation masks for {args.query!r}; pass a subject "
                "folder of a TotalSegmentator-layout data set (<subject>/segmentations/)"
            )
        region = region_query(query, structure)
        span = (region.first_slice, region.first_slice + region.n_slices - 1)
        query = region
    hits = chain(extractor, index, top=args.top).retrieve(
        query, verbose=show_progress(args) and not args.json
    )
    rows = result_rows(hits, query.id)
    if args.json:
        payload = {
            "query": query.id,
            "structure": structure,
            "query_span": list(span) if span else None,
            "extractor": config["name"],
            "results": rows,
        }
        write(out, json.dumps(payload, indent=2))
    else:
        where = f" (query slices {span[0]}-{span[1]})" if span else ""
        print_results(out, f"query {query.id}{where}:", rows)
    return 0


def add_arguments(query: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib query``."""
    query.add_argument("index_dir", help="index folder written by `cbirlib index`")
    query.add_argument("query", help="NIfTI file, DICOM folder or TotalSegmentator subject folder")
    query.add_argument(
        "--structure", help="region query around this structure (needs a subject folder)"
    )
    query.add_argument(
        "--series-uid", help="SeriesInstanceUID to read from a DICOM folder with several series"
    )
    query.add_argument("--top", type=positive_int, default=10, help="volumes to return (10)")
    query.add_argument("--json", action="store_true", help="print JSON")
    add_modality_option(query)


COMMAND = Command(
    name="query",
    help="retrieve the volumes most similar to a query",
    description="Retrieve the volumes of an index most similar to QUERY, with the predicted "
    "span of the query's anatomy in each.",
    epilog="""examples:
  cbirlib query idx scan.nii.gz --top 5
  cbirlib query idx /data/Totalsegmentator_dataset/s0011 --structure liver --json

The extractor is re-created from the config the index recorded.""",
    add_arguments=add_arguments,
    run=run,
)
