"""Read volumes in worker processes, ahead of the consumer, through shared memory.

Threads that read ``.nii.gz`` files share one interpreter: beyond inflating (which
releases the GIL) nibabel's decoding, reorientation and the float32 conversion hold it,
so threaded read-ahead stops scaling at one or two cores. :func:`read_volumes` runs the
loaders in ``workers`` processes instead, at most ``ahead`` volumes ahead of the
consumer (a bounded queue), and yields the volumes in input order. For a path, the
worker's reader decodes the voxels straight into a shared-memory block (a loader's
volume is copied there, as a loader may keep what it read), which becomes the
consumer's array (on Linux it is mapped, not copied; elsewhere copied out once), so the
array never goes through a pipe and no model is ever sent to a worker. The consumer's
volume is the worker's (its class and every attribute), not validated a second time.
On Linux a block returns to the run's pool when the consumer drops the volume (the
array and every view of it) and is refilled by the next read, so neither side maps
fresh memory for every volume; blocks are unlinked when the run ends. The volumes are
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

import copy
import ctypes
import mmap
import multiprocessing
import os
import pickle
import secrets
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, suppress
from dataclasses import dataclass
from functools import partial
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._reused_arrays import ReusedArrays
from cbirlib.errors import SettingError, VolumeReadError, VolumeSourceError
from cbirlib.prefetch import prefetch, run_ahead
from cbirlib.volume import Volume

__all__ = ["default_read_workers", "read_ahead", "read_volumes"]


def default_read_workers() -> int:
    """Reading processes by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class _Packed:
    """A volume in transit: its voxels in a shared-memory block, the rest pickled.

    ``volume`` is the loader's volume (its class and every attribute) without its
    array, pickled; ``spare`` is the pooled block the worker was offered and did not use.
    """

    block: str
    shape: tuple[int, ...]
    volume: bytes
    spare: str | None = None

    def unpacked(self, array: npt.NDArray[np.float32]) -> Volume:
        """The volume, with ``array`` (the block's voxels) as its array.

        Not validated again: the worker's volume was, and its voxels are these.
        """
        volume: Volume = pickle.loads(self.volume)  # from this run's own worker
        object.__setattr__(volume, "array", array)
        return volume


def _without_array(volume: Volume) -> Volume:
    shell = copy.copy(volume)  # the same class and attributes, no __init__ run
    object.__setattr__(shell, "array", None)
    return shell


def _load_path(path: str) -> Volume:
    from cbirlib.io import load_volume  # lazy: nibabel, pydicom, scipy (workers only)

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


_SHM_DIR = Path("/dev/shm")
#: Blocks are files in /dev/shm (Linux), named with this prefix; elsewhere
#: :mod:`multiprocessing.shared_memory` blocks, used once each.
_PREFIX = "cbirlib-"
#: Blocks a worker keeps mapped (most recently used first), to refill without page faults.
_WORKER_MAPPINGS = 8
_mapped: OrderedDict[str, mmap.mmap] = OrderedDict()


def _pooled() -> bool:
    return _SHM_DIR.is_dir()


def _init_worker() -> None:
    """Worker start: glibc keeps freed memory for the next volume instead of unmapping it.

    Every volume allocates the same large buffers (the inflated file, the float32
    array); by default glibc maps each one fresh and unmaps it when freed, so every
    volume pays page faults on all of its bytes (as much time as inflating, measured in
    ``benchmarks/ingest_throughput.py``). Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-4, 0)  # M_MMAP_MAX: large buffers come from the heap
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: freed heap stays for reuse
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _map_block(name: str, size: int | None = None) -> mmap.mmap:
    """Map the block ``name`` (creating it with ``size`` bytes when given)."""
    path = _SHM_DIR / name
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if size is not None else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if size is not None:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size if size is not None else os.fstat(fd).st_size)
    except BaseException:
        if size is not None:  # made here: not left behind (e.g. /dev/shm full)
            path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _worker_block(offered: str | None, nbytes: int) -> tuple[str, mmap.mmap]:
    """A block of at least ``nbytes`` bytes: the offered one, or a new one.

    Blocks the consumer has unlinked since (retired from its pool) are unmapped first,
    so that their memory is freed now, not when the worker ends.
    """
    for stale in [n for n in _mapped if not (_SHM_DIR / n).exists()]:
        with suppress(BufferError):  # still exported: unmapped when the last view goes
            _mapped.pop(stale).close()
    if offered is not None:
        mapping = _mapped.pop(offered, None) or _map_block(offered)
        _mapped[offered] = mapping
        if len(mapping) >= nbytes:
            _mapped.move_to_end(offered, last=False)
            return offered, mapping
    name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    # 25 % headroom, so that the next, slightly larger volume fits (untouched pages of a
    # block take no memory)
    _mapped[name] = mapping = _map_block(name, max(1, nbytes + nbytes // 4))
    _mapped.move_to_end(name, last=False)
    while len(_mapped) > _WORKER_MAPPINGS:
        with suppress(BufferError):
            _mapped.popitem()[1].close()
    return name, mapping


def _same_array(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    """``a`` is ``b``'s memory in ``b``'s layout (a view of all of it, or ``b`` itself)."""
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.flags.c_contiguous
    )


def _drop_block(name: str) -> None:
    """Unmap and unlink a block this worker made and the consumer never saw."""
    mapping = _mapped.pop(name, None)
    if mapping is not None:
        with suppress(BufferError):  # still exported: unmapped when the last view goes
            mapping.close()
    with suppress(FileNotFoundError):
        (_SHM_DIR / name).unlink()


def _read_in_worker(loader: Callable[[], Volume], offered: str | None = None) -> _Packed:
    """Run in a worker process: load a volume, its voxels put in a shared block.

    For a path (:func:`_load_path`) the reader writes the image straight into the block
    (:func:`cbirlib.io._canonical.images_allocated_by`): nothing else holds that array.
    Any other loader's array is copied into the block, as a loader may keep what it
    read (a cache), and a pooled block is overwritten by later reads.
    """
    given: list[tuple[str, npt.NDArray[np.float32]]] = []
    try:
        if isinstance(loader, partial) and loader.func is _load_path:
            volume = _decode_into_block(loader, offered, given)
        else:
            volume = loader()
        if not isinstance(volume, Volume):
            raise VolumeSourceError(
                f"read_volumes: loader {loader!r} returned a {type(volume).__name__!r}, "
                "not a Volume"
            )
        shell = _pickled_shell(volume, loader)
    except BaseException:
        # a block made here would never reach the consumer (an offered one goes back to
        # its pool there): e.g. an image decoded into it, then refused for NaN voxels
        if given and given[0][0] != offered:
            _drop_block(given[0][0])
        raise
    array = volume.array
    if not _pooled():  # pragma: no cover - other systems: a new block, copied out once
        block = shared_memory.SharedMemory(create=True, size=max(1, array.nbytes))
        try:
            np.ndarray(array.shape, np.float32, buffer=block.buf)[...] = array
            # the consumer frees the block: this process must not track (and unlink) it
            resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
        finally:
            block.close()
        return _Packed(block.name, tuple(array.shape), shell)
    if given and _same_array(array, given[0][1]):  # decoded straight into the block
        name = given[0][0]
    else:
        if given:
            if np.shares_memory(array, given[0][1]):
                array = array.copy()  # a part of the block: copied before it is overwritten
            if given[0][0] != offered:
                _drop_block(given[0][0])
        name, mapping = _worker_block(offered, array.nbytes)
        np.ndarray(array.shape, np.float32, buffer=mapping)[...] = array
    return _Packed(name, tuple(array.shape), shell, None if name == offered else offered)


def _decode_into_block(
    loader: Callable[[], Volume],
    offered: str | None,
    given: list[tuple[str, npt.NDArray[np.float32]]],
) -> Volume:
    """Run a path loader with the first image of this thread decoded into a block.

    ``given`` receives ``(block name, array)`` of the block handed out.
    """
    # lazy: cbirlib.io loads nibabel, pydicom and scipy, needed in the workers only
    from cbirlib.io._canonical import images_allocated_by

    owner = threading.get_ident()

    def allocate(shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
        if given or not _pooled() or threading.get_ident() != owner:
            return np.empty(shape, np.float32)
        name, mapping = _worker_block(offered, 4 * int(np.prod(shape)))
        given.append((name, np.ndarray(shape, np.float32, buffer=mapping)))
        return given[-1][1]

    with images_allocated_by(allocate):
        return loader()


def _pickled_shell(volume: Volume, loader: object) -> bytes:
    """The volume without its array, pickled here, so that a failure is named here."""
    try:
        return pickle.dumps(_without_array(volume), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise VolumeSourceError(
            f"read_volumes: loader {loader!r} returned a {type(volume).__name__} that "
            f"cannot be sent back from a worker ({type(exc).__name__}: {exc}); define "
            "Volume subclasses at module level and keep their attributes picklable"
        ) from None


class _Blocks:
    """The consumer's shared-memory blocks of one run, reused once a volume is dropped.

    A volume's array is a view of its block; when the last reference to it goes (the
    array and every view of it), the block returns to the free list and the next read
    fills it, with no new mapping on either side. At most ``keep`` free blocks are
    kept (the largest); the others are unlinked. :meth:`close` unlinks every block:
    arrays still held stay valid (their mapping lives until they are dropped).

    Returned blocks are queued (:meth:`release` only appends, so it is safe from a
    finalizer in any thread, even inside this class's own locked code) and taken into
    the free list by :meth:`offer` and :meth:`close`.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._maps: dict[str, mmap.mmap] = {}
        self._free: list[str] = []
        self._returned: deque[str] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def offer(self) -> str | None:
        """The largest free block for the next read (None: the worker makes one)."""
        with self._lock:
            self._take_returned()
            return self._free.pop() if self._free else None

    def volume(self, packed: _Packed) -> Volume:
        """The volume of ``packed``; its array is a view of the block."""
        if packed.spare is not None:
            self.release(packed.spare)
        with self._lock:
            mapping = self._maps.get(packed.block)
            if mapping is None:
                mapping = self._maps[packed.block] = _map_block(packed.block)
                resource_tracker.register("/" + packed.block, "shared_memory")
        flat = np.frombuffer(mapping, np.float32, count=int(np.prod(packed.shape)))
        # every view of ``flat`` (reshapes, slices, torch.from_numpy) holds it as its base
        weakref.finalize(flat, self.release, packed.block).atexit = False
        return packed.unpacked(flat.reshape(packed.shape))

    def release(self, name: str) -> None:
        """Return a block: it joins the free list (or is unlinked) at the next offer."""
        self._returned.append(name)

    def close(self) -> None:
        """Unlink every block; held arrays stay valid."""
        with self._lock:
            self._closed = True
            self._take_returned()
            for name in list(self._maps):
                self._unlink(name)
            self._free.clear()

    def _take_returned(self) -> None:
        while self._returned:
            name = self._returned.popleft()
            if name not in self._maps:  # a worker's block never mapped here
                with suppress(FileNotFoundError):
                    (_SHM_DIR / name).unlink()
            elif self._closed:
                self._unlink(name)
            else:
                self._free.append(name)
        self._free.sort(key=lambda n: len(self._maps[n]))  # smallest first
        while len(self._free) > self._keep:
            self._unlink(self._free.pop(0))

    def _unlink(self, name: str) -> None:
        if self._maps.pop(name, None) is None:  # the mapping lives on in the views
            return
        with suppress(FileNotFoundError):
            (_SHM_DIR / name).unlink()
        resource_tracker.unregister("/" + name, "shared_memory")


def _free(packed: _Packed) -> None:  # pragma: no cover - not Linux
    block = shared_memory.SharedMemory(name=packed.block)
    block.close()
    block.unlink()


def _unpack_copy(packed: _Packed) -> Volume:  # pragma: no cover - not Linux
    """The volume of a packed one, copied out of its block, which is freed."""
    block = shared_memory.SharedMemory(name=packed.block)
    try:
        array = np.ndarray(packed.shape, np.float32, buffer=block.buf).copy()
    finally:
        block.close()
        block.unlink()
    return packed.unpacked(array)


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
    pool = ProcessPoolExecutor(
        min(workers, ahead),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
    )
    blocks = _Blocks(keep=ahead) if _pooled() else None
    hint = (
        "loaders must be importable in a fresh process: module-level functions or "
        "functools.partial of them, not lambdas or local functions"
    )

    def submit(executor: Executor, loader: Callable[[], Volume]) -> Future[_Packed]:
        offered = blocks.offer() if blocks is not None else None
        future = executor.submit(_read_in_worker, loader, offered)
        if offered is not None and blocks is not None:
            pooled, block = blocks, offered

            def give_back(done: Future[_Packed]) -> None:  # the read failed or never ran
                if done.cancelled() or done.exception() is not None:
                    pooled.release(block)

            future.add_done_callback(give_back)
        return future

    def discard(packed: _Packed) -> None:
        if blocks is None:  # pragma: no cover - not Linux
            _free(packed)
            return
        blocks.release(packed.block)
        if packed.spare is not None:
            blocks.release(packed.spare)

    try:
        with closing(run_ahead(loaders, pool, submit, ahead=ahead, discard=discard)) as packed:
            for item in packed:
                yield blocks.volume(item) if blocks is not None else _unpack_copy(item)
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
    finally:
        if blocks is not None:
            blocks.close()


def read_ahead(
    loaders: Iterable[Callable[[], Volume]], *, workers: int, processes: bool = False
) -> Generator[Volume, None, None]:
    """Volumes read ahead of the consumer, as ``extract_many`` and ``build_index`` read.

    Parameters
    ----------
    loaders
        Zero-argument callables returning a :class:`~cbirlib.volume.Volume`.
    workers
        Reading threads (:func:`cbirlib.prefetch.prefetch`; ``0``: each volume read when
        it is asked for), or processes with ``processes`` (:func:`read_volumes`). At
        most ``max(2, workers)`` volumes are read ahead.
    processes
        Read in worker processes (the loaders must be picklable).

    Yields
    ------
    Volume
        One per loader, in input order. On threads, images go on memory reused from
        volumes already dropped (:class:`cbirlib._reused_arrays.ReusedArrays`): a
        volume still held, or any view of its array, is never overwritten.
    """
    ahead = max(2, int(workers))
    if processes and workers > 0:
        return read_volumes(loaders, workers=workers, ahead=ahead)
    arrays = ReusedArrays(keep=ahead + 1)
    return prefetch(map(arrays.reading, loaders), workers=workers, ahead=ahead)
