"""Slice preprocessing: intensity windows, framing, resizing, normalisation, sampling.

Every extractor turns raw slices (Hounsfield units for CT, arbitrary units for MR) into
model inputs the same way: window and clip to ``[0, 1]``, frame the slice to the model's
aspect ratio (pad with the background, or resample to a fixed field of view in mm),
resize to the model's input size, replicate grey to the model's channels (or stack three
windows as the three channels) and normalise with its mean/std. The work is done in
torch, batched, on whatever device the slices are on, so that it never starves the model.

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

Multi-window presets (three HU windows as the three input channels, CT only; MR volumes
keep the single percentile window, replicated):

``"multi"`` (``"brain"``, ``"soft_tissue"``, ``"lung"``)
    Brain 40/80, soft tissue 40/400 and lung -600/1500: brain tissue spans the whole
    range of the first channel instead of 4 % of the wide window's.
``"multi_bone"`` (``"brain"``, ``"soft_tissue"``, ``"bone"``)
    The same with the bone window 300/1500 as the third channel.

Any three single windows (names or ``(low, high)``) may be given as a tuple instead.

Aspect ratio (:attr:`InputConfig.aspect`): ``"pad"`` (the default) pads each slice
symmetrically to the physical aspect ratio of the model input (pixel spacing included)
with the *background*, i.e. the value air (-1000 HU, :data:`AIR_HU`) maps to in the
window, or the window's low end for the percentile window (the dark background of an MR
whatever its intensity scale), before resizing; ``"stretch"``
resizes without keeping the aspect ratio (cbirlib 0.1.0, and what an index whose
meta has no ``aspect`` key was built with). :attr:`InputConfig.fov_mm` resamples every
slice to a fixed field of view in mm instead (centred crop or pad), so that a pixel of
the model input has the same physical size in every volume.

Examples
--------
>>> import torch
>>> from cbirlib.preprocess import InputConfig, prepare_slices, slice_indices
>>> cfg = InputConfig(size=(4, 4), window="soft_tissue")
>>> x = prepare_slices(torch.zeros(2, 8, 8), cfg, bounds=window_bounds(None, cfg.window))
>>> tuple(x.shape)
(2, 3, 4, 4)
>>> multi = InputConfig(size=(4, 4), window="multi")
>>> window_channels(None, multi.window)
((0.0, 80.0), (-160.0, 240.0), (-1350.0, 150.0))
>>> slice_indices(7, stride=3).tolist()
[0, 3, 6]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cbirlib.errors import InputConfigError

if TYPE_CHECKING:  # torch is imported where slices are prepared: windows need only numpy
    import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The one-channel (grey) form of the ImageNet statistics: the mean of the three channels'.
IMAGENET_GREY_MEAN: tuple[float] = (sum(IMAGENET_MEAN) / 3,)
IMAGENET_GREY_STD: tuple[float] = (sum(IMAGENET_STD) / 3,)

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

MULTI_WINDOW_PRESETS: dict[str, tuple[str, str, str]] = {
    "multi": ("brain", "soft_tissue", "lung"),
    "multi_bone": ("brain", "soft_tissue", "bone"),
}
"""Three HU windows stacked as the three input channels, by name (CT only)."""

AIR_HU = -1000.0
"""The background of CT slices (air): slices are padded with what it maps to."""

ASPECTS = ("pad", "stretch")
"""Values of :attr:`InputConfig.aspect`."""

LEGACY_INPUT: dict[str, Any] = {"aspect": "stretch", "fov_mm": None}
"""What settings missing from a stored input config mean: the behaviour of the indexes
built before they existed. :meth:`InputConfig.to_dict` leaves out settings at these
values, so such an index's config reads back, and compares, as it was written."""

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")

#: One intensity window: a preset name, ``"percentile"`` or ``(low, high)``.
SingleWindow = str | tuple[float, float]
#: An :attr:`InputConfig.window`: one window, a multi-window preset name, or three windows.
Window = str | tuple[float, float] | tuple[SingleWindow, SingleWindow, SingleWindow]
#: Intensity bounds ``(low, high)`` per window: one (grey) or three (multi-window).
Bounds = tuple[tuple[float, float], ...]

# percentiles are computed on at most this many voxels (a regular subsample)
_MAX_PERCENTILE_SAMPLES = 2_000_000


def _valid_windows() -> str:
    names = [*WINDOW_PRESETS, PERCENTILE_WINDOW, *MULTI_WINDOW_PRESETS]
    return ", ".join([*map(repr, names), "(low, high) in HU", "three windows"])


def _check_single(window: object) -> SingleWindow:
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


def _check_window(window: object) -> Window:
    if isinstance(window, str) and window in MULTI_WINDOW_PRESETS:
        return window
    if isinstance(window, (tuple, list)) and len(window) == 3:
        parts = tuple(_check_single(w) for w in window)
        if PERCENTILE_WINDOW in parts:
            raise InputConfigError(
                f"window {window!r}: a multi-window input takes HU windows, not "
                f"{PERCENTILE_WINDOW!r} (MR volumes use the percentile window anyway)"
            )
        return (parts[0], parts[1], parts[2])
    return _check_single(window)


def is_multi_window(window: Window) -> bool:
    """Whether ``window`` stacks three windows as channels (a preset or three windows).

    Examples
    --------
    >>> is_multi_window("multi"), is_multi_window("wide"), is_multi_window((0, 80))
    (True, False, False)
    """
    window = _check_window(window)
    if isinstance(window, str):
        return window in MULTI_WINDOW_PRESETS
    return len(window) == 3


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


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
        one per channel. The defaults are ImageNet's (:data:`IMAGENET_MEAN`,
        :data:`IMAGENET_STD`); with ``channels=1`` left at their defaults they become
        their one-channel form (:data:`IMAGENET_GREY_MEAN`, :data:`IMAGENET_GREY_STD`).
    window
        A preset name from :data:`WINDOW_PRESETS`, ``(low, high)`` in HU,
        ``"percentile"`` (per-volume 0.5/99.5 percentiles, for MR), or a multi-window
        input: a name from :data:`MULTI_WINDOW_PRESETS` or three single windows, one per
        channel (needs ``channels=3``). Extractors use ``"percentile"`` (one window,
        replicated) for every MR volume, whatever this says.
    interpolation
        Resize mode: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"area"``;
        bilinear and bicubic are antialiased when downsampling.
    aspect
        ``"pad"``: keep the slice's physical aspect ratio, padding it symmetrically with
        the background (air, or the low end of the percentile window) to the aspect ratio of
        ``size`` before resizing. ``"stretch"``: resize to ``size`` whatever the aspect
        ratio (the behaviour of indexes written before this setting existed).
    fov_mm
        Resample every slice to a fixed field of view: the longer side of the model
        input spans ``fov_mm`` millimetres (using the volume's in-plane spacing),
        centred on the slice's centre, cropping or padding with the background. ``None``:
        the slice's own field of view. Needs ``aspect="pad"``.

    Examples
    --------
    >>> cfg = InputConfig(size=(256, 256), window=(-100, 300))
    >>> cfg.to_dict()["window"]
    [-100.0, 300.0]
    >>> InputConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> InputConfig.from_dict({"window": "wide"}).aspect  # an old index's config
    'stretch'
    """

    size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    window: Window = "wide"
    interpolation: str = "bilinear"
    aspect: str = "pad"
    fov_mm: float | None = None

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
        if self.channels == 1:  # the 3-channel defaults, left as they are: their grey form
            mean = IMAGENET_GREY_MEAN if mean == IMAGENET_MEAN else mean
            std = IMAGENET_GREY_STD if std == IMAGENET_STD else std
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
        if self.aspect not in ASPECTS:
            raise InputConfigError(
                f"unknown aspect {self.aspect!r}; valid: {', '.join(map(repr, ASPECTS))}"
            )
        fov = self.fov_mm
        if fov is not None:
            try:
                fov = float(fov)
            except (TypeError, ValueError):
                raise InputConfigError(f"fov_mm must be a number, got {self.fov_mm!r}") from None
            if not (math.isfinite(fov) and fov > 0):
                raise InputConfigError(f"fov_mm must be positive and finite, got {self.fov_mm!r}")
            if self.aspect == "stretch":
                raise InputConfigError(
                    f"fov_mm={fov} keeps the aspect ratio; it cannot be combined with "
                    "aspect='stretch'"
                )
        window = _check_window(self.window)
        if is_multi_window(window) and self.channels != 3:
            raise InputConfigError(
                f"window {window!r} stacks three windows as channels and needs channels=3, "
                f"got channels={self.channels}"
            )
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "fov_mm", fov)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists).

        Settings at their :data:`LEGACY_INPUT` value are left out, so the config of an
        index written before they existed reads back, and compares, as it was written.
        """
        return {
            k: _to_json(v)
            for k, v in asdict(self).items()
            if not (k in LEGACY_INPUT and v == LEGACY_INPUT[k])
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputConfig:
        """Rebuild a config from :meth:`to_dict` output (lists become tuples).

        A missing ``aspect`` or ``fov_mm`` reads as :data:`LEGACY_INPUT` (``"stretch"``,
        ``None``): the behaviour the config's index was built with.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputConfigError(
                f"unknown input-config keys {unknown}; valid: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {**LEGACY_INPUT, **{k: _from_json(v) for k, v in d.items()}}
        return cls(**kwargs)


def window_bounds(
    volume_array: npt.ArrayLike | torch.Tensor | None, window: SingleWindow
) -> tuple[float, float]:
    """The ``(low, high)`` intensity bounds of a single window for one volume.

    Parameters
    ----------
    volume_array
        The volume's voxels (numpy or torch); only read for ``"percentile"``.
    window
        A preset name, ``(low, high)``, or ``"percentile"`` (for a multi-window input
        use :func:`window_channels`).

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
    if is_multi_window(window):
        raise InputConfigError(
            f"window {window!r} has three windows; use window_channels() for its bounds"
        )
    checked = _check_single(window)
    if isinstance(checked, tuple):
        return checked
    if checked != PERCENTILE_WINDOW:
        return WINDOW_PRESETS[checked]
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


def window_channels(volume_array: npt.ArrayLike | torch.Tensor | None, window: Window) -> Bounds:
    """The bounds of every window of ``window``: one pair, or three for a multi-window.

    Parameters
    ----------
    volume_array
        The volume's voxels; only read for ``"percentile"``.
    window
        Any :attr:`InputConfig.window` value.

    Examples
    --------
    >>> window_channels(None, "wide")
    ((-1000.0, 1000.0),)
    >>> window_channels(None, ("brain", (-100, 300), "bone"))
    ((0.0, 80.0), (-100.0, 300.0), (-450.0, 1050.0))
    """
    checked = _check_window(window)
    if isinstance(checked, str) and checked in MULTI_WINDOW_PRESETS:
        return tuple(WINDOW_PRESETS[w] for w in MULTI_WINDOW_PRESETS[checked])
    if is_multi_window(checked):
        parts: tuple[SingleWindow, ...] = checked  # type: ignore[assignment]
        return tuple(window_bounds(volume_array, w) for w in parts)
    return (window_bounds(volume_array, checked),)  # type: ignore[arg-type]


def background_value(window: Window) -> float | None:
    """The raw intensity slices are padded with: air for HU windows, else ``None``.

    ``None`` (the percentile window) pads with the window's low end, which for MR is the
    dark background whatever the intensity scale.

    Examples
    --------
    >>> background_value("wide"), background_value("percentile")
    (-1000.0, None)
    """
    return None if _check_window(window) == PERCENTILE_WINDOW else AIR_HU


def _as_bounds(bounds: tuple[float, float] | Sequence[tuple[float, float]]) -> Bounds:
    """``(low, high)`` or a sequence of them, validated, as a tuple of pairs."""
    try:
        if len(bounds) == 2 and not isinstance(bounds[0], (tuple, list)):
            pairs: list[Any] = [bounds]
        else:
            pairs = list(bounds)
        out = tuple((float(lo), float(hi)) for lo, hi in pairs)
    except (TypeError, ValueError):
        raise InputConfigError(
            f"window bounds {bounds!r} must be (low, high) or a sequence of (low, high)"
        ) from None
    if not out or not all(hi > lo for lo, hi in out):
        raise InputConfigError(f"window bounds {bounds} must satisfy low < high")
    return out


def frame_extent(
    size: tuple[int, int],
    shape: tuple[int, int],
    spacing: tuple[float, float] = (1.0, 1.0),
    fov_mm: float | None = None,
) -> tuple[int, int]:
    """Rows and columns of source pixels that a model input of ``size`` covers.

    Parameters
    ----------
    size
        Model input ``(height, width)``.
    shape
        The slice's ``(rows, columns)``.
    spacing
        The slice's pixel spacing ``(row, column)`` in mm.
    fov_mm
        A fixed field of view (mm) of the longer side of the input; ``None``: the
        smallest frame that holds the whole slice at the input's physical aspect ratio.

    Examples
    --------
    >>> frame_extent((224, 224), (197, 233))  # padded to a square
    (233, 233)
    >>> frame_extent((224, 224), (100, 100), (0.5, 1.0))  # 50 x 100 mm: pad the rows
    (200, 100)
    >>> frame_extent((224, 224), (512, 512), (0.8, 0.8), fov_mm=300.0)  # crop
    (375, 375)
    """
    (rows, cols), (sy, sx) = shape, spacing
    height, width = size
    if fov_mm is not None:
        mm_per_pixel = fov_mm / max(height, width)
        h_mm, w_mm = height * mm_per_pixel, width * mm_per_pixel
    else:
        ratio = height / width
        h_mm = max(rows * sy, ratio * cols * sx)
        w_mm = h_mm / ratio
    return max(1, round(h_mm / sy)), max(1, round(w_mm / sx))


def frame_slices(x: torch.Tensor, extent: tuple[int, int], fill: Sequence[float]) -> torch.Tensor:
    """Centre slices ``x`` ``(n, k, Y, X)`` on an ``extent`` canvas of ``fill`` (per channel).

    The slices are cropped where the canvas is smaller, padded where it is larger; ``x``
    itself is returned when the extent is its own.

    Examples
    --------
    >>> import torch
    >>> frame_slices(torch.ones(1, 1, 2, 2), (2, 4), [0.0])[0, 0].tolist()
    [[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]
    """
    rows, cols = x.shape[-2:]
    ey, ex = extent
    if (ey, ex) == (rows, cols):
        return x
    if len(fill) != x.shape[1]:
        raise InputConfigError(f"{len(fill)} fill values for {x.shape[1]} channels")
    out = x.new_empty((x.shape[0], x.shape[1], ey, ex))
    for c, value in enumerate(fill):  # Python scalars: no host-to-device copy
        out[:, c].fill_(value)
    sy0, dy0, ny = _overlap(rows, ey)
    sx0, dx0, nx = _overlap(cols, ex)
    out[:, :, dy0 : dy0 + ny, dx0 : dx0 + nx] = x[:, :, sy0 : sy0 + ny, sx0 : sx0 + nx]
    return out


def _overlap(source: int, target: int) -> tuple[int, int, int]:
    """``(source start, target start, length)`` of a centred crop or pad."""
    if target >= source:
        return 0, (target - source) // 2, source
    return (source - target) // 2, 0, target


def prepare_slices(
    slices: torch.Tensor,
    config: InputConfig,
    *,
    bounds: tuple[float, float] | Sequence[tuple[float, float]],
    spacing: tuple[float, float] = (1.0, 1.0),
    background: float | None = AIR_HU,
) -> torch.Tensor:
    """Window, frame, resize, replicate and normalise a batch of raw slices.

    Parameters
    ----------
    slices
        Raw slices of shape ``(n, Y, X)`` (float32 on any device).
    config
        The extractor's input configuration.
    bounds
        Intensity window ``(low, high)`` from :func:`window_bounds`, or one pair per
        channel (three) from :func:`window_channels` for a multi-window input.
    spacing
        In-plane pixel spacing ``(row, column)`` in mm: the physical aspect ratio kept
        by ``aspect="pad"`` and the scale of ``fov_mm``.
    background
        Raw intensity of the padding (see :func:`background_value`): it is windowed like
        the slice, so padding looks like the air around the body. ``None``: the low end
        of each window.

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
    >>> square = InputConfig(size=(4, 4), channels=1, mean=(0.5,), std=(0.5,))
    >>> tall = prepare_slices(torch.full((1, 4, 2), 100.0), square, bounds=(0.0, 100.0))
    >>> tall[0, 0, 0].tolist()  # padded left and right with air (-1000 HU -> 0 -> -1)
    [-1.0, 1.0, 1.0, -1.0]
    """
    import torch
    import torch.nn.functional as F

    if slices.ndim != 3:
        raise InputConfigError(f"slices must have shape (n, Y, X), got {tuple(slices.shape)}")
    pairs = _as_bounds(bounds)
    if len(pairs) not in (1, config.channels):
        raise InputConfigError(
            f"{len(pairs)} window bounds for {config.channels} channels; "
            f"give 1 or {config.channels}"
        )
    try:
        sy, sx = (float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputConfigError(f"spacing must be (row, column) in mm, got {spacing!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in (sy, sx)):
        raise InputConfigError(f"spacing {spacing!r} must be positive and finite")
    raw = slices.float()
    channels = [((raw - lo) / (hi - lo)).clamp_(0.0, 1.0) for lo, hi in pairs]
    x = channels[0].unsqueeze(1) if len(channels) == 1 else torch.stack(channels, dim=1)
    if config.aspect == "pad":
        fill = [
            0.0 if background is None else min(1.0, max(0.0, (background - lo) / (hi - lo)))
            for lo, hi in pairs
        ]
        extent = frame_extent(config.size, (x.shape[-2], x.shape[-1]), (sy, sx), config.fov_mm)
        x = frame_slices(x, extent, fill)
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
    if x.shape[1] == 1:
        return torch.cat([(x - m) / s for m, s in zip(mean, std, strict=True)], dim=1)
    return torch.cat(
        [(x[:, c : c + 1] - m) / s for c, (m, s) in enumerate(zip(mean, std, strict=True))],
        dim=1,
    )


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
    "AIR_HU",
    "ASPECTS",
    "IMAGENET_GREY_MEAN",
    "IMAGENET_GREY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "LEGACY_INPUT",
    "MULTI_WINDOW_PRESETS",
    "PERCENTILES",
    "PERCENTILE_WINDOW",
    "WINDOW_PRESETS",
    "Bounds",
    "InputConfig",
    "InputConfigError",
    "SingleWindow",
    "Window",
    "background_value",
    "frame_extent",
    "frame_slices",
    "is_multi_window",
    "prepare_slices",
    "slice_indices",
    "window_bounds",
    "window_channels",
]
