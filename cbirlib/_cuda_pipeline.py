"""The CUDA streaming engine behind :class:`cbirlib.extractor.SliceExtractor` (private).

A plugin author never calls this: :meth:`SliceExtractor.extract` and
:meth:`~cbirlib.extractor.Extractor.extract_many` use it on a CUDA device, and the CPU path
in :mod:`cbirlib.extractor` produces the same embeddings without it.

How it works. Worker threads (:func:`cbirlib.prefetch.prefetch`) copy chunks of slices
into pinned host memory and start their upload on a side stream (an asynchronous DMA),
recording an event. The host thread only queues work on the compute stream: it waits for
a chunk's event, preprocesses and embeds it, and queues each volume's embeddings to
pinned host memory. Uploads and host copies of later chunks (and of the next volumes, in
``extract_many``) thus overlap the model's work; the host waits only for results it
returns, and for the oldest batch when :data:`MAX_INFLIGHT` are queued (bounded memory).

The engine knows nothing of models: the extractor passes what to compute per volume
(``prepare``, on a staging thread with the volume's first chunk), how to embed a chunk
already on the device (``embed``) and how to check a volume's embeddings (``check``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar, cast

import numpy as np
import torch

from cbirlib._typing import F32, I64
from cbirlib.prefetch import prefetch
from cbirlib.volume import Volume

__all__ = [
    "CHUNK_BYTES",
    "MAX_INFLIGHT",
    "STAGE_AHEAD",
    "STAGE_WORKERS",
    "CudaPipeline",
    "consecutive",
]

CHUNK_BYTES = 64 * 2**20
"""Largest chunk of slices staged and sent to the device at once (it may cut batches short
for very large slices); read at each run, so tests may lower it."""
STAGE_WORKERS = 3  # threads that copy chunks into pinned memory and start their upload
STAGE_AHEAD = 4  # chunks staged (on the device) ahead of the model
MAX_INFLIGHT = 4  # batches queued on the device before the host waits for the oldest

P = TypeVar("P")
"""What ``prepare`` computes for a volume (its window and spacing), opaque to the engine."""


def consecutive(idx: I64) -> bool:
    """Whether ``idx`` is a non-empty run of consecutive indices (a slice of the array).

    Examples
    --------
    >>> [consecutive(np.array(idx, np.int64)) for idx in ([3, 4, 5], [3, 5], [])]
    [True, False, False]
    """
    return (
        len(idx) > 0 and int(idx[-1] - idx[0]) == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))
    )


def _query(event: torch.cuda.Event) -> bool:
    """Whether the work before ``event`` has finished (does not wait)."""
    return bool(event.query())  # type: ignore[no-untyped-call]


def _record(stream: torch.cuda.Stream) -> torch.cuda.Event:
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
    event.record(stream)
    return event


@dataclass(frozen=True)
class Staged(Generic[P]):
    """One chunk of a volume's slices, on its way to (or already on) the device."""

    volume: Volume
    n: int  # slices embedded for this volume (all chunks)
    prep: P | None  # ``prepare(volume)``, with the volume's first chunk only
    raw: torch.Tensor | None  # (k, Y, X) float32 on the device; None for no slices
    ready: torch.cuda.Event | None  # recorded on the copy stream after the upload
    last: bool  # the volume's last chunk


class CudaPipeline(Generic[P]):
    """Embeds ``(volume, slice indices)`` items on one CUDA device, overlapping copies and
    compute.

    Parameters
    ----------
    device
        The CUDA device the model runs on. Nothing touches CUDA before :meth:`run` (the
        staging plan, :meth:`stage_jobs`, may be built for any device).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stream: torch.cuda.Stream | None = None

    def _copy_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return self._stream

    def stage_jobs(
        self,
        items: Iterable[tuple[Volume, I64]],
        *,
        batch_size: int,
        prepare: Callable[[Volume], P],
    ) -> Iterator[Callable[[], Staged[P]]]:
        """Loaders of the chunks of every volume, in order (each runs on a worker thread).

        Chunks hold at most ``batch_size`` slices and :data:`CHUNK_BYTES` bytes; a volume
        with no slices selected still yields one (empty, last) chunk.
        """
        for volume, idx in items:
            slice_bytes = 4 * volume.shape[1] * volume.shape[2]
            size = max(1, min(batch_size, CHUNK_BYTES // slice_bytes))
            starts = list(range(0, len(idx), size)) or [0]
            for k, start in enumerate(starts):
                yield partial(
                    self._stage,
                    volume,
                    idx[start : start + size],
                    n=len(idx),
                    prepare=prepare if k == 0 else None,
                    last=k == len(starts) - 1,
                )

    def _stage(
        self,
        volume: Volume,
        part: I64,
        *,
        n: int,
        prepare: Callable[[Volume], P] | None,
        last: bool,
    ) -> Staged[P]:
        """Copy ``volume.array[part]`` to pinned memory and start its upload (worker thread)."""
        prep = None if prepare is None else prepare(volume)
        if len(part) == 0:
            return Staged(volume, n, prep, None, None, last)
        host = torch.empty((len(part), *volume.shape[1:]), dtype=torch.float32, pin_memory=True)
        if consecutive(part):
            np.copyto(host.numpy(), volume.array[part[0] : part[-1] + 1])
        else:
            np.take(volume.array, part, axis=0, out=host.numpy(), mode="clip")  # validated
        side = self._copy_stream()
        with torch.cuda.stream(side):
            # allocated on the side stream; the consumer calls record_stream(compute).
            # The pinned block is not reused before this copy ends (torch records it).
            raw = host.to(self.device, non_blocking=True)
            ready = _record(side)
        return Staged(volume, n, prep, raw, ready, last)

    def run(
        self,
        items: Iterator[tuple[Volume, I64]],
        *,
        batch_size: int,
        dim: int,
        prepare: Callable[[Volume], P],
        embed: Callable[[torch.Tensor, P], torch.Tensor],
        check: Callable[[F32, int, Volume], None],
    ) -> Generator[tuple[Volume, F32], None, None]:
        """``(volume, embeddings)`` for each item, in order.

        Parameters
        ----------
        items
            ``(volume, validated slice indices)``; read lazily, volume by volume.
        batch_size
            Slices per forward pass (the most in one chunk).
        dim
            Embedding dimension (the shape of a volume with no slices).
        prepare
            What ``embed`` needs to know about a volume besides its slices.
        embed
            ``(k, Y, X)`` raw slices on the device and ``prepare(volume)`` -> ``(k, dim)``
            float32 rows, queued on the current stream under ``torch.inference_mode``.
        check
            Called with each volume's ``(n, dim)`` embeddings, ``n`` and the volume.

        Raises
        ------
        Exception
            A staging or ``embed`` error, raised after the volumes before it are yielded.
        """
        compute = torch.cuda.current_stream(self.device)
        self._copy_stream()
        staged = prefetch(
            self.stage_jobs(items, batch_size=batch_size, prepare=prepare),
            workers=STAGE_WORKERS,
            ahead=STAGE_AHEAD,
        )
        done: deque[tuple[Volume, int, torch.Tensor, torch.cuda.Event]] = deque()
        inflight: deque[torch.cuda.Event] = deque()
        outputs: list[torch.Tensor] = []
        prep: P | None = None  # set by the first chunk of each volume
        try:
            while True:
                try:
                    job = next(staged)
                    if job.prep is not None:
                        prep = job.prep
                    with torch.inference_mode():
                        if job.raw is not None and job.ready is not None:
                            compute.wait_event(job.ready)
                            job.raw.record_stream(compute)
                            # every volume's first chunk carries its prep
                            outputs.append(embed(job.raw, cast(P, prep)))
                            inflight.append(_record(compute))
                            if len(inflight) > MAX_INFLIGHT:
                                inflight.popleft().synchronize()
                        if job.last:
                            emb = (
                                torch.cat(outputs)
                                if outputs
                                else torch.zeros((0, dim), device=self.device)
                            )
                            outputs = []
                            host = torch.empty(emb.shape, dtype=torch.float32, pin_memory=True)
                            host.copy_(emb, non_blocking=True)
                            done.append((job.volume, job.n, host, _record(compute)))
                    del job
                except StopIteration:
                    break
                except Exception:
                    while done:  # the volumes before the failure first
                        yield _collect(*done.popleft(), check=check)
                    raise
                # return finished volumes; wait for one only once the next one is queued
                while done and (len(done) > 1 or _query(done[0][3])):
                    yield _collect(*done.popleft(), check=check)
            while done:
                yield _collect(*done.popleft(), check=check)
        finally:
            staged.close()


def _collect(
    volume: Volume,
    n: int,
    host: torch.Tensor,
    ready: torch.cuda.Event,
    *,
    check: Callable[[F32, int, Volume], None],
) -> tuple[Volume, F32]:
    ready.synchronize()
    emb: F32 = host.numpy().copy()  # not a view of the (reused) pinned buffer
    check(emb, n, volume)
    return volume, emb
