"""GPU check: CPU vs CUDA embedding agreement, then extraction throughput on CUDA.

Run on a CUDA machine, from the repository root (no network needed; models are built by
timm with RANDOM weights, ``pretrained=False``)::

    pip install -e . && timeout 230 python benchmarks/gpu_check.py

(also works uninstalled: ``PYTHONPATH=. timeout 230 python benchmarks/gpu_check.py``).
It finishes in about a minute on an H100; ``--quick`` skips the throughput part.

1. **Agreement** (exit status 1 when it fails): for ``resnet18`` and
   ``vit_small_patch16_224`` with random weights (saved to a temporary safetensors file
   so CPU and CUDA load the very same tensors), the same CT and MR volumes are embedded
   on the CPU (float32) and on CUDA without and with autocast; printed: max absolute
   difference and minimum row cosine. Also checked on CUDA: ``extract(slices=...)``,
   small staged chunks (partial batches) and ``extract_many`` (pipelined across
   volumes) against per-volume ``extract``.
2. **Throughput** (``benchmarks/extraction_throughput.py``, printed, never fails the
   check): for ``resnet50`` and ``vit_base_patch16_224`` (RANDOM weights), 224x224
   model input from 512x512 CT slices, batch 64: bare forward vs ``extract()`` on
   in-memory volumes vs ``extract_many()`` from ``.nii.gz`` files read ahead on threads,
   with the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the repository, when cbirlib is not installed

AGREEMENT_MODELS = ("resnet18", "vit_small_patch16_224")
THROUGHPUT_MODELS = ("resnet50", "vit_base_patch16_224")


def _volumes() -> list[Any]:
    from cbirlib.volume import Volume

    rng = np.random.default_rng(0)
    arr = rng.normal(0, 300, size=(40, 160, 144)).astype(np.float32)
    arr[:, 40:120, 50:110] += np.linspace(-500, 900, 40, dtype=np.float32)[:, None, None]
    mr = np.abs(rng.normal(300, 120, size=(12, 96, 96))).astype(np.float32)
    return [
        Volume("ct", arr, spacing=(2.0, 0.8, 0.8)),
        Volume("mr", mr, spacing=(3.0, 1.0, 1.0), modality="MR"),
    ]


def _compare(label: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> tuple[float, float]:
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    cos = float((a * b).sum(axis=1).min()) if a.size else 1.0  # rows are L2-normalised
    print(f"  {label:<44s} max|diff| = {diff:.2e}   min cosine = {cos:.6f}")
    return diff, cos


def check_agreement(
    device: str, min_cos_amp: float, min_cos_fp32: float, max_diff_fp32: float
) -> bool:
    from safetensors.torch import save_file

    from cbirlib import _cuda_pipeline
    from cbirlib.extractors import TimmExtractor

    vols = _volumes()
    ok = True

    def expect(cond: bool, what: str) -> None:
        nonlocal ok
        if not cond:
            print(f"  FAIL: {what}")
            ok = False

    with tempfile.TemporaryDirectory() as tmp:
        for model in AGREEMENT_MODELS:
            torch.manual_seed(0)
            src = TimmExtractor(model, weights="random", device="cpu")
            path = Path(tmp) / f"{model}.safetensors"
            save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
            print(f"{model} (random weights, same tensors on CPU and CUDA)")
            cpu = TimmExtractor(model, weights=str(path), device="cpu", batch_size=16)
            fp32 = TimmExtractor(model, weights=str(path), device=device, amp=False, batch_size=16)
            amp = TimmExtractor(model, weights=str(path), device=device, amp=True, batch_size=16)
            for vol in vols:
                ref = cpu.extract(vol)
                got = fp32.extract(vol)
                diff, cos = _compare(f"{vol.id}: CPU fp32 vs CUDA fp32", ref, got)
                expect(diff <= max_diff_fp32 and cos >= min_cos_fp32, f"{model} {vol.id} fp32")
                _, cos = _compare(f"{vol.id}: CPU fp32 vs CUDA autocast", ref, amp.extract(vol))
                expect(cos >= min_cos_amp, f"{model} {vol.id} autocast cosine {cos:.6f}")
                sel = np.array([vol.n_slices - 1, 0, 3, 4, 5, 1, 1])
                diff, _ = _compare(
                    f"{vol.id}: CUDA slices= vs CPU rows", ref[sel], fp32.extract(vol, slices=sel)
                )
                expect(diff <= max_diff_fp32, f"{model} {vol.id} slices=")
                slab = vol.slab(2, 9, id="slab")  # an MR slab has its own percentile window
                many = dict(fp32.extract_many([vol, slab], workers=2))
                diff, _ = _compare(f"{vol.id}: CUDA extract_many vs CPU", ref, many[vol.id])
                diff2, _ = _compare(
                    f"{vol.id}: CUDA extract_many, slab vs CPU", cpu.extract(slab), many["slab"]
                )
                expect(max(diff, diff2) <= max_diff_fp32, f"{model} {vol.id} extract_many")
            old = _cuda_pipeline.CHUNK_BYTES
            try:  # chunks of 3 slices: partial batches, many staged uploads
                _cuda_pipeline.CHUNK_BYTES = 3 * 4 * vols[0].shape[1] * vols[0].shape[2]
                diff, _ = _compare(
                    "ct: 3-slice chunks vs CPU", cpu.extract(vols[0]), fp32.extract(vols[0])
                )
                expect(diff <= max_diff_fp32, f"{model} small chunks")
            finally:
                _cuda_pipeline.CHUNK_BYTES = old
    return ok


def throughput(args: argparse.Namespace) -> None:
    import extraction_throughput as et

    from cbirlib.io import load_volume

    workers = min(12, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = et.write_volumes(Path(tmp), args.volumes, args.slices, 512)
        volumes = [load_volume(p) for p in paths]
        print(f"(wrote and read {len(paths)} volumes in {time.perf_counter() - t0:.1f} s)")
        for model in THROUGHPUT_MODELS:
            try:
                torch.manual_seed(0)
                ex, label = et.make_extractor(f"timm:{model}", args.device, args.batch_size)
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                res = et.measure(ex, volumes, paths, workers=workers, repeat=2)
                cfg = ex.input_config
                et.report(
                    f"{label}: input {cfg.size[0]}x{cfg.size[1]}, batch {args.batch_size}, "
                    f"{args.volumes} volumes x {args.slices} slices of 512x512, {workers} "
                    f"reading threads, peak GPU memory {_peak_gib(args.device):.1f} GiB",
                    res,
                )
                del ex
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            except Exception:  # report, go on with the next model
                traceback.print_exc()


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--min-cosine", type=float, default=0.99, help="with autocast")
    parser.add_argument("--min-cosine-fp32", type=float, default=0.9999)
    parser.add_argument("--max-diff-fp32", type=float, default=2e-3)
    parser.add_argument("--quick", action="store_true", help="agreement only")
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda", help="'cpu' only dry-runs this script")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: nothing to check")
        return 0
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    print(f"device: {name}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    # "fp32" means fp32: no TF32 convolutions/matmuls while comparing with the CPU
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ok = check_agreement(args.device, args.min_cosine, args.min_cosine_fp32, args.max_diff_fp32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    print(f"agreement: {'OK' if ok else 'FAILED'} ({time.perf_counter() - t0:.0f} s)\n")
    if not args.quick:
        throughput(args)
    print(f"\n{'OK' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
