"""``cbirlib index``: embed and index a folder of volumes (resumed when it exists)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_extractor_options,
    add_modality_option,
    add_nan_fill_option,
    create_extractor,
    extractor_options,
    modality_setting,
)
from cbirlib.cli._output import PROG, plural, show_progress, write
from cbirlib.datasets.folders import discover_volumes
from cbirlib.errors import IndexFormatError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.extractor import Extractor
    from cbirlib.index import BaseIndex
    from cbirlib.index.milvus import MilvusIndex  # lazy: hnswlib (keeps the CLI start cheap)
    from cbirlib.volume import Volume

__all__ = ["COMMAND", "run"]


def _indexed_count(path: Path) -> int:
    """Volumes in the index at ``path`` (0 when there is none or it is unreadable; cheap)."""
    from cbirlib.index import read_meta  # lazy: hnswlib (keeps the CLI start cheap)

    try:
        return read_meta(path).n_volumes
    except (IndexFormatError, OSError):
        return 0


def _drop_build_stopped(record: logging.LogRecord) -> bool:
    """A log filter: the library's "build stopped" warning, which this command says itself."""
    return not str(record.msg).startswith("build %s")


def _load_weights(extractor: Extractor) -> None:
    """Build the model (and so load its weights) before any volume is read."""
    from cbirlib.extractor import SliceExtractor  # lazy: torch (keeps the CLI start cheap)

    if isinstance(extractor, SliceExtractor):
        extractor.model  # noqa: B018 - built on first access: a missing file fails here


def _check_backend(args: argparse.Namespace) -> None:
    """Option clashes of ``--backend``, ``--uri`` and ``--ray``, before any work."""
    if args.uri is not None and args.backend != "milvus":
        raise UsageError("--uri needs --backend milvus")
    if args.collection is not None and args.backend != "milvus":
        raise UsageError("--collection needs --backend milvus")
    if args.ray is not None and args.backend == "milvus":
        raise UsageError("--ray builds a SliceIndex or ExactIndex; use --backend hnsw or exact")


def _build(
    args: argparse.Namespace,
    items: list[tuple[str, Callable[[], Volume]]],
    extractor: Extractor,
    index_dir: Path,
) -> BaseIndex | MilvusIndex:
    """Build with the backend and engine the options name."""
    # lazy: hnswlib (keeps the CLI start cheap)
    from cbirlib.index import build_index, build_milvus_index

    verbose = show_progress(args)
    if args.backend == "milvus":
        return build_milvus_index(
            items,
            extractor,
            index_dir,
            uri=args.uri,
            collection=args.collection or "cbirlib",
            verbose=verbose,
            resume=args.resume,
            root=args.data_dir,
        )
    exact = args.backend == "exact"
    if args.ray is not None:
        # lazy: hnswlib, and Ray when used (keeps the CLI start cheap)
        from cbirlib.distributed import build_index_ray

        return build_index_ray(
            items,
            args.extractor,
            index_dir,
            extractor_options=extractor_options(args),
            address=args.ray or None,
            exact=exact,
            resume=args.resume,
            verbose=verbose,
            root=args.data_dir,
        )
    return build_index(
        items,
        extractor,
        index_dir,
        exact=exact,
        verbose=verbose,
        resume=args.resume,
        root=args.data_dir,
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib index``: embed the volumes under ``args.data_dir`` into an index."""
    from cbirlib.index import check_resumable  # lazy: hnswlib (keeps the CLI start cheap)

    _check_backend(args)
    milvus = args.backend == "milvus"
    index_dir = Path(args.index_dir)
    items = discover_volumes(
        args.data_dir,
        modality=modality_setting(args),
        labels=args.labels and not milvus,
        nan_fill=args.nan_fill,
    )
    extractor = create_extractor(args.extractor, extractor_options(args))
    saved_meta = check_resumable(index_dir, extractor) if args.resume and not milvus else None
    before = saved_meta.n_volumes if saved_meta is not None else 0
    _load_weights(extractor)
    write(out, f"indexing {plural(len(items), 'volume')} from {args.data_dir} with {extractor!r}")
    if before:
        ids = {vid for vid, _ in items}
        write(
            out,
            f"resuming {index_dir}: {plural(before, 'volume')} already indexed; those of "
            f"the {len(ids)} found here are skipped (matched by id only: a changed file "
            "keeps its old embeddings; --no-resume rebuilds)",
        )
    build_log = logging.getLogger("cbirlib.index.build")
    build_log.addFilter(_drop_build_stopped)
    try:
        index = _build(args, items, extractor, index_dir)
    except BaseException:
        saved = _indexed_count(index_dir)
        if saved > before:  # a resume would skip work; otherwise there is nothing to resume
            sys.stderr.write(
                f"{PROG}: {saved} of {plural(len(items), 'volume')} saved in {index_dir}; "
                "run the same command to resume\n"
            )
        raise
    finally:
        build_log.removeFilter(_drop_build_stopped)
    from cbirlib.index.milvus import MilvusIndex  # lazy: hnswlib (keeps the CLI start cheap)

    if isinstance(index, MilvusIndex):
        write(
            out,
            f"index: {index_dir} -> Milvus collection {index.collection!r} at {index.uri} "
            f"({plural(index.n_volumes, 'volume')}, {plural(len(index), 'slice')})",
        )
        index.close()
        return 0
    added = max(0, index.n_volumes - before)
    skipped = len(items) - added
    write(
        out,
        f"index: {index_dir} ({plural(index.n_volumes, 'volume')}, "
        f"{plural(len(index), 'slice')}; {added} added, {skipped} already indexed)",
    )
    return 0


def add_arguments(index: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib index``."""
    index.add_argument(
        "data_dir", help="NIfTI files, DICOM series folders or a TotalSegmentator root"
    )
    index.add_argument("index_dir", help="index folder to write (resumed if it exists)")
    index.add_argument("--extractor", default="baseline", help="extractor (default: %(default)s)")
    index.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an existing index (default); --no-resume rebuilds from scratch",
    )
    index.add_argument(
        "--labels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store the masks of a TotalSegmentator-layout root as slice labels, for "
        "`cbirlib annotate` and `find` (default); --no-labels skips reading the masks",
    )
    index.add_argument(
        "--backend",
        choices=("hnsw", "exact", "milvus"),
        default="hnsw",
        help="hnsw: SliceIndex (default); exact: brute force; milvus: a Milvus collection "
        "(Milvus Lite file INDEX_DIR/slices.db, or --uri)",
    )
    index.add_argument(
        "--uri",
        help="with --backend milvus: a Milvus Lite file or a server (http://host:19530; "
        "token from $CBIRLIB_MILVUS_TOKEN)",
    )
    index.add_argument("--collection", help="with --backend milvus: collection name (cbirlib)")
    index.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="embed on a Ray cluster: no ADDRESS starts a local one, 'auto' joins the "
        "running one (needs the cbirlib[ray] extra)",
    )
    add_extractor_options(index)
    add_modality_option(index)
    add_nan_fill_option(index)


COMMAND = Command(
    name="index",
    help="embed and index a folder of volumes",
    description="Embed every axial slice of the volumes under DATA_DIR and write (or resume) "
    "an index in INDEX_DIR.",
    epilog="""examples:
  cbirlib index /data/Totalsegmentator_dataset idx
  cbirlib index scans/ idx --extractor radimagenet-resnet50 --weights /models/rin-r50.pt
  cbirlib index scans/ idx --extractor baseline --extractor-opt bins=8 --no-resume
  cbirlib index scans/ idx --ray auto              # embed on the running Ray cluster
  cbirlib index scans/ idx --backend milvus --uri http://milvus:19530

An existing INDEX_DIR is resumed: volumes whose id is already in it are skipped (matched
by id only, so a changed file keeps its old embeddings; --no-resume rebuilds). A DICOM
folder with several series gives one volume per series (<folder>/series-1, ...).""",
    add_arguments=add_arguments,
    run=run,
)
