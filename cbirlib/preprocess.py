"""Slice preprocessing: intensity windows, resizing, normalisation and slice sampling.

Every extractor turns raw slices (Hounsfield units for CT, arbitrary units for MR) into
model inputs the same way: window and clip to ``[0, 1]``, resize to the model's input
size, replicate grey to the model's channels and normalise with its mean/std. The work
is done in torch, batched, on whatever device the slices are on, so that it never
starves the model.

HU window presets (``(low, high)`` in Hounsfield units, i.e. level -/+ width/2):

``"soft_tissue"`` (-160, 240)
    Abdominal soft-tissue window, level 40 / width 400 (radiology teaching standard,
    e.g. Radiopaedia "Windowing (CT)").
``"lung"`` (-1350, 150)
    Lung window, level -600 / width 1500.
``"bone"`` (-450, 1050)
    Bone window, level 300 / width 1500.
``"brain"`` (0, 80)
    Brain window, level 40 / width 80.
``"wide"`` (-1000, 1000)
    A wide window from air to dense bone; cbirlib's default for models pretrained on
    natural images, which should see every tissue class of a whole-body CT.

``"percentile"`` is not a fixed window: the bounds are the 0.5 and 99.5 percentiles of
each volume (for MR, whose intensities have no absolute scale).

Examples
--------
>>> import torch
>>> from cbirlib.preprocess import InputConfig, prepare_slices, slice_indices
>>> cfg = InputConfig(size=(4, 4), window="soft_tissue")
>>> x = prepare_slices(torch.zeros(2, 8, 8), cfg, bounds=window_bounds(None, cfg.window))
>>> tuple(x.shape)
(2, 3, 4, 4)
>>> slice_indices(7, stride=3).tolist()
[0, 3, 6]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cbirlib.errors import InputConfigError

if TYPE_CHECKING:  # torch is imported where slices are prepared: windows need only numpy
    import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (-160.0, 240.0),
    "lung": (-1350.0, 150.0),
    "bone": (-450.0, 1050.0),
    "brain": (0.0, 80.0),
    "wide": (-1000.0, 1000.0),
}
"""HU windows ``(low, high)`` by name; see the module docstring for their sources."""

PERCENTILE_WINDOW = "percentile"
PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Percentiles of a volume's intensities that bound the ``"percentile"`` window."""

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")

# percentiles are computed on at most this many voxels (a regular subsample)
_MAX_PERCENTILE_SAMPLES = 2_000_000


def _valid_windows() -> str:
    return ", ".join([*map(repr, WINDOW_PRESETS), repr(PERCENTILE_WINDOW), "(low, high) in HU"])


def _check_window(window: object) -> str | tuple[float, float]:
    if isinstance(window, str):
        if window in WINDOW_PRESETS or window == PERCENTILE_WINDOW:
            return window
        raise InputConfigError(f"unknown window {window!r}; valid: {_valid_windows()}")
    try:
        low, high = (float(v) for v in window)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise InputConfigError(f"invalid window {window!r}; valid: {_valid_windows()}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputConfigError(f"window {window!r} must be finite with low < high")
    return (low, high)


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    """How slices are turned into model inputs.

    Parameters
    ----------
    size
        Model input ``(height, width)`` in pixels.
    channels
        1, or 3 (the grey slice replicated to RGB).
    mean, std
        Per-channel normalisation applied after windowing to ``[0, 1]``; one value, or
        one per channel.
    window
        A preset name from :data:`WINDOW_PRESETS`, ``(low, high)`` in HU, or
        ``"percentile"`` (per-volume 0.5/99.5 percentiles, for MR). Extractors use
        ``"percentile"`` for every MR volume, whatever this says.
    interpolation
        Resize mode: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"area"``;
        bilinear and bicubic are antialiased when downsampling.

    Examples
    --------
    >>> cfg = InputConfig(size=(256, 256), window=(-100, 300))
    >>> cfg.to_dict()["window"]
    [-100.0, 300.0]
    >>> InputConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    window: str | tuple[float, float] = "wide"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        try:
            size = tuple(int(s) for s in self.size)
        except (TypeError, ValueError):
            raise InputConfigError(f"size must be (height, width), got {self.size!r}") from None
        if len(size) != 2 or min(size) < 1:
            raise InputConfigError(f"size must be two positive integers, got {self.size!r}")
        if self.channels not in (1, 3):
            raise InputConfigError(f"channels must be 1 or 3, got {self.channels!r}")
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        for label, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, self.channels):
                raise InputConfigError(
                    f"{label} {values} must have 1 or {self.channels} (channels) values"
                )
        if not all(math.isfinite(s) and s > 0 for s in std):
            raise InputConfigError(f"std {std} must be positive")
        if self.interpolation not in INTERPOLATIONS:
            raise InputConfigError(
                f"unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
            )
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "window", _check_window(self.window))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputConfig:
        """Rebuild a config from :meth:`to_dict` output (lists become tuples)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputConfigError(
                f"unknown input-config keys {unknown}; valid: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


def window_bounds(
    volume_array: npt.ArrayLike | torch.Tensor | None, window: str | tuple[float, float]
) -> tuple[float, float]:
    """The ``(low, high)`` intensity bounds of a window for one volume.

    Parameters
    ----------
    volume_array
        The volume's voxels (numpy or torch); only read for ``"percentile"``.
    window
        A preset name, ``(low, high)``, or ``"percentile"``.

    Returns
    -------
    tuple of float
        ``low < high``; a constant volume gets ``(v, v + 1)``.

    Examples
    --------
    >>> window_bounds(None, "lung")
    (-1350.0, 150.0)
    >>> import numpy as np
    >>> window_bounds(np.arange(1001, dtype=np.float32), "percentile")
    (5.0, 995.0)
    """
    window = _check_window(window)
    if isinstance(window, tuple):
        return window
    if window != PERCENTILE_WINDOW:
        return WINDOW_PRESETS[window]
    if volume_array is None:
        raise InputConfigError("the 'percentile' window needs the volume's voxels")
    torch_module = sys.modules.get("torch")  # a tensor implies torch is imported
    if torch_module is not None and isinstance(volume_array, torch_module.Tensor):
        values = volume_array.detach().reshape(-1)
        step = max(1, values.numel() // _MAX_PERCENTILE_SAMPLES)
        flat = values[::step].float().cpu().numpy()
    else:
        values_np = np.asarray(volume_array, dtype=np.float32).reshape(-1)
        step = max(1, values_np.size // _MAX_PERCENTILE_SAMPLES)
        flat = values_np[::step]
    if flat.size == 0:
        raise InputConfigError("cannot compute a percentile window of an empty volume")
    low, high = (float(v) for v in np.percentile(flat, PERCENTILES))
    if not high > low:
        high = low + 1.0
    return (low, high)


def prepare_slices(
    slices: torch.Tensor, config: InputConfig, *, bounds: tuple[float, float]
) -> torch.Tensor:
    """Window, resize, replicate and normalise a batch of raw slices.

    Parameters
    ----------
    slices
        Raw slices of shape ``(n, Y, X)`` (float32 on any device).
    config
        The extractor's input configuration.
    bounds
        Intensity window ``(low, high)`` from :func:`window_bounds`.

    Returns
    -------
    torch.Tensor
        ``(n, config.channels, H, W)`` float32 on the slices' device.

    Examples
    --------
    >>> import torch
    >>> cfg = InputConfig(size=(2, 2), channels=1, mean=(0.5,), std=(0.5,))
    >>> prepare_slices(torch.full((1, 2, 2), 50.0), cfg, bounds=(0.0, 100.0)).flatten().tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    import torch
    import torch.nn.functional as F

    if slices.ndim != 3:
        raise InputConfigError(f"slices must have shape (n, Y, X), got {tuple(slices.shape)}")
    low, high = float(bounds[0]), float(bounds[1])
    if not high > low:
        raise InputConfigError(f"window bounds {bounds} must satisfy low < high")
    x = slices.float()
    x = ((x - low) / (high - low)).clamp_(0.0, 1.0).unsqueeze(1)
    if tuple(x.shape[-2:]) != config.size:
        mode = config.interpolation
        if mode in ("bilinear", "bicubic"):
            downsampling = x.shape[-2] > config.size[0] or x.shape[-1] > config.size[1]
            x = F.interpolate(
                x, size=config.size, mode=mode, align_corners=False, antialias=downsampling
            )
            if mode == "bicubic":
                x = x.clamp_(0.0, 1.0)
        else:
            x = F.interpolate(x, size=config.size, mode=mode)
    # Python scalars, not device tensors: building those would be a synchronising
    # host-to-device copy per batch and stall the model's queue
    mean = config.mean * config.channels if len(config.mean) == 1 else config.mean
    std = config.std * config.channels if len(config.std) == 1 else config.std
    if config.channels == 1:
        return ((x - mean[0]) / std[0]).contiguous()
    return torch.cat([(x - m) / s for m, s in zip(mean, std, strict=True)], dim=1)


def slice_indices(n_slices: int, stride: int = 1) -> npt.NDArray[np.int64]:
    """Indices of every ``stride``-th slice (query sampling), starting at 0.

    Examples
    --------
    >>> slice_indices(5).tolist()
    [0, 1, 2, 3, 4]
    """
    if int(n_slices) < 0:
        raise InputConfigError(f"n_slices must be >= 0, got {n_slices}")
    if int(stride) < 1:
        raise InputConfigError(f"stride must be a positive integer, got {stride}")
    return np.arange(0, int(n_slices), int(stride), dtype=np.int64)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "PERCENTILES",
    "PERCENTILE_WINDOW",
    "WINDOW_PRESETS",
    "InputConfig",
    "InputConfigError",
    "prepare_slices",
    "slice_indices",
    "window_bounds",
]
