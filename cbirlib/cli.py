"""The ``cbirlib`` command: ``demo``, ``index``, ``query``, ``benchmark``, ``extractors``.

Every long step shows a progress bar (log messages are written above it, never into
it). Errors are one line on stderr (``cbirlib: error: ...``) and a non-zero exit status
(1 for a failed command, 2 for bad arguments, 130 when interrupted); ``--debug`` (before
or after the sub-command) shows debug logging and the traceback.

Examples
--------
>>> from cbirlib.cli import build_parser
>>> args = build_parser().parse_args(["query", "idx", "scan.nii.gz", "--top", "3"])
>>> args.command, args.top, args.structure
('query', 3, None)
>>> build_parser().parse_args(["index", "d", "i", "--extractor-opt", "bins=8"]).extractor_opt
[('bins', 8)]
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

from cbirlib._text import close_matches
from cbirlib.errors import CbirError, DatasetError, VolumeNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cbirlib.datasets.totalsegmentator import TotalSegmentator
    from cbirlib.extractor import Extractor
    from cbirlib.hits import Hits
    from cbirlib.index import BaseIndex
    from cbirlib.pipeline import Pipeline
    from cbirlib.volume import Volume

__all__ = ["build_parser", "discover_volumes", "main", "parse_extractor_opt"]

logger = logging.getLogger(__name__)

PROG = "cbirlib"
MODES = ("slice", "volume", "region", "localized")
#: Decimals of the scores and of the mm values in ``cbirlib query --json``.
SCORE_DIGITS = 6
MM_DIGITS = 1


class CliError(CbirError, ValueError):
    """A command-line request that cannot be carried out (missing input, bad combination)."""


# --- helpers ------------------------------------------------------------------------------


def _write(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def _plural(n: int, word: str) -> str:
    """``"1 volume"``, ``"2 volumes"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt_float(value: float, spec: str = ".0f") -> str:
    return "-" if not math.isfinite(value) else format(value, spec)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def parse_extractor_opt(text: str) -> tuple[str, Any]:
    """Parse one ``--extractor-opt KEY=VALUE``; the value is JSON when it parses as JSON.

    Examples
    --------
    >>> parse_extractor_opt("bins=8"), parse_extractor_opt("device=cuda")
    (('bins', 8), ('device', 'cuda'))
    >>> parse_extractor_opt("mean=[0.5, 0.5, 0.5]")
    ('mean', [0.5, 0.5, 0.5])
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with a Python identifier as KEY (e.g. batch_size=16), got {text!r}"
        )
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _extractor_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--extractor-opt`` and ``--weights`` as keyword arguments of ``create_extractor``."""
    options: dict[str, Any] = dict(getattr(args, "extractor_opt", None) or [])
    weights = getattr(args, "weights", None)
    if weights is not None:
        if "weights" in options:
            raise CliError("pass the weights once: --weights PATH or --extractor-opt weights=...")
        # an index records its extractor config: store an absolute path, so that
        # `cbirlib query` finds the file from any working directory
        options["weights"] = weights if "://" in weights else str(Path(weights).resolve())
    return options


def _create_extractor(name: str, options: dict[str, Any]) -> Extractor:
    from cbirlib.plugins import create_extractor

    return create_extractor(name, **options)


def _chain(extractor: Extractor, index: BaseIndex, *, top: int, k: int = 100) -> Pipeline:
    """The default retrieval chain (:func:`cbirlib.presets.default_chain`)."""
    from cbirlib.presets import default_chain
    from cbirlib.search import SliceSearch

    return default_chain(SliceSearch(extractor, index, k=k), top=top)


def _result_rows(hits: Hits, query_id: str) -> list[dict[str, Any]]:
    """One query's ranked volumes as plain dicts, rounded for display and JSON.

    Scores are cosine similarities clipped to [-1, 1] (float32 sums can exceed 1 in the
    last digits) and rounded to :data:`SCORE_DIGITS` decimals; ``span`` is the predicted
    slice span ``[first, last]`` and ``span_mm`` the z positions of the centres of those
    two slices, rounded to :data:`MM_DIGITS` decimals.
    """
    rows = hits.for_query(query_id).ranked()
    extra = rows.extra
    out: list[dict[str, Any]] = []
    for i in range(len(rows)):
        score = min(1.0, max(-1.0, float(rows.score[i])))
        row: dict[str, Any] = {
            "rank": int(rows.rank[i]),
            "volume_id": str(rows.volume_id[i]),
            "score": round(score, SCORE_DIGITS),
        }
        if "loc_first" in extra and int(extra["loc_first"][i]) >= 0:
            row["span"] = [int(extra["loc_first"][i]), int(extra["loc_last"][i])]
            z = [float(extra["loc_z_first"][i]), float(extra["loc_z_last"][i])]
            finite = all(math.isfinite(v) for v in z)
            row["span_mm"] = [round(v, MM_DIGITS) for v in z] if finite else None
        else:
            row["span"] = row["span_mm"] = None
        out.append(row)
    return out


def _print_results(out: TextIO, title: str, rows: list[dict[str, Any]]) -> None:
    _write(out, title)
    _write(out, f"  {'rank':>4}  {'volume':<24} {'score':>8}  {'slices':>11}  {'z (mm)':>15}")
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
    else:
        _write(out, "  (z: positions of the centres of the first and last slice of the span)")


def _load_index(path: Path) -> BaseIndex:
    """Load a :class:`SliceIndex` or :class:`ExactIndex`, whichever ``path`` holds."""
    from cbirlib.index import load_index

    if not path.exists():
        raise VolumeNotFoundError(f"index folder {str(path)!r} does not exist")
    return load_index(path)


def _indexed_count(path: Path) -> int:
    """Volumes in the index at ``path`` (0 when there is none or it is unreadable; cheap)."""
    from cbirlib.errors import IndexFormatError
    from cbirlib.index import read_meta

    try:
        return read_meta(path).n_volumes
    except (IndexFormatError, OSError):
        return 0


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_totalsegmentator_root(path: Path) -> bool:
    from cbirlib.datasets.totalsegmentator import IMAGE_FILE

    return path.is_dir() and any((p / IMAGE_FILE).is_file() for p in path.iterdir() if p.is_dir())


def discover_volumes(data_dir: str | os.PathLike[str]) -> list[tuple[str, Callable[[], Volume]]]:
    """The volumes under ``data_dir`` as ``(volume_id, loader)`` pairs, read lazily.

    ``data_dir`` is a TotalSegmentator-layout root (subject folders with ``ct.nii.gz``;
    ids are the subject names), or any folder tree of NIfTI files (``.nii``, ``.nii.gz``;
    ids are their paths relative to ``data_dir`` without the suffix) and DICOM series
    folders (ids are the folder paths), or a single NIfTI file. A DICOM folder holding
    several series gives one volume per series, with ids ``<folder>/series-<i>``
    (``i`` = 1, 2, ... in the order of the series' SeriesNumber).

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
    from cbirlib.io import dicom_series, load_volume, nifti_stem

    root = Path(data_dir)
    if not root.exists():
        raise VolumeNotFoundError(f"data folder {str(root)!r} does not exist")
    if root.is_file():
        stem = nifti_stem(root.name)
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
            stem = nifti_stem(name)
            if stem is not None:
                vid = (here / stem).relative_to(root).as_posix()
                found.append((vid, lambda p=here / name, v=vid: load_volume(p, id=v)))  # type: ignore[misc]
        dicom = [here / n for n in sorted(files) if nifti_stem(n) is None]
        dicom = [p for p in dicom if _is_dicom_file(p)]
        if not dicom:
            continue
        vid = here.relative_to(root).as_posix() if here != root else root.name
        try:
            series = dicom_series(here)
        except CbirError:  # no readable series: load_volume reports why, when it is read
            series = []
        if len(series) <= 1:
            found.append((vid, lambda p=here, v=vid: load_volume(p, id=v)))  # type: ignore[misc]
            continue
        logger.info("%s: %d DICOM series, indexed as separate volumes", here, len(series))
        for i, info in enumerate(series, start=1):
            sid, uid = f"{vid}/series-{i}", info.uid
            logger.debug("%s: series %s (%d slices) -> %s", here, uid, info.n_slices, sid)
            found.append(
                (sid, lambda p=here, u=uid, v=sid: load_volume(p, series_uid=u, id=v))  # type: ignore[misc]
            )
    if not found:
        raise DatasetError(
            f"no volumes found in {str(root)!r}; expected NIfTI files (.nii, .nii.gz), "
            "DICOM series folders, or a TotalSegmentator root (<subject>/ct.nii.gz)"
        )
    return found


def _load_query(path: Path, *, series_uid: str | None = None) -> Volume:
    """A query volume: a TotalSegmentator subject folder (with labels) or any volume.

    A TotalSegmentator image file (``<subject>/ct.nii.gz``) is named after its subject.
    """
    from cbirlib.datasets.totalsegmentator import IMAGE_FILE, TotalSegmentator
    from cbirlib.io import load_volume

    if path.is_dir() and (path / IMAGE_FILE).is_file():
        return TotalSegmentator(path.parent).load(path.name)
    entries = list(path.iterdir()) if path.is_dir() else []
    if entries and not any(p.is_file() and _is_dicom_file(p) for p in entries):
        raise CliError(
            f"{str(path)!r} is a data folder (NIfTI files or sub-folders), not one volume; "
            "pass one volume: a NIfTI file, a DICOM series folder or a subject folder "
            "(<subject>/ct.nii.gz)"
        )
    if path.is_file() and path.name == IMAGE_FILE and path.parent.name:
        return load_volume(path, id=path.parent.name)
    return load_volume(path, series_uid=series_uid)


def _canonical_structure(name: str) -> str:
    """A fine class or coarse region name, matched case-insensitively; close matches."""
    from cbirlib.structures import TOTALSEG_V1_CLASSES, coarse_regions

    coarse = coarse_regions()
    known = {n.lower(): n for n in (*TOTALSEG_V1_CLASSES, *coarse)}
    key = name.strip().lower()
    if key in known:
        return known[key]
    close = close_matches(key, known.values())
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise CliError(
        f"unknown structure {name!r}; {hint}valid: a TotalSegmentator v1 class (liver, "
        f"kidney_left, ...) or a coarse region ({', '.join(coarse[:8])}, ...; see "
        "cbirlib.structures.coarse_regions())"
    )


# --- commands -----------------------------------------------------------------------------


def _pick_demo_extractor(name: str, options: dict[str, Any]) -> Extractor:
    from cbirlib.plugins import list_extractors

    # a substring pattern checks the weights of the matching extractors only (cheap)
    match = [i for i in list_extractors(name) if i.name == name or name in i.aliases]
    if match and not match[0].weights_available and "weights" not in options:
        usable = ", ".join(
            i.name for i in list_extractors() if i.weights_available and not i.is_family
        )
        raise CliError(
            f"extractor {name!r} has no weights on this machine; pass --weights PATH, or use "
            f"one of the extractors ready to use: {usable} (see `cbirlib extractors` and the "
            "docs on weights)"
        )
    return _create_extractor(name, options)


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


def _demo_data(root: Path, args: argparse.Namespace, out: TextIO) -> TotalSegmentator:
    """The demo's phantoms: reused when ``root`` holds a demo with the same settings."""
    import shutil

    from cbirlib.datasets import make_phantoms
    from cbirlib.datasets.totalsegmentator import TotalSegmentator

    marker = root / "demo.json"
    shape = (args.size, args.size)
    settings = {"subjects": args.subjects, "seed": args.seed, "shape": list(shape)}
    data_dir = root / "data"
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise CliError(
                f"{str(marker)!r} is not a readable demo marker ({type(exc).__name__}: {exc}); "
                "delete it, or choose another --out folder"
            ) from None
        if previous == settings and data_dir.is_dir():
            _write(out, f"reusing the phantoms in {data_dir}")
            return TotalSegmentator(data_dir)
        for name in ("data", "index"):  # a previous demo's outputs, other settings
            shutil.rmtree(root / name, ignore_errors=True)
        marker.unlink()
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise CliError(
            f"{str(data_dir)!r} exists and was not written by `cbirlib demo`; "
            "choose another --out folder"
        )
    data = make_phantoms(data_dir, args.subjects, seed=args.seed, shape=shape, verbose=True)
    marker.write_text(json.dumps(settings), encoding="utf-8")
    return data


def _demo_query(data: TotalSegmentator, test: Sequence[str], structure: str) -> Volume:
    """The first held-out subject whose labels contain ``structure`` (fine or coarse)."""
    from cbirlib.errors import StructureNotPresentError, UnknownStructureError
    from cbirlib.search import region_query

    for subject in test:
        volume = data.load(subject)
        try:
            region_query(volume, structure)
        except (StructureNotPresentError, UnknownStructureError):
            continue
        return volume
    raise CliError(
        f"no held-out subject contains {structure!r}; try another --seed or --structure "
        "(e.g. liver, lung, kidney)"
    )


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.evaluation import format_table
    from cbirlib.index import build_index
    from cbirlib.search import region_query
    from cbirlib.viz import montage

    # every argument is checked before anything slow runs
    if args.subjects < 3:
        raise CliError(
            f"--subjects must be >= 3 (database and held-out queries), got {args.subjects}"
        )
    if args.size < 16:
        raise CliError(f"--size must be >= 16 pixels, got {args.size}")
    structure = _canonical_structure(args.structure)
    started = time.perf_counter()
    root = Path(args.out)
    extractor = _pick_demo_extractor(args.extractor, _extractor_options(args))
    _write(out, f"cbirlib demo: {args.subjects} phantom subjects (seed {args.seed}) in {root}")
    root.mkdir(parents=True, exist_ok=True)
    data = _demo_data(root, args, out)
    test = list(data.subjects_in("test"))
    database_ids = [s for s in data.subjects if s not in test]
    if not test or not database_ids:
        raise CliError(
            f"--subjects {args.subjects} gives {len(database_ids)} database and {len(test)} "
            "test subjects; use more subjects"
        )
    query = _demo_query(data, test, structure)
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

    hits = pipeline.retrieve(query, verbose=True)
    _print_results(out, f"volume query {query.id}:", _result_rows(hits, query.id))
    region = region_query(query, structure)
    first = region.first_slice
    last = first + region.n_slices - 1
    _write(
        out,
        f"\nregion query {region.id}: query slices {first}-{last} "
        f"(z {region.z_positions[0]:.0f} to {region.z_positions[-1]:.0f} mm)",
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

    queries = [data.load(s) for s in test]
    database = {s: load(s).labels for s in database_ids}
    table = _recall_table(pipeline, queries, database, verbose=True)
    _write(out, "\nper-structure recall on the held-out subjects (coarse regions):")
    _write(out, format_table(table).to_string())
    _write(out, f"\nmontage: {png}")
    _write(out, f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _cmd_index(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.index import build_index

    index_dir = Path(args.index_dir)
    items = discover_volumes(args.data_dir)
    extractor = _create_extractor(args.extractor, _extractor_options(args))
    from cbirlib.index import check_resumable

    saved_meta = check_resumable(index_dir, extractor) if args.resume else None
    before = saved_meta.n_volumes if saved_meta is not None else 0
    _write(out, f"indexing {_plural(len(items), 'volume')} from {args.data_dir} with {extractor!r}")
    if before:
        ids = {vid for vid, _ in items}
        _write(
            out,
            f"resuming {index_dir}: {_plural(before, 'volume')} already indexed; those of "
            f"the {len(ids)} found here are skipped (matched by id only: a changed file "
            "keeps its old embeddings; --no-resume rebuilds)",
        )
    try:
        index = build_index(items, extractor, index_dir, verbose=True, resume=args.resume)
    except BaseException:
        saved = _indexed_count(index_dir)
        if saved > before:  # a resume would skip work; otherwise there is nothing to resume
            sys.stderr.write(
                f"{PROG}: {saved} of {_plural(len(items), 'volume')} saved in {index_dir}; "
                "run the same command to resume\n"
            )
        raise
    added = max(0, index.n_volumes - before)
    skipped = len(items) - added
    _write(
        out,
        f"index: {index_dir} ({_plural(index.n_volumes, 'volume')}, "
        f"{_plural(len(index), 'slice')}; {added} added, {skipped} already indexed)",
    )
    return 0


def _cmd_query(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.plugins import create_extractor
    from cbirlib.search import region_query

    index = _load_index(Path(args.index_dir))
    config = index.extractor_config
    if not config or "name" not in config:
        raise CliError(f"index {args.index_dir!r} does not record the extractor it was built with")
    extractor = create_extractor(**config)
    query = _load_query(Path(args.query), series_uid=args.series_uid)
    span = None
    structure = None
    if args.structure is not None:
        structure = _canonical_structure(args.structure)
        if query.labels is None:
            raise CliError(
                f"--structure needs segmentation masks for {args.query!r}; pass a subject "
                "folder of a TotalSegmentator-layout data set (<subject>/segmentations/)"
            )
        region = region_query(query, structure)
        span = (region.first_slice, region.first_slice + region.n_slices - 1)
        query = region
    hits = _chain(extractor, index, top=args.top).retrieve(query, verbose=not args.json)
    rows = _result_rows(hits, query.id)
    if args.json:
        payload = {
            "query": query.id,
            "structure": structure,
            "query_span": list(span) if span else None,
            "extractor": config["name"],
            "results": rows,
        }
        _write(out, json.dumps(payload, indent=2))
    else:
        where = f" (query slices {span[0]}-{span[1]})" if span else ""
        _print_results(out, f"query {query.id}{where}:", rows)
    return 0


def _check_evaluation_root(data_dir: Path) -> None:
    """Refuse early what :func:`~cbirlib.benchmarking.benchmark` cannot use."""
    from cbirlib.datasets.totalsegmentator import IMAGE_FILE, META_FILE, TotalSegmentator

    layout = (
        f"a TotalSegmentator-layout root: <subject>/{IMAGE_FILE} with "
        f"<subject>/segmentations/*.nii.gz, and {META_FILE} with columns image_id and split "
        "(train/val/test)"
    )
    if not data_dir.exists():
        raise VolumeNotFoundError(f"data folder {str(data_dir)!r} does not exist")
    if not _is_totalsegmentator_root(data_dir):
        raise CliError(f"{str(data_dir)!r} is not {layout}")
    if not (data_dir / META_FILE).is_file():
        raise CliError(f"{str(data_dir)!r} has no {META_FILE}; benchmark needs {layout}")
    dataset = TotalSegmentator(data_dir)
    if all(dataset.split_of(s) is None for s in dataset.subjects):
        raise CliError(
            f"{str(data_dir / META_FILE)!r} has no split column; benchmark needs {layout}"
        )


def _summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``"mean ± SD"`` over classes: one row per (level, mode, metric), one column per system.

    Classes that no query contains (all-NaN rows) are left out of the mean.
    """
    import pandas as pd

    from cbirlib.evaluation import MEAN_ROW, format_table

    rows = {}
    for key, table in tables.items():
        if key == "summary":
            continue
        level, mode, metric = key.split("/", 2)
        classes = table.drop(index=MEAN_ROW, errors="ignore").dropna(how="all")
        formatted = format_table(pd.concat([classes, table.loc[[MEAN_ROW]]]))
        rows[(level, mode, metric)] = formatted.loc[MEAN_ROW]
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index = pd.MultiIndex.from_tuples(list(rows), names=["level", "mode", "metric"])
    return summary


def _cmd_benchmark(args: argparse.Namespace, out: TextIO) -> int:
    from cbirlib.benchmarking import benchmark

    if args.command == "evaluate":
        sys.stderr.write(
            f"{PROG}: note: `{PROG} evaluate` is now `{PROG} benchmark`; the old name "
            "will be removed in the next release\n"
        )
    _check_evaluation_root(Path(args.data_dir))
    options = _extractor_options(args)
    result = benchmark(
        args.data_dir,
        extractors=args.extractor,
        modes=args.modes,
        out_dir=args.out,
        extractor_options=options,
    )
    _write(out, "mean ± SD over structures (structures without a query left out):")
    _write(out, _summary(result).to_string())
    if args.out is not None:
        _write(out, f"\nper-structure tables (CSV and Markdown): {Path(args.out) / 'tables'}")
    else:
        _write(out, "\npass --out DIR to write the per-structure tables (CSV and Markdown)")
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


# --- parser -------------------------------------------------------------------------------

_EPILOGS = {
    "demo": """examples:
  cbirlib demo
  cbirlib demo --out /tmp/demo --structure kidney --top 3
  cbirlib demo --extractor dinov2 --weights /models/dinov2_vitb14.safetensors""",
    "index": """examples:
  cbirlib index /data/Totalsegmentator_dataset idx
  cbirlib index scans/ idx --extractor radimagenet-resnet50 --weights /models/rin-r50.pt
  cbirlib index scans/ idx --extractor baseline --extractor-opt bins=8 --no-resume

An existing INDEX_DIR is resumed: volumes whose id is already in it are skipped (matched
by id only, so a changed file keeps its old embeddings; --no-resume rebuilds). A DICOM
folder with several series gives one volume per series (<folder>/series-1, ...).""",
    "query": """examples:
  cbirlib query idx scan.nii.gz --top 5
  cbirlib query idx /data/Totalsegmentator_dataset/s0011 --structure liver --json

The extractor is re-created from the config the index recorded.""",
    "benchmark": """examples:
  cbirlib benchmark /data/Totalsegmentator_dataset --out results
  cbirlib benchmark data --extractor baseline dinov2 --modes volume region --out results

DATA_DIR needs meta.csv with columns image_id and split (train/val/test): the test split
queries an index of the other subjects. `cbirlib evaluate` is the old name of this command
(deprecated; it will be removed in the next release).""",
    "extractors": """example:
  cbirlib extractors""",
}


def _add_extractor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="local weights file (safetensors or PyTorch checkpoint) for the extractor",
    )
    parser.add_argument(
        "--extractor-opt",
        metavar="KEY=VALUE",
        type=parse_extractor_opt,
        action="append",
        help="extractor option, repeatable; VALUE is read as JSON when it parses "
        "(e.g. batch_size=16, device=cuda)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cbirlib`` command."""
    from cbirlib._version import __version__

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a sub-command without --debug keeps the value set before it
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="debug log and traceback"
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Content-based retrieval of 3D medical images (CT/MR).",
        epilog="run `cbirlib COMMAND --help` for the options and examples of a command",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str, description: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            aliases=list(aliases),
            help=help,
            description=description,
            epilog=_EPILOGS[name],
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    demo = command(
        "demo",
        "offline end-to-end demo on synthetic phantoms",
        "Generate synthetic phantoms, index them, run a volume and a region query, print "
        "the ranked volumes and a recall table, and write a montage. Nothing is downloaded.",
    )
    demo.add_argument("--out", default="cbirlib-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--extractor", default="baseline", help="extractor (default: %(default)s)")
    demo.add_argument(
        "--subjects", type=_positive_int, default=12, help="phantom subjects, >= 3 (default: 12)"
    )
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--size", type=_positive_int, default=128, help="in-plane pixels of the phantoms (128)"
    )
    demo.add_argument("--top", type=_positive_int, default=5, help="volumes to show (default: 5)")
    demo.add_argument(
        "--structure", default="liver", help="region query structure (default: %(default)s)"
    )
    _add_extractor_options(demo)
    demo.set_defaults(func=_cmd_demo)

    index = command(
        "index",
        "embed and index a folder of volumes",
        "Embed every axial slice of the volumes under DATA_DIR and write (or resume) an "
        "index in INDEX_DIR.",
    )
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
    _add_extractor_options(index)
    index.set_defaults(func=_cmd_index)

    query = command(
        "query",
        "retrieve the volumes most similar to a query",
        "Retrieve the volumes of an index most similar to QUERY, with the predicted span "
        "of the query's anatomy in each.",
    )
    query.add_argument("index_dir", help="index folder written by `cbirlib index`")
    query.add_argument("query", help="NIfTI file, DICOM folder or TotalSegmentator subject folder")
    query.add_argument(
        "--structure", help="region query around this structure (needs a subject folder)"
    )
    query.add_argument(
        "--series-uid", help="SeriesInstanceUID to read from a DICOM folder with several series"
    )
    query.add_argument("--top", type=_positive_int, default=10, help="volumes to return (10)")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(func=_cmd_query)

    evaluate = command(
        "benchmark",
        "the study's per-class tables on a data set (old name: evaluate)",
        "Index the non-test subjects of a TotalSegmentator-layout data set with each "
        "extractor, query with the test subjects and report per-structure recall.",
        aliases=["evaluate"],
    )
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
    _add_extractor_options(evaluate)
    evaluate.set_defaults(func=_cmd_benchmark)

    extractors = command(
        "extractors",
        "list extractors and local weights",
        "List the registered extractors and whether their weights are present locally.",
    )
    extractors.set_defaults(func=_cmd_extractors)
    return parser


def _setup_logging(debug: bool) -> Callable[[], None]:
    """Send cbirlib's log records to stderr; returns a function that restores the logger."""
    package = logging.getLogger("cbirlib")
    saved = (package.handlers[:], package.level, package.propagate)

    def restore() -> None:
        package.handlers[:], package.level, package.propagate = saved

    level = logging.DEBUG if debug else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False
    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cbirlib`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error, 2 on bad arguments, 130 when
        interrupted.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or bad arguments (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    restore_logging = _setup_logging(args.debug)
    try:
        # log records go through tqdm.write: above the progress bars, never inside them
        with logging_redirect_tqdm(loggers=[logging.getLogger("cbirlib")]):
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
        message = " ".join(message.split())  # one line, whatever a dependency wrote
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return 1
    finally:
        restore_logging()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
