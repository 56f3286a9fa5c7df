"""``cbirlib query``: the volumes of an index most similar to one or more queries, with spans."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_modality_option,
    add_nan_fill_option,
    canonical_structure,
    chain,
    fraction,
    modality_setting,
    open_search_index,
    positive_int,
)
from cbirlib.cli._output import print_results, result_rows, show_progress, write
from cbirlib.datasets.folders import open_volume
from cbirlib.errors import CliError, UsageError
from cbirlib.fusion import Fuse
from cbirlib.modality import modality_for
from cbirlib.pipeline import Cutoff
from cbirlib.search import region_query
from cbirlib.structures import TOTALSEG_V1_CLASSES
from cbirlib.viz import montage

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.hits import Hits
    from cbirlib.pipeline import Pipeline, Retriever
    from cbirlib.volume import Volume

__all__ = ["COMMAND", "run"]


def _check_options(args: argparse.Namespace) -> None:
    """Refuse option combinations that make no sense, before anything is read."""
    if args.series_uid is not None and len(args.query) > 1:
        raise UsageError("--series-uid picks a series of one DICOM folder: pass one QUERY with it")
    if args.rerank and args.vote_trim:
        raise UsageError("--vote-trim applies to vote-based spans: use it with --no-rerank")
    if args.montage is not None and len(args.query) > 1:
        raise UsageError("--montage draws one query's results: pass one QUERY with it")
    if not args.rerank and args.candidates is not None:
        raise UsageError("--candidates is the number of volumes MaxSim re-ranks: drop --no-rerank")
    if args.fusion is not None and not args.fuse:
        raise UsageError("--fusion says how to fuse the rankings of --fuse INDEX: add --fuse")


def _query_volume(args: argparse.Namespace, path: str) -> tuple[Volume, str | None, Any]:
    """The query read from ``path``: the volume (or its region), structure and span."""
    modality = modality_for(path, modality_setting(args))
    wants_region = args.structure is not None
    query = open_volume(
        path,
        series_uid=args.series_uid,
        modality=modality,
        custom=wants_region,
        nan_fill=args.nan_fill,
    )
    if not wants_region:
        return query, None, None
    names = query.labels.names if query.labels is not None else ()
    classes = set(TOTALSEG_V1_CLASSES)
    structure = canonical_structure(args.structure, [n for n in names if n not in classes])
    if query.labels is None:
        raise CliError(
            f"--structure needs segmentation masks for {path!r}; pass a subject "
            "folder of a TotalSegmentator-layout data set (<subject>/segmentations/)"
        )
    region = region_query(query, structure)
    span = [region.first_slice, region.first_slice + region.n_slices - 1]
    return region, structure, span


def _answer(
    args: argparse.Namespace,
    pipeline: Retriever,
    path: str,
    extractor: str,
    progress: bool,
    index: object,
) -> dict[str, Any]:
    query, structure, span = _query_volume(args, path)
    hits = pipeline.retrieve(query, verbose=progress)
    if args.montage is not None:
        _save_montage(args.montage, query, hits, index, top=args.top, structure=structure)
    score = _score_kind(args)
    return {
        "query": query.id,
        "source": path,
        "structure": structure,
        "query_span": span,
        "extractor": extractor,
        "score": score,
        "results": result_rows(
            hits, query.id, votes=score == "votes", index=index, clip=not args.fuse
        ),
    }


def _score_kind(args: argparse.Namespace) -> str:
    """What the scores printed mean (a key of ``SCORE_MEANINGS``)."""
    if args.fuse:
        return str(args.fusion or "rrf")
    return "maxsim" if args.rerank else "votes"


def _index_chain(args: argparse.Namespace, index_dir: str) -> tuple[Pipeline, Any, str]:
    """The default chain on one index, with its own extractor: (chain, index, name)."""
    from cbirlib.plugins import create_extractor  # lazy: torch

    index = open_search_index(Path(index_dir))
    config = index.extractor_config
    if not config or "name" not in config:
        raise CliError(f"index {index_dir!r} does not record the extractor it was built with")
    pipeline = chain(
        create_extractor(**config),
        index,
        top=args.top,
        k=args.k,
        rerank=args.rerank,
        localize=args.localize,
        candidates=args.candidates,
        trim=args.vote_trim,
    )
    return pipeline, index, str(config["name"])


def _retriever(args: argparse.Namespace) -> tuple[Retriever, Any, str]:
    """The chain on INDEX, or the fusion of the chains on INDEX and every --fuse INDEX."""
    pipeline, index, name = _index_chain(args, args.index_dir)
    if not args.fuse:
        return pipeline, index, name
    chains, names = [pipeline], [name]
    for other_dir in args.fuse:
        other, other_index, other_name = _index_chain(args, other_dir)
        if set(other_index.volume_ids) != set(index.volume_ids):
            raise CliError(
                f"--fuse {other_dir!r} indexes other volumes than {args.index_dir!r}: "
                "fuse indexes of the same archive (built from the same scans)"
            )
        chains.append(other)
        names.append(other_name)
    fused = Fuse(*chains, method=args.fusion or "rrf") >> Cutoff(args.top)
    return fused, index, "+".join(names)


def _save_montage(
    path: str, query: Volume, hits: Hits, index: object, *, top: int, structure: str | None
) -> None:
    """The query beside its best volumes, read from the paths the index recorded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    located = hits.with_paths(index)
    missing = [v for v, p in zip(located.volume_id, located.extra["path"], strict=True) if not p]
    if missing:
        raise CliError(
            f"--montage: the index records no file for {missing[0]!r} (built before "
            "sources were recorded?); rebuild it with `cbirlib index`"
        )
    figure = montage(query, located, top=top, structure=structure)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib query``: print the volumes most similar to each of ``args.query``.

    The index and the extractor are loaded once, then every query is read, retrieved
    and printed in turn (``--jsonl``: one JSON line per query, as soon as it is done).
    With ``--fuse INDEX2`` (repeatable) the same chain runs on each index, with its own
    extractor, and the rankings are fused (:class:`cbirlib.fusion.Fuse`, ``--fusion``).
    """
    _check_options(args)
    modality_setting(args)  # a malformed --modality fails before anything is loaded
    pipeline, index, extractor = _retriever(args)
    progress = show_progress(args) and not (args.json or args.jsonl)
    answers = []
    for n, path in enumerate(args.query):
        answer = _answer(args, pipeline, path, extractor, progress, index)
        if args.jsonl:
            write(out, json.dumps(answer, separators=(",", ":")))
        elif args.json:
            answers.append(answer)
        else:
            span = answer["query_span"]
            where = f" (query slices {span[0]}-{span[1]})" if span else ""
            if n:
                write(out)
            print_results(
                out, f"query {answer['query']}{where}:", answer["results"], score=answer["score"]
            )
    if args.json:
        write(out, json.dumps(answers[0] if len(answers) == 1 else answers, indent=2))
    return 0


def add_arguments(query: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib query``."""
    query.add_argument("index_dir", help="index folder written by `cbirlib index`")
    query.add_argument(
        "query",
        nargs="+",
        help="one or more NIfTI files, DICOM folders or TotalSegmentator subject folders",
    )
    query.add_argument(
        "--structure",
        help="region query around this structure (needs a subject folder): a "
        "TotalSegmentator class, a coarse region, or a custom mask of the subject's "
        "segmentations/ folder (e.g. lesion_1)",
    )
    query.add_argument(
        "--series-uid", help="SeriesInstanceUID to read from a DICOM folder with several series"
    )
    query.add_argument("--top", type=positive_int, default=10, help="volumes to return (10)")
    query.add_argument(
        "--montage",
        metavar="PNG",
        help="write a picture of the query beside its best volumes (read from the files "
        "the index recorded)",
    )
    query.add_argument(
        "-k", type=positive_int, default=100, help="nearest slices per query slice (100)"
    )
    query.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-rank the count-vote candidates with MaxSim (default); --no-rerank: count "
        "votes only, spans from the voting slices",
    )
    query.add_argument(
        "--candidates",
        type=positive_int,
        help="count-vote candidates that MaxSim re-ranks (default: max(20, --top))",
    )
    query.add_argument(
        "--localize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="predict the span of the query's anatomy in each volume (default)",
    )
    query.add_argument(
        "--vote-trim",
        type=fraction,
        default=0.0,
        help="fraction of outlying voting slices left out of a span (--no-rerank only; 0)",
    )
    query.add_argument(
        "--fuse",
        metavar="INDEX",
        action="append",
        default=[],
        help="also search this index of the same archive (e.g. built with another "
        "extractor) and fuse the rankings; repeat for more indexes",
    )
    query.add_argument(
        "--fusion",
        choices=("rrf", "combsum"),
        help="how --fuse combines the rankings: reciprocal rank fusion (rrf, the "
        "default) or min-max normalised score sum (combsum)",
    )
    add_modality_option(query)
    add_nan_fill_option(query)
    formats = query.add_mutually_exclusive_group()
    formats.add_argument(
        "--json", action="store_true", help="print JSON (a list for several queries)"
    )
    formats.add_argument("--jsonl", action="store_true", help="print one JSON line per query")


COMMAND = Command(
    name="query",
    help="retrieve the volumes most similar to one or more queries",
    description="Retrieve the volumes of an index most similar to each QUERY, with the "
    "predicted span of the query's anatomy in each. The index and its extractor are loaded "
    "once for all queries.",
    epilog="""examples:
  cbirlib query idx scan.nii.gz --top 5
  cbirlib query idx /data/Totalsegmentator_dataset/s0011 --structure liver --json
  cbirlib query idx /data/Totalsegmentator_dataset/s0011 --structure lesion_1  # a custom mask
  cbirlib query idx a.nii.gz b.nii.gz c.nii.gz --jsonl --quiet > results.jsonl
  cbirlib query idx scan.nii.gz --no-rerank -k 50 --vote-trim 0.1
  cbirlib query idx_dinov2 scan.nii.gz --fuse idx_baseline --fusion rrf

The extractor is re-created from the config the index recorded. Scores: mean MaxSim
cosine with re-ranking (the default), vote counts with --no-rerank; with --fuse, the
fused score (spans from the index that ranks the volume best).""",
    add_arguments=add_arguments,
    run=run,
)
