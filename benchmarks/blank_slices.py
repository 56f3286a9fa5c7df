"""Blank slices: how much they vote, what they do to rankings, and what flagging costs.

Database: ``--subjects`` phantom CTs (:func:`cbirlib.datasets.phantom.make_phantoms`),
every ``--padded-every``-th one padded with ``--pad`` slices of air (-1000 HU, noise
20 HU) below and above. Queries: a re-scan of every subject (every 2nd slice, new noise
of 30 HU), padded with ``--pad`` air slices below and above; the right answer is the
subject itself. Each query is answered with count votes and with MaxSim re-ranking (top 5),
with blank slices kept (``keep_blank=True``, the behaviour before the flags) and left
out (the default), using the ``baseline`` extractor and an exact index.

Printed: the share of slice hits cast by blank query slices, top-1 accuracy and mean
rank of the right volume, the search time, and the cost of computing the flags at
build time relative to embedding the same volumes.

Usage: ``python benchmarks/blank_slices.py [--subjects 10] [--shape 32] [--pad 30]
[--padded-every 2] [--k 10]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cbirlib.aggregate import CountVotes
from cbirlib.datasets.phantom import make_phantoms
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.index import build_index
from cbirlib.informative import slice_flags
from cbirlib.rerank import MaxSimRerank
from cbirlib.search import SliceSearch
from cbirlib.volume import Volume


def padded(
    vid: str,
    array: npt.NDArray[np.float32],
    spacing: tuple[float, float, float],
    pad: int,
    seed: int,
) -> Volume:
    rng = np.random.default_rng(seed)
    air = rng.normal(-1000.0, 20.0, (2 * pad, *array.shape[1:])).astype(np.float32)
    return Volume(vid, np.concatenate([air[:pad], array, air[pad:]]), spacing=spacing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--shape", type=int, default=32)
    parser.add_argument("--pad", type=int, default=30)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--padded-every", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    ds = make_phantoms(work / "data", args.subjects, shape=(args.shape, args.shape), seed=0)
    subjects = list(ds.subjects)
    raw = {s: ds.load(s, labels=False) for s in subjects}
    db = [
        padded(s, v.array, v.spacing, args.pad, seed=i)
        if i % args.padded_every == args.padded_every - 1
        else v
        for i, (s, v) in enumerate(raw.items())
    ]
    queries, bodies = [], {}
    for i, (s, v) in enumerate(raw.items()):
        rng = np.random.default_rng(100 + i)
        body = v.array[::2] + rng.normal(0, 30, v.array[::2].shape).astype(np.float32)
        spacing = (2 * v.spacing[0], v.spacing[1], v.spacing[2])
        queries.append(padded(f"q:{s}", body, spacing, args.pad, seed=200 + i))
        bodies[f"q:{s}"] = len(body)
    ex = BaselineExtractor()
    t0 = time.perf_counter()
    for v in db:
        ex.extract(v)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    for v in db:
        slice_flags(ex, v)
    t_flags = time.perf_counter() - t0
    index = build_index(db, ex, work / "idx", exact=True, verbose=False)
    n_db = sum(v.n_slices for v in db)
    print(
        f"{len(db)} database volumes ({n_db} slices, {index.n_uninformative} flagged blank), "
        f"{len(queries)} queries ({sum(v.n_slices for v in queries)} slices), "
        f"{args.shape}x{args.shape} px, pad {args.pad}, k={args.k}"
    )
    print(f"flags cost {t_flags / t_embed:.3f}x the embedding time (baseline extractor)")
    print()
    print("| keep_blank | blank share of hits | votes top-1 | votes mean rank | MaxSim top-1 "
          "| MaxSim mean rank | embed+search s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for keep in (True, False):
        search = SliceSearch(ex, index, k=args.k, keep_blank=keep)
        t0 = time.perf_counter()
        hits = search.retrieve(queries)
        t_search = time.perf_counter() - t0
        share = []
        for q in queries:
            h = hits.for_query(q.id)
            n_body = bodies[q.id]
            blank = (h.query_slice < args.pad) | (h.query_slice >= args.pad + n_body)
            share.append(float(blank.mean()) if len(h) else 0.0)
        row = [str(keep), f"{np.mean(share):.2f}"]
        for chain in (
            search >> CountVotes(),
            search >> CountVotes() >> MaxSimRerank(top=5, keep_blank=keep),
        ):
            out = chain.retrieve(queries)
            ranks = []
            for q in queries:
                vids = list(out.for_query(q.id).volume_id)
                right = q.id.removeprefix("q:")
                ranks.append(vids.index(right) + 1 if right in vids else len(db))
            r = np.asarray(ranks)
            row += [f"{(r == 1).mean():.2f}", f"{r.mean():.2f}"]
        row.append(f"{t_search:.2f}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
