"""Read-ahead: run zero-argument loaders on a thread pool, yield their results in order.

Reading a volume is mostly work that releases the GIL (zlib inflating a ``.nii.gz``,
numpy copies), so a few threads read the next volumes while the caller embeds the
current one. :func:`prefetch` keeps the input order, bounds how far it reads ahead, and
raises a loader's exception where that loader's result would have been.

Examples
--------
>>> from functools import partial
>>> list(prefetch([partial(pow, 2, k) for k in range(5)], workers=2, ahead=3))
[1, 2, 4, 8, 16]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

from cbirlib.errors import SettingError

__all__ = ["prefetch", "run_ahead"]

T = TypeVar("T")
L = TypeVar("L")
R = TypeVar("R")


def prefetch(
    loaders: Iterable[Callable[[], T]], *, workers: int = 2, ahead: int = 4
) -> Generator[T, None, None]:
    """Call ``loaders`` on ``workers`` threads, ahead of the consumer; yield results in order.

    Parameters
    ----------
    loaders
        Zero-argument callables (e.g. ``functools.partial(load_volume, path)``); the
        iterable itself is consumed lazily, in the caller's thread, as read-ahead needs.
    workers
        Threads that call the loaders; ``0`` calls each loader in the caller's thread
        when its result is requested (no read-ahead, no thread).
    ahead
        At most this many loaders are started (running or done) whose results have not
        been yielded yet; this bounds the memory held by read-ahead.

    Yields
    ------
    object
        ``loader()`` for each loader, in input order.

    Raises
    ------
    SettingError
        ``workers < 0`` or ``ahead < 1``.
    Exception
        A loader's exception (or one raised while iterating ``loaders``) is raised at
        that loader's position, after the results before it; the generator then ends.

    Notes
    -----
    Closing the generator early (``close()``, ``break`` out of a ``for`` loop followed by
    garbage collection, or an exception in the consumer) cancels the loaders not yet
    started and waits for the running ones to finish, so no loader runs after ``close()``
    returns. Nothing starts before the first result is requested.
    """
    if int(workers) < 0:
        raise SettingError(f"workers must be >= 0 (0 = no threads), got {workers!r}")
    if int(ahead) < 1:
        raise SettingError(f"ahead must be >= 1, got {ahead!r}")
    if int(workers) == 0:
        return _serial(loaders)
    return _threaded(loaders, int(workers), int(ahead))


def _serial(loaders: Iterable[Callable[[], T]]) -> Generator[T, None, None]:
    for loader in loaders:
        yield loader()


def _threaded(
    loaders: Iterable[Callable[[], T]], workers: int, ahead: int
) -> Generator[T, None, None]:
    pool = ThreadPoolExecutor(min(workers, ahead), thread_name_prefix="cbirlib-prefetch")
    return run_ahead(loaders, pool, _submit, ahead=ahead)


def _submit(pool: Executor, loader: Callable[[], T]) -> Future[T]:
    return pool.submit(loader)


def run_ahead(
    items: Iterable[L],
    pool: Executor,
    submit: Callable[[Executor, L], Future[R]],
    *,
    ahead: int,
    discard: Callable[[R], None] | None = None,
) -> Generator[R, None, None]:
    """Submit ``items`` to ``pool`` at most ``ahead`` at a time; yield results in order.

    The engine of :func:`prefetch`, for any executor (threads, processes).

    Parameters
    ----------
    items
        Consumed lazily, in the caller's thread.
    pool
        The executor; shut down (waiting for running work) when the generator ends or
        is closed.
    submit
        ``submit(pool, item)`` starts one item and returns its future.
    ahead
        At most this many items are started and not yet yielded.
    discard
        Called on the results that were computed but never yielded (the generator was
        closed early), to release what they hold (e.g. shared memory).
    """
    it = iter(items)
    pending: deque[Future[R]] = deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < ahead:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                except Exception as exc:  # raised at its position, after earlier results
                    failed: Future[R] = Future()
                    failed.set_exception(exc)
                    pending.append(failed)
                    exhausted = True
                else:
                    pending.append(submit(pool, item))
            if not pending:
                return
            result = pending.popleft().result()
            yield result
            del result  # the consumer's reference is the only one while it works
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if discard is not None:
            for future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    discard(future.result())
