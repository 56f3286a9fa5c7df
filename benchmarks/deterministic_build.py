"""Build-time cost of deterministic HNSW insertion (one thread) against all cores.

Usage: ``python benchmarks/deterministic_build.py [--n 50000] [--dim 384] [--runs 3]``.
Prints the build time of each setting, their ratio (measured in this one run), and how
often repeated builds give the same top-10 for a set of queries.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cbirlib.index import HnswConfig, SliceIndex


def build(data: np.ndarray, deterministic: bool) -> tuple[float, SliceIndex]:
    index = SliceIndex(data.shape[1], config=HnswConfig(deterministic=deterministic))
    t0 = time.perf_counter()
    for v, start in enumerate(range(0, len(data), 200)):
        index.add(f"v{v}", data[start : start + 200])
    return time.perf_counter() - t0, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.n // 200, args.dim))
    data = np.repeat(centres, 200, axis=0)[: args.n] + 0.5 * rng.normal(size=(args.n, args.dim))
    data = data.astype(np.float32)
    queries = data[rng.choice(args.n, 200, replace=False)] + 0.1
    print(f"{args.n} vectors, dim {args.dim}, {os.cpu_count()} cores, {args.runs} builds each")
    times = {}
    for deterministic in (True, False):
        seconds, tops = [], []
        for _ in range(args.runs):
            s, index = build(data, deterministic)
            seconds.append(s)
            tops.append(index.search(queries, k=10).slice_indices)
        same = np.mean([(t == tops[0]).all(axis=1).mean() for t in tops[1:]])
        times[deterministic] = float(np.median(seconds))
        print(
            f"deterministic={deterministic}: median build {times[deterministic]:.1f} s, "
            f"same top-10 as the first build for {100 * same:.0f}% of queries"
        )
    print(f"build-time ratio deterministic / all cores: {times[True] / times[False]:.2f}x")


if __name__ == "__main__":
    main()
