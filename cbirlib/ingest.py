"""Read volumes in worker processes, ahead of the consumer, through shared memory.

Threads that read ``.nii.gz`` files share one interpreter: beyond inflating (which
releases the GIL) nibabel's decoding, reorientation and the float32 conversion hold it,
so threaded read-ahead stops scaling at one or two cores. :func:`read_volumes` runs the
loaders in ``workers`` processes instead, at most ``ahead`` volumes ahead of the
consumer (a bounded queue), and yields the volumes in input order. Each worker copies
its volume's voxels into a shared-memory block, which becomes the consumer's array (on
Linux it is mapped, not copied; elsewhere copied out once) and is freed with it, so the
array never goes through a pipe and no model is ever sent to a worker. The volumes are
the ones the loaders return, bit for bit.

Examples
--------
>>> import tempfile, pathlib, numpy as np, nibabel as nib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> for i in range(3):
...     nib.save(nib.Nifti1Image(np.full((8, 8, 4), i, np.int16), np.eye(4)), tmp / f"v{i}.nii.gz")
>>> [(v.id, float(v.array.max())) for v in read_volumes(sorted(tmp.iterdir()), workers=2)]
[('v0', 0.0), ('v1', 1.0), ('v2', 2.0)]
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from cbirlib.errors import SettingError, VolumeReadError, VolumeSourceError
from cbirlib.prefetch import run_ahead
from cbirlib.volume import Volume

__all__ = ["default_read_workers", "read_volumes"]


def default_read_workers() -> int:
    """Reading processes by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class _Packed:
    """A volume in transit: its voxels in a shared-memory block, the rest pickled."""

    block: str
    shape: tuple[int, ...]
    fields: dict[str, Any]


def _load_path(path: str) -> Volume:
    from cbirlib.io import load_volume

    return load_volume(path)


def _as_loader(item: object) -> Callable[[], Volume]:
    if isinstance(item, str | os.PathLike):
        return partial(_load_path, os.fspath(item))
    if callable(item):
        return item
    raise VolumeSourceError(
        f"read_volumes: cannot read a {type(item).__name__!r}; give paths or picklable "
        "zero-argument loaders (functions, functools.partial) that return a Volume"
    )


def _read_in_worker(loader: Callable[[], Volume]) -> _Packed:
    """Run in a worker process: load, and put the voxels in a new shared-memory block."""
    volume = loader()
    if not isinstance(volume, Volume):
        raise VolumeSourceError(
            f"read_volumes: loader {loader!r} returned a {type(volume).__name__!r}, not a Volume"
        )
    array = volume.array
    block = shared_memory.SharedMemory(create=True, size=max(1, array.nbytes))
    try:
        np.ndarray(array.shape, np.float32, buffer=block.buf)[...] = array
        # the consumer frees the block: this process must not track (and unlink) it
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
    finally:
        block.close()
    fields = {
        "id": volume.id,
        "spacing": volume.spacing,
        "z_positions": volume.z_positions,
        "labels": volume.labels,
        "modality": volume.modality,
        "affine": volume.affine,
    }
    return _Packed(block.name, tuple(array.shape), fields)


_SHM_DIR = Path("/dev/shm")


def _unpack(packed: _Packed) -> Volume:
    """The volume of a packed one; its block is freed (unlinked) here."""
    mapped = _SHM_DIR / packed.block.lstrip("/")
    if mapped.is_file():  # Linux: map the block; the array owns the mapping, no copy
        fd = os.open(mapped, os.O_RDWR)
        try:
            size = int(np.prod(packed.shape)) * 4
            buffer = mmap.mmap(fd, max(1, size))
        finally:
            os.close(fd)
            mapped.unlink()
        array = np.frombuffer(buffer, np.float32, count=size // 4).reshape(packed.shape)
    else:  # pragma: no cover - other systems: copy out of the block
        block = shared_memory.SharedMemory(name=packed.block)
        try:
            array = np.ndarray(packed.shape, np.float32, buffer=block.buf).copy()
        finally:
            block.close()
            block.unlink()
    return Volume(array=array, **packed.fields)


def _free(packed: _Packed) -> None:
    block = shared_memory.SharedMemory(name=packed.block)
    block.close()
    block.unlink()


def _submit(pool: Executor, loader: Callable[[], Volume]) -> Future[_Packed]:
    return pool.submit(_read_in_worker, loader)


def read_volumes(
    sources: Iterable[str | os.PathLike[str] | Callable[[], Volume]],
    *,
    workers: int | None = None,
    ahead: int | None = None,
) -> Generator[Volume, None, None]:
    """Read volumes in ``workers`` processes, ahead of the consumer; yield them in order.

    Parameters
    ----------
    sources
        Paths (read with :func:`cbirlib.io.load_volume`) or zero-argument loaders that
        return a :class:`~cbirlib.volume.Volume`. Loaders are pickled to the workers:
        use module-level functions or :func:`functools.partial` of them (not lambdas or
        local functions). The iterable is consumed lazily.
    workers
        Reading processes (default :func:`default_read_workers`: the usable CPUs).
    ahead
        At most this many volumes are being read or read and not yet consumed (default
        ``2 * workers``): the bound on the memory that read-ahead holds.

    Yields
    ------
    Volume
        One per source, in input order, equal to what the loader returns.

    Raises
    ------
    SettingError
        ``workers`` or ``ahead`` below 1.
    VolumeSourceError
        A source that is neither a path nor a loader, a loader that returns no Volume,
        or one that cannot be pickled.
    VolumeReadError
        A worker process died (killed, out of memory, or unable to unpickle a loader
        defined under ``if __name__ == "__main__":``).
    Exception
        A loader's own exception (e.g. :class:`~cbirlib.errors.VolumeReadError`),
        raised at its position after the volumes before it.

    Notes
    -----
    Workers are started with the ``spawn`` method (safe with torch and threads in the
    consumer) when the first volume is requested, and stopped when the generator ends
    or is closed; volumes read but not consumed are freed then.
    """
    n = default_read_workers() if workers is None else int(workers)
    if n < 1:
        raise SettingError(f"workers must be >= 1, got {workers!r}")
    depth = 2 * n if ahead is None else int(ahead)
    if depth < 1:
        raise SettingError(f"ahead must be >= 1, got {ahead!r}")
    return _read(map(_as_loader, sources), n, depth)


def _read(
    loaders: Iterable[Callable[[], Volume]], workers: int, ahead: int
) -> Generator[Volume, None, None]:
    pool = ProcessPoolExecutor(min(workers, ahead), mp_context=multiprocessing.get_context("spawn"))
    hint = (
        "loaders must be importable in a fresh process: module-level functions or "
        "functools.partial of them, not lambdas or local functions"
    )
    try:
        with closing(run_ahead(loaders, pool, _submit, ahead=ahead, discard=_free)) as packed:
            for item in packed:
                yield _unpack(item)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        if not isinstance(exc, pickle.PicklingError) and "pickle" not in str(exc):
            raise  # a loader's own error, raised in the worker
        raise VolumeSourceError(
            f"read_volumes: a loader cannot be sent to a worker ({exc}); {hint}"
        ) from None
    except BrokenProcessPool:
        raise VolumeReadError(
            "read_volumes: a reading worker process died (killed, out of memory, or a "
            f"loader it could not unpickle); {hint}"
        ) from None
