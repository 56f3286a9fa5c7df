"""Annotate held-out phantoms from a labeled index; compare with the relative-z baseline.

Prints, per granularity, the per-structure slice F1, z-extent boundary error (mm) and
ECE as mean ± SD over structures, for ``cbirlib.annotate`` and for the baseline that
predicts from the relative z position alone. Baseline extractor, CPU only.

Usage::

    python benchmarks/annotate.py [--n 36] [--size 96] [--held-out 7] [--k 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cbirlib.annotation import annotate
from cbirlib.annotation_eval import position_baseline, score_annotations, summarize
from cbirlib.datasets import make_phantoms
from cbirlib.index import build_index
from cbirlib.plugins import create_extractor


def _row(name: str, s: dict[str, float]) -> str:
    return (
        f"| {name} | {s['f1_mean']:.3f} ± {s['f1_sd']:.3f} | {s['boundary_mm_mean']:.1f} ± "
        f"{s['boundary_mm_sd']:.1f} | {s['boundary_mm_median']:.1f} | {s['ece_mean']:.3f} ± "
        f"{s['ece_sd']:.3f} | {int(s['n_structures'])} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=36, help="phantom subjects")
    parser.add_argument("--size", type=int, default=96, help="in-plane pixels")
    parser.add_argument("--k", type=int, default=5, help="voting neighbours")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=7, help="subjects annotated")
    args = parser.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp())
    ds = make_phantoms(work / "ph", args.n, shape=(args.size, args.size), seed=args.seed)
    held, rest = ds.subjects[: args.held_out], ds.subjects[args.held_out :]
    ex = create_extractor("baseline")
    t1 = time.perf_counter()
    sources = [(s, lambda s=s: ds.load(s)) for s in rest]
    ref = build_index(sources, ex, work / "ref", verbose=False)
    t2 = time.perf_counter()
    queries = [ds.load(s) for s in held]
    truths = {v.id: v.labels for v in queries if v.labels is not None}
    print(
        f"phantoms n={args.n} ({args.size}x{args.size}, seed {args.seed}): "
        f"{len(rest)} labeled reference volumes ({len(ref)} slices), {len(held)} held out; "
        f"k={args.k}; generation {t1 - t0:.1f} s, labeled index {t2 - t1:.1f} s"
    )
    print()
    print(
        "| granularity: method | slice F1 | boundary error mm | median boundary mm | ECE "
        "| structures |"
    )
    print("|---|---|---|---|---|---|")
    thickness = float(np.median([v.spacing[0] for v in queries]))
    for gran in ("coarse", "fine"):
        t = time.perf_counter()
        anns = [
            annotate(v.with_labels(None), ref, extractor=ex, k=args.k, granularity=gran)
            for v in queries
        ]
        dt = time.perf_counter() - t
        base = [
            position_baseline(v.n_slices, ref, volume_id=v.id, z_mm=v.z_positions, granularity=gran)
            for v in queries
        ]
        s_ann = summarize(score_annotations(anns, truths))
        s_base = summarize(score_annotations(base, truths))
        print(_row(f"{gran}: annotate ({dt / len(queries):.2f} s/volume)", s_ann))
        print(_row(f"{gran}: relative-z baseline", s_base))
    print()
    print(f"median slice thickness of the held-out volumes: {thickness:.1f} mm")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
