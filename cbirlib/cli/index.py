"""``cbirlib index``: embed and index a folder of volumes (resumed when it exists)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_extractor_options,
    add_modality_option,
    create_extractor,
    extractor_options,
    modality_setting,
)
from cbirlib.cli._output import PROG, plural, show_progress, write
from cbirlib.datasets.folders import discover_volumes

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.extractor import Extractor

__all__ = ["COMMAND", "run"]


def _indexed_count(path: Path) -> int:
    """Volumes in the index at ``path`` (0 when there is none or it is unreadable; cheap)."""
    from cbirlib.errors import IndexFormatError
    from cbirlib.index import read_meta

    try:
        return read_meta(path).n_volumes
    except (IndexFormatError, OSError):
        return 0


def _drop_build_stopped(record: logging.LogRecord) -> bool:
    """A log filter: the library's "build stopped" warning, which this command says itself."""
    return not str(record.msg).startswith("build %s")


def _load_weights(extractor: Extractor) -> None:
    """Build the model (and so load its weights) before any volume is read."""
    from cbirlib.extractor import SliceExtractor

    if isinstance(extractor, SliceExtractor):
        extractor.model  # noqa: B018 - built on first access: a missing file fails here


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib index``: embed the volumes under ``args.data_dir`` into an index."""
    from cbirlib.index import build_index, check_resumable

    index_dir = Path(args.index_dir)
    items = discover_volumes(args.data_dir, modality=modality_setting(args))
    extractor = create_extractor(args.extractor, extractor_options(args))
    saved_meta = check_resumable(index_dir, extractor) if args.resume else None
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
        index = build_index(
            items, extractor, index_dir, verbose=show_progress(args), resume=args.resume
        )
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
    add_extractor_options(index)
    add_modality_option(index)


COMMAND = Command(
    name="index",
    help="embed and index a folder of volumes",
    description="Embed every axial slice of the volumes under DATA_DIR and write (or resume) "
    "an index in INDEX_DIR.",
    epilog="""examples:
  cbirlib index /data/Totalsegmentator_dataset idx
  cbirlib index scans/ idx --extractor radimagenet-resnet50 --weights /models/rin-r50.pt
  cbirlib index scans/ idx --extractor baseline --extractor-opt bins=8 --no-resume

An existing INDEX_DIR is resumed: volumes whose id is already in it are skipped (matched
by id only, so a changed file keeps its old embeddings; --no-resume rebuilds). A DICOM
folder with several series gives one volume per series (<folder>/series-1, ...).""",
    add_arguments=add_arguments,
    run=run,
)
