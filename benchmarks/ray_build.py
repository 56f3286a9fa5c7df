"""Index build rate on one node: single-process ``build_index`` vs ``build_index_ray``.

Writes ``--subjects`` phantom CTs (``.nii.gz``, ``--size`` pixels square), then indexes
them twice with the same extractor, into fresh folders:

``single``
    :func:`cbirlib.index.build_index` (one process, read-ahead threads).
``ray``
    :func:`cbirlib.distributed.build_index_ray` on a local Ray cluster of ``--cpus``
    CPUs with ``--actors`` embedding actors. The cluster is started before the clock
    starts; the actors' start (model loading) is inside the measured time.

Prints slices/s of both and their ratio, measured in one run. Needs ``cbirlib[ray]``.

Usage::

    python benchmarks/ray_build.py --subjects 8 --size 96
    python benchmarks/ray_build.py --model timm:resnet18 --options '{"weights": "random"}'
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray

from cbirlib.datasets.phantom import make_phantoms
from cbirlib.distributed import build_index_ray
from cbirlib.index import build_index
from cbirlib.plugins import create_extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="in-plane pixels")
    parser.add_argument("--model", default="baseline")
    parser.add_argument("--options", default="{}", help="extractor options (JSON)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor")
    args = parser.parse_args()
    options = json.loads(args.options)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = make_phantoms(root / "ds", args.subjects, shape=(args.size, args.size))
        n_slices = sum(ds.load(s, labels=False).n_slices for s in ds.subjects)
        print(f"{args.subjects} phantom CTs, {n_slices} slices of {args.size}x{args.size}")

        start = time.perf_counter()
        build_index(ds, create_extractor(args.model, **options), root / "single", verbose=False)
        single = n_slices / (time.perf_counter() - start)

        ray.init(
            address="local",
            num_cpus=args.cpus,
            num_gpus=None,
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            start = time.perf_counter()
            build_index_ray(
                ds,
                args.model,
                root / "ray",
                extractor_options=options,
                num_actors=args.actors,
                num_gpus=args.gpus,
                verbose=False,
            )
            distributed = n_slices / (time.perf_counter() - start)
        finally:
            ray.shutdown()
    print(f"single   build_index:      {single:8.1f} slices/s")
    print(
        f"ray      build_index_ray:  {distributed:8.1f} slices/s "
        f"({args.actors} actor(s), {args.cpus} CPUs)"
    )
    print(f"ratio ray / single: {distributed / single:.2f}")


if __name__ == "__main__":
    main()
