"""MaxSim re-ranking speed: against one matrix product, per-candidate loops and the old code.

In one run, on random unit vectors (candidates of ``--min-slices``..``--max-slices``
slices, a query of ``--query-slices`` slices, dimension ``--dim``):

1. **Scoring** ``--candidates`` candidates, with the matched slices and their similarity
   (what :class:`~cbirlib.rerank.MaxSimRerank` needs), timed against

   * one matrix product of the same size, query slices x all candidate slices (the
     floor; target: within 1.1x),
   * a per-candidate numpy loop, one product per candidate: scores only, and scores with
     the matches (target: faster than both),
   * the previous implementation (kept below as ``old_maxsim_scores``: one product, then
     a segmented max and a first-position pass over the whole similarity matrix),

   with all slices taking part, and with ``--blank`` of the candidate slices blank
   (the old stage copied the informative rows, then scored them and recomputed the
   match similarities in float64; the new one masks the blank columns).
2. **The stage** (``MaxSimRerank.transform`` on an :class:`~cbirlib.index.ExactIndex`),
   old and new, and the index's ``vectors_for`` alone (fetching the candidates' vectors,
   which both pay).
3. **Cost by candidate count**: 10, 100 and 1,000 candidates (``--counts``), new vs the
   floor, per query.
4. **The torch path** on the CPU (float32, bfloat16) at ``--candidates``, and its largest
   score difference from NumPy.

Every time is the best of ``--repeat`` rounds; within a round the methods run one after
the other, so a busy machine slows them alike. Usage::

    nice -n 19 python benchmarks/rerank_speed.py [--candidates 100] [--dim 768] ...
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from cbirlib.hits import Hits
from cbirlib.index import ExactIndex
from cbirlib.pipeline import SearchContext
from cbirlib.rerank import TOLERANCE, MaxSimRerank, maxsim_match

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


# --- the previous implementation (cbirlib/rerank.py before the blocked version) ----------


def old_maxsim_scores(
    queries: F32, vectors: F32, offsets: I64
) -> tuple[npt.NDArray[np.float64], I64]:
    """The previous ``maxsim_scores``, unchanged."""
    offsets = np.asarray(offsets, dtype=np.int64)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    sims = queries @ vectors.T
    best = np.maximum.reduceat(sims, starts, axis=1)
    cols = np.arange(sims.shape[1], dtype=np.int64)
    is_best = sims >= np.repeat(best, lengths, axis=1)
    position = np.where(is_best, cols, sims.shape[1])
    argmax = np.minimum.reduceat(position, starts, axis=1) - starts
    scores = best.mean(axis=0, dtype=np.float64)
    return scores, argmax.astype(np.int64)


def old_score_query(
    q: F32,
    vectors: F32,
    offsets: I64,
    rows: list[npt.NDArray[np.bool_]] | None,
    slice_ids: list[I64] | None = None,
) -> tuple[npt.NDArray[np.float64], dict[int, tuple[I64, npt.NDArray[np.float64]]]]:
    """The previous stage's scoring of one query: copy the kept rows, score them, then per
    candidate look up the matched slices and recompute their similarity in float64."""
    if slice_ids is None:
        slice_ids = [np.arange(b - a) for a, b in itertools.pairwise(offsets)]
    if rows is not None:
        vectors = vectors[np.concatenate(rows)]
        slice_ids = [i[r] for i, r in zip(slice_ids, rows, strict=True)]
        offsets = np.concatenate([[0], np.cumsum([len(i) for i in slice_ids])])
    scores, argmax = old_maxsim_scores(q, vectors, offsets.astype(np.int64))
    evidence = {}
    for j in range(len(offsets) - 1):
        best = vectors[offsets[j] + argmax[:, j]]
        sims = np.einsum("td,td->t", q, best, dtype=np.float64)
        evidence[j] = (slice_ids[j][argmax[:, j]], sims)
    return scores, evidence


def old_transform(index: ExactIndex, q: F32, vids: list[str]) -> npt.NDArray[np.float64]:
    """The previous ``MaxSimRerank.transform`` work for one query (blank slices left out):
    the scores in ranked order."""
    vectors, offsets = index.vectors_for(vids)
    metas = [index.slice_meta(v) for v in vids]
    slice_ids = [np.asarray(m["slice_index"], np.int64) for m in metas]
    rows = [np.asarray(m["informative"], bool) for m in metas]
    if all(r.all() for r in rows):
        scores, _ = old_score_query(q, vectors, offsets, None, slice_ids)
    else:
        scores, _ = old_score_query(q, vectors, offsets, rows, slice_ids)
    return scores[np.argsort(-scores, kind="stable")]


# --- per-candidate loops -------------------------------------------------------------------


def loop_scores(q: F32, vectors: F32, offsets: I64) -> list[float]:
    """One matrix product per candidate, scores only."""
    return [float((q @ vectors[a:b].T).max(axis=1).mean()) for a, b in itertools.pairwise(offsets)]


def loop_matches(q: F32, vectors: F32, offsets: I64) -> list[tuple[float, I64, F32]]:
    """One matrix product per candidate, with the matched rows and their similarity."""
    out = []
    rows = np.arange(len(q))
    for a, b in itertools.pairwise(offsets):
        sims = q @ vectors[a:b].T
        pos = sims.argmax(axis=1)
        best = sims[rows, pos]
        out.append((float(best.mean()), pos, best))
    return out


# --- helpers ---------------------------------------------------------------------------------


def unit(rng: np.random.Generator, n: int, d: int) -> F32:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def candidates(rng: np.random.Generator, count: int, lo: int, hi: int, dim: int) -> tuple[F32, I64]:
    lengths = rng.integers(lo, hi + 1, count)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return unit(rng, int(offsets[-1]), dim), offsets


def blank_mask(rng: np.random.Generator, offsets: I64, share: float) -> npt.NDArray[np.bool_]:
    """Blank slices at both ends of each candidate, ``share`` of them in all."""
    keep = np.ones(int(offsets[-1]), bool)
    for a, b in itertools.pairwise(offsets):
        cut = round((b - a) * share / 2)
        keep[a : a + cut] = False
        keep[b - cut : b] = False
    return keep


def race(
    funcs: dict[str, Callable[[], object]], repeat: int, *, warm_up: bool = True
) -> dict[str, float]:
    """Best time of each function over ``repeat`` rounds (all of them once per round)."""
    best = dict.fromkeys(funcs, np.inf)
    for func in funcs.values() if warm_up else ():  # first touch, thread pools
        func()
    for _ in range(repeat):
        for name, func in funcs.items():
            t0 = time.perf_counter()
            func()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def table(times: dict[str, float], floor: str, rows: list[str]) -> None:
    for name in rows:
        t = times[name]
        print(f"  {name:<46} {t * 1e3:9.1f} ms   {t / times[floor]:5.2f}x floor")


# --- the benchmark -------------------------------------------------------------------------


def scoring(args: argparse.Namespace, rng: np.random.Generator) -> None:
    q = unit(rng, args.query_slices, args.dim)
    vectors, offsets = candidates(rng, args.candidates, args.min_slices, args.max_slices, args.dim)
    keep = blank_mask(rng, offsets, args.blank)
    rows = [keep[a:b] for a, b in itertools.pairwise(offsets)]
    new = maxsim_match(q, vectors, offsets)
    old_scores, old_arg = old_maxsim_scores(q, vectors, offsets)
    assert np.abs(new.scores - old_scores).max() <= 1e-6 and (new.argmax == old_arg).all()
    assert np.abs(new.scores - loop_scores(q, vectors, offsets)).max() <= 1e-5
    masked = maxsim_match(q, vectors, offsets, keep=keep)
    old_masked, _ = old_score_query(q, vectors, offsets, rows)
    assert np.abs(masked.scores - old_masked).max() <= 1e-6

    print(
        f"1. Scoring {args.candidates} candidates x {args.min_slices}-{args.max_slices} slices "
        f"({len(vectors)} in all), query {args.query_slices} slices, dim {args.dim}"
    )
    kept = vectors[keep]
    times = race(
        {
            "one matrix product (floor)": lambda: q @ vectors.T,
            "per-candidate loop, scores only": lambda: loop_scores(q, vectors, offsets),
            "per-candidate loop, scores + matches": lambda: loop_matches(q, vectors, offsets),
            "old maxsim_scores": lambda: old_maxsim_scores(q, vectors, offsets),
            "new maxsim_match": lambda: maxsim_match(q, vectors, offsets),
            "floor, kept rows only": lambda: q @ kept.T,
            "old scoring with blank rows (copy + einsum)": lambda: old_score_query(
                q, vectors, offsets, rows
            ),
            "new maxsim_match with blank rows (keep=)": lambda: maxsim_match(
                q, vectors, offsets, keep=keep
            ),
        },
        args.repeat,
    )
    table(
        times,
        "one matrix product (floor)",
        [
            "one matrix product (floor)",
            "per-candidate loop, scores only",
            "per-candidate loop, scores + matches",
            "old maxsim_scores",
            "new maxsim_match",
        ],
    )
    new_t = times["new maxsim_match"]
    print(
        f"  new vs per-candidate loop: {times['per-candidate loop, scores only'] / new_t:.2f}x "
        f"(scores only), {times['per-candidate loop, scores + matches'] / new_t:.2f}x "
        f"(with matches) faster; vs old: {times['old maxsim_scores'] / new_t:.2f}x faster"
    )
    print(f"  with {args.blank:.0%} of the candidate slices blank:")
    table(
        times,
        "one matrix product (floor)",
        [
            "floor, kept rows only",
            "old scoring with blank rows (copy + einsum)",
            "new maxsim_match with blank rows (keep=)",
        ],
    )


def stage(args: argparse.Namespace, rng: np.random.Generator) -> None:
    q = unit(rng, args.query_slices, args.dim)
    vectors, offsets = candidates(rng, args.candidates, args.min_slices, args.max_slices, args.dim)
    keep = blank_mask(rng, offsets, args.blank)
    index = ExactIndex(args.dim)
    vids = [f"v{j:04d}" for j in range(args.candidates)]
    for j, vid in enumerate(vids):
        a, b = offsets[j], offsets[j + 1]
        index.add(vid, vectors[a:b], slice_meta={"informative": keep[a:b]})
    votes = Hits(
        query_id=["q"] * len(vids),
        volume_id=vids,
        score=np.arange(len(vids), 0, -1, dtype=np.float64),
        level="volume",
    )
    rerank = MaxSimRerank(top=len(vids))

    def new() -> Hits:
        return rerank.transform(votes, SearchContext(index=index, embeddings={"q": q}))

    np.testing.assert_allclose(new().score, old_transform(index, q, vids), atol=1e-6)
    times = race(
        {
            "index.vectors_for (fetch, both pay it)": lambda: index.vectors_for(vids),
            "one matrix product (floor)": lambda: q @ vectors.T,
            "old MaxSimRerank.transform": lambda: old_transform(index, q, vids),
            "new MaxSimRerank.transform": new,
        },
        args.repeat,
    )
    print(
        f"2. The stage, {args.candidates} candidates ({args.blank:.0%} of slices blank), ExactIndex"
    )
    table(times, "one matrix product (floor)", list(times))
    speedup = times["old MaxSimRerank.transform"] / times["new MaxSimRerank.transform"]
    print(f"  new stage vs old: {speedup:.2f}x faster")


def by_count(args: argparse.Namespace, rng: np.random.Generator) -> None:
    print(
        f"3. Cost by candidate count ({args.min_slices}-{args.max_slices} slices each, "
        f"query {args.query_slices} slices, dim {args.dim})"
    )
    q = unit(rng, args.query_slices, args.dim)
    for count in args.counts:
        vectors, offsets = candidates(rng, count, args.min_slices, args.max_slices, args.dim)
        large = count > 100
        times = race(
            {
                "floor": lambda v=vectors: q @ v.T,  # type: ignore[misc]
                "new": lambda v=vectors, o=offsets: maxsim_match(q, v, o),  # type: ignore[misc]
            },
            2 if large else args.repeat,
            warm_up=not large,
        )
        new_t = times["new"]
        print(
            f"  {count:5d} candidates ({len(vectors):7d} slices): new {new_t * 1e3:9.1f} ms "
            f"({new_t / count * 1e6:7.0f} us/candidate), floor {times['floor'] * 1e3:9.1f} ms, "
            f"ratio {new_t / times['floor']:.2f}x"
        )
        del vectors


def torch_path(args: argparse.Namespace, rng: np.random.Generator) -> None:
    q = unit(rng, args.query_slices, args.dim)
    vectors, offsets = candidates(rng, args.candidates, args.min_slices, args.max_slices, args.dim)
    exact = maxsim_match(q, vectors, offsets)

    def on_torch(kind: str) -> Callable[[], object]:
        return lambda: maxsim_match(q, vectors, offsets, device="cpu", dtype=kind)

    funcs: dict[str, Callable[[], object]] = {
        "numpy float32": lambda: maxsim_match(q, vectors, offsets),
        "torch cpu float32": on_torch("float32"),
        "torch cpu bfloat16": on_torch("bfloat16"),
    }
    times = race(funcs, args.repeat)
    print(f"4. Torch path on the CPU, {args.candidates} candidates")
    for name, t in times.items():
        line = f"  {name:<18} {t * 1e3:9.1f} ms"
        if name.startswith("torch"):
            kind = name.split()[-1]
            got = maxsim_match(q, vectors, offsets, device="cpu", dtype=kind)
            diff = float(np.abs(got.scores - exact.scores).max())
            swapped = (got.scores[:, None] > got.scores[None, :]) & (
                exact.scores[:, None] < exact.scores[None, :]
            )
            gaps = (exact.scores[None, :] - exact.scores[:, None])[swapped]
            line += (
                f"   max score difference {diff:.1e} (stated tolerance {TOLERANCE[kind]:.1e}); "
                f"{int(swapped.sum())} of {len(got.scores) * (len(got.scores) - 1) // 2} pairs "
                f"swapped, float32 scores of those <= {gaps.max() if gaps.size else 0:.1e} apart"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--min-slices", type=int, default=200)
    parser.add_argument("--max-slices", type=int, default=300)
    parser.add_argument("--query-slices", type=int, default=300)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--blank", type=float, default=0.15, help="share of blank slices")
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--parts", default="1234", help="which parts to run (digits 1-4, default all)"
    )
    args = parser.parse_args()
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__} "
        f"({blas.get('name')} {blas.get('version')}), "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset (all CPUs)')}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rng = np.random.default_rng(0)
    for part, run in zip("1234", (scoring, stage, by_count, torch_path), strict=True):
        if part in args.parts:
            run(args, rng)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
