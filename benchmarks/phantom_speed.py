"""Time :func:`cbirlib.datasets.make_phantoms` (target: 20 subjects at 128x128 in < 30 s).

Run: ``python benchmarks/phantom_speed.py [n] [size]``. Prints wall and CPU seconds and
the mean time to load a subject (CT + 104 masks) back through the loader.
"""

from __future__ import annotations

import sys
import tempfile
import time


def main() -> None:
    from cbirlib.datasets import make_phantoms

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        ds = make_phantoms(tmp, n, shape=(size, size))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        slices = 0
        t = time.perf_counter()
        for sid in ds:
            slices += ds[sid].n_slices
        load = (time.perf_counter() - t) / n
    print(f"make_phantoms: {n} subjects at {size}x{size}, {slices} slices")
    print(f"  write: {wall:.1f} s wall, {cpu:.1f} s CPU (all threads)")
    print(f"  load:  {load:.2f} s per subject (CT + 104 masks)")


if __name__ == "__main__":
    main()
