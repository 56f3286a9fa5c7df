"""Whole-pipeline extraction throughput vs a bare forward pass of the same model.

Measured, in slices per second, on the same slices:

``bare``
    The model's forward pass alone (``embed_slices``, with the extractor's autocast), on
    batches preprocessed beforehand and already on the device.
``resident``
    Preprocessing + forward from raw slices already on the device (no copies, no I/O).
``extract``
    ``Extractor.extract(volume)`` on each in-memory volume (copies + preprocessing +
    forward + results back to the host).
``many``
    ``Extractor.extract_many(volumes)`` on the in-memory volumes (pipelined across
    volumes on CUDA).
``nifti``
    The whole pipeline from disk: ``extract_many`` over loaders
    ``functools.partial(cbirlib.io.load_volume, path)`` of ``.nii.gz`` files, read ahead
    on ``--workers`` threads (:func:`cbirlib.prefetch.prefetch`).
``read``
    Reading the ``.nii.gz`` files alone with the same read-ahead: the I/O bound of
    ``nifti``.

Each is printed with its ratio to ``bare`` (target: pipeline >= 0.9 x bare).

The volumes are synthetic CT-like int16 NIfTI files (a body with lungs and spine plus
noise): throughput does not depend on the image content. Models are built with timm
and RANDOM weights (``weights="random"``, no network; throughput does not depend on the
weights), or any registered extractor with ``--model``.

Usage::

    python benchmarks/extraction_throughput.py                       # CPU: resnet50
    python benchmarks/extraction_throughput.py --model efficientnet-lite0
    python benchmarks/extraction_throughput.py --device cuda --volumes 8 --slices 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

RESULT_KEYS = ("bare", "resident", "extract", "many", "nifti", "read")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_extractor(name: str, device: str, batch_size: int) -> tuple[Any, str]:
    """An extractor by registry name; ``timm:<model>`` gets RANDOM weights (labelled)."""
    if name.startswith("timm:"):
        from cbirlib.extractors import TimmExtractor

        ex = TimmExtractor(
            name.split(":", 1)[1], weights="random", device=device, batch_size=batch_size
        )
        return ex, f"{name} (RANDOM weights: throughput only)"
    from cbirlib.plugins import create_extractor

    return create_extractor(name, device=device, batch_size=batch_size), name


def phantom(slices: int, size: int, seed: int) -> np.ndarray[Any, Any]:
    """A CT-like int16 volume ``(X, Y, Z)`` in HU: body, lungs, spine, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    body = (xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1
    vol = np.empty((slices, size, size), np.int16)
    for z in range(slices):
        t = z / max(slices - 1, 1)
        s = np.full((size, size), -1000.0, np.float32)
        s[body] = 40.0
        lung_r = 0.25 * max(0.0, 1 - abs(t - 0.7) / 0.3)
        for cx in (-0.35, 0.35):
            s[((xx - cx) ** 2 + (yy + 0.05) ** 2) < lung_r**2] = -850.0
        s[((xx) ** 2 + (yy - 0.4) ** 2) < 0.01] = 700.0
        s += rng.standard_normal((size, size), dtype=np.float32) * 20.0
        vol[z] = np.clip(s, -1024, 3071).astype(np.int16)
    return vol.transpose(2, 1, 0)  # (Z, Y, X) -> NIfTI (X, Y, Z), canonical RAS


def write_volumes(root: Path, n: int, slices: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` synthetic ``.nii.gz`` CT volumes (written on threads: zlib releases the GIL)."""

    def write(i: int) -> Path:
        img = nib.Nifti1Image(phantom(slices, size, seed + i), np.diag([0.8, 0.8, 2.0, 1.0]))  # type: ignore[no-untyped-call]
        path = root / f"vol{i:03d}.nii.gz"
        nib.save(img, path)
        return path

    with ThreadPoolExecutor(min(n, os.cpu_count() or 1)) as pool:
        return list(pool.map(write, range(n)))


def timed(fn: Callable[[], int], device: torch.device, repeat: int) -> float:
    """Best slices/s of ``repeat`` runs of ``fn`` (which returns its slice count)."""
    best = 0.0
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        n = fn()
        sync(device)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def measure(
    extractor: Any,
    volumes: Sequence[Any],
    paths: Sequence[Path],
    *,
    workers: int,
    repeat: int = 1,
    skip: Sequence[str] = (),
) -> dict[str, float]:
    """Slices/s of each stage (see the module docstring); volumes and paths hold the same data."""
    from cbirlib.io import load_volume
    from cbirlib.prefetch import prefetch
    from cbirlib.preprocess import prepare_slices, window_bounds

    device = extractor.device
    cfg = extractor.input_config
    bs = extractor.batch_size
    extractor.extract(volumes[0])  # warm-up: model, allocators, kernels
    n_total = sum(v.n_slices for v in volumes)
    out: dict[str, float] = {}

    raws = [
        (torch.from_numpy(v.array).to(device), window_bounds(v.array, cfg.window)) for v in volumes
    ]

    def prepare(raw: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
        batch = prepare_slices(raw, cfg, bounds=bounds)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    batches = [prepare(r[i : i + bs], b) for r, b in raws for i in range(0, r.shape[0], bs)]

    def bare() -> int:
        with torch.inference_mode(), extractor._autocast():
            for batch in batches:
                extractor.embed_slices(batch)
        return n_total

    def resident() -> int:
        with torch.inference_mode(), extractor._autocast():
            for r, b in raws:
                for i in range(0, r.shape[0], bs):
                    extractor.embed_slices(prepare(r[i : i + bs], b))
        return n_total

    def extract() -> int:
        return sum(extractor.extract(v).shape[0] for v in volumes)

    def many() -> int:
        return sum(e.shape[0] for _, e in extractor.extract_many(volumes, workers=workers))

    loaders = [partial(load_volume, p) for p in paths]

    def nifti() -> int:
        return sum(e.shape[0] for _, e in extractor.extract_many(loaders, workers=workers))

    def read() -> int:
        ahead = max(2, workers)
        return sum(v.n_slices for v in prefetch(loaders, workers=workers, ahead=ahead))

    stages = {"bare": bare, "resident": resident, "extract": extract, "many": many}
    stages |= {"nifti": nifti, "read": read}
    stages = {k: fn for k, fn in stages.items() if k not in skip}
    with torch.inference_mode():
        for fn in stages.values():
            fn()  # warm-up of each path
    # rounds over all stages, best of each: fair under a fluctuating machine load
    for _ in range(repeat):
        for key, fn in stages.items():
            out[key] = max(out.get(key, 0.0), timed(fn, device, 1))
    return out


def report(label: str, res: dict[str, float]) -> None:
    notes = {
        "bare": "forward pass only, preprocessed batches on the device",
        "resident": "preprocess + forward, raw slices on the device",
        "extract": "extract(volume), in-memory volumes",
        "many": "extract_many(volumes), in-memory volumes",
        "nifti": "extract_many(loaders) from .nii.gz, read ahead",
        "read": "reading the .nii.gz files only, read ahead",
    }
    print(label)
    bare = res.get("bare")
    for key in RESULT_KEYS:
        if key not in res:
            continue
        ratio = f"{res[key] / bare:6.3f} x bare" if bare else ""
        print(f"  {key:<9s}{res[key]:10.1f} slices/s  {ratio}   ({notes[key]})")


def run(args: argparse.Namespace) -> dict[str, float]:
    from cbirlib.io import load_volume

    torch.manual_seed(0)
    extractor, label = make_extractor(args.model, args.device, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_volumes(Path(tmp), args.volumes, args.slices, args.size)
        volumes = [load_volume(p) for p in paths]
        res = measure(extractor, volumes, paths, workers=args.workers, repeat=args.repeat)
    cfg = extractor.input_config
    report(
        f"model {label} on {extractor.device}, batch {extractor.batch_size}, input "
        f"{cfg.size[0]}x{cfg.size[1]} ({cfg.interpolation}); {args.volumes} volumes x "
        f"{args.slices} slices of {args.size}x{args.size}; {args.workers} reading threads; "
        f"torch threads {torch.get_num_threads()}",
        res,
    )
    return res


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--model", default="timm:resnet50", help="timm:<name> (random) or a registered extractor"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the volumes")
    parser.add_argument("--workers", type=int, default=2, help="volume-reading threads")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many rounds")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
