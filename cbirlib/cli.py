"""The ``cbirlib`` command: ``demo``, ``index``, ``query``, ``evaluate``, ``extractors``.

Every long step shows a progress bar. Errors are one line on stderr
(``cbirlib: error: ...``) and a non-zero exit status (1 for a failed command, 2 for bad
arguments, 130 when interrupted); ``--debug`` shows debug logging and the traceback.

Examples
--------
>>> from cbirlib.cli import build_parser
>>> args = build_parser().parse_args(["query", "idx", "scan.nii.gz", "--top", "3"])
>>> args.command, args.top, args.structure
('query', 3, None)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cbirlib.errors import CbirError, DatasetError, VolumeNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cbirlib.datasets.totalsegmentator import TotalSegmentator
    from cbirlib.extractor import Extractor
    from cbirlib.hits import Hits
    from cbirlib.indexbase import BaseIndex
    from cbirlib.pipeline import Pipeline
    from cbirlib.volume import Volume

__all__ = ["build_parser", "discover_volumes", "main"]

logger = logging.getLogger(__name__)

PROG = "cbirlib"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MODES = ("slice", "volume", "region", "localized")


class CliError(CbirError, ValueError):
    """A command-line request that cannot be carried out (missing input, bad combination)."""


# --- helpers ------------------------------------------------------------------------------


def _write(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def _fmt_float(value: float, spec: str = ".0f") -> str:
    return "-" if not math.isfinite(value) else format(value, spec)


def _chain(extractor: Extractor, index: BaseIndex, *, top: int, k: int = 100) -> Pipeline:
    """The default retrieval chain: slice search, votes, MaxSim re-ranking, localization."""
    from cbirlib.aggregate import CountVotes
    from cbirlib.localize import Localize
    from cbirlib.pipeline import Cutoff
    from cbirlib.rerank import MaxSimRerank
    from cbirlib.search import SliceSearch

    return (
        SliceSearch(extractor, index, k=k)
        >> CountVotes()
        >> MaxSimRerank(top=max(20, top))
        >> Localize()
        >> Cutoff(top)
    )


def _result_rows(hits: Hits, query_id: str, *, offset: int = 0) -> list[dict[str, Any]]:
    """One query's ranked volumes as plain dicts (spans shifted by ``offset`` not applied)."""
    rows = hits.for_query(query_id).ranked()
    extra = rows.extra
    out: list[dict[str, Any]] = []
    for i in range(len(rows)):
        row: dict[str, Any] = {
            "rank": int(rows.rank[i]),
            "volume_id": str(rows.volume_id[i]),
            "score": float(rows.score[i]),
        }
        if "loc_first" in extra and int(extra["loc_first"][i]) >= 0:
            row["span"] = [int(extra["loc_first"][i]), int(extra["loc_last"][i])]
            z = [float(extra["loc_z_first"][i]), float(extra["loc_z_last"][i])]
            row["span_mm"] = z if all(math.isfinite(v) for v in z) else None
        else:
            row["span"] = row["span_mm"] = None
        out.append(row)
    return out


def _print_results(out: TextIO, title: str, rows: list[dict[str, Any]]) -> None:
    _write(out, title)
    _write(out, f"  {'rank':>4}  {'volume':<24} {'score':>8}  {'slices':>11}  {'z range (mm)':>15}")
    for row in rows:
        span = f"{row['span'][0]}-{row['span'][1]}" if row["span"] else "-"
        mm = (
            f"{_fmt_float(row['span_mm'][0])} to {_fmt_float(row['span_mm'][1])}"
            if row["span_mm"]
            else "-"
        )
        _write(
            out,
            f"  {row['rank']:>4}  {row['volume_id']:<24} {row['score']:>8.4f}"
            f"  {span:>11}  {mm:>15}",
        )
    if not rows:
        _write(out, "  (no results)")


def _load_index(path: Path) -> BaseIndex:
    """Load a :class:`SliceIndex` or :class:`ExactIndex`, whichever ``path`` holds."""
    from cbirlib.index import ExactIndex, SliceIndex
    from cbirlib.persist import META_NAME, read_json, resolve_dir

    if not path.exists():
        raise VolumeNotFoundError(f"index folder {str(path)!r} does not exist")
    directory = resolve_dir(path)
    meta = read_json(directory / META_NAME)
    kind = meta.get("kind") if isinstance(meta, dict) else None
    cls = ExactIndex if kind == ExactIndex.KIND else SliceIndex
    return cls.load(directory)


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _nifti_stem(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES[::-1]:  # ".nii.gz" before ".nii"
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _is_totalsegmentator_root(path: Path) -> bool:
    from cbirlib.datasets.totalsegmentator import IMAGE_FILE

    return path.is_dir() and any((p / IMAGE_FILE).is_file() for p in path.iterdir() if p.is_dir())


def discover_volumes(data_dir: str | os.PathLike[str]) -> list[tuple[str, Callable[[], Volume]]]:
    """The volumes under ``data_dir`` as ``(volume_id, loader)`` pairs, read lazily.

    ``data_dir`` is a TotalSegmentator-layout root (subject folders with ``ct.nii.gz``;
    ids are the subject names), or any folder tree of NIfTI files (``.nii``, ``.nii.gz``;
    ids are their paths relative to ``data_dir`` without the suffix) and DICOM series
    folders (ids are the folder paths), or a single NIfTI file.

    Raises
    ------
    VolumeNotFoundError
        ``data_dir`` does not exist.
    DatasetError
        No volume was found.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> discover_volumes(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cbirlib.errors.DatasetError: no volumes found in ...
    """
    from cbirlib.io import load_volume

    root = Path(data_dir)
    if not root.exists():
        raise VolumeNotFoundError(f"data folder {str(root)!r} does not exist")
    if root.is_file():
        stem = _nifti_stem(root.name)
        if stem is None:
            raise DatasetError(f"{str(root)!r} is neither a folder nor a NIfTI file")
        return [(stem, lambda: load_volume(root, id=stem))]
    if _is_totalsegmentator_root(root):
        from cbirlib.datasets.totalsegmentator import TotalSegmentator

        ds = TotalSegmentator(root)
        return [(s, lambda s=s: ds.load(s, labels=False)) for s in ds.subjects]  # type: ignore[misc]
    found: list[tuple[str, Callable[[], Volume]]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        for name in sorted(files):
            stem = _nifti_stem(name)
            if stem is not None:
                vid = (here / stem).relative_to(root).as_posix()
                found.append((vid, lambda p=here / name, v=vid: load_volume(p, id=v)))  # type: ignore[misc]
        if any(_is_dicom_file(here / n) for n in files if _nifti_stem(n) is None):
            vid = here.relative_to(root).as_posix() if here != root else root.name
            found.append((vid, lambda p=here, v=vid: load_volume(p, id=v)))  # type: ignore[misc]
    if not found:
        raise DatasetError(
            f"no volumes found in {str(root)!r}; expected NIfTI files (.nii, .nii.gz), "
            "DICOM series folders, or a TotalSegmentator root (<subject>/ct.nii.gz)"
        )
    return found


def _load_query(path: Path) -> Volume:
    """A query volume: a TotalSegmentator subject folder (with labels) or any volume."""
    from cbirlib.datasets.totalsegmentator import IMAGE_FILE, TotalSegmentator
    from cbirlib.io import load_volume

    if path.is_dir() and (path / IMAGE_FILE).is_file():
        return TotalSegmentator(path.parent).load(path.name)
    return load_volume(path)


# --- commands -----------------------------------------------------------------------------


def _pick_demo_extractor(name: str) -> Extractor:
    from cbirlib.plugins import create_extractor, list_extractors

    # a substring pattern checks the weights of the matching extractors only (cheap)
    match = [i for i in list_extractors(name) if i.name == name or name in i.aliases]
    if match and not match[0].weights_available:
        usable = ", ".join(
            i.name for i in list_extractors() if i.weights_available and not i.is_family
        )
        raise CliError(
            f"extractor {name!r} has no weights on this machine; extractors ready to use: "
            f"{usable} (see `cbirlib extractors` and the docs on weights)"
        )
    return create_extractor(name)


# a few coarse regions from head to thigh: the demo's recall table stays small
DEMO_TABLE = ("brain", "lung", "heart", "liver", "kidney", "urinary_bladder", "femur")


def _recall_table(
    pipeline: Pipeline, queries: list[Volume], database: dict[str, Any], verbose: bool
) -> pd.DataFrame:
    """Volume recall@1, region recall@1 and localized recall for :data:`DEMO_TABLE`."""
    import pandas as pd

    from cbirlib.evaluation import MEAN_ROW, evaluate
    from cbirlib.metrics import LocalizedRecall, Metric, RegionRecall, VolumeRecall
    from cbirlib.search import region_query
    from cbirlib.structures import COARSE_GROUPS

    regions = [
        region_query(volume, structure)
        for volume in queries
        if volume.labels is not None
        for structure in DEMO_TABLE
        if structure in volume.labels.grouped(COARSE_GROUPS).volume_structures()
    ]
    by_volume: list[Metric] = [VolumeRecall(1)]
    by_region: list[Metric] = [RegionRecall(1), LocalizedRecall()]
    system = {"demo": pipeline}
    results = pd.concat(
        [
            evaluate(system, queries, database, by_volume, verbose=verbose),
            evaluate(system, regions, database, by_region, verbose=verbose),
        ],
        ignore_index=True,
    )
    table = results.pivot_table(index="structure", columns="metric", values="value")
    table = table.reindex(index=[s for s in DEMO_TABLE if s in table.index])
    table = table[[m.name for m in (*by_volume, *by_region)]]
    table.columns = ["volume R@1", "region R@1", "localized R"]
    table.loc[MEAN_ROW] = table.mean(axis=0)
    return table


def _demo_data(root: Path, args: argparse.Namespace) -> TotalSegmentator:
    """The demo's phantoms: reused when ``root`` holds a demo with the same settings."""
    import shutil

    from cbirlib.datasets import make_phantoms
    from cbirlib.datasets.totalsegmentator import TotalSegmentator

    marker = root / "demo.json"
    shape = (args.size, args.size)
    settings = {"subjects": args.subjects, "seed": args.seed, "shape": list(shape)}
    data_dir = root / "data"
    if marker.is_file():
        if json.loads(marker.read_text(encoding="utf-8")) == settings and data_dir.is_dir():
            _write(sys.stdout, f"reusing the phantoms in {data_dir}")
            return TotalSegmentator(data_dir)
        for name in ("data", "index"):  # a previous demo's outputs, other settings
            shutil.rmtree(root / name, ignore_errors=True)
        marker.unlink()
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise CliError(
            f"{str(data_dir)!r} exists and was not written by `cbirlib demo`; "
            "choose another --out folder"
        )
    if args.subjects < 3:
        raise CliError(
            f"--subjects must be >= 3 (database and held-out queries), got {args.subjects}"
        )
    data = make_phantoms(data_dir, args.subjects, seed=args.seed, shape=shape, verbose=True)
    marker.write_text(json.dumps(settings), encoding="utf-8")
    return data


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.build import build_index
    from cbirlib.evaluation import format_table
    from cbirlib.search import region_query
    from cbirlib.viz import montage

    started = time.perf_counter()
    root = Path(args.out)
    extractor = _pick_demo_extractor(args.extractor)
    _write(out, f"cbirlib demo: {args.subjects} phantom subjects (seed {args.seed}) in {root}")
    root.mkdir(parents=True, exist_ok=True)
    data = _demo_data(root, args)
    test = list(data.subjects_in("test"))
    database_ids = [s for s in data.subjects if s not in test]
    if not test or not database_ids:
        raise CliError(
            f"--subjects {args.subjects} gives {len(database_ids)} database and {len(test)} "
            "test subjects; use more subjects"
        )
    _write(out, f"database: {len(database_ids)} subjects, queries: {len(test)} held-out subjects")
    _write(out, f"extractor: {extractor!r}")
    index = build_index(
        [(s, lambda s=s: data.load(s, labels=False)) for s in database_ids],  # type: ignore[misc]
        extractor,
        root / "index",
        verbose=True,
    )
    pipeline = _chain(extractor, index, top=args.top)
    _write(out, f"pipeline: {pipeline!r}\n")

    queries = [data.load(s) for s in test]
    with_structure = [
        q for q in queries if q.labels is not None and q.labels.contains(args.structure)
    ]
    if not with_structure:
        raise CliError(
            f"no held-out subject contains {args.structure!r}; try another --seed or --structure"
        )
    query = with_structure[0]
    hits = pipeline.retrieve(query, verbose=True)
    _print_results(out, f"volume query {query.id}:", _result_rows(hits, query.id))
    region = region_query(query, args.structure)
    first = region.first_slice
    last = first + region.n_slices - 1
    _write(
        out,
        f"\nregion query {region.id}: query slices {first}-{last} "
        f"({region.z_positions[0]:.0f} to {region.z_positions[-1]:.0f} mm)",
    )
    region_hits = pipeline.retrieve(region, verbose=True)
    _print_results(out, "retrieved volumes, predicted span:", _result_rows(region_hits, region.id))

    cache: dict[str, Volume] = {}

    def load(volume_id: str) -> Volume:
        if volume_id not in cache:
            cache[volume_id] = data.load(volume_id)
        return cache[volume_id]

    fig = montage(
        query, region_hits, load, top=min(5, args.top), query_id=region.id, query_span=(first, last)
    )
    png = root / "montage.png"
    fig.savefig(png, dpi=110)

    database = {s: load(s).labels for s in database_ids}
    table = _recall_table(pipeline, queries, database, verbose=True)
    _write(out, "\nper-structure recall on the held-out subjects (coarse regions):")
    _write(out, format_table(table).to_string())
    _write(out, f"\nmontage: {png}")
    _write(out, f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _cmd_index(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.build import build_index
    from cbirlib.plugins import create_extractor

    items = discover_volumes(args.data_dir)
    extractor = create_extractor(args.extractor)
    _write(out, f"indexing {len(items)} volumes from {args.data_dir} with {extractor!r}")
    index = build_index(items, extractor, args.index_dir, verbose=True, resume=args.resume)
    _write(out, f"index: {args.index_dir} ({index.n_volumes} volumes, {len(index)} slices)")
    return 0


def _cmd_query(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.plugins import create_extractor
    from cbirlib.search import region_query

    if args.top < 1:
        raise CliError(f"--top must be >= 1, got {args.top}")
    index = _load_index(Path(args.index_dir))
    config = index.extractor_config
    if not config or "name" not in config:
        raise CliError(f"index {args.index_dir!r} does not record the extractor it was built with")
    extractor = create_extractor(**config)
    query = _load_query(Path(args.query))
    span = None
    if args.structure is not None:
        if query.labels is None:
            raise CliError(
                f"--structure needs segmentation masks for {args.query!r}; pass a subject "
                "folder of a TotalSegmentator-layout data set (<subject>/segmentations/)"
            )
        region = region_query(query, args.structure)
        span = (region.first_slice, region.first_slice + region.n_slices - 1)
        query = region
    hits = _chain(extractor, index, top=args.top).retrieve(query, verbose=not args.json)
    rows = _result_rows(hits, query.id)
    if args.json:
        payload = {
            "query": query.id,
            "structure": args.structure,
            "query_span": list(span) if span else None,
            "extractor": config["name"],
            "results": rows,
        }
        _write(out, json.dumps(payload, indent=2))
    else:
        where = f" (query slices {span[0]}-{span[1]})" if span else ""
        _print_results(out, f"query {query.id}{where}:", rows)
    return 0


def _cmd_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.benchmarking import benchmark

    result = benchmark(args.data_dir, extractors=args.extractor, modes=args.modes, out_dir=args.out)
    _write(out, str(result))
    if args.out is not None:
        _write(out, f"tables written to {args.out}")
    return 0


def _cmd_extractors(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.plugins import list_extractors

    infos = list_extractors()
    _write(out, f"{'name':<24} {'weights':<8} {'plugin':<12} description")
    for info in infos:
        weights = "family" if info.is_family else ("yes" if info.weights_available else "no")
        aliases = f" (aliases: {', '.join(info.aliases)})" if info.aliases else ""
        _write(out, f"{info.name:<24} {weights:<8} {info.plugin:<12} {info.description}{aliases}")
    _write(out, "\nweights: 'yes' = present locally or not needed; nothing is downloaded to check")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cbirlib`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Content-based retrieval of 3D medical images (CT/MR).",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="offline end-to-end demo on synthetic phantoms")
    demo.add_argument("--out", default="cbirlib-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--extractor", default="baseline", help="extractor (default: %(default)s)")
    demo.add_argument("--subjects", type=int, default=12, help="phantom subjects (default: 12)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--size", type=int, default=128, help="in-plane pixels of the phantoms (default: 128)"
    )
    demo.add_argument("--top", type=int, default=5, help="volumes to show (default: 5)")
    demo.add_argument(
        "--structure", default="liver", help="region query structure (default: %(default)s)"
    )
    demo.set_defaults(func=_cmd_demo)

    index = sub.add_parser("index", help="embed and index a folder of volumes")
    index.add_argument(
        "data_dir", help="NIfTI files, DICOM series folders or a TotalSegmentator root"
    )
    index.add_argument("index_dir", help="index folder to write (resumed if it exists)")
    index.add_argument("--extractor", default="baseline", help="extractor (default: %(default)s)")
    index.add_argument(
        "--no-resume", dest="resume", action="store_false", help="rebuild from scratch"
    )
    index.set_defaults(func=_cmd_index)

    query = sub.add_parser("query", help="retrieve the volumes most similar to a query")
    query.add_argument("index_dir", help="index folder written by `cbirlib index`")
    query.add_argument("query", help="NIfTI file, DICOM folder or TotalSegmentator subject folder")
    query.add_argument("--structure", help="region query around this structure (needs masks)")
    query.add_argument("--top", type=int, default=10, help="volumes to return (default: 10)")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(func=_cmd_query)

    evaluate = sub.add_parser("evaluate", help="the study's per-class tables on a data set")
    evaluate.add_argument("data_dir", help="TotalSegmentator-layout root with a train/test split")
    evaluate.add_argument(
        "--extractor", nargs="+", default=["baseline"], help="extractors (default: baseline)"
    )
    evaluate.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="retrieval modes"
    )
    evaluate.add_argument("--out", help="folder for the tables (CSV and Markdown)")
    evaluate.set_defaults(func=_cmd_evaluate)

    extractors = sub.add_parser("extractors", help="list extractors and local weights")
    extractors.set_defaults(func=_cmd_extractors)
    return parser


def _setup_logging(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    package = logging.getLogger("cbirlib")
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cbirlib`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error, 2 on bad arguments, 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad arguments (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    _setup_logging(args.debug)
    try:
        status: int = args.func(args, sys.stdout)
        return status
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, CbirError | OSError):
            message = str(exc)
        else:
            message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
