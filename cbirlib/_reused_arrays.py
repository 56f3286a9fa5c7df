"""Volume arrays over reused memory: the next image read fills the memory of one dropped.

A new float32 volume (37 MiB for a 140-slice 256x256 CT) is memory the kernel maps and
zeroes page by page as the reader first writes it, then unmaps when the volume is
dropped: a tenth of a ``.nii.gz`` read here (``benchmarks/ingest_throughput.py``).
:class:`ReusedArrays` gives the readers of one read-ahead run arrays over anonymous
memory maps that it reuses, each only once the array made on it and every view of it
are gone (the memory map is the views' base object, so a reshape, a slice or
``torch.from_numpy`` of the volume keeps it: a volume still held is never overwritten).
Only images that would get a new array anyway go there (:func:`reading`): an image whose
float32 array nibabel made in the volume's layout keeps that array.

Examples
--------
>>> arrays = ReusedArrays(keep=2)
>>> a = arrays.allocate((2, 3, 4))
>>> view = a[1]
>>> del a
>>> b = arrays.allocate((2, 3, 4))  # ``view`` still holds the first map: a new one
>>> np.shares_memory(b, view)
False
"""

from __future__ import annotations

import mmap
import threading
import weakref
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["ReusedArrays"]

T = TypeVar("T")

#: A free map is reused for an array of at least this fraction of its size.
MIN_FILL = 0.5


class ReusedArrays:
    """C-contiguous float32 arrays over memory maps reused once their arrays are gone.

    Parameters
    ----------
    keep
        Free maps kept for the next arrays (the largest); others are unmapped. Use the
        number of volumes a run holds at once (read ahead, and the one being used).
    """

    def __init__(self, keep: int) -> None:
        self._keep = max(0, int(keep))
        self._free: list[mmap.mmap] = []
        self._returned: deque[mmap.mmap] = deque()  # appended by finalizers, any thread
        self._lock = threading.Lock()

    def allocate(self, shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
        """An uninitialised float32 array of ``shape`` (C order) on a free or new map."""
        count = int(np.prod(shape))
        if count == 0:
            return np.empty(shape, np.float32)
        mapping = self._take(4 * count)
        flat = np.frombuffer(mapping, np.float32, count=count)
        # every view of ``flat`` has it as its base (a map is not an array, so numpy
        # does not collapse views past it): the map returns only when all are gone
        weakref.finalize(flat, self._returned.append, mapping).atexit = False
        return flat.reshape(shape)

    def reading(self, loader: Callable[[], T]) -> Callable[[], T]:
        """``loader`` with the images it reads put on this pool's arrays (see module)."""
        return partial(_read_with, self, loader)

    def _take(self, nbytes: int) -> mmap.mmap:
        with self._lock:
            while self._returned:
                self._free.append(self._returned.popleft())
            fits = [m for m in self._free if MIN_FILL * len(m) <= nbytes <= len(m)]
            chosen = min(fits, key=len) if fits else None
            if chosen is not None:
                self._free.remove(chosen)
            self._free.sort(key=len)
            dropped = self._free[: max(0, len(self._free) - self._keep)]
            del self._free[: len(dropped)]
        for mapping in dropped:  # no array is left on a free map
            mapping.close()
        if chosen is not None:
            return chosen
        mapping = mmap.mmap(-1, nbytes)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # fewer page faults on first use (Linux)
            mapping.madvise(mmap.MADV_HUGEPAGE)
        return mapping


def _read_with(arrays: ReusedArrays, loader: Callable[[], T]) -> T:
    # lazy: cbirlib.io loads nibabel, pydicom and scipy (keeps `import cbirlib` cheap)
    from cbirlib.io._canonical import images_allocated_by

    with images_allocated_by(arrays.allocate, only_new=True):
        return loader()
