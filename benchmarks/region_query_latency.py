"""Latency of one region query end to end on a large synthetic slice index.

Builds a :class:`cbirlib.index.SliceIndex` of ``--n`` slices (default 300,000) from
synthetic clustered vectors: every volume follows a smooth path through "body position"
clusters, as real slice embeddings do. A region query (``--query-slices`` slices of a
new volume, cut with :func:`cbirlib.search.region_query`) then runs through

    SliceSearch(k=100) >> CountVotes() >> MaxSimRerank(top=20) >> Localize() >> Cutoff(10)

with precomputed query embeddings (query embedding is excluded from the timing).
Target: median <= 0.2 s on a 2-core machine at 300,000 slices, <= 0.1 s at 10^6.

It also prints what the index costs: build time, the peak resident memory the build
added (``VmHWM`` of this process, reset before the build), the size of the saved
folder, and the memory a fresh process needs to load it, each per vector.

``--backend milvus`` builds a :class:`~cbirlib.index.milvus.MilvusIndex` (a Milvus Lite
file in a temporary folder) from the same volumes instead, ``--backend both`` builds both
and runs the same region queries through each (with the overlap of their top 10). For
Milvus Lite the memory figures are those of its server process (a child of this one).
``--parallel`` builds the hnswlib graph with every core (not reproducible; the default
single-thread build is).

``--exact`` also runs the chain on an :class:`~cbirlib.index.ExactIndex` over the same
vectors and compares every stage of each backend with it: the slice search's recall@k
(plain and tie-aware), the overlap of the MaxSim candidates, and the top 10 (plain and
tie-aware: a volume counts when its MaxSim score is at least the exact chain's 10th
minus 1e-6). It also compares each top 10 with the exhaustive MaxSim top 10 (every volume
re-ranked), and prints how tied the exact chain's decisions are. ``--ef`` takes several
values (one round of queries each). ``--milvus-reload`` then forces Milvus Lite to index
every segment (it searches unindexed segments exactly, and indexes them in the
background) and runs the queries again. ``--data anatomy`` uses ``index_scale.py``'s
generator instead of the clustered one. Findings: ``docs/results/index_scale.md``.

Usage: ``python benchmarks/region_query_latency.py [--n 300000] [--dim 384] [--cache DIR]
[--backend hnsw|milvus|both] [--parallel] [--store-dtype float16] [--exact]
[--ef 128 512] [--milvus-reload] [--data clustered|anatomy]``
(``--cache`` saves the built SliceIndex there, one folder per size, M and
ef_construction, and reuses it on later runs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib.aggregate import CountVotes
from cbirlib.hits import Hits
from cbirlib.index import ExactIndex, HnswConfig, MilvusIndex, SliceIndex
from cbirlib.index.config import search_ef
from cbirlib.labels import SliceLabels
from cbirlib.localize import Localize
from cbirlib.pipeline import Cutoff, SearchContext
from cbirlib.rerank import MaxSimRerank, maxsim_match
from cbirlib.search import SliceSearch, region_query
from cbirlib.volume import Volume

F32 = npt.NDArray[np.float32]
N_POSITIONS = 64
Store = SliceIndex | MilvusIndex


class PrecomputedOnly:
    """Extractor stand-in: the benchmark always passes precomputed query embeddings."""

    def extract(self, volume: Volume, *, slices: Any = None) -> F32:
        raise RuntimeError("query embedding is excluded from this benchmark")

    def to_config(self) -> dict[str, Any]:
        return {"name": "synthetic"}


def centers(dim: int, rng: np.random.Generator) -> F32:
    """Cluster centres along a smooth random path (neighbouring positions are similar)."""
    steps = rng.normal(size=(N_POSITIONS, dim)).astype(np.float32)
    path = np.cumsum(steps, axis=0) + 3.0 * rng.normal(size=(1, dim)).astype(np.float32)
    return (path / np.linalg.norm(path, axis=1, keepdims=True)).astype(np.float32)


def volume_vectors(
    c: F32, lo: float, hi: float, n: int, rng: np.random.Generator, noise: float = 0.5
) -> F32:
    """Slices covering positions lo..hi: interpolated centres plus noise, unit rows."""
    pos = np.linspace(lo, hi, n) * (N_POSITIONS - 1)
    i = np.clip(np.floor(pos).astype(int), 0, N_POSITIONS - 2)
    w = (pos - i)[:, None].astype(np.float32)
    x = (1 - w) * c[i] + w * c[i + 1]
    x += noise / np.sqrt(c.shape[1]) * rng.normal(size=x.shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


Volumes = list[tuple[str, F32]]


def make_volumes(n_total: int, c: F32, rng: np.random.Generator) -> Volumes:
    """Volumes of 150-350 slices, each covering a random stretch of the body positions."""
    vols: Volumes = []
    added = 0
    while added < n_total:
        n = int(min(n_total - added, rng.integers(150, 350)))
        lo = float(rng.uniform(0.0, 0.6))
        hi = float(min(1.0, lo + rng.uniform(0.3, 0.7)))
        vols.append((f"vol{len(vols):05d}", volume_vectors(c, lo, hi, n, rng)))
        added += n
    return vols


def _status_mb(pid: int | str, key: str) -> float:
    """A memory field (``VmRSS``, ``VmHWM``) of a process from /proc, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak() -> None:
    """Reset this process's peak resident memory (``VmHWM``) to its current value."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def children() -> list[int]:
    """Process ids of this process's children (the Milvus Lite server is one)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                out.append(int(entry.name))
    return out


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


_LOAD_SRC = """
import sys, time
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import numpy as np
from cbirlib.index import SliceIndex
r0 = rss(); t = time.perf_counter()
index = SliceIndex.load(sys.argv[1])
index.search(np.ones((1, index.dim), np.float32), k=10)
print(time.perf_counter() - t, rss() - r0)
"""


def per_vector(mb: float, n: int, dim: int) -> str:
    b = mb * 2**20 / n
    return f"{b:,.0f} B/vector = {b / dim:.2f} B/vector/dim"


def build_hnsw(args: argparse.Namespace, vols: Volumes, cache: Path | None) -> SliceIndex:
    if cache is not None and cache.exists():
        print(f"loading index from {cache}")
        return SliceIndex.load(cache)
    config = HnswConfig(
        M=args.M,
        ef_construction=args.ef_construction,
        ef_search=args.ef[0],
        store_dtype=args.store_dtype,
        deterministic=not args.parallel,
    )
    n = sum(len(x) for _, x in vols)
    reset_peak()
    rss0 = _status_mb("self", "VmRSS")
    t0 = time.perf_counter()
    index = SliceIndex(args.dim, config=config, extractor_config=PrecomputedOnly().to_config())
    for vid, x in vols:
        index.add(vid, x, slice_meta={"z_mm": np.arange(len(x)) * 1.5})
    build = time.perf_counter() - t0
    peak = _status_mb("self", "VmHWM") - rss0
    threads = "every core (non-deterministic)" if args.parallel else "one thread (deterministic)"
    print(
        f"built SliceIndex ({config}): {len(index)} slices, {index.n_volumes} volumes "
        f"in {build:.0f} s ({n / build:,.0f} vectors/s, {threads}); peak memory of the "
        f"build +{peak:.0f} MB ({per_vector(peak, n, args.dim)})",
        flush=True,
    )
    # Serve from disk as a deployed index does: the loaded index memory-maps its vectors,
    # so re-ranking reads candidate vectors without copying them out of the HNSW graph.
    target = cache if cache is not None else Path(tempfile.mkdtemp()) / "index"
    t0 = time.perf_counter()
    index.save(target)
    size = tree_bytes(target) / 2**20
    files = ", ".join(
        f"{f.name} {f.stat().st_size / 2**20:.0f} MB" for f in target.iterdir() if f.is_file()
    )
    print(
        f"  saved in {time.perf_counter() - t0:.0f} s: {size:.0f} MB on disk "
        f"({per_vector(size, n, args.dim)}) [{files}]"
    )
    del index
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_SRC, str(target)], capture_output=True, text=True, check=True
    )
    seconds, mb = (float(v) for v in out.stdout.split())
    print(
        f"  load in a fresh process: {seconds:.1f} s, +{mb:.0f} MB resident after one search "
        f"({per_vector(mb, n, args.dim)}; graph in memory, float32 vectors memory-mapped)",
        flush=True,
    )
    return SliceIndex.load(target)


def build_milvus(args: argparse.Namespace, vols: Volumes, folder: Path) -> MilvusIndex:
    config = HnswConfig(M=args.M, ef_construction=args.ef_construction, ef_search=args.ef[0])
    n = sum(len(x) for _, x in vols)
    uri = folder / "slices.db"
    index = MilvusIndex(
        uri, args.dim, config=config, extractor_config=PrecomputedOnly().to_config()
    )
    server = children()
    t0 = time.perf_counter()
    for vid, x in vols:
        index.add(vid, x, slice_meta={"z_mm": np.arange(len(x)) * 1.5})
    insert = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.search(vols[0][1][:1], k=10)  # waits for the index build of the inserted rows
    first = time.perf_counter() - t0
    print(
        f"built MilvusIndex (Milvus Lite, {config}): insert {insert:.0f} s "
        f"({n / insert:,.0f} vectors/s), first search (index build) {first:.0f} s",
        flush=True,
    )
    for pid in server:
        hwm, rss = _status_mb(pid, "VmHWM"), _status_mb(pid, "VmRSS")
        print(
            f"  Milvus Lite server (pid {pid}): peak {hwm:.0f} MB, now {rss:.0f} MB resident "
            f"({per_vector(rss, n, args.dim)})"
        )
    size = tree_bytes(uri) / 2**20 if uri.exists() else float("nan")
    print(f"  on disk {size:.0f} MB ({per_vector(size, n, args.dim)})", flush=True)
    return index


def reload_milvus(index: MilvusIndex) -> None:
    """Flush, release and load the collection: Milvus Lite's ``load`` builds the HNSW
    index of every sealed segment synchronously (otherwise a background thread does)."""
    t0 = time.perf_counter()
    client = index._client  # the engine directly: cbirlib has no such call
    assert client is not None
    client.flush(index.collection)
    client.release_collection(index.collection)
    client.load_collection(index.collection)
    print(f"Milvus flush + release + load: {time.perf_counter() - t0:.0f} s", flush=True)


def time_queries(
    index: Store,
    queries: list[tuple[Volume, F32]],
    args: argparse.Namespace,
    stages: list[list[Hits]] | None = None,
) -> list[list[str]]:
    """Run the region queries through the chain; print latency; return each top 10.

    ``stages``, when given, receives the output of every stage for every timed query.
    """
    chain = (
        SliceSearch(PrecomputedOnly(), index, k=args.k, keep_blank=True)  # no voxels here
        >> CountVotes()
        >> MaxSimRerank(top=args.top)
        >> Localize()
        >> Cutoff(10)
    )
    print(f"chain on {type(index).__name__}: {chain!r}")
    totals: list[float] = []
    tops: list[list[str]] = []
    stage_times = np.zeros((len(queries) - 1, len(chain.stages)))
    for j, (region, region_emb) in enumerate(queries):  # the first query warms up
        t0 = time.perf_counter()
        hits = chain.retrieve(region, embeddings={region.id: region_emb})
        total = time.perf_counter() - t0
        assert len(hits) == 10 and (hits.rank == np.arange(1, 11)).all()
        # per-stage times on the same query
        ctx = SearchContext.for_queries(region)
        ctx.embeddings[region.id] = region_emb
        ctx.query_slices[region.id] = np.arange(len(region_emb), dtype=np.int64)
        h = Hits.empty("slice")
        times = []
        if stages is not None and j > 0:
            stages.append([])
        for st in chain.stages:
            t1 = time.perf_counter()
            h = st.transform(h, ctx)
            times.append(time.perf_counter() - t1)
            if stages is not None and j > 0:
                stages[-1].append(h)
        if j > 0:
            totals.append(total)
            stage_times[j - 1] = times
            tops.append([str(v) for v in hits.volume_id])

    t = np.array(totals)
    print(
        f"region query ({args.query_slices} slices, k={args.k}, top={args.top}) on "
        f"{len(index)} slices, dim {args.dim}, {len(t)} queries, {type(index).__name__}:"
    )
    print(
        f"  median {np.median(t) * 1e3:.1f} ms, p95 {np.percentile(t, 95) * 1e3:.1f} ms, "
        f"max {t.max() * 1e3:.1f} ms",
        flush=True,
    )
    for st, col in zip(chain.stages, stage_times.T, strict=True):
        print(f"    {st!r:<24} median {np.median(col) * 1e3:7.2f} ms")
    return tops


def build_exact(args: argparse.Namespace, vols: Volumes) -> ExactIndex:
    """The exact (brute-force) reference over the same volumes."""
    t0 = time.perf_counter()
    index = ExactIndex(args.dim, extractor_config=PrecomputedOnly().to_config())
    for vid, x in vols:
        index.add(vid, x, slice_meta={"z_mm": np.arange(len(x)) * 1.5})
    print(f"built ExactIndex in {time.perf_counter() - t0:.0f} s", flush=True)
    return index


def exhaustive_maxsim(
    vols: Volumes, queries: list[tuple[Volume, F32]]
) -> list[tuple[list[str], F32]]:
    """MaxSim of every timed region query against *every* volume: the ranking the chain
    approximates, as (volume ids best first, their scores)."""
    names = [vid for vid, _ in vols]
    offsets = np.concatenate([[0], np.cumsum([len(x) for _, x in vols])]).astype(np.int64)
    matrix = np.concatenate([x for _, x in vols])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)  # as the indexes store them
    out = []
    for _, emb in queries[1:]:
        q = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # as SliceSearch does
        scores = maxsim_match(q, matrix, offsets).scores
        order = np.lexsort((np.arange(len(scores)), -scores))
        out.append(([names[i] for i in order], scores[order].astype(np.float32)))
    return out


def _slice_keys(hits: Hits) -> dict[int, list[tuple[str, int]]]:
    """Per query slice, its hits as (volume id, slice index), best first."""
    out: dict[int, list[tuple[str, int]]] = {}
    order = np.lexsort((hits.rank, hits.query_slice))
    for i in order.tolist():
        key = (str(hits.volume_id[i]), int(hits.slice_index[i]))
        out.setdefault(int(hits.query_slice[i]), []).append(key)
    return out


def compare_with_exact(
    name: str,
    got: list[list[Hits]],
    ref: list[list[Hits]],
    ideal: list[tuple[list[str], F32]],
    args: argparse.Namespace,
    eps: float = 1e-6,
) -> None:
    """Each stage of a backend's chain against the same chain on the exact index.

    Slice search: recall@k of the (volume, slice) hits of every query slice, and the
    tie-aware recall (a hit counts when its similarity is at least the exact k-th best
    minus ``eps``). CountVotes: overlap of the ``top`` candidates passed to MaxSim. Final
    top 10: overlap with the exact chain's, and tie-aware (a volume counts when its
    MaxSim score, computed on the same stored vectors, is at least the exact chain's
    10th minus ``eps``). Also each top 10 against the exhaustive MaxSim top 10 (every
    volume re-ranked), which no candidate stage can beat.
    """
    recall, tie_recall, cand, top10, top10_tie, same, vs_ideal = ([] for _ in range(7))
    for g, r, (ideal_ids, _) in zip(got, ref, ideal, strict=True):
        g_keys, r_keys = _slice_keys(g[0]), _slice_keys(r[0])
        kth: dict[int, float] = {}
        for qs in np.unique(r[0].query_slice).tolist():
            rows = r[0].query_slice == qs
            kth[qs] = float(r[0].score[rows].min())
        for qs, keys in r_keys.items():
            recall.append(len(set(keys) & set(g_keys.get(qs, []))) / len(keys))
            rows = g[0].query_slice == qs
            tie_recall.append(float((g[0].score[rows] >= kth[qs] - eps).sum()) / len(keys))
        g_cand = {str(v) for v in g[1].volume_id[: args.top]}
        r_cand = {str(v) for v in r[1].volume_id[: args.top]}
        cand.append(len(g_cand & r_cand) / len(r_cand))
        g_top, r_top = [str(v) for v in g[-1].volume_id], [str(v) for v in r[-1].volume_id]
        top10.append(len(set(g_top) & set(r_top)) / 10)
        top10_tie.append(float((g[-1].score >= r[-1].score.min() - eps).mean()))
        same.append(g_top == r_top)
        vs_ideal.append(len(set(g_top) & set(ideal_ids[:10])) / 10)
    print(
        f"{name} vs the exact chain ({len(got)} region queries, k={args.k}, ef={args.ef}, "
        f"searched at ef={search_ef(args.ef, args.k)}): "
        f"slice search recall@{args.k} {np.mean(recall):.4f} (min {np.min(recall):.2f}), "
        f"tie-aware {np.mean(tie_recall):.4f}; MaxSim candidates (top {args.top}) "
        f"overlap {np.mean(cand):.3f}; top 10 overlap {np.mean(top10):.3f}, tie-aware "
        f"{np.mean(top10_tie):.3f}, identical order in {np.mean(same):.0%}; top 10 vs "
        f"exhaustive MaxSim top 10: {np.mean(vs_ideal):.3f}",
        flush=True,
    )


def describe_reference(
    ref: list[list[Hits]], ideal: list[tuple[list[str], F32]], args: argparse.Namespace
) -> None:
    """How close the exact chain's decisions are: vote ties at the candidate cut-off,
    MaxSim gaps at rank 10, and its own agreement with the exhaustive MaxSim top 10."""
    tied, gap10, ideal_gap, vs_ideal, missed = [], [], [], [], []
    for r, (ideal_ids, ideal_scores) in zip(ref, ideal, strict=True):
        votes = r[1].score
        cut = votes[min(args.top, len(votes)) - 1]
        tied.append(int((votes == cut).sum()))
        reranked = r[2].score
        gap10.append(float(reranked[9] - reranked[10]) if len(reranked) > 10 else np.nan)
        ideal_gap.append(float(ideal_scores[9] - ideal_scores[10]))
        top = {str(v) for v in r[-1].volume_id}
        vs_ideal.append(len(top & set(ideal_ids[:10])) / 10)
        cands = {str(v) for v in r[1].volume_id[: args.top]}
        missed.append(len(set(ideal_ids[:10]) - cands))
    print(
        f"exact chain: {np.median(tied):.0f} volumes (median; min {np.min(tied)}, max "
        f"{np.max(tied)}) share the vote count of candidate {args.top} (ties broken by "
        f"summed similarity); MaxSim gap rank 10 - 11 among the candidates median "
        f"{np.nanmedian(gap10):.2e} (min {np.nanmin(gap10):.2e}); exhaustive MaxSim gap "
        f"rank 10 - 11 median {np.median(ideal_gap):.2e} (min {np.min(ideal_gap):.2e}); "
        f"top 10 vs exhaustive MaxSim top 10: {np.mean(vs_ideal):.3f} (of the exhaustive "
        f"top 10, {np.mean(missed):.1f} on average not among the {args.top} candidates)",
        flush=True,
    )


def make_queries(
    c: F32, rng: np.random.Generator, args: argparse.Namespace
) -> list[tuple[Volume, F32]]:
    queries = []
    for j in range(args.queries + 1):
        n = 3 * args.query_slices
        lo = float(rng.uniform(0.0, 0.5))
        emb = volume_vectors(c, lo, lo + 0.5, n, rng)
        present = np.zeros((n, 1), bool)
        present[args.query_slices : 2 * args.query_slices] = True
        vol = Volume(
            f"query{j}", np.zeros((n, 2, 2), np.float32), labels=SliceLabels(("liver",), present)
        )
        region = region_query(vol, "liver")
        queries.append((region, emb[region.source_slices]))
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000, help="slices in the index")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--query-slices", type=int, default=40)
    parser.add_argument("--queries", type=int, default=20, help="timed region queries")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--M", type=int, default=HnswConfig().M)
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=HnswConfig().ef_construction,
        help="default: the library's (figures recorded before 2026-12-04 used 100)",
    )
    parser.add_argument(
        "--ef",
        type=int,
        nargs="+",
        default=[HnswConfig().ef_search],
        help="search ef (each value: one round of region queries per backend)",
    )
    parser.add_argument("--store-dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--parallel", action="store_true", help="multi-thread graph build")
    parser.add_argument("--backend", choices=["hnsw", "milvus", "both"], default="hnsw")
    parser.add_argument("--cache", default=None, help="directory to save / reuse the index")
    parser.add_argument(
        "--milvus-reload",
        action="store_true",
        help="then flush, release and load the Milvus collection (which builds the HNSW "
        "index of every sealed segment) and run the queries again at every --ef",
    )
    parser.add_argument(
        "--data",
        choices=["clustered", "anatomy"],
        default="clustered",
        help="the generator: this script's clustered one, or index_scale.py's anatomy one",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="also run the chain on an ExactIndex and compare every backend with it",
    )
    args = parser.parse_args()

    import index_scale  # the sibling benchmark (it imports this one)

    t0 = time.perf_counter()
    if args.data == "clustered":
        rng = np.random.default_rng(0)
        c = centers(args.dim, rng)
        vols = make_volumes(args.n, c, rng)
        queries = make_queries(c, rng, args)
    else:
        vols = index_scale.anatomy_volumes(args.n, args.dim)
        queries = index_scale.region_queries(args.dim, args.queries, args.query_slices)
    print(
        f"{sum(len(x) for _, x in vols):,} synthetic slices ({args.data}) in {len(vols):,} "
        f"volumes, dim {args.dim} (raw float32 {sum(x.nbytes for _, x in vols) / 2**20:,.0f} "
        f"MB), made in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores; "
        f"{index_scale.data_check(vols, np.random.default_rng(2))}",
        flush=True,
    )
    tops: dict[str, list[list[str]]] = {}
    ref: list[list[Hits]] = []
    ideal: list[tuple[list[str], F32]] = []
    if args.exact:
        exact = build_exact(args, vols)
        ideal = exhaustive_maxsim(vols, queries)
        time_queries(exact, queries, args, stages=ref)
        del exact
        describe_reference(ref, ideal, args)

    def run_backend(name: str, index: Store, efs: list[int]) -> None:
        for ef in efs:
            index.ef = ef
            stages: list[list[Hits]] = []
            tops[name if ef == args.ef[0] else f"{name} ef={ef}"] = time_queries(
                index, queries, args, stages=stages
            )
            if ref:
                compare_with_exact(
                    name, stages, ref, ideal, argparse.Namespace(**{**vars(args), "ef": ef})
                )

    if args.backend in ("hnsw", "both"):
        name = f"n{args.n}_d{args.dim}_M{args.M}_efc{args.ef_construction}"
        if args.data != "clustered":
            name = f"{args.data}_{name}"
        cache = Path(args.cache) / name if args.cache else None
        index = build_hnsw(args, vols, cache)
        run_backend("SliceIndex", index, args.ef)
        del index
    if args.backend in ("milvus", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            milvus = build_milvus(args, vols, Path(tmp))
            try:
                # Milvus Lite searches a segment exactly until a background thread has
                # built its HNSW index: the first round may run on unindexed segments.
                run_backend("MilvusIndex", milvus, args.ef[:1])
                if args.milvus_reload:
                    reload_milvus(milvus)
                    run_backend("MilvusIndex (reloaded)", milvus, args.ef)
            finally:
                milvus.drop()
    if "SliceIndex" in tops and "MilvusIndex" in tops:
        a, b = tops["SliceIndex"], tops["MilvusIndex"]
        overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)])
        same = np.mean([x == y for x, y in zip(a, b, strict=True)])
        print(
            f"top 10 of SliceIndex vs MilvusIndex (ef={args.ef[0]}): overlap {overlap:.3f}, "
            f"identical order in {same:.0%} of the queries"
        )


if __name__ == "__main__":
    main()
