"""One phantom subject: its random parameters and its image and label map per modality.

:func:`_draw_subject` draws a subject's field of view, size, fat, pose, slice
thickness, pixel size, noise and contrast phase; :func:`_render` paints the atlas
(:mod:`~cbirlib.datasets.phantom.atlas`) on its grid with the tissue intensities of CT
(:data:`_HU`, Hounsfield units) or MR (:data:`_MR_T1`, :data:`_MR_T2`, relative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cbirlib.datasets.phantom.atlas import (
    _ARMS,
    _FOV_ORDER,
    _LABEL,
    _LEGS_TOP,
    _PARTS,
    FIELDS_OF_VIEW,
    Array,
    ArrayLike,
    _body_radii,
    _fat_weight,
    _lobe_mask,
    _rib_mask,
    _wall,
)

__all__ = ["MAX_SLICES"]

MAX_SLICES = 150
"""Most slices of one rendered subject; its slices are made thicker where needed."""

# --- tissue intensities ----------------------------------------------------------------------

# Hounsfield units per tissue; "blood"/"venous"/"myocardium"/"kidney" depend on contrast
_HU: dict[str, float] = {
    "air": -1000, "gas": -950, "airway": -980, "lung": -850, "fat": -100, "visceral": -60,
    "muscle": 50, "soft": 40, "brain": 35, "csf": 8, "eye": 12, "liver": 62, "spleen": 48,
    "kidney": 35, "pancreas": 40, "adrenal": 25, "bile": 8, "stomach": 30, "bowel": 25,
    "colon": -30, "bladder": 10, "blood": 45, "venous": 45, "myocardium": 45, "disc": 80,
    "cancellous": 350, "cortical": 1000, "bone": 650, "rib": 650, "marrow": 320,
    "skull": 1100, "teeth": 1400, "table": 80,
}  # fmt: skip


#: Relative MR intensities (0..1) per tissue: T1-weighted-like (fat bright, fluid dark).
_MR_T1: dict[str, float] = {
    "air": 0.0, "gas": 0.0, "airway": 0.0, "lung": 0.04, "fat": 0.95, "visceral": 0.6,
    "muscle": 0.3, "soft": 0.4, "brain": 0.55, "csf": 0.08, "eye": 0.12, "liver": 0.5,
    "spleen": 0.36, "kidney": 0.4, "pancreas": 0.52, "adrenal": 0.42, "bile": 0.1,
    "stomach": 0.3, "bowel": 0.34, "colon": 0.24, "bladder": 0.06, "blood": 0.1,
    "venous": 0.22, "myocardium": 0.33, "disc": 0.3, "cancellous": 0.62, "cortical": 0.02,
    "bone": 0.5, "rib": 0.45, "marrow": 0.8, "skull": 0.14, "teeth": 0.0, "table": 0.0,
}  # fmt: skip
#: T2-weighted-like: fluid bright, fat medium, muscle and bone dark.
_MR_T2: dict[str, float] = {
    "air": 0.0, "gas": 0.0, "airway": 0.0, "lung": 0.03, "fat": 0.7, "visceral": 0.5,
    "muscle": 0.18, "soft": 0.35, "brain": 0.45, "csf": 0.95, "eye": 0.9, "liver": 0.22,
    "spleen": 0.5, "kidney": 0.55, "pancreas": 0.35, "adrenal": 0.3, "bile": 0.92,
    "stomach": 0.6, "bowel": 0.55, "colon": 0.4, "bladder": 0.97, "blood": 0.05,
    "venous": 0.1, "myocardium": 0.2, "disc": 0.75, "cancellous": 0.45, "cortical": 0.02,
    "bone": 0.35, "rib": 0.3, "marrow": 0.6, "skull": 0.1, "teeth": 0.0, "table": 0.0,
}  # fmt: skip


# --- one subject --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subject:
    fov: str
    z_range: tuple[float, float]  # atlas mm
    height: float
    scale: float
    fat: float
    angle: float
    shift: tuple[float, float]
    thickness: float
    pixel: float
    noise: float
    contrast: bool


def _draw_subject(rng: np.random.Generator, index: int, width: int) -> _Subject:
    fov = _FOV_ORDER[index % len(_FOV_ORDER)]
    lo, hi = FIELDS_OF_VIEW[fov]
    if fov == "partial":
        length = rng.uniform(150, 400)
        lo = rng.uniform(0, 1000 - length)
        hi = lo + length
    else:
        lo = max(0.0, lo + rng.uniform(-25, 25))
        hi = min(1000.0, hi + rng.uniform(-25, 25))
    height, scale = rng.uniform(0.92, 1.08), rng.uniform(0.88, 1.12)
    fat = rng.uniform(6, 35)
    thickness = float(rng.choice([1.5, 2.0, 2.5, 3.0, 5.0]))
    extent = (hi - lo) * height
    if extent / thickness > MAX_SLICES - 1:  # n slices = floor(extent / thickness) + 1
        thickness = math.ceil(extent / (MAX_SLICES - 1) / 0.5) * 0.5
    z = np.linspace(lo, hi, 64)
    a, _ = _body_radii(z)
    half = np.where((z > _ARMS[0]) & (z < _ARMS[1]), _ARMS[2] + _ARMS[3], a) + fat
    half = np.where(z < _LEGS_TOP, 85 + 70 + fat, half)
    fov_mm = 2 * float(half.max()) * scale * rng.uniform(1.08, 1.25)
    return _Subject(
        fov=fov,
        z_range=(lo, hi),
        height=height,
        scale=scale,
        fat=fat,
        angle=math.radians(rng.uniform(-6, 6)),
        shift=(rng.uniform(-0.04, 0.04) * fov_mm, rng.uniform(-0.04, 0.04) * fov_mm),
        thickness=thickness,
        pixel=fov_mm / width,
        noise=rng.uniform(4, 18),
        contrast=bool(rng.random() < 0.6),
    )


def _ellipse(
    ax: Array, ay: Array, cx: ArrayLike, cy: ArrayLike, rx: ArrayLike, ry: ArrayLike
) -> Array:
    d: Array = ((ax - cx) / rx) ** 2 + ((ay - cy) / ry) ** 2
    return d


@dataclass(frozen=True)
class _Rendered:
    image: npt.NDArray[np.float32]  # HU (CT) or relative MR intensity, (Z, Y, X)
    labels: npt.NDArray[np.uint8]
    z_world: Array  # world z (mm) of each slice
    brain: npt.NDArray[np.bool_] | None  # brain + ventricles (skull stripping), if asked


def _render(
    subj: _Subject,
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    mr: Mapping[str, float] | None = None,
    tilt_step: float = 0.0,
    brain: bool = False,
) -> _Rendered:
    """The image and label map ``(Z, Y, X)`` and the world z (mm) of each slice.

    ``mr``: tissue -> relative MR intensity (instead of HU; zero background, no table);
    ``tilt_step``: world ``y`` shift (mm) of each slice's origin over the previous one
    (a sheared, gantry-tilted grid); ``brain``: also return the brain region.
    """
    h, w = shape
    lo, hi = subj.z_range
    n = max(2, math.floor((hi - lo) * subj.height / subj.thickness) + 1)
    za = lo + np.arange(n) * subj.thickness / subj.height  # atlas z of each slice
    # world (mm) -> atlas: undo shift, rotation and body scale
    wy, wx = np.meshgrid((np.arange(h) - (h - 1) / 2) * subj.pixel,
                         (np.arange(w) - (w - 1) / 2) * subj.pixel, indexing="ij")  # fmt: skip
    u, v = wx - subj.shift[0], wy - subj.shift[1]
    if tilt_step:  # slice k's rows lie k * tilt_step further along +y
        u = np.broadcast_to(u, (n, h, w))
        v = v[None] + (np.arange(n) * tilt_step)[:, None, None]
    else:
        u, v = u[None], v[None]
    c, s = math.cos(subj.angle), math.sin(subj.angle)
    ax = ((c * u + s * v) / subj.scale).astype(np.float32)
    ay = ((-s * u + c * v) / subj.scale).astype(np.float32)

    def rows(a: Array, sl: slice) -> Array:  # the in-plane grid of slices ``sl``
        return a if a.shape[0] == 1 else a[sl]

    z3 = za[:, None, None].astype(np.float32)

    hu_of = dict(_HU)
    if subj.contrast:
        hu_of.update(blood=rng.uniform(180, 280), venous=rng.uniform(120, 170),
                     myocardium=100.0, kidney=150.0, liver=68.0)  # fmt: skip
    hu_of.update(lung=-850 + rng.uniform(-40, 40), fat=-100 + rng.uniform(-15, 15))
    if mr is not None:  # the same draws as a CT (same anatomy), then MR intensities
        hu_of = dict(mr)

    # body: torso/head ellipse, legs below the pelvis, arms beside the chest
    a, b = _body_radii(z3)
    fat = subj.fat / subj.scale * _fat_weight(z3)
    wall = _wall(z3)
    n_legs = int(np.searchsorted(za, _LEGS_TOP))
    arm0, arm1 = (int(k) for k in np.searchsorted(za, _ARMS[:2]))
    body = np.zeros((n, h, w), dtype=bool)
    lean = np.zeros((n, h, w), dtype=bool)
    cavity = np.zeros((n, h, w), dtype=bool)
    for sl, cx, cy, r in (
        (slice(0, n_legs), 85.0, 5.0, 70.0),
        (slice(arm0, arm1), _ARMS[2], 0.0, _ARMS[3]),
    ):
        for sign in (1.0, -1.0):
            d = _ellipse(rows(ax, sl), rows(ay, sl), sign * cx, cy, r + fat[sl], r + fat[sl])
            body[sl] |= d <= 1
            lean[sl] |= d <= ((r / (r + fat[sl])) ** 2)
    t = slice(n_legs, n)
    axt, ayt = rows(ax, t), rows(ay, t)
    d = _ellipse(axt, ayt, 0, 0, a[t] + fat[t], b[t] + fat[t])
    body[t] |= d <= 1
    lean[t] |= _ellipse(axt, ayt, 0, 0, a[t], b[t]) <= 1
    cavity[t] = _ellipse(axt, ayt, 0, 0, a[t] - wall[t], b[t] - wall[t]) <= 1
    hu = np.full((n, h, w), hu_of["air"], dtype=np.float32)
    hu[body] = hu_of["fat"]
    hu[lean] = hu_of["muscle"]
    inside = np.interp(za, [690, 725], [hu_of["visceral"], hu_of["soft"]]).astype(np.float32)
    hu[cavity] = np.broadcast_to(inside[:, None, None], hu.shape)[cavity]
    labels = np.zeros((n, h, w), dtype=np.uint8)
    region = np.zeros((n, h, w), dtype=bool) if brain else None

    # per-structure jitter: centre (mm), size factor and z shift, shared by its parts
    jitter: dict[str, tuple[float, float, float, float]] = {}
    for part in _PARTS:
        key = part.label or part.tissue
        if key not in jitter:
            rigid = part.rib is not None or key.startswith(("vertebrae", "sacrum", "disc"))
            dz = 0.0 if rigid else rng.uniform(-6, 6)
            jitter[key] = (rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(0.92, 1.08), dz)
        jx, jy, jr, jz = jitter[key]
        keys = np.array(part.keys)
        kz = keys[:, 0] + jz
        k0, k1 = np.searchsorted(za, [kz[0], kz[-1]], side="left")
        if k0 >= k1:
            continue
        zs = za[k0:k1]
        sl = slice(k0, k1)
        axs, ays = rows(ax, sl), rows(ay, sl)
        if part.rib is not None:
            inside_part = _rib_mask(part.rib, axs, ays, zs, a[sl] - wall[sl], b[sl] - wall[sl])
        else:
            cx, cy, rx, ry = (np.interp(zs, kz, keys[:, i])[:, None, None] for i in range(1, 5))
            sign = 1.0 if cx.mean() >= 0 else -1.0
            d = _ellipse(axs, ays, cx + sign * jx, cy + jy, rx * jr, ry * jr)
            inside_part = d <= 1
            if part.inner:
                inside_part &= d >= part.inner**2
            if part.lobe is not None:
                inside_part &= _lobe_mask(part.lobe, ays, zs[:, None, None])
        inside_part &= body[sl]
        count = int(inside_part.sum())
        if not count:
            continue
        values = np.full(count, hu_of[part.tissue], dtype=np.float32)
        if part.spots is not None:
            frac, other = part.spots
            values[rng.random(count) < frac] = hu_of[other]
        block = hu[sl]
        block[inside_part] = values
        if part.label:
            labels[sl][inside_part] = _LABEL[part.label]
        if region is not None and (part.label == "brain" or part.tissue == "csf"):
            region[sl] |= inside_part

    z_world = za * subj.height
    if mr is not None:  # no table; Rician-like noise inside the body, zero background
        noise = rng.normal(0.0, subj.noise / 400, size=hu.shape).astype(np.float32)
        hu = np.abs(hu + noise)
        hu[~body] = 0.0
        return _Rendered(hu, labels, z_world, region)
    # CT table below the body (world coordinates, unrotated)
    table_y = subj.shift[1] - (118 * subj.scale + subj.fat + 20)
    table = (np.abs(wy - table_y) < 4) & (np.abs(wx) < 0.45 * w * subj.pixel)
    if tilt_step:
        wyk = wy[None] + (np.arange(n) * tilt_step)[:, None, None]
        table_k = (np.abs(wyk - table_y) < 4) & (np.abs(wx) < 0.45 * w * subj.pixel)[None]
        hu[table_k & ~body] = hu_of["table"]
    else:
        hu[:, table & ~body.any(axis=0)] = hu_of["table"]

    hu += rng.normal(0.0, subj.noise, size=hu.shape).astype(np.float32)
    return _Rendered(hu, labels, z_world, region)
