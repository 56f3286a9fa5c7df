"""CPU vs CUDA agreement of slice embeddings, then the throughput benchmark on CUDA.

For each model the same volume is embedded on the CPU (float32) and on CUDA (with
autocast, as cbirlib runs it, and without); the script prints the max absolute
difference and the minimum row-wise cosine similarity between the two. Models:

* ``efficientnet-lite0`` (real ImageNet weights; needs the cbirlib-effnet-lite plugin);
* ``timm:resnet18`` and ``timm:vit_small_patch16_224`` with RANDOM weights, written to a
  temporary safetensors file so that CPU and CUDA load the very same tensors.

Exit status 1 when a cosine is below ``--min-cosine`` (default 0.99 with autocast,
0.9999 without). Without CUDA it says so and exits 0.

Usage::

    python benchmarks/gpu_check.py [--skip-throughput]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _volume() -> Any:
    from cbirlib.volume import Volume

    rng = np.random.default_rng(0)
    arr = rng.normal(0, 300, size=(24, 160, 160)).astype(np.float32)
    arr[:, 40:120, 50:110] += np.linspace(-500, 900, 24, dtype=np.float32)[:, None, None]
    return Volume("gpu-check", arr, spacing=(2.0, 0.8, 0.8))


def _compare(name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    diff = float(np.abs(a - b).max())
    cos = float((a * b).sum(axis=1).min())  # rows are L2-normalised
    print(f"  {name:<40s} max|diff| = {diff:.2e}   min cosine = {cos:.6f}")
    return cos


def check(min_cos_amp: float, min_cos_fp32: float) -> bool:
    from safetensors.torch import save_file

    from cbirlib.plugins import create_extractor, list_extractors

    vol = _volume()
    ok = True
    specs: list[tuple[str, dict[str, Any]]] = []
    if list_extractors("efficientnet-lite0"):
        specs.append(("efficientnet-lite0", {}))
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("resnet18", "vit_small_patch16_224"):
            torch.manual_seed(0)
            cpu: Any = create_extractor(f"timm:{model}", weights="random", device="cpu")
            path = Path(tmp) / f"{model}.safetensors"
            save_file({k: v.contiguous() for k, v in cpu.model.state_dict().items()}, str(path))
            specs.append((f"timm:{model}", {"weights": str(path)}))
        for name, kw in specs:
            label = name + (" (random weights)" if name.startswith("timm:") else "")
            print(label)
            ref = create_extractor(name, device="cpu", **kw).extract(vol)
            for amp, threshold in ((True, min_cos_amp), (False, min_cos_fp32)):
                gpu = create_extractor(name, device="cuda", amp=amp, **kw).extract(vol)
                cos = _compare(f"CPU fp32 vs CUDA {'autocast' if amp else 'fp32'}", ref, gpu)
                if cos < threshold:
                    print(f"  FAIL: cosine {cos:.6f} < {threshold}")
                    ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-cosine", type=float, default=0.99)
    parser.add_argument("--min-cosine-fp32", type=float, default=0.9999)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to compare")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    ok = check(args.min_cosine, args.min_cosine_fp32)
    if not args.skip_throughput:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import extraction_throughput

        print("\nthroughput on CUDA:")
        extraction_throughput.main(
            ["--device", "cuda", "--volumes", "4", "--slices", "128", "--batch-size", "64"]
        )
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
