"""The ``baseline`` extractor: a classical slice descriptor with no network weights.

It is the default where no pretrained weights are available (offline tests, CI, demos).
It is **a baseline**, not one of the study's models: retrieval by anatomy works with it
(slices at the same anatomical level of different subjects are near each other), but
pretrained models are expected to do better.

Descriptor of one axial slice (CT values in HU; MR volumes are first mapped linearly so
that their 0.5/99.5 percentiles become -1000/1000 "pseudo-HU"):

1. The slice is area-averaged to ``size x size`` pixels and clipped to [-1100, 3000] HU.
2. **Body**: pixels above -500 HU, filled (a pixel is inside when body pixels lie left,
   right, above and below it), so that the lungs count as body.
3. **Histograms** (``3 * bins`` values): inside the body, the histogram of the slice
   in the lung, soft-tissue and bone windows (:data:`~cbirlib.preprocess.WINDOW_PRESETS`),
   as fractions of the body, square-rooted (Hellinger embedding).
4. **Grid** (``3 * grid**2`` values): the slice cropped to the body's bounding box,
   in the same three windows, averaged over a ``grid x grid`` grid, each window centred
   on its mean (the pattern; the histograms carry the level).
5. **Shape** (18 values): log body cross-section in mm² (8 soft bins), log aspect
   ratio of the bounding box, width/height in mm (6 soft bins), and the fraction of
   the bounding box that is body (4 soft bins).

Non-square slices and pixels are stretched to the square grid on purpose: the grid
follows the body's bounding box and the fill fraction is unchanged by stretching, while
the cross-section and aspect ratio are computed in mm from the pixel spacing, so a
slice and a copy padded with air to another aspect ratio describe alike. This is
feature version 2 (:data:`FEATURE_VERSION`, recorded in :meth:`~BaselineExtractor.to_config`):
cbirlib 0.1.0 computed the aspect ratio in grid pixels, off for non-square fields of view,
and wrote no version, so an index it built is refused (rebuild it) rather than mixed with
new embeddings.

Each block is L2-normalised and weighted (1, 1, 0.5), and the concatenation is
L2-normalised. ``dim = 3 * bins + 3 * grid**2 + 18`` (258 by default). Deterministic;
runs at thousands of slices per second on a CPU.

Examples
--------
>>> import numpy as np
>>> from cbirlib.extractors.baseline import BaselineExtractor
>>> from cbirlib.volume import Volume
>>> ex = BaselineExtractor()
>>> emb = ex.extract(Volume("v", np.full((4, 64, 64), -1000.0, np.float32)))
>>> emb.shape, ex.dim
((4, 258), 258)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from cbirlib.errors import ExtractorError
from cbirlib.extractor import Extractor
from cbirlib.hookspecs import Register, hookimpl
from cbirlib.modality import effective_modality
from cbirlib.preprocess import WINDOW_PRESETS, InputConfig
from cbirlib.volume import Volume

WINDOWS = ("lung", "soft_tissue", "bone")
BODY_THRESHOLD_HU = -500.0
CLIP_HU = (-1100.0, 3000.0)
BLOCK_WEIGHTS = (1.0, 1.0, 0.5)  # histograms, grid, shape
FEATURE_VERSION = 2
"""Version of the descriptor, ``"feature_version"`` in :meth:`BaselineExtractor.to_config`
(2: aspect ratio in mm; 1, written without the key by cbirlib 0.1.0: in grid pixels)."""

# soft bins of the shape features: (low, high, count) of the bin centres
_AREA_BINS = (math.log(30e2), math.log(1500e2), 8)  # log mm², 30 .. 1500 cm²
_ASPECT_BINS = (math.log(0.5), math.log(3.0), 6)  # log(width / height)
_FILL_BINS = (0.3, 0.9, 4)  # body fraction of its bounding box
SHAPE_DIM = _AREA_BINS[2] + _ASPECT_BINS[2] + _FILL_BINS[2]


def _soft_bins(values: torch.Tensor, spec: tuple[float, float, int]) -> torch.Tensor:
    """Gaussian soft one-hot of ``values`` (n,) over evenly spaced centres, L2-normalised."""
    low, high, count = spec
    centres = torch.linspace(low, high, count, dtype=values.dtype)
    width = (high - low) / (count - 1)
    out = torch.exp(-0.5 * ((values[:, None] - centres[None, :]) / width) ** 2)
    return F.normalize(out + 1e-6, dim=1)


def _fill(body: torch.Tensor) -> torch.Tensor:
    """Pixels enclosed by body pixels on all four sides (b, H, W) bool."""
    b = body.to(torch.int32)
    left = b.cumsum(2) > 0
    right = b.flip(2).cumsum(2).flip(2) > 0
    up = b.cumsum(1) > 0
    down = b.flip(1).cumsum(1).flip(1) > 0
    return left & right & up & down


class BaselineExtractor(Extractor):
    """Classical slice descriptor: windowed histograms, body-aligned grid, body shape.

    Parameters
    ----------
    bins
        Histogram bins per window.
    grid
        Side of the spatial grid.
    size
        Side of the working resolution the slice is area-averaged to.
    batch_size
        Slices processed at once (memory only; results do not depend on it).
    feature_version
        The descriptor version, :data:`FEATURE_VERSION` (the only one computed); present so
        that ``create_extractor(**extractor.to_config())`` round-trips.

    Raises
    ------
    ExtractorError
        A bad setting, or another ``feature_version``.

    Examples
    --------
    >>> BaselineExtractor(bins=8, grid=4).dim
    90
    """

    name = "baseline"

    def __init__(
        self,
        *,
        bins: int = 16,
        grid: int = 8,
        size: int = 64,
        batch_size: int = 256,
        feature_version: int = FEATURE_VERSION,
    ) -> None:
        if feature_version != FEATURE_VERSION:
            raise ExtractorError(
                f"extractor 'baseline': feature_version {feature_version!r} is not computed by "
                f"this cbirlib (it computes version {FEATURE_VERSION}); rebuild the index "
                "with this version"
            )
        for label, value, low in (("bins", bins, 2), ("grid", grid, 1), ("size", size, 8)):
            if not isinstance(value, int) or value < low:
                raise ExtractorError(
                    f"extractor 'baseline': {label} must be an integer >= {low}, got {value!r}"
                )
        if grid * 2 > size:
            raise ExtractorError(
                f"extractor 'baseline': grid {grid} too fine for size {size} (need 2*grid <= size)"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ExtractorError(
                f"extractor 'baseline': batch_size must be a positive integer, got {batch_size!r}"
            )
        self.bins = bins
        self.grid = grid
        self.size = size
        self.batch_size = batch_size
        self._bounds = torch.tensor([WINDOW_PRESETS[w] for w in WINDOWS], dtype=torch.float32)

    @property
    def dim(self) -> int:
        """``3 * bins + 3 * grid**2 + 18``."""
        return len(WINDOWS) * (self.bins + self.grid**2) + SHAPE_DIM

    @property
    def input_config(self) -> InputConfig:
        """The working resolution (one channel, area resampling, no normalisation).

        The descriptor windows the slice three ways (lung, soft tissue, bone);
        ``window`` here is the widest of them.
        """
        return InputConfig(
            size=(self.size, self.size),
            channels=1,
            mean=(0.0,),
            std=(1.0,),
            window="lung",
            interpolation="area",
        )

    def to_config(self) -> dict[str, Any]:
        """``{"name": "baseline", "bins": ..., "grid": ..., "size": ...,
        "feature_version": 2}``."""
        return {
            "name": self.name,
            "bins": self.bins,
            "grid": self.grid,
            "size": self.size,
            "feature_version": FEATURE_VERSION,
        }

    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.integer[Any]] | None = None
    ) -> npt.NDArray[np.float32]:
        """Embed the slices of one volume (see :meth:`cbirlib.Extractor.extract`)."""
        idx = self._slice_indices(volume, slices)
        scale = None
        if effective_modality(volume.modality, volume.array) != "CT":
            scale = volume.percentile_bounds()
        _, ny, nx = volume.shape
        # mm per pixel of the size x size working grid, rows and columns (non-square
        # slices and pixels are stretched to it; the shape features are in mm)
        pixel_mm = (ny * volume.spacing[1] / self.size, nx * volume.spacing[2] / self.size)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        contiguous = len(idx) > 0 and bool(np.all(np.diff(idx) == 1))
        with torch.inference_mode():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                if contiguous:  # a view, no copy of the full-resolution slices
                    raw = torch.from_numpy(volume.array[chunk[0] : chunk[-1] + 1])
                else:
                    raw = torch.from_numpy(volume.array[chunk])
                if scale is not None:
                    raw = (raw - scale[0]) / (scale[1] - scale[0]) * 2000.0 - 1000.0
                out[start : start + len(chunk)] = self._describe(raw, pixel_mm).numpy()
        self._check_embeddings(out, len(idx), volume)
        return out

    def _describe(self, raw: torch.Tensor, pixel_mm: tuple[float, float]) -> torch.Tensor:
        n = raw.shape[0]
        size = self.size
        # one pass over the full-resolution slices; everything else is at size x size
        x = F.interpolate(raw[:, None], size=(size, size), mode="area")[:, 0].clamp_(*CLIP_HU)
        filled = _fill(x > BODY_THRESHOLD_HU)
        empty = ~filled.flatten(1).any(1)
        filled[empty] = True  # no body: describe the whole slice
        lo = self._bounds[:, 0].view(1, -1, 1, 1)
        hi = self._bounds[:, 1].view(1, -1, 1, 1)
        w = ((x[:, None] - lo) / (hi - lo)).clamp(0.0, 1.0)  # (n, 3, S, S)
        k = len(WINDOWS)

        # 1. histograms inside the body
        bin_idx = (w * self.bins).long().clamp_(max=self.bins - 1)
        bin_idx += (torch.arange(k) * self.bins).view(1, -1, 1, 1)
        mask = filled[:, None].expand(-1, k, -1, -1).float()
        hist = torch.zeros(n, k * self.bins).scatter_add_(1, bin_idx.flatten(1), mask.flatten(1))
        count = filled.flatten(1).sum(1).float()
        hist = torch.sqrt(hist / count[:, None])

        # 2. grid over the body's bounding box (normalised coordinates, align_corners=False)
        rows = filled.any(2)
        cols = filled.any(1)
        r0 = rows.float().argmax(1)
        r1 = size - 1 - rows.flip(1).float().argmax(1)
        c0 = cols.float().argmax(1)
        c1 = size - 1 - cols.flip(1).float().argmax(1)
        height = (r1 - r0 + 1).float()
        width = (c1 - c0 + 1).float()
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = width / size
        theta[:, 0, 2] = (c0 + c1 + 1).float() / size - 1.0
        theta[:, 1, 1] = height / size
        theta[:, 1, 2] = (r0 + r1 + 1).float() / size - 1.0
        sample = 2 * self.grid
        coords = F.affine_grid(theta, [n, k, sample, sample], align_corners=False)
        crop = F.grid_sample(w, coords, mode="bilinear", align_corners=False)
        cells = F.avg_pool2d(crop, 2).flatten(2)  # (n, 3, grid²)
        cells = (cells - cells.mean(2, keepdim=True)).flatten(1)

        # 3. shape: cross-section, aspect ratio, fill fraction
        area = torch.log(count * (pixel_mm[0] * pixel_mm[1]))
        aspect = torch.log(width * pixel_mm[1] / (height * pixel_mm[0]))  # in mm
        fill = count / (height * width)
        shape = torch.cat(
            [
                _soft_bins(area, _AREA_BINS),
                _soft_bins(aspect, _ASPECT_BINS),
                _soft_bins(fill, _FILL_BINS),
            ],
            dim=1,
        )

        blocks = [
            weight * F.normalize(block, dim=1)
            for weight, block in zip(BLOCK_WEIGHTS, (hist, cells, shape), strict=True)
        ]
        return F.normalize(torch.cat(blocks, dim=1), dim=1)


@hookimpl
def register_extractors(register: Register) -> None:
    """Register ``baseline`` (cbirlib's own plugin, through its entry point)."""
    register(
        "baseline",
        BaselineExtractor,
        aliases=("classical",),
        description=(
            "Baseline: classical descriptor (HU-window histograms, body-aligned grid, "
            "body shape); no weights, offline; not a pretrained model"
        ),
        weights_available=lambda: True,  # it needs none
    )


__all__ = ["FEATURE_VERSION", "BaselineExtractor", "register_extractors"]
