"""First call vs cached call of ``cbirlib.find`` (annotate route), on phantoms.

The archive is saved to a directory and ``find(..., cache=archive_dir)`` is timed three
times: the first call (no cache yet: every archive volume is annotated and the cache
file written), a second call for another structure of the same granularity (served from
the cache), and a call without the cache, for reference. The reference fingerprint
(hashing the reference's vectors and labels, done on every cached call) is timed apart.

Usage::

    python benchmarks/find_cache.py [--n 24] [--size 64] [--archive 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from cbirlib.datasets import make_phantoms
from cbirlib.finder import find
from cbirlib.index import build_index, load_index
from cbirlib.index.annotations import CACHE_DIR, index_fingerprint
from cbirlib.plugins import create_extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=24, help="phantom subjects")
    parser.add_argument("--size", type=int, default=64, help="in-plane pixels")
    parser.add_argument("--archive", type=int, default=12, help="archive volumes (unlabeled)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    ds = make_phantoms(work / "ph", args.n, shape=(args.size, args.size), seed=args.seed)
    arc_ids, ref_ids = ds.subjects[: args.archive], ds.subjects[args.archive :]
    ex = create_extractor("baseline")
    ref = build_index(
        [(s, lambda s=s: ds.load(s)) for s in ref_ids], ex, work / "ref", verbose=False
    )
    arc_dir = work / "arc"
    build_index(
        [(s, lambda s=s: ds.load(s, labels=False)) for s in arc_ids],
        ex,
        arc_dir,
        verbose=False,
        labels=False,
    )
    archive = load_index(arc_dir)
    n_slices = len(archive)
    times: dict[str, list[float]] = {"first": [], "cached": [], "uncached": [], "fp": []}
    for _ in range(args.repeat):
        shutil.rmtree(arc_dir / CACHE_DIR, ignore_errors=True)
        for label, structure, cache in (
            ("first", "liver", arc_dir),
            ("cached", "kidney_left", arc_dir),
            ("uncached", "kidney_left", None),
        ):
            t = time.perf_counter()
            find(archive, structure, reference=ref, cache=cache)
            times[label].append(time.perf_counter() - t)
        t = time.perf_counter()
        index_fingerprint(ref)
        times["fp"].append(time.perf_counter() - t)
    size = sum(p.stat().st_size for p in (arc_dir / CACHE_DIR).glob("*.npz"))
    print(
        f"phantoms {args.size}x{args.size}, seed {args.seed}: archive {len(arc_ids)} volumes "
        f"({n_slices} slices), reference {len(ref_ids)} labeled volumes ({len(ref)} slices); "
        f"fine granularity, k=5; median of {args.repeat}"
    )
    print()
    print("| call | seconds |")
    print("|---|---|")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"| first call (annotates {len(arc_ids)} volumes, writes the cache) | {med['first']:.3f} |"
    )
    print(f"| second call, another structure (cached) | {med['cached']:.3f} |")
    print(f"| without cache | {med['uncached']:.3f} |")
    print(f"| of which: reference fingerprint (in every cached call) | {med['fp']:.3f} |")
    print()
    ratio = med["first"] / med["cached"]
    print(f"speed-up first/cached: {ratio:.1f}x; cache file {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
