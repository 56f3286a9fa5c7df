"""Validation of embedding matrices shared by the index and the query chain."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cbirlib._typing import F32
from cbirlib.errors import DimensionMismatchError, InvalidVolumeError


def as_unit_rows(x: npt.ArrayLike, dim: int, what: str) -> F32:
    """Validate a (n, dim) finite matrix and L2-normalise its rows (a new float32 array)."""
    arr = np.array(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DimensionMismatchError(
            f"{what}: expected vectors of shape (n, {dim}), got shape {np.shape(x)}"
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise InvalidVolumeError(f"{what}: {int((~finite).sum())} vectors contain NaN or Inf")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise InvalidVolumeError(f"{what}: {int((norms == 0).sum())} vectors are all zero")
    arr /= norms[:, None]
    return arr
