"""MaxSim re-ranking speed: vectorised vs one matrix product vs per-candidate loops.

Scores ``--candidates`` candidate volumes of ``--slices`` slices each against a query of
``--query-slices`` slices (dim ``--dim``) with :func:`cbirlib.rerank.maxsim_scores` and
compares the time with

* one matrix product of the same size (the floor: target within 2x),
* a per-candidate loop that runs one numpy product per candidate,
* a naive per-candidate loop over query slices and candidate slices in Python
  (target: the vectorised version is at least 50x faster); timed on a few candidates
  and scaled to all of them.

Usage: ``python benchmarks/rerank_speed.py [--candidates 100] [--slices 300] ...``
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from cbirlib.rerank import maxsim_scores

F32 = npt.NDArray[np.float32]


def best_time(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def loop_numpy(q: F32, vectors: F32, offsets: npt.NDArray[np.int64]) -> list[float]:
    """One matrix product per candidate."""
    return [float((q @ vectors[a:b].T).max(axis=1).mean()) for a, b in itertools.pairwise(offsets)]


def loop_python(q: F32, cands: list[F32]) -> list[float]:
    """Per candidate, per query slice, per candidate slice (the straightforward loop)."""
    out = []
    for c in cands:
        rows = [list(map(float, s)) for s in c]
        total = 0.0
        for qt in q:
            qv = list(map(float, qt))
            total += max(sum(a * b for a, b in zip(qv, s, strict=True)) for s in rows)
        out.append(total / len(q))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--query-slices", type=int, default=300)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--naive-candidates",
        type=int,
        default=1,
        help="candidates timed with the pure-Python loop (then scaled)",
    )
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    q = rng.normal(size=(args.query_slices, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    vectors = rng.normal(size=(args.candidates * args.slices, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.arange(0, len(vectors) + 1, args.slices, dtype=np.int64)

    scores, _ = maxsim_scores(q, vectors, offsets)
    np.testing.assert_allclose(scores, loop_numpy(q, vectors, offsets), atol=1e-5)

    t_vec = best_time(lambda: maxsim_scores(q, vectors, offsets), args.repeat)
    t_mm = best_time(lambda: q @ vectors.T, args.repeat)
    t_loop = best_time(lambda: loop_numpy(q, vectors, offsets), args.repeat)
    n_naive = max(1, min(args.naive_candidates, args.candidates))
    cands = [vectors[offsets[j] : offsets[j + 1]] for j in range(n_naive)]
    t0 = time.perf_counter()
    naive = loop_python(q, cands)
    t_naive = (time.perf_counter() - t0) * args.candidates / n_naive
    np.testing.assert_allclose(naive, scores[:n_naive], atol=1e-5)

    print(
        f"MaxSim: {args.candidates} candidates x {args.slices} slices, "
        f"query {args.query_slices} slices, dim {args.dim}"
    )
    print(f"  vectorised maxsim_scores      {t_vec * 1e3:9.1f} ms")
    print(
        f"  one matrix product (floor)    {t_mm * 1e3:9.1f} ms   ratio {t_vec / t_mm:5.2f}x "
        "(target <= 2x)"
    )
    print(
        f"  per-candidate numpy loop      {t_loop * 1e3:9.1f} ms   speed-up {t_loop / t_vec:6.1f}x"
    )
    print(
        f"  per-candidate Python loop     {t_naive * 1e3:9.0f} ms   speed-up "
        f"{t_naive / t_vec:6.0f}x (target >= 50x; timed on {n_naive} candidate(s), scaled)"
    )


if __name__ == "__main__":
    main()
