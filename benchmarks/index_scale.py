"""Slice-index scale benchmark: build time, recall@10 vs exact, speed, bytes on disk / in memory.

Synthetic slice embeddings clustered like real ones: volumes of ~250 slices that are
smooth random walks around a few anatomical-level centroids. Run small for a smoke test:

    python benchmarks/index_scale.py --n 20000 --dims 384

Defaults are TotalSegmentator scale (300,000 slice vectors, dims 384 and 768).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cbirlib.index import ExactIndex, HnswConfig, SliceIndex


def clustered_volumes(n: int, dim: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """About ``n`` unit vectors in volumes of ~250 slices around 30 centroids."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(30, dim)).astype(np.float32)
    vols: list[tuple[str, np.ndarray]] = []
    total = 0
    while total < n:
        m = min(int(rng.integers(150, 350)), n - total)
        walk = rng.normal(scale=0.6 / np.sqrt(dim), size=(m, dim)).cumsum(axis=0)
        noise = rng.normal(scale=0.2 / np.sqrt(dim), size=(m, dim))
        base = centroids[rng.integers(30)] / np.sqrt(dim)
        x = (base + walk + noise).astype(np.float32)
        vols.append((f"vol{len(vols):05d}", x))
        total += m
    return vols


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n: int, dim: int, config: HnswConfig, n_queries: int, efs: list[int]) -> None:
    vols = clustered_volumes(n, dim)
    raw = sum(x.nbytes for _, x in vols)
    n = sum(len(x) for _, x in vols)
    print(f"\n=== n={n:,} dim={dim} volumes={len(vols)} {config} raw float32 {raw / 1e6:.0f} MB")

    t = time.perf_counter()
    hnsw = SliceIndex(dim, config=config)
    for vid, x in vols:
        hnsw.add(vid, x)
    build = time.perf_counter() - t
    print(f"HNSW build: {build:.1f} s ({n / build:,.0f} vectors/s, {os.cpu_count()} cores)")

    exact = ExactIndex(dim)
    for vid, x in vols:
        exact.add(vid, x)
    rng = np.random.default_rng(1)
    allx = np.concatenate([x for _, x in vols])
    queries = allx[rng.choice(n, n_queries, replace=False)]
    queries = queries + rng.normal(scale=0.3 / np.sqrt(dim), size=queries.shape)
    t = time.perf_counter()
    ref = exact.search(queries, k=10)
    t_exact = time.perf_counter() - t
    ref_keys = [
        set(zip(ref.volume_ids[i], ref.slice_indices[i], strict=True)) for i in range(len(queries))
    ]
    print(f"exact search: {t_exact / len(queries) * 1e3:.2f} ms/query")
    for ef in efs:
        hnsw.ef = ef
        t = time.perf_counter()
        got = hnsw.search(queries, k=10)
        t_h = time.perf_counter() - t
        recall = np.mean(
            [
                len(ref_keys[i] & set(zip(got.volume_ids[i], got.slice_indices[i], strict=True)))
                / 10
                for i in range(len(queries))
            ]
        )
        print(
            f"  ef={ef:4d}: recall@10 {recall:.4f}  {t_h / len(queries) * 1e3:.3f} ms/query  "
            f"speed-up vs exact {t_exact / t_h:.1f}x"
        )
    hnsw.ef = config.ef_search

    with tempfile.TemporaryDirectory() as tmp:
        for name, index in (("hnsw", hnsw), ("exact", exact)):
            path = Path(tmp) / name
            t = time.perf_counter()
            index.save(path)
            t_save = time.perf_counter() - t
            t = time.perf_counter()
            loaded = type(index).load(path)
            t_load = time.perf_counter() - t
            size = dir_bytes(path)
            files = {f.name: f.stat().st_size for f in path.iterdir()}
            big = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in files.items() if v > 1e6)
            print(
                f"{name} ({config.store_dtype} store): disk {size / 1e6:.0f} MB = "
                f"{size / raw:.2f}x raw [{big}]; save {t_save:.1f} s, load {t_load:.1f} s"
            )
            vec = loaded.vectors(vols[0][0])
            print(f"  vectors() after load: view={not vec.flags.owndata}")
            del loaded
    if isinstance(hnsw, SliceIndex):
        graph = hnsw._graph  # in-memory size of hnswlib's level-0 block (links + vector + label)
        per = 4 * (2 * config.M + 1) + 4 * dim + 8
        print(
            f"hnswlib level-0 memory ~{per * n / 1e6:.0f} MB = {per / (4 * dim):.2f}x raw "
            f"(+ upper levels ~{1 / config.M:.0%} of elements); "
            f"float16 store adds {n * dim * 2 / 1e6:.0f} MB; "
            f"capacity {graph.get_max_elements():,} elements"
        )
    print(f"peak RSS of this process so far: {rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000, help="number of slice vectors")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--M", type=int, default=HnswConfig().M)
    parser.add_argument("--ef-construction", type=int, default=HnswConfig().ef_construction)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--store-dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args()
    for dim in args.dims:
        cfg = HnswConfig(
            M=args.M,
            ef_construction=args.ef_construction,
            ef_search=HnswConfig().ef_search,
            store_dtype=args.store_dtype,
        )
        run(args.n, dim, cfg, args.queries, args.ef)


if __name__ == "__main__":
    main()
