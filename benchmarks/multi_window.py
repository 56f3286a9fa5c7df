"""The phantom benchmark with a single CT window vs multi-window inputs, one extractor.

Runs :func:`cbirlib.benchmarking.benchmark` on one phantom data set once per window
(``extractor_options={"window": ...}``), all in one run, and prints the mean over
classes (± the sample SD) of the main metrics per window: slice recall (top-1
slice-wise), volume recall@1 and AP, region recall and AP, localized recall and the
localization ratio (count votes and MaxSim re-ranking), coarse and fine.

The default extractor is ``efficientnet-lite0`` (ImageNet weights shipped with the
``cbirlib-effnet-lite`` plugin: offline, **pretrained**). The ``baseline`` extractor is
not measured: it ignores the input window (it always windows each slice three ways:
lung, soft tissue and bone). ``--extractor timm:resnet18 --random`` measures an
untrained network instead: a fixture, **not pretrained**, for wiring checks only.

Usage::

    python benchmarks/multi_window.py                     # 36 phantoms, 128 px input
    python benchmarks/multi_window.py --img-size 224      # the model's own input size
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

METRICS = (
    ("slice", "slice_recall"),
    ("volume", "volume_recall@1"),
    ("volume", "ap"),
    ("region", "region_recall"),
    ("region", "ap"),
    ("localized", "localized_recall"),
    ("localized", "localization_ratio"),
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extractor", default="efficientnet-lite0")
    parser.add_argument("--random", action="store_true", help="weights='random' (a fixture)")
    parser.add_argument("--windows", nargs="+", default=["wide", "multi", "multi_bone"])
    parser.add_argument("--phantoms", type=int, default=36)
    parser.add_argument("--shape", type=int, default=128, help="phantom slice size")
    parser.add_argument("--img-size", type=int, default=128, help="model input size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the RANDOM-weights warning, once per extractor

    from cbirlib.benchmarking import benchmark
    from cbirlib.datasets import make_phantoms

    with tempfile.TemporaryDirectory(prefix="cbirlib-multiwindow-") as tmp:
        root = Path(tmp) / "phantoms"
        make_phantoms(root, args.phantoms, shape=(args.shape, args.shape), seed=args.seed)
        rows = []
        for window in args.windows:
            options: dict[str, object] = {"window": window, "img_size": args.img_size}
            if args.random:
                options["weights"] = "random"
            start = time.perf_counter()
            tables = benchmark(root, [args.extractor], extractor_options=options, verbose=False)
            seconds = time.perf_counter() - start
            summary = tables["summary"]
            for (level, mode, metric, system), group in summary.groupby(
                ["level", "mode", "metric", "system"], sort=False
            ):
                if (mode, metric) in METRICS:
                    mean, sd = float(group["mean"].iloc[0]), float(group["sd"].iloc[0])
                    rows.append(
                        {
                            "level": level,
                            "metric": f"{mode} {metric}",
                            "system": "slice-wise"
                            if mode == "slice"
                            else ("+ MaxSim" if str(system).endswith("MaxSim") else "count votes"),
                            "window": window,
                            "value": f"{mean:.3f} ± {sd:.3f}",
                        }
                    )
            print(f"window {window!r}: {seconds:.0f} s", flush=True)
    order = {f"{mode} {metric}": i for i, (mode, metric) in enumerate(METRICS)}
    systems = {"slice-wise": 0, "count votes": 1, "+ MaxSim": 2}
    table = pd.DataFrame(rows).pivot(index=["level", "metric", "system"], columns="window")
    table = table["value"][list(args.windows)].reset_index()
    table = table.sort_values(
        ["level", "metric", "system"],
        key=lambda c: (
            c.map({"metric": order, "system": systems}.get(str(c.name), {}))
            if c.name != "level"
            else c
        ),
    )
    weights = "RANDOM weights (fixture, not pretrained)" if args.random else "pretrained"
    print(
        f"\n{args.extractor} ({weights}), {args.phantoms} phantoms {args.shape}^2, "
        f"input {args.img_size}^2; mean over classes"
    )
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
