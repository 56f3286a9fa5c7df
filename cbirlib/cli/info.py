"""``cbirlib info``: what an index holds, read from its ``meta.json`` (no vector is read)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._output import plural, write
from cbirlib.errors import VolumeNotFoundError

__all__ = ["COMMAND", "describe", "run"]


def _size(n_bytes: int) -> str:
    """``"512 B"``, ``"1.5 KiB"``, ``"3.2 MiB"``.

    Examples
    --------
    >>> _size(512), _size(1536), _size(3 * 2**20)
    ('512 B', '1.5 KiB', '3.0 MiB')
    """
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n_bytes} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def describe(path: Path, *, volumes: bool = False) -> dict[str, Any]:
    """What the index at ``path`` holds, as a JSON-ready dict.

    Counts, settings and file sizes come from :func:`cbirlib.index.read_meta`; with
    ``volumes=True`` the index is opened (:func:`cbirlib.index.load_index`) to list each
    volume's id, number of slices and recorded modality, and to count the modalities.
    """
    from cbirlib.index import load_index, read_meta  # lazy: hnswlib (keeps the CLI start cheap)

    if not path.exists():
        raise VolumeNotFoundError(f"index folder {str(path)!r} does not exist")
    meta = read_meta(path)
    files = {name: int(entry["bytes"]) for name, entry in sorted(meta.files.items())}
    info: dict[str, Any] = {
        "path": str(meta.path),
        "kind": meta.kind,
        "format": meta.format,
        "cbirlib_version": meta.cbirlib_version,
        "volumes": meta.n_volumes,
        "slices": meta.n_slices,
        "extractor": meta.extractor_config,
        "dim": meta.dim,
        "ef": meta.ef,
        "config": meta.config.to_dict(),
        "files": files,
        "bytes": sum(files.values()),
    }
    if volumes:
        index = load_index(path)
        info["volume_slices"] = {
            vid: len(index.slice_meta(vid)["slice_index"]) for vid in index.volume_ids
        }
        info["volume_modality"] = index.modalities
        counts: dict[str, int] = {}
        for code in info["volume_modality"].values():
            counts[code] = counts.get(code, 0) + 1
        info["modalities"] = dict(sorted(counts.items()))
    return info


def _print(out: TextIO, info: dict[str, Any]) -> None:
    extractor = info["extractor"] or {}
    name = extractor.get("name", "(not recorded)")
    options = ", ".join(f"{k}={v!r}" for k, v in extractor.items() if k != "name")
    kind = {"hnsw": "HNSW (SliceIndex)", "exact": "exact search (ExactIndex)"}
    version = f" (written by cbirlib {info['cbirlib_version']})" if info["cbirlib_version"] else ""
    write(out, f"index:      {info['path']}")
    write(out, f"kind:       {kind.get(info['kind'], info['kind'])}")
    write(out, f"format:     version {info['format']}{version}")
    write(out, f"volumes:    {info['volumes']}")
    write(out, f"slices:     {info['slices']}")
    write(out, f"extractor:  {name}" + (f" ({options})" if options else ""))
    write(out, f"dimension:  {info['dim']}")
    write(out, f"files:      {plural(len(info['files']), 'file')}, {_size(info['bytes'])}")
    for file, n_bytes in info["files"].items():
        write(out, f"  {file:<20} {_size(n_bytes):>10}")
    if "volume_slices" in info:
        counts = ", ".join(f"{code} {n}" for code, n in info["modalities"].items())
        write(out, f"modalities: {counts or '-'}")
        write(out, f"  {'volume':<30} {'slices':>6}  modality")
        for vid, n in info["volume_slices"].items():
            write(out, f"  {vid:<30} {n:>6}  {info['volume_modality'][vid]}")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib info``: print what the index at ``args.index_dir`` holds."""
    info = describe(Path(args.index_dir), volumes=args.volumes)
    if args.json:
        write(out, json.dumps(info, indent=2))
    else:
        _print(out, info)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cbirlib info``."""
    parser.add_argument("index_dir", help="index folder written by `cbirlib index`")
    parser.add_argument(
        "--volumes",
        action="store_true",
        help="also list every volume with its slices and modality, and count the modalities",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


COMMAND = Command(
    name="info",
    help="what an index holds: volumes, slices, extractor, format, file sizes",
    description="Print what the index in INDEX_DIR holds, from its meta.json (no vector is "
    "read): volumes, slices, the extractor and its settings, the vector dimension, the "
    "format version and the size of each file.",
    epilog="""examples:
  cbirlib info idx
  cbirlib info idx --volumes --json""",
    add_arguments=add_arguments,
    run=run,
)
