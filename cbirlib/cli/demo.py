"""``cbirlib demo``: the offline end-to-end demo on synthetic phantoms."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cbirlib.cli._command import Command
from cbirlib.cli._options import (
    add_extractor_options,
    canonical_structure,
    chain,
    create_extractor,
    extractor_options,
    non_negative_int,
    positive_int,
)
from cbirlib.cli._output import print_results, result_rows, show_progress, write
from cbirlib.datasets import TotalSegmentator, make_phantoms
from cbirlib.errors import CliError, StructureNotPresentError, UnknownStructureError
from cbirlib.search import region_query
from cbirlib.structures import COARSE_GROUPS
from cbirlib.viz import montage

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cbirlib.extractor import Extractor
    from cbirlib.pipeline import Pipeline
    from cbirlib.volume import Volume

__all__ = ["COMMAND", "run"]


def _pick_demo_extractor(name: str, options: dict[str, Any]) -> Extractor:
    from cbirlib.plugins import list_extractors  # lazy: torch

    # a substring pattern checks the weights of the matching extractors only (cheap)
    match = [i for i in list_extractors(name) if i.name == name or name in i.aliases]
    # unknown (None: the plugin has no check) is tried; the extractor's own error follows
    if match and match[0].weights_available is False and "weights" not in options:
        usable = ", ".join(
            i.name for i in list_extractors() if i.weights_available is True and not i.is_family
        )
        raise CliError(
            f"extractor {name!r} has no weights on this machine; pass --weights PATH, or use "
            f"one of the extractors ready to use: {usable} (see `cbirlib extractors` and the "
            "docs on weights)"
        )
    return create_extractor(name, options)


# a few coarse regions from head to thigh: the demo's recall table stays small
DEMO_TABLE = ("brain", "lung", "heart", "liver", "kidney", "urinary_bladder", "femur")


def _recall_table(
    pipeline: Pipeline, queries: list[Volume], database: dict[str, Any], verbose: bool
) -> pd.DataFrame:
    """Volume recall@1, region recall@1 and localized recall for :data:`DEMO_TABLE`."""
    import pandas as pd

    from cbirlib.evaluation import MEAN_ROW, evaluate  # lazy: pandas
    from cbirlib.metrics import LocalizedRecall, Metric, RegionRecall, VolumeRecall  # lazy: pandas

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
            write(out, f"reusing the phantoms in {data_dir}")
            return TotalSegmentator(data_dir)
        for name in ("data", "index"):  # a previous demo's outputs, other settings
            shutil.rmtree(root / name, ignore_errors=True)
        marker.unlink()
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise CliError(
            f"{str(data_dir)!r} exists and was not written by `cbirlib demo`; "
            "choose another --out folder"
        )
    progress = show_progress(args)
    data = make_phantoms(data_dir, args.subjects, seed=args.seed, shape=shape, verbose=progress)
    marker.write_text(json.dumps(settings), encoding="utf-8")
    return data


def _demo_query(data: TotalSegmentator, test: Sequence[str], structure: str) -> Volume:
    """The first held-out subject whose labels contain ``structure`` (fine or coarse)."""
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


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``cbirlib demo``: phantoms, an index, a volume and a region query, a montage."""
    from cbirlib.evaluation import format_table  # lazy: pandas
    from cbirlib.index import build_index  # lazy: hnswlib

    # every argument is checked before anything slow runs
    if args.subjects < 3:
        raise CliError(
            f"--subjects must be >= 3 (database and held-out queries), got {args.subjects}"
        )
    if args.size < 16:
        raise CliError(f"--size must be >= 16 pixels, got {args.size}")
    structure = canonical_structure(args.structure)
    started = time.perf_counter()
    progress = show_progress(args)
    root = Path(args.out)
    extractor = _pick_demo_extractor(args.extractor, extractor_options(args))
    write(out, f"cbirlib demo: {args.subjects} phantom subjects (seed {args.seed}) in {root}")
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
    write(out, f"database: {len(database_ids)} subjects, queries: {len(test)} held-out subjects")
    write(out, f"extractor: {extractor!r}")
    index = build_index(
        [(s, lambda s=s: data.load(s, labels=False)) for s in database_ids],  # type: ignore[misc]
        extractor,
        root / "index",
        verbose=progress,
    )
    pipeline = chain(extractor, index, top=args.top)
    write(out, f"pipeline: {pipeline!r}\n")

    hits = pipeline.retrieve(query, verbose=progress)
    print_results(out, f"volume query {query.id}:", result_rows(hits, query.id))
    region = region_query(query, structure)
    first = region.first_slice
    last = first + region.n_slices - 1
    write(
        out,
        f"\nregion query {region.id}: query slices {first}-{last} "
        f"(z {region.z_positions[0]:.0f} to {region.z_positions[-1]:.0f} mm)",
    )
    region_hits = pipeline.retrieve(region, verbose=progress)
    print_results(out, "retrieved volumes, predicted span:", result_rows(region_hits, region.id))

    cache: dict[str, Volume] = {}

    def load(volume_id: str) -> Volume:
        if volume_id not in cache:
            cache[volume_id] = data.load(volume_id)
        return cache[volume_id]

    fig = montage(
        query,
        region_hits,
        load,
        top=min(5, args.top),
        query_id=region.id,
        query_span=(first, last),
        structure=structure,
    )
    png = root / "montage.png"
    fig.savefig(png, dpi=110)

    queries = [data.load(s) for s in test]
    database = {s: load(s).labels for s in database_ids}
    table = _recall_table(pipeline, queries, database, verbose=progress)
    write(out, "\nper-structure recall on the held-out subjects (coarse regions):")
    write(out, format_table(table).to_string())
    write(out, f"\nmontage: {png}")
    write(out, f"done in {time.perf_counter() - started:.1f} s")
    return 0


def add_arguments(demo: argparse.ArgumentParser) -> None:
    """The options of ``cbirlib demo``."""
    demo.add_argument("--out", default="cbirlib-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--extractor", default="baseline", help="extractor (default: %(default)s)")
    demo.add_argument(
        "--subjects", type=positive_int, default=12, help="phantom subjects, >= 3 (default: 12)"
    )
    demo.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--size", type=positive_int, default=128, help="in-plane pixels of the phantoms (128)"
    )
    demo.add_argument("--top", type=positive_int, default=5, help="volumes to show (default: 5)")
    demo.add_argument(
        "--structure", default="liver", help="region query structure (default: %(default)s)"
    )
    add_extractor_options(demo)


COMMAND = Command(
    name="demo",
    help="offline end-to-end demo on synthetic phantoms",
    description="Generate synthetic phantoms, index them, run a volume and a region query, "
    "print the ranked volumes and a recall table, and write a montage. Nothing is downloaded.",
    epilog="""examples:
  cbirlib demo
  cbirlib demo --out /tmp/demo --structure kidney --top 3
  cbirlib demo --extractor dinov2 --weights /models/dinov2_vitb14.safetensors""",
    add_arguments=add_arguments,
    run=run,
)
