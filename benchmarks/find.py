"""Find archive volumes by structure name: annotate route vs exemplar route, on phantoms.

The archive is indexed without labels (hidden from the library); a separate labeled
index is the reference. Per structure (those in at least one archive volume, by its
masks): recall@k, precision of the returned set and localization ratio of the spans,
mean ± SD over structures, for both routes of ``cbirlib.find``.

Usage::

    python benchmarks/find.py [--n 36] [--size 96] [--archive 12] [--k 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cbirlib.annotation_eval import score_find
from cbirlib.datasets import make_phantoms
from cbirlib.finder import annotate_index, find
from cbirlib.index import build_index
from cbirlib.plugins import create_extractor
from cbirlib.structures import COARSE_GROUPS, TOTALSEG_V1_CLASSES


def _ms(values: list[float]) -> str:
    v = np.array([x for x in values if np.isfinite(x)])
    if not len(v):
        return "n/a"
    sd = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=36, help="phantom subjects")
    parser.add_argument("--size", type=int, default=96, help="in-plane pixels")
    parser.add_argument("--archive", type=int, default=12, help="archive volumes (unlabeled)")
    parser.add_argument("--k", type=int, default=5, help="recall@k and neighbours")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp())
    ds = make_phantoms(work / "ph", args.n, shape=(args.size, args.size), seed=args.seed)
    arc_ids, ref_ids = ds.subjects[: args.archive], ds.subjects[args.archive :]
    ex = create_extractor("baseline")
    ref = build_index(
        [(s, lambda s=s: ds.load(s)) for s in ref_ids], ex, work / "ref", verbose=False
    )
    archive = build_index(
        [(s, lambda s=s: ds.load(s, labels=False)) for s in arc_ids],
        ex,
        work / "arc",
        verbose=False,
        labels=False,
    )
    assert not archive.labeled_volumes
    truths = {s: ds.labels(s) for s in arc_ids}
    print(
        f"phantoms n={args.n} ({args.size}x{args.size}, seed {args.seed}): archive "
        f"{len(arc_ids)} volumes (labels hidden), reference {len(ref_ids)} labeled; k={args.k}"
    )
    print()
    print(
        "| granularity: route | recall@k | precision | localization ratio | structures | s/query |"
    )
    print("|---|---|---|---|---|---|")
    for gran, names in (
        ("coarse", sorted(set(COARSE_GROUPS.values()))),
        ("fine", TOTALSEG_V1_CLASSES),
    ):
        t = time.perf_counter()
        anns = annotate_index(archive, ref, granularity=gran)  # type: ignore[arg-type]
        t_ann = time.perf_counter() - t
        for route in ("annotate", "exemplar"):
            scores: dict[str, list[float]] = {
                "recall": [],
                "precision": [],
                "localization_ratio": [],
            }
            n_struct = 0
            t = time.perf_counter()
            for name in names:
                hits = find(
                    archive,
                    name,
                    reference=ref,
                    top=None,
                    method=route,  # type: ignore[arg-type]
                    k=args.k,
                    annotations=anns if route == "annotate" else None,
                )
                s = score_find(hits, truths, name, k=args.k)
                if not s["n_relevant"]:
                    continue  # no archive volume contains it
                for key in scores:
                    scores[key].append(s[key])
                n_struct += 1
            per = (time.perf_counter() - t) / max(1, n_struct)
            if route == "annotate":
                per_note = f"{per:.3f} (+ {t_ann:.1f} s to annotate the archive once)"
            else:
                per_note = f"{per:.3f}"
            print(
                f"| {gran}: {route} | {_ms(scores['recall'])} | {_ms(scores['precision'])} | "
                f"{_ms(scores['localization_ratio'])} | {n_struct} | {per_note} |"
            )
    print()
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
