"""Whole-pipeline extraction throughput vs a bare forward pass of the same model.

Pipeline: read each volume from a NIfTI file (``cbirlib.io.load_volume``), window,
resize and normalise its slices, embed them (``Extractor.extract``). Bare: the model's
forward pass alone on the same, already preprocessed batches, on the same device. Both
are printed as slices/s, with their ratio (target >= 0.9: the pipeline should keep the
model busy).

Volumes are synthetic NIfTI files (throughput does not depend on the image content).
The default model is ``efficientnet-lite0`` (real weights, from the cbirlib-effnet-lite
plugin) when installed; otherwise ``timm:resnet18`` with RANDOM weights (labelled as
such: throughput does not depend on the weights).

Usage::

    python benchmarks/extraction_throughput.py [--device cuda] [--volumes 4] [--slices 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_extractor(name: str | None, device: str, batch_size: int) -> tuple[Any, str]:
    from cbirlib.plugins import create_extractor, list_extractors

    if name is None:
        name = "efficientnet-lite0" if list_extractors("efficientnet-lite0") else "timm:resnet18"
    kwargs: dict[str, Any] = {"device": device, "batch_size": batch_size}
    label = name
    if name.startswith("timm:"):
        kwargs["weights"] = "random"
        label = f"{name} (RANDOM weights: throughput only)"
    return create_extractor(name, **kwargs), label


def write_volumes(root: Path, n: int, slices: int, size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        data = rng.normal(0, 300, size=(size, size, slices)).astype(np.float32)  # (X, Y, Z)
        img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0]))  # type: ignore[no-untyped-call]
        path = root / f"vol{i:03d}.nii.gz"
        nib.save(img, path)
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> dict[str, float]:
    from cbirlib.io import load_volume
    from cbirlib.preprocess import prepare_slices, window_bounds

    extractor, label = make_extractor(args.model, args.device, args.batch_size)
    device = extractor.device
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_volumes(Path(tmp), args.volumes, args.slices, args.size)
        extractor.extract(load_volume(paths[0]))  # warm-up (builds the model)
        _sync(device)
        t0 = time.perf_counter()
        n_slices = 0
        for path in paths:
            n_slices += extractor.extract(load_volume(path)).shape[0]
        _sync(device)
        pipeline_s = time.perf_counter() - t0

        # the same batches, preprocessed beforehand; time only the forward pass
        cfg = extractor.input_config
        batches = []
        for path in paths:
            vol = load_volume(path)
            bounds = window_bounds(vol.array, cfg.window)
            arr = torch.from_numpy(vol.array)
            for start in range(0, vol.n_slices, extractor.batch_size):
                raw = arr[start : start + extractor.batch_size].to(device)
                batch = prepare_slices(raw, cfg, bounds=bounds)
                if device.type == "cuda":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                batches.append(batch)
    model = extractor.model
    with torch.inference_mode(), extractor._autocast():
        model(batches[0])
        _sync(device)
        t0 = time.perf_counter()
        for batch in batches:
            model(batch)
        _sync(device)
        bare_s = time.perf_counter() - t0

    pipeline = n_slices / pipeline_s
    bare = n_slices / bare_s
    print(f"model:    {label}  on {device}, batch {extractor.batch_size}, input {cfg.size}")
    print(f"data:     {args.volumes} volumes x {args.slices} slices of {args.size}x{args.size}")
    print(f"pipeline: {pipeline:9.1f} slices/s  (read NIfTI + preprocess + embed)")
    print(f"bare:     {bare:9.1f} slices/s  (forward pass only)")
    print(f"ratio:    {pipeline / bare:9.3f}  (target >= 0.9)")
    return {"pipeline": pipeline, "bare": bare, "ratio": pipeline / bare}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="extractor name (default: see above)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=256, help="in-plane size of the volumes")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
