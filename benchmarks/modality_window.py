"""An MR windowed as a CT against an MR windowed as an MR (issue 11, item 1).

Usage: ``python benchmarks/modality_window.py [--subjects 6] [--size 64]``.

Synthetic T1-like heads (zero background, arbitrary intensity scale) are written as
NIfTI files and read back with :func:`cbirlib.load_volume`, once with
``modality="CT"`` (what every NIfTI file got before) and once with the modality guessed
(what a file without ``modality=`` gets now). Prints, with the baseline extractor:

* the cosine between each slice of a head and of an intensity-rescaled copy of it;
* retrieval: a database of the heads (each at its own random scale) and as many CT-like
  bodies; each head, rescanned (new noise) at another scale, queries it (count votes);
  the fraction of queries whose own subject ranks first;
* the time :func:`cbirlib.modality.guess_modality` takes on a 100 x 512 x 512 volume.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cbirlib import CountVotes, ExactIndex, Pipeline, SliceSearch, Volume, load_volume
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.modality import guess_modality


def mr_head(n: int, size: int, seed: int) -> np.ndarray:
    """A head: scalp, skull, grey and white matter, ventricles; subject-specific shape."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    squash, vent_w, shift = rng.uniform(1.0, 1.3), rng.uniform(0.05, 0.15), rng.uniform(-4, 4)
    vol = np.zeros((n, size, size), np.float32)
    for z in range(n):
        r = size * 0.42 * np.sqrt(1 - abs((z - n / 2) / (n / 2 + 2)))
        d = np.sqrt((yy / squash) ** 2 + (xx - shift) ** 2)
        sl = vol[z]
        sl[d <= r] = 2400.0
        sl[d <= 0.9 * r] = 300.0
        sl[d <= 0.82 * r] = 1400.0
        sl[d <= 0.6 * r] = 2000.0
        vent = (yy / (0.3 * r + 1)) ** 2 + (
            (np.abs(xx - shift) - 0.15 * r) / (vent_w * r + 1)
        ) ** 2 <= 1
        sl[vent & (d <= 0.6 * r)] = 400.0
    return np.abs(vol + rng.normal(0, 60, vol.shape)).astype(np.float32)


def ct_body(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    vol = np.full((n, size, size), -1000.0, np.float32)
    r = size * rng.uniform(0.35, 0.45)
    body = (yy / 0.8) ** 2 + xx**2 <= r**2
    vol[:, body] = 40.0
    vol[:, (yy - r * 0.5) ** 2 + xx**2 <= (0.12 * size) ** 2] = 800.0
    return vol + rng.normal(0, 15, vol.shape).astype(np.float32)


def save(path: Path, zyx: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), np.diag([1.0, 1.0, 3.0, 1.0])), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=24)
    args = parser.parse_args()
    logging.getLogger("cbirlib.io").setLevel(logging.ERROR)  # one guess warning per file
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp())
    ex = BaselineExtractor(size=args.size)
    n, size = args.slices, args.size

    print("cosine between a head and its rescaled copy (min / mean over slices)")
    head = save(tmp / "head.nii.gz", mr_head(n, size, 0))
    for scale in (0.00025, 0.1, 7.3, 1000.0):
        copy = save(tmp / "copy.nii.gz", mr_head(n, size, 0) * scale)
        row = []
        for modality in ("CT", None):
            a = ex.extract(load_volume(head, modality=modality))
            b = ex.extract(load_volume(copy, modality=modality))
            cos = (a * b).sum(axis=1)
            row.append(f"{cos.min():.3f} / {cos.mean():.3f}")
        print(f"  x{scale:<8g} read as CT: {row[0]}   modality guessed: {row[1]}")

    files = {}
    for i in range(args.subjects):
        files[f"mr{i}"] = save(tmp / f"mr{i}.nii.gz", mr_head(n, size, i) * rng.uniform(0.001, 5))
        rescan = np.abs(mr_head(n, size, i) + rng.normal(0, 60, (n, size, size)))  # new noise
        files[f"q{i}"] = save(
            tmp / f"q{i}.nii.gz", rescan.astype(np.float32) * rng.uniform(0.001, 5)
        )
    cts = [Volume(f"ct{i}", ct_body(n, size, 100 + i), modality="CT") for i in range(args.subjects)]
    for modality in ("CT", None):
        index = ExactIndex(ex.dim, extractor_config=ex.to_config())
        for vol in [
            *(load_volume(files[f"mr{i}"], modality=modality) for i in range(args.subjects)),
            *cts,
        ]:
            index.add(vol.id, ex.extract(vol), modality=vol.modality)
        chain = Pipeline([SliceSearch(ex, index, k=10), CountVotes()])
        queries = [
            load_volume(files[f"q{i}"], id=f"mr{i}", modality=modality)
            for i in range(args.subjects)
        ]
        hits = chain.retrieve(queries)
        top = {
            q: v for q, v, r in zip(hits.query_id, hits.volume_id, hits.rank, strict=True) if r == 1
        }
        own = np.mean([top.get(q.id) == q.id for q in queries])
        label = "read as CT" if modality else "modality guessed"
        print(f"MR queries whose own subject ranks first ({label}): {own:.2f}")

    big = np.concatenate([ct_body(10, 512, 0)] * 10)
    t0 = time.perf_counter()
    for _ in range(5):
        guess_modality(big)
    per = (time.perf_counter() - t0) / 5
    print(f"guess_modality on {big.shape}: {1000 * per:.0f} ms")


if __name__ == "__main__":
    main()
