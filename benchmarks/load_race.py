"""Concurrent save/load race: a process saves two versions in a loop, this one loads.

Prints the number of saves, loads, mixed loads (ids of one version with vectors of the
other) and errors. Usage: ``python benchmarks/load_race.py [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbirlib.index import SliceIndex
from tests.test_reliability import SAVER, _check_whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "idx"
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(path), str(args.seconds + 1)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert saver.stdout is not None and saver.stdout.readline().strip() == "ready"
    loads = mixed = errors = 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        try:
            index = SliceIndex.load(path)
        except Exception as exc:  # counted, not raised: this is a measurement
            errors += 1
            print("error:", type(exc).__name__, exc)
            continue
        try:
            _check_whole(index)
        except AssertionError:
            mixed += 1
        loads += 1
    saves = int(saver.stdout.readline())
    saver.wait()
    saver.stdout.close()
    print(f"{args.seconds:.0f} s: {saves} saves, {loads} loads, {mixed} mixed, {errors} errors")


if __name__ == "__main__":
    main()
