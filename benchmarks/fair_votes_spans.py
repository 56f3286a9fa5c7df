"""Fair count votes and robust MaxSim spans on phantoms (issue 11, items 4 and 5).

Three experiments on :func:`cbirlib.datasets.make_phantoms` subjects, embedded once with
the ``baseline`` extractor into an exact index (no HNSW randomness). Queries are the
``test`` split (volume queries, and one coarse region query per structure they
contain); the database is every other subject.

1. **pairs** -- every database subject twice, re-sliced along z to a *thin* (2.5 mm)
   and a *thick* (5 mm) copy. For each ``CountVotes(normalize=...)``: the share of
   queries whose top-1 volume is a thin copy, and over every (query, subject) the share
   in which the thin copy outranks the thick one (ties count half); as a reference, the
   same for MaxSim over every database volume (no counting). A rule fair to slice
   thickness gives about 0.5 for both.
2. **mixed** -- every database subject once, alternately thin (2.5 mm) or thick (5 mm).
   Count-vote chain (``Cutoff(20)``, votes localization with ``trim=0.1``) and MaxSim
   chain (``MaxSimRerank(top=5)``, so the vote ranking decides which candidates are
   re-ranked): thin share of the top-1 volumes, volume recall@1 / AP, region recall,
   localized recall and localization ratio (coarse level, mean over classes).
3. **spans** -- every database subject at its own thickness, *cropped*: the top or
   the bottom (alternately) 25-45 % of its slices removed, so region queries often
   reach outside the retrieved volume's field of view. MaxSim chain with
   ``Localize(robust=..., cut=...)`` for each rule; localization ratio and localized
   recall at the coarse and fine level, and the same on the uncropped database (to show
   a rule does no harm where every query slice has a counterpart).

Re-slicing (:func:`cbirlib.datasets.reslice_z`): linear interpolation of the image along
z at the new positions ``z0, z0 + dz, ...`` (within the original z range); each new
slice takes the labels of the nearest original slice. Runtime with the defaults (24
subjects, 64 x 64): about half a minute to two minutes on a shared 2-core machine,
depending on its load.

Usage: ``python benchmarks/fair_votes_spans.py [--subjects 24] [--shape 64] [--seed 0]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cbirlib import (
    CountVotes,
    Cutoff,
    ExactIndex,
    Hits,
    Localize,
    MaxSimRerank,
    SliceSearch,
    Volume,
    create_extractor,
    region_query,
)
from cbirlib.aggregate import NORMALIZATIONS
from cbirlib.datasets import make_phantoms, reslice_z
from cbirlib.evaluation import evaluate
from cbirlib.metrics import (
    AveragePrecision,
    LocalizationRatio,
    LocalizedRecall,
    RegionRecall,
    Truth,
    VolumeRecall,
)
from cbirlib.pipeline import SearchContext
from cbirlib.structures import COARSE_GROUPS

THIN_MM, THICK_MM = 2.5, 5.0
SPAN_RULES: tuple[tuple[str, float | None], ...] = (
    ("none", None),
    ("mad", 1.5),
    ("mad", 2.0),
    ("mad", 2.5),
    ("mad", 3.0),
    ("mad", 4.0),
    ("ratio", 0.9),
    ("ratio", 0.95),
)


def crop(volume: Volume, fraction: float, top: bool, vid: str) -> Volume:
    """``volume`` without the top (or bottom) ``fraction`` of its slices."""
    n_drop = round(fraction * volume.n_slices)
    start, stop = (0, volume.n_slices - n_drop) if top else (n_drop, volume.n_slices)
    return volume.slab(start, stop, id=vid)


class Setup:
    """Phantoms, their embeddings and the queries."""

    def __init__(self, n: int, shape: int, seed: int, k: int) -> None:
        self.k = k
        root = tempfile.mkdtemp(prefix="fair-votes-")
        self.dataset = make_phantoms(root, n, shape=(shape, shape), seed=seed)
        self.extractor: Any = create_extractor("baseline")
        subjects = list(self.dataset.subjects)
        self.query_ids = [s for s in subjects if self.dataset.split_of(s) == "test"]
        self.db_ids = [s for s in subjects if s not in self.query_ids]
        self.volumes = {s: self.dataset.load(s) for s in subjects}
        self.embeddings: dict[str, npt.NDArray[np.float32]] = {}
        self.queries: list[Volume] = []
        self.regions: dict[str, list[Volume]] = {"coarse": [], "fine": []}
        for s in self.query_ids:
            vol = self.volumes[s]
            self.queries.append(vol)
            self.embeddings[s] = self.extractor.extract(vol)
            assert vol.labels is not None
            for level in ("coarse", "fine"):
                labels = vol.labels.grouped(COARSE_GROUPS) if level == "coarse" else vol.labels
                for c in sorted(labels.volume_structures()):
                    groups = COARSE_GROUPS if level == "coarse" else None
                    q = region_query(vol, c, groups=groups)
                    first = int(getattr(q, "first_slice", 0))
                    self.embeddings[q.id] = self.embeddings[s][first : first + q.n_slices]
                    self.regions[level].append(q)

    def index(self, volumes: Sequence[Volume]) -> tuple[ExactIndex, Truth]:
        """An exact index of ``volumes`` and the matching ground truth."""
        index = ExactIndex(self.extractor.dim, extractor_config=self.extractor.to_config())
        labels = {}
        for v in volumes:
            index.add(v.id, self.extractor.extract(v), slice_meta={"z_mm": v.z_positions})
            assert v.labels is not None
            labels[v.id] = v.labels
        return index, Truth(database=labels)

    def retrieve(self, chain: Any, queries: Sequence[Volume]) -> Any:
        embeddings = {q.id: self.embeddings[q.id] for q in queries}
        return chain.retrieve(list(queries), embeddings=embeddings)


def means(results: pd.DataFrame) -> dict[str, float]:
    """Mean over classes of every metric."""
    return {str(m): float(g["value"].mean()) for m, g in results.groupby("metric", sort=False)}


def subject_of(vid: str) -> str:
    return vid.rsplit("-", 1)[0]


def pairs_experiment(setup: Setup) -> pd.DataFrame:
    db = []
    for s in setup.db_ids:
        db += [
            reslice_z(setup.volumes[s], THIN_MM, id=f"{s}-thin"),
            reslice_z(setup.volumes[s], THICK_MM, id=f"{s}-thick"),
        ]
    index, _ = setup.index(db)
    queries = setup.queries + setup.regions["coarse"]
    rows = []
    search = SliceSearch(setup.extractor, index, k=setup.k)
    systems = {norm: search >> CountVotes(normalize=norm) for norm in NORMALIZATIONS}
    # reference: MaxSim over every database volume (no count at all)
    systems["MaxSim, all volumes"] = (
        search >> CountVotes(normalize="none") >> MaxSimRerank(top=len(db))
    )
    for norm, chain in systems.items():
        hits = setup.retrieve(chain, queries).to_pandas()
        top1, above = [], []
        for _, g in hits.groupby("query_id", sort=False):
            g = g.sort_values("rank")
            top1.append(str(g["volume_id"].iloc[0]).endswith("-thin"))
            score = dict(zip(g["volume_id"], g["score"], strict=True))
            for s in setup.db_ids:
                thin, thick = score.get(f"{s}-thin", 0.0), score.get(f"{s}-thick", 0.0)
                if thin or thick:
                    above.append(1.0 if thin > thick else 0.5 if thin == thick else 0.0)
        rows.append(
            {
                "normalize": norm,
                "top-1 is thin": float(np.mean(top1)),
                "thin outranks thick": float(np.mean(above)),
                "queries": len(top1),
            }
        )
    return pd.DataFrame(rows)


def mixed_experiment(setup: Setup) -> pd.DataFrame:
    db = [
        reslice_z(setup.volumes[s], THIN_MM if i % 2 == 0 else THICK_MM, id=s)
        for i, s in enumerate(setup.db_ids)
    ]
    thin = {v.id for v in db if v.spacing[0] == THIN_MM}
    index, truth = setup.index(db)
    rows = []
    for norm in NORMALIZATIONS:
        search = SliceSearch(setup.extractor, index, k=setup.k)
        votes = search >> CountVotes(normalize=norm)
        chains: dict[str, Callable[[], Any]] = {
            "count votes": lambda v=votes: v >> Cutoff(20) >> Localize(method="votes", trim=0.1),
            "MaxSim (top=5)": lambda v=votes: v >> MaxSimRerank(top=5) >> Localize(),
        }
        for system, make in chains.items():
            chain = make()
            vol_hits = setup.retrieve(chain, setup.queries)
            reg_hits = setup.retrieve(chain, setup.regions["coarse"])
            vol = means(
                evaluate(
                    {"s": vol_hits}, setup.queries, truth, [VolumeRecall(), AveragePrecision()]
                )
            )
            reg = means(
                evaluate(
                    {"s": reg_hits},
                    setup.regions["coarse"],
                    truth,
                    [RegionRecall(), LocalizedRecall(), LocalizationRatio()],
                )
            )
            frame = pd.concat([vol_hits.to_pandas(), reg_hits.to_pandas()])
            first = frame[frame["rank"] == 1]["volume_id"]
            rows.append(
                {
                    "normalize": norm,
                    "chain": system,
                    "top-1 is thin": float(np.mean([v in thin for v in first])),
                    "volume R@1": vol["volume_recall@1"],
                    "volume AP": vol["ap"],
                    "region recall": reg["region_recall"],
                    "localized recall": reg["localized_recall"],
                    "loc. ratio": reg["localization_ratio"],
                }
            )
    return pd.DataFrame(rows)


def spans_experiment(setup: Setup) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cropped = []
    for i, s in enumerate(setup.db_ids):
        cropped.append(crop(setup.volumes[s], float(rng.uniform(0.25, 0.45)), i % 2 == 0, s))
    full = [setup.volumes[s] for s in setup.db_ids]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    spread = []
    for name, db in (("cropped", cropped), ("full", full)):
        index, truth = setup.index(db)
        for level in ("coarse", "fine"):
            qs = setup.regions[level]
            # one search + re-ranking, then every span rule on the same MaxSim evidence
            context = SearchContext.for_queries(qs)
            context.embeddings.update({q.id: setup.embeddings[q.id] for q in qs})
            hits = Hits.empty("slice")
            for stage in (
                SliceSearch(setup.extractor, index, k=setup.k),
                CountVotes(),
                MaxSimRerank(top=20),
            ):
                hits = stage.transform(hits, context)
            if name == "cropped" and level == "coarse":
                for sims in context.evidence["maxsim_similarity"].values():
                    spread.append(float(np.median(np.abs(sims - np.median(sims)))))
            for rule, cut in SPAN_RULES:
                label = rule if cut is None else f"{rule} {cut}"
                out = Localize(robust=rule, cut=cut).transform(hits, context)
                m = means(
                    evaluate(
                        {"s": out}, qs, truth, [LocalizedRecall(), LocalizationRatio()],
                        granularity=level,
                    )
                )  # fmt: skip
                row = rows.setdefault((name, label), {"database": name, "rule": label})
                row[f"{level} loc. ratio"] = m["localization_ratio"]
                row[f"{level} localized recall"] = m["localized_recall"]
    print(
        f"(MAD of the best-match similarities per (query, candidate), cropped: median "
        f"{np.median(spread):.4f}, 10-90 % {np.percentile(spread, 10):.4f}-"
        f"{np.percentile(spread, 90):.4f})"
    )
    return pd.DataFrame(list(rows.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--shape", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=100, help="neighbours per query slice")
    parser.add_argument(
        "--only", choices=("pairs", "mixed", "spans"), action="append", help="experiments to run"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    setup = Setup(args.subjects, args.shape, args.seed, args.k)
    print(
        f"{args.subjects} phantoms {args.shape}x{args.shape} (seed {args.seed}): "
        f"{len(setup.query_ids)} query volumes, {len(setup.regions['coarse'])} coarse / "
        f"{len(setup.regions['fine'])} fine region queries, {len(setup.db_ids)} database "
        f"subjects; baseline extractor, exact index, k={args.k}"
    )
    pd.set_option("display.width", 200)
    pd.set_option("display.float_format", "{:.3f}".format)
    experiments = {
        "pairs": ("1. pairs: thin (2.5 mm) and thick (5 mm) copy of every database subject",
                  pairs_experiment),
        "mixed": ("2. mixed: every database subject once, thin or thick", mixed_experiment),
        "spans": ("3. spans: MaxSim localization, cropped vs full database", spans_experiment),
    }  # fmt: skip
    print(f"setup {time.perf_counter() - t0:.0f} s")
    for key, (title, run) in experiments.items():
        if args.only and key not in args.only:
            continue
        t1 = time.perf_counter()
        print(f"\n{title}")
        print(run(setup).to_string(index=False))
        print(f"({time.perf_counter() - t1:.0f} s)")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
