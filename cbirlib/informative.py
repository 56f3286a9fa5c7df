"""Uninformative slices: padding, air above the head, slices with almost no body.

A constant slice (zero padding, ``-1024`` padding, air only) or one that holds almost no
body (the last slices above the head of a skull-stripped template) embeds to nearly the
same vector whatever the volume or the modality. Left in, such slices vote for every
volume that has them and inflate MaxSim scores between unrelated volumes.
:func:`informative_slices` flags them; the index stores the flags
(``slice_meta["informative"]``), and :class:`~cbirlib.search.SliceSearch` and
:class:`~cbirlib.rerank.MaxSimRerank` leave uninformative slices out by default.

A slice is **uninformative** when, in the window the extractor applies (the percentile
window for every modality but CT, as the extractors window them; a volume of unknown
modality as :func:`cbirlib.modality.effective_modality` guesses; see
:func:`extractor_window`):

* it is **near-constant**: the standard deviation of its windowed values (clipped to
  ``[0, 1]``, as the model sees them) is below :data:`STD_MIN`; or
* it holds **almost no body**: fewer than :data:`BODY_FRACTION_MIN` of its pixels are
  body pixels. Body pixels are, for CT (HU), those above ``max(BODY_HU, low)``: denser
  than -500 HU and visible in the window; for any other modality (MR, PET...), those
  above :data:`BODY_LEVEL` of the window (``low + BODY_LEVEL * (high - low)``).

Examples
--------
>>> import numpy as np
>>> from cbirlib.volume import Volume
>>> arr = np.full((3, 32, 32), -1000.0, np.float32)  # air ...
>>> arr[1, 8:24, 8:24] = 40.0                       # ... and one slice with a body
>>> informative_slices(Volume("v", arr)).tolist()
[False, True, False]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib.errors import InputConfigError, SliceOutOfRangeError
from cbirlib.modality import effective_modality
from cbirlib.preprocess import PERCENTILE_WINDOW, window_bounds
from cbirlib.volume import Volume

__all__ = [
    "BODY_FRACTION_MIN",
    "BODY_HU",
    "BODY_LEVEL",
    "STD_MIN",
    "extractor_window",
    "informative_slices",
    "slice_flags",
]

logger = logging.getLogger(__name__)

STD_MIN = 0.01
"""Windowed standard deviation (window units, ``[0, 1]``) below which a slice is
near-constant. Air with realistic CT noise (±20 HU) in the wide window has about 0.005;
any slice through a body has above 0.05 (fat against muscle, bone against soft tissue);
exact padding has 0."""

BODY_HU = -500.0
"""CT body threshold in HU: air is -1000, lung parenchyma -850 to -700 (inside the
body contour, between denser walls), fat -100; -500 is the usual body/air threshold (the
baseline extractor's too)."""

BODY_LEVEL = 0.1
"""MR body threshold, as a fraction of the percentile window: MR background (zero, or
faint noise of a few percent of tissue signal) lies below it, tissue above."""

BODY_FRACTION_MIN = 0.02
"""Fewest body pixels, as a fraction of the slice, for a slice to be informative: a
4 cm disc in a 256 mm field of view covers 2 %; the last slices above a brain's vertex
hold less; a small structure imaged in its own field of view fills far more."""

_CHUNK = 64  # slices windowed at once (bounds the float32 temporaries)


def _is_ct(volume: Volume) -> bool:
    """Windowed in HU, as every extractor decides: CT, or guessed CT when unknown."""
    return effective_modality(volume.modality, volume.array) == "CT"


def _indices(volume: Volume, slices: npt.ArrayLike | None) -> npt.NDArray[np.int64]:
    if slices is None:
        return np.arange(volume.n_slices, dtype=np.int64)
    idx = np.asarray(slices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise SliceOutOfRangeError(
            f"volume {volume.id!r}: slices must be a 1D array of integer indices, got "
            f"shape {idx.shape} dtype {idx.dtype}"
        )
    idx = idx.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= volume.n_slices)]
    if bad.size:
        raise SliceOutOfRangeError(
            f"volume {volume.id!r}: slice indices {bad[:5].tolist()} outside "
            f"0..{volume.n_slices - 1}"
        )
    return idx


def informative_slices(
    volume: Volume,
    window: str | tuple[float, float] | None = None,
    *,
    slices: npt.ArrayLike | None = None,
) -> npt.NDArray[np.bool_]:
    """Which slices of ``volume`` carry anatomy (``True``) and which are blank (``False``).

    Parameters
    ----------
    volume
        The volume (HU for CT; any scale for MR).
    window
        The intensity window the extractor applies: a preset name of
        :data:`cbirlib.preprocess.WINDOW_PRESETS`, ``(low, high)``, or ``"percentile"``
        (bounds from the whole volume, :func:`cbirlib.preprocess.window_bounds`).
        ``None``: ``"wide"`` for CT, ``"percentile"`` for any other modality. Use
        :func:`extractor_window` for the window of a given extractor.
    slices
        Indices of the slices to test (default: all), e.g. the strided query slices.

    Returns
    -------
    numpy.ndarray
        ``(len(slices),)`` bool, ``False`` where the slice is near-constant in the window
        (std below :data:`STD_MIN`) or has fewer than :data:`BODY_FRACTION_MIN` body
        pixels (see the module docstring).

    Raises
    ------
    cbirlib.errors.InputConfigError
        An unknown window.
    SliceOutOfRangeError
        Slice indices outside the volume.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.volume import Volume
    >>> mr = np.zeros((2, 40, 40), np.float32); mr[0, 10:30, 10:30] = 300.0
    >>> informative_slices(Volume("m", mr, modality="MR")).tolist()
    [True, False]
    """

    idx = _indices(volume, slices)
    ct = _is_ct(volume)
    win = ("wide" if ct else PERCENTILE_WINDOW) if window is None else window
    percentile = isinstance(win, str) and win == PERCENTILE_WINDOW
    low, high = volume.percentile_bounds() if percentile else window_bounds(None, win)
    # CT (HU): denser than BODY_HU and visible in the window; MR, PET...: a fraction of it
    body_level = max(BODY_HU, low) if ct else low + BODY_LEVEL * (high - low)
    out = np.empty(len(idx), dtype=bool)
    for start in range(0, len(idx), _CHUNK):
        part = idx[start : start + _CHUNK]
        raw = np.asarray(volume.array[part], dtype=np.float32).reshape(len(part), -1)
        windowed = np.clip((raw - low) / (high - low), 0.0, 1.0)
        spread = windowed.std(axis=1)
        body = (raw > body_level).mean(axis=1)
        out[start : start + len(part)] = (spread >= STD_MIN) & (body >= BODY_FRACTION_MIN)
    return out


def extractor_window(extractor: object, volume: Volume) -> str | tuple[float, float]:
    """The window ``extractor`` applies to ``volume``, for :func:`informative_slices`.

    ``"percentile"`` for any volume but a CT (what every cbirlib extractor does: MR,
    PET..., and an unknown modality unless guessed CT); for a CT
    ``extractor.input_config.window``, or ``to_config()["input_config"]["window"]``, and
    ``"wide"`` when the extractor declares no valid window.
    """
    if not _is_ct(volume):
        return "percentile"

    candidates: list[Any] = [getattr(getattr(extractor, "input_config", None), "window", None)]
    to_config = getattr(extractor, "to_config", None)
    if callable(to_config):
        config = to_config()
        inner = config.get("input_config") if isinstance(config, dict) else None
        candidates.append(inner.get("window") if isinstance(inner, dict) else None)
    for window in candidates:
        if window is None:
            continue
        try:
            window_bounds(None, window if isinstance(window, str) else tuple(window))
        except (InputConfigError, TypeError, ValueError):
            continue
        return window if isinstance(window, str) else (float(window[0]), float(window[1]))
    return "wide"


def slice_flags(
    extractor: object, volume: Volume, *, slices: npt.ArrayLike | None = None
) -> npt.NDArray[np.bool_]:
    """Informative flags of ``volume``'s slices as seen by ``extractor``.

    An extractor (or query embedder) may define its own
    ``informative_slices(volume, *, slices=None)``; it is used when present (for
    instance by embedders whose query volumes carry no voxels). Otherwise this is
    :func:`informative_slices` in :func:`extractor_window`.

    Raises
    ------
    SliceOutOfRangeError
        The extractor's own method returned flags of the wrong shape, or bad ``slices``.
    """
    own = getattr(extractor, "informative_slices", None)
    if callable(own):
        idx = _indices(volume, slices)
        flags = np.asarray(own(volume, slices=idx), dtype=bool)
        if flags.shape != idx.shape:
            raise SliceOutOfRangeError(
                f"{type(extractor).__name__}.informative_slices returned shape {flags.shape} "
                f"for {len(idx)} slices of volume {volume.id!r}"
            )
        return flags
    return informative_slices(volume, extractor_window(extractor, volume), slices=slices)
