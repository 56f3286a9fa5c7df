"""CPU forward time in the ``channels_last`` vs the contiguous memory format, per model.

For each timm architecture (RANDOM weights: ``weights="random"``, no network; speed does
not depend on the weights) the same preprocessed batch is embedded in both formats,
alternating, ``--reps`` times each after a warm-up; the fastest time of each (the best
estimate of the uncontended time on a shared machine; ``--stat median`` for medians),
their ratio (contiguous / channels_last: > 1 means channels_last is faster) and the largest relative
difference of the embeddings are printed, all measured in one run. The ``default``
column is what :class:`cbirlib.TimmExtractor` uses on the CPU
(``channels_last=None``) for the model's family.

Usage::

    python benchmarks/channels_last.py                      # < 1 minute on 2 idle cores
    python benchmarks/channels_last.py --models resnet50 swin_tiny_patch4_window7_224 --reps 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence

import torch

DEFAULT_MODELS = ("resnet18", "tf_efficientnet_lite0", "convnext_atto", "vit_tiny_patch16_224")


def _time(model: torch.nn.Module, batch: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = model(batch)
    return time.perf_counter() - start, out


def measure(
    name: str, *, batch: int, size: int, reps: int, stat: str = "min"
) -> dict[str, float | bool | str]:
    """Forward seconds in both formats, their ratio and the embeddings' difference."""
    from cbirlib.extractors import TimmExtractor

    ex = TimmExtractor(name, weights="random", img_size=size, device="cpu", channels_last=False)
    default = ex.default_channels_last_cpu()
    models = {False: ex.model, True: copy.deepcopy(ex.model).to(memory_format=torch.channels_last)}
    torch.manual_seed(0)
    x = torch.randn(batch, 3, *ex.input_config.size)
    inputs = {False: x, True: x.contiguous(memory_format=torch.channels_last)}
    times: dict[bool, list[float]] = {False: [], True: []}
    outs: dict[bool, torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(2):  # warm-up of both formats (oneDNN picks and caches kernels)
            for fmt in (False, True):
                _time(models[fmt], inputs[fmt])
        for _ in range(reps):  # alternating, so that load from other jobs hits both
            for fmt in (False, True):
                t, outs[fmt] = _time(models[fmt], inputs[fmt])
                times[fmt].append(t)
    pick = min if stat == "min" else statistics.median
    contiguous, channels_last = (pick(times[f]) for f in (False, True))
    a, b = outs[False].float(), outs[True].float()
    rel = float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).max())
    return {
        "model": name,
        "contiguous_ms": 1000 * contiguous,
        "channels_last_ms": 1000 * channels_last,
        "ratio": contiguous / channels_last,
        "max_rel_diff": rel,
        "default": default,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch", type=int, default=4, help="slices per forward pass")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--reps", type=int, default=5, help="timed passes per format")
    parser.add_argument("--stat", choices=("min", "median"), default="min")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"CPU, {torch.get_num_threads()} threads, batch {args.batch} x 3 x {args.size}^2, "
        f"{args.stat} of {args.reps}"
    )
    print(
        f"{'model':<30} {'contiguous ms':>14} {'channels_last ms':>17} {'ratio':>6} "
        f"{'max rel diff':>13} {'default':>8}"
    )
    for name in args.models:
        r = measure(name, batch=args.batch, size=args.size, reps=args.reps, stat=args.stat)
        print(
            f"{r['model']:<30} {r['contiguous_ms']:>14.1f} {r['channels_last_ms']:>17.1f} "
            f"{r['ratio']:>6.2f} {r['max_rel_diff']:>13.1e} "
            f"{'cl' if r['default'] else 'contig':>8}"
        )


if __name__ == "__main__":
    main()
