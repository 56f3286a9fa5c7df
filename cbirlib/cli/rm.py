"""``cbirlib rm``: remove volumes from an index, saved atomically."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from cbirlib._text import did_you_mean
from cbirlib.cli._command import Command
from cbirlib.cli._options import load_index
from cbirlib.cli._output import plural, write
from cbirlib.errors import VolumeNotInIndexError

__all__ = ["COMMAND", "run"]


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib rm``: remove ``args.volume_id`` from the index and save it.

    Every id is checked before anything is removed; the index is then saved with
    :meth:`~cbirlib.index.BaseIndex.save`, which replaces the directory atomically (a
    crash leaves the old index or the new one).
    """
    index_dir = Path(args.index_dir)
    index = load_index(index_dir)
    ids = list(dict.fromkeys(args.volume_id))
    missing = [vid for vid in ids if vid not in index]
    if missing:
        hint = did_you_mean(missing[0], index.volume_ids)
        raise VolumeNotInIndexError(
            f"index {str(index_dir)!r} has no volume {missing[0]!r}{hint}; nothing was "
            "removed (`cbirlib info INDEX --volumes` lists the ids)"
        )
    slices = sum(len(index.slice_meta(vid)["slice_index"]) for vid in ids)
    for vid in ids:
        index.remove(vid)
    index.save(index_dir)
    write(
        out,
        f"removed {plural(len(ids), 'volume')} ({plural(slices, 'slice')}) from {index_dir}; "
        f"{plural(index.n_volumes, 'volume')}, {plural(len(index), 'slice')} left",
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib rm``."""
    parser.add_argument("index_dir", help="index folder written by `cbirlib index`")
    parser.add_argument("volume_id", nargs="+", help="ids of the volumes to remove")


COMMAND = Command(
    name="rm",
    help="remove volumes from an index",
    description="Remove the volumes VOLUME_ID ... from the index in INDEX_DIR and save it "
    "in place, atomically. Every id is checked first: an unknown id removes nothing.",
    epilog="""examples:
  cbirlib rm idx s0011
  cbirlib rm idx scans/a scans/b

Re-indexing a changed file: `cbirlib rm INDEX ID`, then `cbirlib index` again (resumed:
only the removed volume is embedded).""",
    add_arguments=add_arguments,
    run=run,
)
