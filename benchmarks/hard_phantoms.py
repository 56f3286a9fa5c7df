"""The study's benchmark on a *hard* phantom set: MR, skull-stripped, padded, tilted ...

Run: ``python benchmarks/hard_phantoms.py [--n 14] [--size 64] [--seed 2] [--out DIR]``.

Writes ``--n`` phantoms with ``make_phantoms(..., realism="hard")`` (MR-like subjects
with arbitrary intensity scales, skull-stripped heads, blank padding slices, non-square
matrices, copies re-sliced at 1.5 / 2.5 / 5 mm, gantry tilt; see
:class:`cbirlib.datasets.PhantomRealism`), runs :func:`cbirlib.benchmarking.benchmark`
with one extractor (default ``baseline``) for count votes and MaxSim re-ranking, and
prints, as Markdown ready to paste:

* the composition of the set (from its ``meta.csv``, :func:`phantom_facts`);
* the summary: mean ± SD over classes of every metric, coarse and fine;
* the coarse per-class table (``--fine`` adds the 104-class one);
* diagnostics on the hard cases, count votes vs re-ranking, per query volume: the top-1
  volume has the query's modality; a padded volume is ranked first (against the share
  of padded volumes in the database); of two copies of one re-sliced subject in the
  top 20, the thinner one ranks higher.

The data set is loaded as the benchmark loads any TotalSegmentator folder (no
modality given: the layout says CT), so the "before the fixes" figures show what a
user gets by default.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LEVEL_TABLES = (
    ("slice", "slice_recall", "slice recall"),
    ("volume", "volume_recall@1", "volume R@1"),
    ("region", "region_recall", "region recall"),
    ("localized", "localized_recall", "localized recall"),
    ("localized", "localization_ratio", "loc. ratio"),
)


def _composition(facts: Mapping[str, Any]) -> str:
    def count(pred: Any) -> str:
        q = sum(1 for f in facts.values() if f.split == "test" and pred(f))
        d = sum(1 for f in facts.values() if f.split != "test" and pred(f))
        return f"{q} / {d}"

    rows = [
        ("subjects", count(lambda f: True)),
        ("MR-like", count(lambda f: f.modality == "MR")),
        ("skull-stripped", count(lambda f: f.skull_stripped)),
        ("blank padding", count(lambda f: any(f.padding))),
        ("gantry tilt", count(lambda f: f.tilt_deg != 0)),
        ("re-sliced copies", count(lambda f: f.source_id not in facts)),
    ]
    lines = ["| kind | queries / database |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _summary(tables: Mapping[str, Any], system: str) -> str:
    s = tables["summary"]
    lines = [
        "| level | mode | metric | count votes | + MaxSim re-ranking |",
        "|---|---|---|---|---|",
    ]
    for (level, mode, metric), g in s.groupby(["level", "mode", "metric"], sort=False):
        cells = []
        for name in (system, f"{system} + MaxSim"):
            row = g[g["system"] == name]
            if mode == "slice" and name != system:
                cells.append("")
            elif len(row):
                m, sd = float(row["mean"].iloc[0]), float(row["sd"].iloc[0])
                cells.append(f"{_f(m)} ± {_f(sd)}" if sd == sd else _f(m))
            else:
                cells.append("")
        lines.append(f"| {level} | {mode} | {metric} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _f(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}".replace("0.", ".", 1) if v < 1 else f"{v:.3f}"


def _per_class(tables: Mapping[str, Any], level: str, system: str) -> str:
    import pandas as pd

    from cbirlib.evaluation import to_markdown

    cols = {}
    for mode, metric, label in LEVEL_TABLES:
        t = tables.get(f"{level}/{mode}/{metric}")
        if t is None:
            continue
        if mode == "slice":
            cols[label] = t[system]
            continue
        cols[f"{label} (votes)"] = t[system]
        cols[f"{label} (MaxSim)"] = t[f"{system} + MaxSim"]
    table = pd.DataFrame(cols)
    table.index.name = "structure"
    return to_markdown(table)


def _diagnostics(root: Path, out: Path, extractor_name: str, facts: Mapping[str, Any]) -> str:
    """Hard-case rates per query volume, count votes vs MaxSim (the benchmark's chain)."""
    from cbirlib.datasets import TotalSegmentator
    from cbirlib.index.load import load_index
    from cbirlib.plugins import create_extractor
    from cbirlib.presets import default_chain
    from cbirlib.search import SliceSearch

    ds = TotalSegmentator(root)
    queries = [ds.load(s, labels=False) for s in ds.subjects_in("test")]
    index = load_index(out / f"index-{extractor_name}")
    database = [v for v in index.volume_ids if v in facts]
    padded_share = sum(1 for v in database if any(facts[v].padding)) / max(1, len(database))
    search = SliceSearch(create_extractor(extractor_name), index, k=100)
    lines = [
        "| per query volume | count votes | + MaxSim re-ranking |",
        "|---|---|---|",
    ]
    rates: dict[str, list[str]] = {}
    for rerank in (False, True):
        chain = default_chain(search, top=20, rerank=rerank, candidates=20, localize=False)
        frame = chain.retrieve(queries).to_pandas()
        same, padded, thin, pairs = 0, 0, 0, 0
        for q in queries:
            ranked = frame[frame["query_id"] == q.id].sort_values("score", ascending=False)
            ids = [str(v) for v in ranked["volume_id"]]
            if not ids:
                continue
            same += facts[ids[0]].modality == facts[q.id].modality
            padded += any(facts[ids[0]].padding)
            by_source: dict[str, list[tuple[int, float]]] = {}
            for rank, v in enumerate(ids):
                if facts[v].source_id != v:
                    by_source.setdefault(facts[v].source_id, []).append(
                        (rank, facts[v].thickness_mm)
                    )
            for copies in by_source.values():
                for a in range(len(copies)):
                    for b in range(a + 1, len(copies)):
                        (ra, ta), (rb, tb) = copies[a], copies[b]
                        pairs += 1
                        thin += (ra < rb) == (ta < tb)
        n = len(queries)
        rates.setdefault("top-1 has the query's modality", []).append(f"{same / n:.3f}")
        rates.setdefault(
            f"top-1 is a padded volume (database share {padded_share:.3f})", []
        ).append(f"{padded / n:.3f}")
        rates.setdefault(f"thinner copy ranked above thicker ({pairs} pairs)", []).append(
            f"{thin / pairs:.3f}" if pairs else "n/a"
        )
    lines += [f"| {k} | {v[0]} | {v[1]} |" for k, v in rates.items()]
    return "\n".join(lines)


def main() -> None:
    from cbirlib.benchmarking import benchmark
    from cbirlib.datasets import make_phantoms, phantom_facts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=14, help="subjects rendered (default 14)")
    parser.add_argument("--size", type=int, default=64, help="in-plane size (default 64)")
    parser.add_argument(
        "--seed",
        type=int,
        default=2,
        help="default 2: its test split holds a skull-stripped MR, an MR whole body and a "
        "padded CT; the re-sliced copies are in the database",
    )
    parser.add_argument("--extractor", default="baseline")
    parser.add_argument("--out", help="keep data, indexes and tables here (default: temp)")
    parser.add_argument("--fine", action="store_true", help="also print the fine table")
    parser.add_argument(
        "--declare-modality",
        action="store_true",
        help="pass each subject's modality (from meta.csv) to benchmark(modality=...), as a "
        "user who knows it does (default: none, the layout's CT)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hard-phantoms-") as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        root, out = base / "data", base / "out"
        t0 = time.perf_counter()
        make_phantoms(root, args.n, shape=(args.size, args.size), seed=args.seed, realism="hard")
        t1 = time.perf_counter()
        facts = phantom_facts(root)
        with warnings.catch_warnings():  # one line per tilted file otherwise
            warnings.filterwarnings("ignore", ".*gantry tilt", UserWarning)
            modality = {s: f.modality for s, f in facts.items()} if args.declare_modality else None
            tables = benchmark(
                root, [args.extractor], out_dir=out, modality=modality, verbose=False
            )
            diagnostics = _diagnostics(root, out, args.extractor, facts)
        t2 = time.perf_counter()
        cmd = (
            f"python benchmarks/hard_phantoms.py --n {args.n} --size {args.size} "
            f"--seed {args.seed} --extractor {args.extractor}"
            + (" --declare-modality" if args.declare_modality else "")
        )
        print(f"## Harder phantoms: {args.extractor}, realism='hard'\n")
        print(f"`{cmd}`: {args.n} subjects rendered at {args.size}x{args.size}, seed "
              f"{args.seed}, {len(facts)} written; generation {t1 - t0:.0f} s, benchmark "
              f"{t2 - t1:.0f} s.\n")  # fmt: skip
        print(_composition(facts) + "\n")
        print("### Summary (mean ± SD over classes)\n")
        print(_summary(tables, args.extractor) + "\n")
        print("### Hard cases (rates over query volumes)\n")
        print(diagnostics + "\n")
        print("### Per-class, coarse regions\n")
        print(_per_class(tables, "coarse", args.extractor) + "\n")
        if args.fine:
            print("### Per-class, fine classes\n")
            print(_per_class(tables, "fine", args.extractor) + "\n")


if __name__ == "__main__":
    main()
