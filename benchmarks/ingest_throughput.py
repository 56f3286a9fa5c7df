"""Volume reading rate from ``.nii.gz``: today's threaded reader vs worker processes.

Writes ``--subjects`` phantom CTs (:func:`cbirlib.datasets.make_phantoms`, int16 HU,
``--size`` pixels square; the compression ratio is printed) and reads all of them,
printing slices/s of:

``(a) threads``
    Today's reader: :func:`cbirlib.io.load_volume` with nibabel opening the files
    itself (``CBIRLIB_GZIP=nibabel``), read ahead on ``--threads`` threads
    (:func:`cbirlib.prefetch.prefetch`, as ``extract_many`` and ``build_index`` do).
``(b) processes``
    :func:`cbirlib.ingest.read_volumes` with ``--workers`` processes (isal when
    installed), start-up of the workers included; also printed: the rate after the
    first volume arrived (steady state, start-up excluded), and over the second half of
    the volumes (the block pool warm: its first blocks are memory new to the run).
``(t) threads, the library's reader``
    The same threads with the library's own ``.nii.gz`` reading (isal or zlib, the
    voxels cast into place as they are inflated, :mod:`cbirlib.io._gzipped`), as
    ``extract_many`` and ``build_index`` read by default
    (:func:`cbirlib.ingest.read_ahead`): the GIL is released while inflating and
    casting, so threads scale too, and each volume goes on memory of one already
    dropped (:mod:`cbirlib._reused_arrays`). Also printed: the same threads with each
    volume on new memory (plain :func:`cbirlib.prefetch.prefetch`), to measure that.
``(c) limit``
    ``--workers`` x the single-process rate of decompressing the same files with isal,
    without decoding: what N processes can at best reach. Measured four ways: inflating
    each file in one call (``cbirlib._gzip.gunzip``) and as a stream into one reused
    1 MiB buffer (``cbirlib._gzip.open_gzip``, as the readers now do; faster, the output
    staying in the CPU cache), each in this process (glibc's default allocator settings)
    and in a reading worker (:func:`cbirlib.ingest._init_worker`'s settings); the ratios
    use the strictest (fastest) of the four.

and the ratios (b)/(c) (target >= 0.8) and (b)/(a) (target >= 2). Every rate is
measured in one run, on the same files, after one untimed pass that warms the page
cache. (a) and (b) run ``--rounds`` times each (alternating) and the ratios use each
one's best round: on a virtual machine whose host backs guest memory lazily, memory a
run touches for the first time costs far more than memory used before (on the project's
2-core VM: about 200 MiB/s on first touch against 10 GiB/s after), so a first round
measures the host's memory more than the reader.

Usage::

    python benchmarks/ingest_throughput.py --subjects 4 --size 256 --copies 6 --workers 2
    python benchmarks/ingest_throughput.py --subjects 16 --size 512 --workers 8
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from cbirlib._gzip import gunzip, gzip_backend, open_gzip
from cbirlib.datasets.phantom import make_phantoms
from cbirlib.ingest import _init_worker, default_read_workers, read_ahead, read_volumes
from cbirlib.io import load_volume
from cbirlib.prefetch import prefetch


def _timed(run: object) -> float:
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def _inflate_seconds(paths: list[Path], streamed: bool = False) -> float:
    """Seconds to inflate every file once with isal, in the calling process.

    Whole (one call per file) or ``streamed`` (1 MiB at a time into one buffer).
    """
    buffer = memoryview(bytearray(2**20))
    start = time.perf_counter()
    for p in paths:
        if not streamed:
            gunzip(p, backend="isal")
            continue
        with open_gzip(p, backend="isal") as f:
            while f.readinto(buffer):  # type: ignore[attr-defined]
                pass
    return time.perf_counter() - start


def _inflate_seconds_in_worker(paths: list[Path], streamed: bool = False) -> float:
    """:func:`_inflate_seconds` in a process set up as a reading worker (warm, best of 2)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_init_worker) as pool:
        return min(pool.submit(_inflate_seconds, paths, streamed).result() for _ in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--size", type=int, default=256, help="in-plane pixels")
    parser.add_argument("--workers", type=int, default=default_read_workers())
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument(
        "--copies", type=int, default=1, help="read each file this many times (more data)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of (a) and (b)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ds = make_phantoms(Path(tmp) / "ds", args.subjects, shape=(args.size, args.size))
        paths = [ds.image_path(s) for s in ds.subjects]
        for k in range(1, args.copies):  # the same content under other names
            for s in ds.subjects:
                copy = Path(tmp) / f"copy{k}" / f"{s}.nii.gz"
                copy.parent.mkdir(exist_ok=True)
                shutil.copyfile(ds.image_path(s), copy)
                paths.append(copy)
        volumes = [load_volume(p) for p in paths]  # also warms the page cache
        slices = sum(v.n_slices for v in volumes)
        raw = sum(len(gunzip(p, backend="zlib")) for p in paths)
        packed = sum(p.stat().st_size for p in paths)
        del volumes
        print(
            f"{args.subjects} phantom CTs x {args.copies}: {len(paths)} files, {slices} "
            f"slices of {args.size}x{args.size} int16; "
            f"{packed / 2**20:.1f} MiB compressed, ratio {raw / packed:.2f}x; "
            f"gzip backend: {gzip_backend()}"
        )

        def today() -> None:
            os.environ["CBIRLIB_GZIP"] = "nibabel"
            try:
                threads_fresh()
            finally:
                del os.environ["CBIRLIB_GZIP"]

        def threads_fresh() -> None:  # each volume on new memory (plain prefetch)
            loaders = [partial(load_volume, p) for p in paths]
            for _ in prefetch(loaders, workers=args.threads, ahead=max(2, args.threads)):
                pass

        def threads_now() -> None:  # as extract_many and build_index read
            loaders = [partial(load_volume, p) for p in paths]
            for _ in read_ahead(loaders, workers=args.threads):
                pass

        arrivals: list[tuple[float, int]] = []  # (seconds since the start, slices)

        def processes() -> None:
            start = time.perf_counter()
            for volume in read_volumes(paths, workers=args.workers):
                arrivals.append((time.perf_counter() - start, volume.n_slices))

        def rates(elapsed: float) -> tuple[float, float, float, float]:
            """Whole run, after the first volume, over the second half; first volume at."""
            first_at, first_n = arrivals[0]
            half = len(arrivals) // 2
            half_at = arrivals[half - 1][0]
            half_slices = sum(n for _, n in arrivals[half:])
            return (
                slices / elapsed,
                (slices - first_n) / (elapsed - first_at),
                half_slices / (elapsed - half_at),
                first_at,
            )

        rounds_a: list[float] = []
        rounds_t: list[float] = []
        rounds_f: list[float] = []
        rounds_b: list[tuple[float, float, float, float]] = []
        for _ in range(args.rounds):
            rounds_a.append(slices / _timed(today))
            rounds_t.append(slices / _timed(threads_now))
            rounds_f.append(slices / _timed(threads_fresh))
            arrivals.clear()
            rounds_b.append(rates(_timed(processes)))
        a = max(rounds_a)
        t = max(rounds_t)
        f = max(rounds_f)
        b, steady, warm, first_at = max(rounds_b)
        c_ways = {
            f"{how} {where}": args.workers * slices / seconds(paths, how == "streamed")
            for how in ("whole", "streamed")
            for where, seconds in (
                ("here", _inflate_seconds),
                ("in a worker", _inflate_seconds_in_worker),
            )
        }
        c = max(c_ways.values())
    print("rounds (a): " + ", ".join(f"{r:.1f}" for r in rounds_a) + " slices/s")
    print(
        "rounds (b): "
        + ", ".join(f"{r:.1f} (steady {t:.1f}, second half {h:.1f})" for r, t, h, _ in rounds_b)
    )
    print(f"best rounds:\n(a) threads   ({args.threads} threads, nibabel gzip): {a:9.1f} slices/s")
    print(f"(b) processes ({args.workers} workers):                {b:9.1f} slices/s")
    print(
        f"    steady state, after the first volume (at {first_at:.2f} s: start-up + one read): "
        f"{steady:9.1f} slices/s"
    )
    print(f"    over the second half of the volumes (block pool warm): {warm:9.1f} slices/s")
    print(
        f"(t) threads, the library's reader ({args.threads} threads, {gzip_backend()} "
        f"streamed): {t:9.1f} slices/s (rounds "
        + ", ".join(f"{r:.1f}" for r in rounds_t)
        + f"); (t)/(c) = {t / c:.2f}, (t)/(a) = {t / a:.2f}"
    )
    print(
        f"    the same on new memory for every volume (plain prefetch): {f:9.1f} slices/s "
        "(rounds " + ", ".join(f"{r:.1f}" for r in rounds_f) + f"); (t)/that = {t / f:.2f}"
    )
    print(f"(c) limit     ({args.workers} x isal inflate alone):   {c:9.1f} slices/s")
    print("    (" + ", ".join(f"{way} {rate:.1f}" for way, rate in c_ways.items()) + ")")
    print(f"(b)/(c) = {b / c:.2f} (target >= 0.8)   (b)/(a) = {b / a:.2f} (target >= 2)")
    print(f"steady (b)/(c) = {steady / c:.2f}   steady (b)/(a) = {steady / a:.2f}")
    print(f"second half (b)/(c) = {warm / c:.2f}   second half (b)/(a) = {warm / a:.2f}")


if __name__ == "__main__":
    main()
