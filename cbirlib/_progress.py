"""Progress bars with one meaning of ``verbose`` across the API, following tqdm's conventions.

Every public function that draws a bar takes ``verbose: bool | None = None``:

- ``None`` (the default): a bar when stderr is a terminal, none in a log file, a SLURM
  output or CI (tqdm's ``disable=None``), and none when the environment variable
  ``TQDM_DISABLE`` is set to a non-empty value, as tqdm reads it;
- ``True``: a bar, wherever stderr goes;
- ``False``: no bar.

An explicit ``True`` or ``False`` is the caller's choice and wins over ``TQDM_DISABLE``,
as an explicit ``disable=`` does in tqdm. The environment is read at each call (tqdm
reads it once, when it is first imported), so a notebook or a test can change it.

Examples
--------
>>> list(progress(range(3), verbose=False))
[0, 1, 2]
>>> bars_disabled(False), bars_disabled(True)
(True, False)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NoReturn, TypeVar, overload

import tqdm.auto

__all__ = ["ENV_DISABLE", "bars_disabled", "progress"]

#: The environment variable tqdm reads for its ``disable`` default.
ENV_DISABLE = "TQDM_DISABLE"

T = TypeVar("T")


def bars_disabled(verbose: bool | None) -> bool | None:
    """tqdm's ``disable=`` for ``verbose``: ``None`` means "no bar unless on a terminal".

    Examples
    --------
    >>> import os
    >>> bars_disabled(None) is (True if os.environ.get("TQDM_DISABLE") else None)
    True
    """
    if verbose is None:
        return True if os.environ.get(ENV_DISABLE) else None
    return not verbose


@overload
def progress(
    iterable: Iterable[T], *, verbose: bool | None, **tqdm_kwargs: Any
) -> tqdm.auto.tqdm[T]: ...


@overload
def progress(
    iterable: None = None, *, verbose: bool | None, **tqdm_kwargs: Any
) -> tqdm.auto.tqdm[NoReturn]: ...


def progress(
    iterable: Iterable[T] | None = None, *, verbose: bool | None, **tqdm_kwargs: Any
) -> tqdm.auto.tqdm[T] | tqdm.auto.tqdm[NoReturn]:
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one), shown as ``verbose`` says.

    Parameters
    ----------
    iterable
        What to iterate over; ``None`` for a bar updated by hand (``bar.update(n)``).
    verbose
        ``None``: a bar on a terminal only (and not with ``TQDM_DISABLE`` set); ``True``:
        always; ``False``: never.
    **tqdm_kwargs
        Passed to tqdm (``total``, ``desc``, ``unit``, ...); not ``disable``.

    Returns
    -------
    tqdm
        The bar; iterating it yields the items of ``iterable``.
    """
    # looked up at each call: a test or a notebook may swap in its own bar class
    return tqdm.auto.tqdm(iterable, disable=bars_disabled(verbose), **tqdm_kwargs)
