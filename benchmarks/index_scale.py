"""Slice-index scale benchmark: build time, recall@10 vs exact, speed, bytes on disk / in memory.

Synthetic slice embeddings at TotalSegmentator scale (default 300,000 slice vectors,
dims 384 and 768). Two generators:

``anatomy`` (default)
    Every volume covers a random stretch of one shared body axis ``z`` (about 150-350
    slices). A slice is ``mean + (anatomy(z) + subject) @ basis + noise``: a component
    common to all CT slices, a smooth curve over the body axis shared by all subjects
    (in a 64-dimensional subspace), a per-subject offset with a small z shift and
    stretch, and per-slice isotropic noise. Cosine structure (printed as a data check):
    neighbouring slices ~0.99, the same level in another subject ~0.9, random pairs
    ~0.3 (0.07-0.87) -- as for pretrained-model embeddings of CT slices. Queries are
    slices of *other* subjects (not in the index), as in the study.
``walk``
    The first version of this benchmark: unrelated random walks in the full space
    (random pairs ~0 cosine; each volume a chain of near-identical slices), queries
    are indexed slices plus noise. Kept for comparison: its 10 nearest neighbours are
    mostly consecutive slices of one chain, i.e. near-ties.

Recall figures: ``recall@10`` is the overlap of the HNSW top 10 with the exact top 10;
``tie-aware`` counts a returned slice as correct when its exact similarity is at least
the exact 10th-best similarity minus 1e-6; ``dist ratio`` is the mean over queries of
sum(1 - s_hnsw) / sum(1 - s_exact) over the 10 results (1.0 = as close as exact).

Run small for a smoke test::

    python benchmarks/index_scale.py --n 20000 --dims 384

``--backend milvus`` also builds a :class:`~cbirlib.index.milvus.MilvusIndex` (a Milvus
Lite file in a temporary folder, or ``--uri http://host:19530``) from the same vectors in
the same run, and prints its insert rate, recall and query latency beside SliceIndex's.

Both backends also answer ``--region-queries`` region queries end to end (40 slices of a
held-out subject, ``SliceSearch(k=100) >> CountVotes() >> MaxSimRerank(top=20) >>
Localize() >> Cutoff(10)``, as ``region_query_latency.py``), and, on Milvus, the
chain's slice search is timed beside Milvus's grouping search for candidate volumes
(``group_by_field`` on the volume id), with how many groups it returns. ``--parallel``
builds the hnswlib graph with every core (not reproducible).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbirlib.index import ExactIndex, HnswConfig, MilvusIndex, SliceIndex
from cbirlib.labels import SliceLabels
from cbirlib.search import region_query
from cbirlib.volume import Volume

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark, also when imported
from region_query_latency import PrecomputedOnly, time_queries

Volumes = list[tuple[str, np.ndarray]]


def anatomy_volumes(
    n: int,
    dim: int,
    seed: int = 0,
    *,
    subject_seed: int | None = None,
    rank: int = 64,
    n_freq: int = 24,
    mean_w: float = 0.8,
    subject_w: float = 0.35,
    noise_w: float = 0.15,
) -> Volumes:
    """About ``n`` slice vectors of volumes along one shared anatomy (see module doc).

    ``seed`` fixes the anatomy (shared by all subjects), ``subject_seed`` the subjects.
    """
    rng = np.random.default_rng(seed)
    freq = np.arange(1, n_freq + 1)
    scale = np.sqrt(rank * (1.0 / freq**2).sum())
    coef = rng.normal(size=(2, n_freq, rank)) / freq[None, :, None] / scale  # smooth: 1/f
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T  # (rank, dim), orthonormal
    mean = rng.normal(size=dim)
    mean *= mean_w / np.linalg.norm(mean)
    rng = np.random.default_rng(seed + 1 if subject_seed is None else subject_seed)
    vols: Volumes = []
    total = 0
    while total < n:
        m = min(int(rng.integers(150, 350)), n - total)
        z0, extent = rng.uniform(0.0, 0.7), rng.uniform(0.2, 0.5)
        z = rng.uniform(0.95, 1.05) * np.linspace(z0, z0 + extent, m) + rng.uniform(-0.02, 0.02)
        angle = 2 * np.pi * z[:, None] * freq[None, :]
        curve = np.cos(angle) @ coef[0] + np.sin(angle) @ coef[1]
        subject = rng.normal(size=rank) * subject_w / np.sqrt(rank)
        noise = rng.normal(size=(m, dim)) * noise_w / np.sqrt(dim)
        x = mean + (curve + subject) @ basis + noise
        vols.append((f"vol{len(vols):05d}", x.astype(np.float32)))
        total += m
    return vols


def walk_volumes(n: int, dim: int, seed: int = 0) -> Volumes:
    """About ``n`` vectors in volumes of ~250 slices: random walks (the first generator)."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(30, dim)).astype(np.float32)
    vols: Volumes = []
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


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def data_check(vols: Volumes, rng: np.random.Generator) -> str:
    """Percentiles (5/50/95) of the cosine of neighbouring slices and of random pairs."""
    nb = np.concatenate([(unit(x[1:]) * unit(x[:-1])).sum(axis=1) for _, x in vols[:200]])
    allx = np.concatenate([x for _, x in vols[:400]])
    i, j = rng.integers(len(allx), size=(2, 20000))
    rand = (unit(allx[i]) * unit(allx[j])).sum(axis=1)
    fmt = lambda a: "/".join(f"{v:.3f}" for v in np.percentile(a, [5, 50, 95]))  # noqa: E731
    return f"cosine p5/p50/p95: neighbouring slices {fmt(nb)}, random pairs {fmt(rand)}"


def make_queries(kind: str, n_db: int, dim: int, n_queries: int, vols: Volumes) -> np.ndarray:
    rng = np.random.default_rng(1)
    if kind == "anatomy":  # slices of other subjects, along the same anatomy
        others = np.concatenate(
            [x for _, x in anatomy_volumes(n_queries * 20, dim, subject_seed=99)]
        )
        return others[rng.choice(len(others), n_queries, replace=False)]
    allx = np.concatenate([x for _, x in vols])
    queries = allx[rng.choice(n_db, n_queries, replace=False)]
    return queries + rng.normal(scale=0.3 / np.sqrt(dim), size=queries.shape)


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


_LOAD_SRC = """
import sys, time
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from cbirlib.index import SliceIndex
r0 = rss(); t = time.perf_counter()
index = SliceIndex.load(sys.argv[1])
print(time.perf_counter() - t, rss() - r0)
"""


def load_in_subprocess(path: Path) -> tuple[float, float]:
    """Seconds to load the index and the resident memory it adds, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_SRC, str(path)], capture_output=True, text=True, check=True
    )
    seconds, mb = (float(v) for v in out.stdout.split())
    return seconds, mb


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def evaluate(
    hnsw: SliceIndex | MilvusIndex,
    exact: ExactIndex,
    queries: np.ndarray,
    efs: list[int],
    k: int = 10,
) -> None:
    t = time.perf_counter()
    ref = exact.search(queries, k=k)
    t_exact = time.perf_counter() - t
    print(f"exact search: {t_exact / len(queries) * 1e3:.2f} ms/query", flush=True)
    ref_keys = [
        set(zip(ref.volume_ids[i], ref.slice_indices[i], strict=True)) for i in range(len(queries))
    ]
    q = unit(queries.astype(np.float32))
    kth = ref.scores[:, -1]
    dist_exact = (1.0 - ref.scores).sum(axis=1)
    for ef in efs:
        hnsw.ef = ef
        t = time.perf_counter()
        got = hnsw.search(queries, k=k)
        t_h = time.perf_counter() - t
        hits = [
            len(ref_keys[i] & set(zip(got.volume_ids[i], got.slice_indices[i], strict=True)))
            for i in range(len(queries))
        ]
        # exact similarity of each returned slice, from the stored vectors
        sims = np.array(
            [
                [
                    float(q[i] @ exact.vectors(v)[s])
                    for v, s in zip(got.volume_ids[i], got.slice_indices[i], strict=True)
                ]
                for i in range(len(queries))
            ]
        )
        tie_aware = (sims >= kth[:, None] - 1e-6).mean()
        ratio = np.mean((1.0 - sims).sum(axis=1) / np.maximum(dist_exact, 1e-12))
        print(
            f"  ef={ef:4d}: recall@10 {np.mean(hits) / k:.4f}  tie-aware {tie_aware:.4f}  "
            f"dist ratio {ratio:.5f}  {t_h / len(queries) * 1e3:.3f} ms/query  "
            f"speed-up vs exact {t_exact / t_h:.1f}x",
            flush=True,
        )


def latency(index: SliceIndex | MilvusIndex, queries: np.ndarray, k: int = 10) -> str:
    """Median and p95 of single-query searches (one request per query vector)."""
    index.search(queries[:1], k=k)
    times = []
    for row in queries:
        t = time.perf_counter()
        index.search(row[None], k=k)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return (
        f"one query at a time (k={k}, ef={index.ef}, {len(ms)} queries): median "
        f"{np.median(ms):.2f} ms, p95 {np.percentile(ms, 95):.2f} ms"
    )


def region_queries(dim: int, n: int, n_slices: int = 40) -> list[tuple[Volume, np.ndarray]]:
    """``n + 1`` region queries (the first warms up): 40 slices of held-out subjects."""
    out = []
    for j, (_, x) in enumerate(anatomy_volumes((n + 1) * 400, dim, subject_seed=99)[: n + 1]):
        m = min(len(x), 3 * n_slices)
        present = np.zeros((m, 1), bool)
        present[(m - n_slices) // 2 : (m - n_slices) // 2 + n_slices] = True
        vol = Volume(
            f"query{j}", np.zeros((m, 2, 2), np.float32), labels=SliceLabels(("liver",), present)
        )
        region = region_query(vol, "liver")
        out.append((region, x[region.source_slices].astype(np.float32)))
    return out


def chain_args(dim: int) -> argparse.Namespace:
    return argparse.Namespace(k=100, top=20, query_slices=40, dim=dim)


def grouping_search(index: MilvusIndex, block: np.ndarray, n_groups: int) -> list[set[str]]:
    """Milvus's grouping search on the volume id (one slice per volume): the volumes."""
    q = unit(block.astype(np.float32))
    result = index._client.search(  # the engine directly: cbirlib has no such call
        index.collection,
        data=q,
        limit=n_groups,
        group_by_field="volume_id",
        group_size=1,
        output_fields=["volume_id"],
        search_params={"metric_type": "IP", "params": {"ef": max(index.ef, n_groups)}},
    )
    return [{str(hit["entity"]["volume_id"]) for hit in hits} for hits in result]


def grouping_vs_slices(index: MilvusIndex, regions: list[tuple[Volume, np.ndarray]]) -> None:
    """The chain's slice search (k=100) beside Milvus's grouping search for volumes."""
    times: dict[str, list[float]] = {"search(k=100)": [], "group 20": [], "group 100": []}
    distinct, got, covered = [], {20: [], 100: []}, []
    for _, emb in regions[1:]:
        t = time.perf_counter()
        m = index.search(emb, k=100)
        times["search(k=100)"].append(time.perf_counter() - t)
        voted = [set(r) for r in m.volume_ids]
        distinct.extend(len(v) for v in voted)
        for n in (20, 100):
            t = time.perf_counter()
            groups = grouping_search(index, emb, n)
            times[f"group {n}"].append(time.perf_counter() - t)
            got[n].extend(len(g) for g in groups)
            if n == 100:
                covered.extend(len(v & g) / len(v) for v, g in zip(voted, groups, strict=True))
    print(
        f"  40-slice query blocks on Milvus: volumes among a slice's 100 nearest slices: "
        f"median {np.median(distinct):.0f} (p5 {np.percentile(distinct, 5):.0f}, "
        f"p95 {np.percentile(distinct, 95):.0f}); grouping search (group_by_field=volume_id, "
        f"group_size=1) returned median {np.median(got[20]):.0f} groups of limit=20 "
        f"(min {min(got[20])}), {np.median(got[100]):.0f} of limit=100 (min {min(got[100])}); "
        f"it holds {np.mean(covered):.3f} of the volumes the 100 nearest slices vote for"
    )
    for name, values in times.items():
        ms = np.array(values) * 1e3
        what = name if name.startswith("search") else f"grouping limit={name[6:]}"
        print(f"    {what:<22} median {np.median(ms):7.1f} ms  p95 {np.percentile(ms, 95):7.1f} ms")


#: Index build and search parameters of the Milvus index types compared (``--milvus-index``).
#: Milvus Lite 3.2.2 builds HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8 and BRUTE_FORCE only; it
#: accepts IVF_PQ and DISKANN in a schema but then fails the build ("reserved for a future
#: phase") and searches brute force, so those two need a Milvus server.
INDEX_TYPES: dict[str, tuple[dict[str, Any], list[dict[str, int]]]] = {
    "HNSW": ({"M": 16, "efConstruction": 200}, [{"ef": 64}, {"ef": 128}]),
    "HNSW_SQ": (
        {"M": 16, "efConstruction": 200, "sq_type": "SQ8"},
        [{"ef": 64}, {"ef": 128}],
    ),
    "IVF_FLAT": ({"nlist": 1024}, [{"nprobe": 16}, {"nprobe": 64}]),
    "IVF_SQ8": ({"nlist": 1024}, [{"nprobe": 16}, {"nprobe": 64}]),
}


def milvus_index_types(
    vols: Volumes, exact: ExactIndex, queries: np.ndarray, types: list[str], k: int = 10
) -> None:
    """Recall@10 against exact search and bytes on disk of other Milvus index types.

    The vectors go into a bare collection (primary key + vector) of a Milvus Lite file
    for each index type.
    """
    from pymilvus import DataType, MilvusClient

    dim = vols[0][1].shape[1]
    offsets, label = {}, 0
    for vid, x in vols:
        offsets[vid] = label
        label += len(x)
    ref = exact.search(queries, k=k)
    truth = [
        {offsets[v] + int(s) for v, s in zip(ref.volume_ids[i], ref.slice_indices[i], strict=True)}
        for i in range(len(queries))
    ]
    allx = unit(np.concatenate([x for _, x in vols]).astype(np.float32))
    q = unit(queries.astype(np.float32))
    for kind in types:
        build, searches = INDEX_TYPES[kind]
        with tempfile.TemporaryDirectory() as tmp:
            client = MilvusClient(str(Path(tmp) / "types.db"))
            schema = MilvusClient.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("v", DataType.FLOAT_VECTOR, dim=dim)
            params = client.prepare_index_params()
            params.add_index("v", index_type=kind, metric_type="IP", params=build)
            client.create_collection("t", schema=schema, index_params=params)
            t = time.perf_counter()
            step = max(1, (16 << 20) // (4 * dim + 16))
            for first in range(0, len(allx), step):
                rows = allx[first : first + step]
                client.insert("t", [{"id": first + i, "v": r} for i, r in enumerate(rows)])
            client.search("t", data=q[:1], limit=k)  # waits for the index
            built = time.perf_counter() - t
            size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
            mb, ratio = size / 1e6, size / allx.nbytes
            print(f"Milvus Lite {kind} {build}: insert + build {built:.0f} s, disk {mb:.0f} MB")
            print(f"  = {ratio:.3f}x raw", flush=True)
            for sp in searches:
                t = time.perf_counter()
                result = client.search(
                    "t", data=q, limit=k, search_params={"metric_type": "IP", "params": sp}
                )
                took = time.perf_counter() - t
                hits = [len(truth[i] & {int(h["id"]) for h in r}) for i, r in enumerate(result)]
                print(
                    f"  {sp}: recall@10 {np.mean(hits) / k:.4f}  "
                    f"{took / len(q) * 1e3:.2f} ms/query ({len(q)} queries in one request)",
                    flush=True,
                )
            client.drop_collection("t")
            client.close()


def run_milvus(
    vols: Volumes,
    exact: ExactIndex,
    queries: np.ndarray,
    config: HnswConfig,
    efs: list[int],
    uri: str | None,
    regions: list[tuple[Volume, np.ndarray]],
) -> list[list[str]]:
    """Insert rate, recall and latency of a MilvusIndex holding the same vectors."""
    dim = vols[0][1].shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        target = uri or str(Path(tmp) / "bench.db")
        name = f"bench_{os.getpid()}"
        index = MilvusIndex(
            target,
            dim,
            collection=name,
            config=config,
            extractor_config=PrecomputedOnly().to_config(),
        )
        try:
            n = sum(len(x) for _, x in vols)
            t = time.perf_counter()
            for vid, x in vols:
                index.add(vid, x, slice_meta={"z_mm": np.arange(len(x)) * 1.5})
            build = time.perf_counter() - t
            print(f"Milvus ({target}) insert: {build:.1f} s ({n / build:,.0f} vectors/s)")
            t = time.perf_counter()
            index.search(queries[:1], k=10)  # the first search builds the index
            print(f"  first search (index build): {time.perf_counter() - t:.1f} s", flush=True)
            evaluate(index, exact, queries, efs)
            index.ef = config.ef_search
            print("  " + latency(index, queries[:50]), flush=True)
            tops = time_queries(index, regions, chain_args(dim)) if regions else []
            if regions:
                grouping_vs_slices(index, regions)
            if not uri:
                size = sum(f.stat().st_size for f in Path(target).rglob("*") if f.is_file())
                raw = size / (4 * n * dim)
                print(f"  Milvus Lite file: {size / 1e6:.0f} MB on disk = {raw:.3f}x raw")
        finally:
            index.drop()
    return tops


def run(
    kind: str,
    n: int,
    dim: int,
    config: HnswConfig,
    n_queries: int,
    efs: list[int],
    backend: str = "hnsw",
    uri: str | None = None,
    n_regions: int = 20,
    index_types: list[str] | None = None,
) -> None:
    vols = anatomy_volumes(n, dim) if kind == "anatomy" else walk_volumes(n, dim)
    raw = sum(x.nbytes for _, x in vols)
    n = sum(len(x) for _, x in vols)
    print(
        f"\n=== data={kind} n={n:,} dim={dim} volumes={len(vols)} {config} "
        f"raw float32 {raw / 1e6:.0f} MB",
        flush=True,
    )
    print(data_check(vols, np.random.default_rng(2)), flush=True)

    rss0 = rss_mb()
    t = time.perf_counter()
    hnsw = SliceIndex(dim, config=config, extractor_config=PrecomputedOnly().to_config())
    for vid, x in vols:
        hnsw.add(vid, x, slice_meta={"z_mm": np.arange(len(x)) * 1.5})
    build = time.perf_counter() - t
    rss_built = rss_mb() - rss0
    print(
        f"HNSW build: {build:.1f} s ({n / build:,.0f} vectors/s, {os.cpu_count()} cores); "
        f"memory +{rss_built:.0f} MB = {rss_built * 1e6 / raw:.2f}x raw before saving "
        f"(graph + in-memory float32 copy)",
        flush=True,
    )
    exact = ExactIndex(dim)
    for vid, x in vols:
        exact.add(vid, x)
    queries = make_queries(kind, n, dim, n_queries, vols)
    evaluate(hnsw, exact, queries, efs)
    hnsw.ef = config.ef_search
    print("  " + latency(hnsw, queries[:50]), flush=True)
    regions = region_queries(dim, n_regions) if n_regions else []
    tops = time_queries(hnsw, regions, chain_args(dim)) if regions else []
    if backend == "milvus" and index_types:
        milvus_index_types(vols, exact, queries, index_types)
    if backend == "milvus":
        other = run_milvus(vols, exact, queries, config, efs, uri, regions)
        if tops:
            pairs = list(zip(tops, other, strict=True))
            overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])
            same = np.mean([a == b for a, b in pairs])
            print(
                f"region queries, top 10 of SliceIndex vs MilvusIndex: overlap {overlap:.3f}, "
                f"identical order in {same:.0%}",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hnsw"
        rss1 = rss_mb()
        t = time.perf_counter()
        hnsw.save(path)
        t_save = time.perf_counter() - t
        print(
            f"hnsw save {t_save:.1f} s; memory after save {rss_mb() - rss1:+.0f} MB "
            f"(the in-memory copy is freed; vectors now read from the saved file)"
        )
        files = {f.name: f.stat().st_size for f in path.iterdir()}
        size = dir_bytes(path)
        big = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in files.items() if v > 1e6)
        print(f"hnsw (float32 store): disk {size / 1e6:.0f} MB = {size / raw:.3f}x raw [{big}]")
        del hnsw
        t_load, rss_loaded = load_in_subprocess(path)
        print(
            f"  load {t_load:.1f} s; memory +{rss_loaded:.0f} MB = {rss_loaded * 1e6 / raw:.2f}x "
            f"raw after load in a fresh process (hnswlib graph; vectors() memory-mapped)"
        )
        exact16 = ExactIndex(dim, config=HnswConfig(store_dtype="float16"))
        for vid, x in vols:
            exact16.add(vid, x)
        for name, index in (("exact float32", exact), ("exact float16", exact16)):
            p = Path(tmp) / name.replace(" ", "_")
            index.save(p)
            print(f"{name} store: disk {dir_bytes(p) / 1e6:.0f} MB = {dir_bytes(p) / raw:.3f}x raw")
        f16 = (Path(tmp) / "exact_float16" / "vectors.npy").stat().st_size
        print(
            f"hnsw float16 store: disk {(size + f16) / 1e6:.0f} MB = {(size + f16) / raw:.3f}x "
            f"raw (the float32 graph file + a {f16 / 1e6:.0f} MB float16 vectors.npy)"
        )
    per = 4 * (2 * config.M + 1) + 4 * dim + 8
    print(
        f"hnswlib level-0 record {per} B/vector = {per / (4 * dim):.3f}x raw "
        f"(+ upper levels ~{4 * (config.M + 1) / config.M / (4 * dim):.3f}x)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000, help="number of slice vectors")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--data", choices=["anatomy", "walk"], default="anatomy")
    parser.add_argument("--M", type=int, nargs="+", default=[HnswConfig().M])
    parser.add_argument("--ef-construction", type=int, default=HnswConfig().ef_construction)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--backend",
        choices=["hnsw", "milvus"],
        default="hnsw",
        help="milvus: also measure a MilvusIndex on the same vectors, in the same run",
    )
    parser.add_argument("--uri", help="Milvus server URL (default: a temporary Milvus Lite file)")
    parser.add_argument("--region-queries", type=int, default=20, help="0: none")
    parser.add_argument("--parallel", action="store_true", help="multi-thread graph build")
    parser.add_argument(
        "--milvus-index",
        nargs="+",
        choices=sorted(INDEX_TYPES),
        default=[],
        help="with --backend milvus: also the recall and disk size of these Milvus index types",
    )
    args = parser.parse_args()
    for dim in args.dims:
        for m in args.M:
            cfg = HnswConfig(
                M=m, ef_construction=args.ef_construction, deterministic=not args.parallel
            )
            run(
                args.data,
                args.n,
                dim,
                cfg,
                args.queries,
                args.ef,
                args.backend,
                args.uri,
                args.region_queries,
                args.milvus_index,
            )


if __name__ == "__main__":
    main()
