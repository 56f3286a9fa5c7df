"""What real archives hold and plain phantoms never show: the ``realism=`` options.

:class:`PhantomRealism` (and the preset ``"hard"`` of :data:`REALISM_PRESETS`) makes
some subjects MR-like, skull-stripped, padded with blank slices, non-square, re-sliced
at several thicknesses or gantry-tilted; :func:`_plan` decides one subject's share of
them, :func:`_apply_plan` changes its geometry and :func:`_reslice` makes its thick and
thin copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from cbirlib.datasets.phantom.render import _MR_T1, _MR_T2, MAX_SLICES, _Subject
from cbirlib.errors import DatasetError

__all__ = ["PAD_CT", "REALISM_PRESETS", "PhantomRealism"]

#: Blank padding value: air in HU for CT, zero for MR.
PAD_CT = -1000


@dataclass(frozen=True)
class PhantomRealism:
    """Options that make phantoms look like real archives; all off by default.

    Each ``*_fraction`` is the share of subjects given that property. Which subjects get
    it depends only on the subject's number and the option (a low-discrepancy sequence,
    so about ``fraction * n`` subjects get it for any ``n``, and changing one option does
    not change who gets another); its random details depend only on ``(seed, i)``.

    Parameters
    ----------
    mr_fraction
        Subjects written as MR-like images: the same anatomy with T1- or T2-like tissue
        contrasts (fat bright, bone and air dark; fluid dark or bright), zero background,
        no CT table, a smooth intensity bias field and an arbitrary intensity scale (one
        of ``mr_scales``: the maximum is about that value). Still written as the
        layout's ``ct.nii.gz``: a NIfTI carries no modality, only ``meta.csv`` says MR.
    mr_scales
        Intensity maxima the MR subjects draw from. A scale below 255 is written as
        ``float32`` (e.g. 0..1), otherwise as ``int16`` (e.g. 0..4000).
    skull_stripped_fraction
        Brain-only head volumes (as skull-stripped MR templates, so always MR-like): the
        field of view covers the head plus 10-35 mm of empty space above the vertex,
        every voxel outside the brain is 0 and only the brain mask is non-empty; the top
        slices are near-empty or blank.
    padding_fraction
        Subjects with 1..``padding_slices`` constant blank slices below and above the
        body (exactly -1000 HU for CT, 0 for MR; empty masks there).
    padding_slices
        Most blank slices added at each end.
    non_square_fraction
        Subjects with a non-square in-plane matrix: one axis shortened to 0.75-0.9 of
        the requested ``shape`` (rows for bodies, wider than deep; columns for
        skull-stripped heads, deeper than wide; e.g. 197 x 233 at ``shape=(233, 233)``),
        with square pixels whose size the affine states.
    thicknesses
        Slice thicknesses (mm) of the re-sliced copies; see ``resliced_fraction``.
    resliced_fraction
        Subjects written once per thickness of ``thicknesses`` instead of once, as
        separate subjects ``sXXXX_<t>mm`` (e.g. ``s0003_2.5mm``) in the same split. The
        subject is rendered at the thinnest thickness (its z range cropped about its
        centre to keep at most :data:`MAX_SLICES` slices), and each copy is resampled
        from it: linear interpolation along z for the image, nearest slice for the
        masks; every copy starts at the same z (mm).
    tilt_fraction
        Gantry-tilted subjects: a sheared affine whose slice step has a ``y`` component
        ``thickness * tan(tilt)`` (slices stay axial; each slice's grid is shifted along
        ``y``, and the anatomy is rendered in those true positions).
    tilt_deg
        Largest tilt in degrees; a tilted subject draws ``|tilt|`` in
        ``[tilt_deg / 3, tilt_deg]`` with a random sign.

    Raises
    ------
    DatasetError
        A fraction outside [0, 1], a non-positive thickness or scale, a negative
        padding, or a tilt outside (0, 45) degrees.

    Examples
    --------
    >>> PhantomRealism(mr_fraction=0.5).active
    True
    >>> PhantomRealism().active
    False
    """

    mr_fraction: float = 0.0
    mr_scales: tuple[float, ...] = (1.0, 1000.0, 4000.0)
    skull_stripped_fraction: float = 0.0
    padding_fraction: float = 0.0
    padding_slices: int = 12
    non_square_fraction: float = 0.0
    thicknesses: tuple[float, ...] = (1.5, 2.5, 5.0)
    resliced_fraction: float = 0.0
    tilt_fraction: float = 0.0
    tilt_deg: float = 20.0

    def __post_init__(self) -> None:
        for name in (
            "mr_fraction", "skull_stripped_fraction", "padding_fraction",
            "non_square_fraction", "resliced_fraction", "tilt_fraction",
        ):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DatasetError(f"PhantomRealism.{name} must be in [0, 1], got {value}")
        if not self.mr_scales or min(self.mr_scales) <= 0:
            raise DatasetError(f"mr_scales must be positive numbers, got {self.mr_scales}")
        if not self.thicknesses or min(self.thicknesses) <= 0:
            raise DatasetError(f"thicknesses must be positive (mm), got {self.thicknesses}")
        if len(set(self.thicknesses)) != len(self.thicknesses):
            raise DatasetError(f"thicknesses must be distinct, got {self.thicknesses}")
        if self.padding_slices < 0:
            raise DatasetError(f"padding_slices must be >= 0, got {self.padding_slices}")
        if not 0.0 < self.tilt_deg < 45.0:
            raise DatasetError(f"tilt_deg must be in (0, 45) degrees, got {self.tilt_deg}")

    @property
    def active(self) -> bool:
        """Whether any option is on (all fractions zero: plain CT phantoms)."""
        return any(
            f > 0
            for f in (
                self.mr_fraction, self.skull_stripped_fraction, self.padding_fraction,
                self.non_square_fraction, self.resliced_fraction, self.tilt_fraction,
            )
        )  # fmt: skip


#: Named :class:`PhantomRealism` presets for ``make_phantoms(realism=...)``.
REALISM_PRESETS: dict[str, PhantomRealism] = {
    "hard": PhantomRealism(
        mr_fraction=0.3,
        skull_stripped_fraction=0.15,
        padding_fraction=0.4,
        non_square_fraction=0.3,
        resliced_fraction=0.25,
        tilt_fraction=0.2,
    ),
}

# low-discrepancy selection: subject i has option o when frac((i + 1/2) * m_o) < fraction
_PICK = {"mr": 0.6180339887, "skull": 0.4142135624, "pad": 0.7320508076,
         "square": 0.2360679775, "reslice": 0.6457513111, "tilt": 0.3166247904}  # fmt: skip


def _picked(option: str, i: int, fraction: float) -> bool:
    return fraction > 0 and ((i + 0.5) * _PICK[option]) % 1.0 < fraction


@dataclass(frozen=True)
class _Plan:
    """The realism of one subject."""

    mr: dict[str, float] | None  # tissue -> relative intensity, or None for CT
    mr_scale: float
    weighting: str  # "t1" / "t2" (MR), "" (CT)
    skull_stripped: bool
    pad: tuple[int, int]  # blank slices below, above
    aspect: float  # shortened axis / requested size (1.0: as requested)
    tilt_deg: float
    thicknesses: tuple[float, ...]  # () = one copy at the drawn thickness
    u: tuple[float, ...]  # spare uniforms (head window, bias field)


def _plan(realism: PhantomRealism | None, seed: int, i: int) -> _Plan:
    if realism is None or not realism.active:
        return _Plan(None, 1.0, "", False, (0, 0), 1.0, 0.0, (), ())
    rng = np.random.default_rng([seed, i, 7919])  # apart from the anatomy's stream
    u = rng.random(12)
    jitter = rng.uniform(0.9, 1.1, len(_MR_T1))
    mr: dict[str, float] | None = None
    weighting = ""
    skull = _picked("skull", i, realism.skull_stripped_fraction)
    if skull or _picked("mr", i, realism.mr_fraction):
        weighting = "t1" if u[0] < 0.5 else "t2"
        table = _MR_T1 if weighting == "t1" else _MR_T2
        mr = {k: float(min(1.0, v * j)) for (k, v), j in zip(table.items(), jitter, strict=True)}
    scale = float(realism.mr_scales[int(u[1] * len(realism.mr_scales))])
    pad = (0, 0)
    if _picked("pad", i, realism.padding_fraction) and realism.padding_slices > 0:
        pad = (1 + int(u[2] * realism.padding_slices), 1 + int(u[3] * realism.padding_slices))
    aspect = 0.75 + 0.15 * float(u[4]) if _picked("square", i, realism.non_square_fraction) else 1.0
    tilt = 0.0
    if _picked("tilt", i, realism.tilt_fraction):
        tilt = (1 / 3 + 2 / 3 * float(u[5])) * realism.tilt_deg * (1 if u[6] < 0.5 else -1)
    thick = tuple(realism.thicknesses) if _picked("reslice", i, realism.resliced_fraction) else ()
    return _Plan(
        mr, scale, weighting, skull, pad,
        aspect, tilt, thick, tuple(float(x) for x in u[7:]),
    )  # fmt: skip


def _apply_plan(subj: _Subject, plan: _Plan, shape: tuple[int, int]) -> tuple[_Subject, int, int]:
    """The subject's geometry under its plan, and its in-plane matrix size."""
    rows, cols = shape
    if plan.skull_stripped:  # the head, 10-35 mm of air above the vertex, brain-sized FOV
        fov_mm = 2 * 81 * subj.scale * (1.2 + 0.2 * plan.u[0])
        ratio = fov_mm / (subj.pixel * cols)
        subj = replace(
            subj,
            fov="skull_stripped",
            z_range=(830.0 + 10 * plan.u[1], 1010.0 + 25 * plan.u[2]),
            pixel=fov_mm / rows,
            shift=(subj.shift[0] * ratio, subj.shift[1] * ratio),
        )
    if plan.thicknesses:  # rendered at the thinnest, at most MAX_SLICES slices
        base = min(plan.thicknesses)
        lo, hi = subj.z_range
        most = (MAX_SLICES - 1) * base / subj.height * 0.999
        if hi - lo > most:
            mid = 0.5 * (lo + hi)
            lo, hi = mid - most / 2, mid + most / 2
        subj = replace(subj, thickness=base, z_range=(lo, hi))
    if plan.aspect < 1.0:
        if plan.skull_stripped:
            cols = max(16, round(cols * plan.aspect))
        else:
            rows = max(16, round(rows * plan.aspect))
    return subj, rows, cols


def _reslice(
    image: npt.NDArray[np.float32], labels: npt.NDArray[np.uint8], base: float, thickness: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Resample along z from ``base`` to ``thickness`` mm (linear image, nearest masks)."""
    if thickness == base:
        return image, labels
    n = len(image)
    m = math.floor((n - 1) * base / thickness + 1e-9) + 1
    f = np.arange(m) * thickness / base  # fractional source slice of each new slice
    i0 = np.minimum(np.floor(f + 1e-9).astype(np.int64), n - 2)
    w = (f - i0).astype(np.float32)[:, None, None]
    out = image[i0] * (1 - w) + image[i0 + 1] * w
    return out.astype(np.float32), labels[np.rint(f).astype(np.int64)]
