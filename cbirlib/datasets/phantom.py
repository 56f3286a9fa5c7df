"""Synthetic anatomical CT phantoms written in the TotalSegmentator layout.

:func:`make_phantoms` writes ``root/sXXXX/ct.nii.gz`` (int16 HU), one
``segmentations/<structure>.nii.gz`` mask per v1 class (uint8; empty where the
structure is outside the field of view) and ``root/meta.csv`` with a train/val/test
split, so every feature can be tested offline through the real loader
(:class:`~cbirlib.datasets.totalsegmentator.TotalSegmentator`).

Anatomy
-------
All 104 v1 structures are drawn in one whole-body *atlas*: in-plane millimetres of a
lean adult body and ``z`` from mid-thigh (0 mm) to the vertex (1000 mm). Coordinates
follow RAS+: ``+x`` is the patient's **right**, ``+y`` anterior, ``+z`` superior. In the
``(Z, Y, X)`` :class:`~cbirlib.volume.Volume` array the liver (patient's right) therefore
sits at larger column indices than the spleen, anterior structures at larger row
indices, and the brain in the last slices. Each structure is a stack of ellipses (or
elliptic rings) whose centre and radii are interpolated between key frames along ``z``;
ribs are sloped arcs, the lung lobes are split by oblique/horizontal fissure planes.
Structures are painted in a fixed order into one label map, so masks are disjoint and
every masked voxel carries its structure's HU (lung -850, fat -100, muscle 50, liver
~62, brain 35, contrast blood 180-280, bone 300-1100, air -1000). Unlabelled tissue
(subcutaneous fat, muscle wall, skull, discs, spinal canal, sternum, arms, the CT
table) makes the images look like CT.

Subjects differ in field of view (whole body, head-neck, thorax, abdomen, pelvis and
their combinations, or a random partial range), height and body-size scale,
subcutaneous fat, in-plane shift and rotation, contrast phase, slice thickness
(1.5-5 mm, thicker where needed to keep at most 150 slices), in-plane pixel spacing,
per-organ position/size jitter and noise level. Generation is deterministic: subject
``i`` depends only on ``(seed, i)``, and files are byte-identical for one seed.

Realism
-------
``make_phantoms(..., realism=PhantomRealism(...))`` (or the preset ``realism="hard"``)
adds what real archives hold and plain phantoms never show: MR-like subjects (T1/T2-like
contrast, zero background, arbitrary intensity scale, still named ``ct.nii.gz``),
skull-stripped brain-only heads with empty slices above the vertex, constant blank
padding slices, non-square matrices, copies of one subject re-sliced at several
thicknesses (``s0006_1.5mm``, ``s0006_2.5mm``, ``s0006_5mm``) and gantry tilt (a sheared
affine). Every option is off by default, and without it the files are byte-identical to
those written before the option existed. ``meta.csv`` records each subject's modality,
slice thickness, padding, tilt, skull stripping and source subject; read it with
:func:`phantom_facts` (e.g. ``TotalSegmentator(root, modality={s: f.modality for s, f
in phantom_facts(root).items()})`` loads the MR subjects as MR).

Examples
--------
>>> import tempfile
>>> ds = make_phantoms(tempfile.mkdtemp(), 3, shape=(48, 48), seed=1)
>>> len(ds), sorted({ds.split_of(s) for s in ds}) == ["test", "train", "val"]
(3, True)
"""

from __future__ import annotations

import csv
import gzip
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._progress import progress
from cbirlib.datasets.totalsegmentator import (
    IMAGE_FILE,
    MASK_FOLDER,
    META_FILE,
    TotalSegmentator,
)
from cbirlib.errors import DatasetError
from cbirlib.structures import TOTALSEG_V1_CLASSES

Array = npt.NDArray[np.floating[Any]]
ArrayLike = Array | float
MAX_SLICES = 150
_LABEL = {name: i + 1 for i, name in enumerate(TOTALSEG_V1_CLASSES)}

# --- the atlas ---------------------------------------------------------------------------

#: Field-of-view presets: atlas z range in mm (0 = mid-thigh, 1000 = vertex).
FIELDS_OF_VIEW: dict[str, tuple[float, float]] = {
    "whole_body": (0.0, 1000.0),
    "thorax_abdomen": (330.0, 720.0),
    "head_neck": (690.0, 1000.0),
    "abdomen_pelvis": (60.0, 520.0),
    "thorax": (440.0, 720.0),
    "abdomen": (280.0, 540.0),
    "pelvis": (40.0, 330.0),
    "partial": (0.0, 1000.0),  # a random window of 150-400 mm inside this range
}
_FOV_ORDER = tuple(FIELDS_OF_VIEW)

# lean body (muscle wall + cavity, no subcutaneous fat): z, half-width, half-depth
_BODY = np.array(
    [
        (100, 160, 105),
        (200, 165, 108),
        (300, 150, 100),
        (420, 155, 110),
        (550, 160, 115),
        (660, 165, 110),
        (700, 115, 80),
        (720, 60, 55),
        (790, 62, 62),
        (820, 72, 90),
        (900, 76, 96),
        (960, 66, 82),
        (1000, 22, 26),
    ],
    dtype=np.float64,
)
_LEGS_TOP = 100.0
_ARMS = (400.0, 680.0, 205.0, 40.0)  # z0, z1, |x| of the arm centre, lean radius


def _body_radii(z: Array) -> tuple[Array, Array]:
    return np.interp(z, _BODY[:, 0], _BODY[:, 1]), np.interp(z, _BODY[:, 0], _BODY[:, 2])


def _wall(z: Array) -> Array:
    """Muscle-wall thickness (torso 12 mm, head/neck 4 mm)."""
    return np.interp(z, [690, 725], [12, 4])


def _fat_weight(z: Array) -> Array:
    return np.interp(z, [690, 725], [1.0, 0.25])


@dataclass(frozen=True)
class _Part:
    """One drawn shape: a stack of ellipses interpolated between key frames."""

    label: str | None  # v1 class, or None for unlabelled tissue
    tissue: str
    keys: tuple[tuple[float, float, float, float, float], ...]  # (z, cx, cy, rx, ry)
    inner: float = 0.0  # elliptic ring: inner/outer radius ratio
    spots: tuple[float, str] | None = None  # (fraction, tissue) of random voxels
    lobe: str | None = None  # lung lobe selector
    rib: tuple[float, float, float, float] | None = None  # side, z_post, drop, phi_max


def _tube(label: str | None, tissue: str, *keys: Sequence[float], **kw: object) -> _Part:
    frames = tuple((float(k[0]), float(k[1]), float(k[2]), float(k[3]), float(k[4])) for k in keys)
    return _Part(label, tissue, tuple(sorted(frames)), **kw)  # type: ignore[arg-type]


def _ellipsoid(
    label: str | None,
    tissue: str,
    c: Sequence[float],
    r: Sequence[float],
    **kw: object,
) -> _Part:
    t = np.linspace(-0.96, 0.96, 9)
    f = np.sqrt(1.0 - t**2)
    keys = [
        (c[2] + r[2] * ti, c[0], c[1], r[0] * fi, r[1] * fi) for ti, fi in zip(t, f, strict=True)
    ]
    return _tube(label, tissue, *keys, **kw)


def _mirror(part: _Part, label: str | None) -> _Part:
    keys = tuple((z, -cx, cy, rx, ry) for z, cx, cy, rx, ry in part.keys)
    return _Part(label, part.tissue, keys, part.inner, part.spots, part.lobe, part.rib)


def _pair(base: str, part: Callable[[str | None], _Part]) -> list[_Part]:
    """``base_right`` as drawn (x > 0) and ``base_left`` mirrored."""
    right = part(f"{base}_right" if base else None)
    return [right, _mirror(right, f"{base}_left" if base else None)]


# spine: vertebral levels (top, bottom) in atlas mm and the y of the vertebral body
_CERV = [(f"vertebrae_C{i}", 800 - (i - 1) * 100 / 7, 800 - i * 100 / 7) for i in range(1, 8)]
_THOR = [(f"vertebrae_T{i}", 700 - (i - 1) * 22.5, 700 - i * 22.5) for i in range(1, 13)]
_LUMB = [(f"vertebrae_L{i}", 430 - (i - 1) * 30.0, 430 - i * 30.0) for i in range(1, 6)]
_SPINE_Y = np.array(
    [(180, -75), (280, -45), (430, -40), (550, -60), (700, -45), (720, -20), (800, -10)]
)


def _spine_y(z: float) -> float:
    return float(np.interp(z, _SPINE_Y[:, 0], _SPINE_Y[:, 1]))


def _vertebra(name: str, top: float, bottom: float) -> list[_Part]:
    h = top - bottom
    z0, z1 = bottom + 0.12 * h, top - 0.04 * h
    zc = 0.5 * (z0 + z1)
    y = _spine_y(zc)
    rx, ry = (13.0, 10.0) if "_C" in name else (24.0, 18.0) if "_L" in name else (18.0, 14.0)
    canal_y = y - ry - 8

    def k(cy: float, ax: float, ay: float) -> tuple[tuple[float, ...], ...]:
        return ((z0, 0.0, cy, ax, ay), (z1, 0.0, cy, ax, ay))

    return [
        _tube(name, "cancellous", *k(y, rx, ry)),
        _tube(name, "cortical", *k(y, rx, ry), inner=0.8),
        _tube(name, "cortical", *k(canal_y, 13, 11), inner=0.6),
        _tube(name, "cortical", *k(canal_y - 20, 4, 11)),
    ]


def _rib(i: int) -> list[_Part]:
    top, bottom = _THOR[i - 1][1], _THOR[i - 1][2]
    z_post = 0.5 * (top + bottom) + 4
    drop = 30.0 + 4.0 * i
    phi_max = 2.75 if i <= 7 else 2.3 if i <= 10 else 1.7 if i == 11 else 1.3
    keys = ((z_post - drop - 7, 0, 0, 1, 1), (z_post + 7, 0, 0, 1, 1))
    return [
        _Part(f"rib_{side}_{i}", "rib", keys, rib=(sign, z_post, drop, phi_max))
        for side, sign in (("right", 1.0), ("left", -1.0))
    ]


def _lobes() -> list[_Part]:
    def lung(cx: float, base: float) -> tuple[tuple[float, float, float, float, float], ...]:
        return (
            (base, cx, -10, 55, 75),
            (base + 30, cx, -8, 62, 85),
            (600, cx, -5, 62, 88),
            (660, cx * 0.95, -10, 50, 70),
            (700, cx * 0.85, -15, 32, 40),
            (722, cx * 0.8, -20, 12, 15),
        )

    right, left = lung(78, 455), lung(-80, 440)
    return [
        _Part("lung_upper_lobe_right", "lung", right, spots=(0.04, "soft"), lobe="upper_r"),
        _Part("lung_middle_lobe_right", "lung", right, spots=(0.04, "soft"), lobe="middle"),
        _Part("lung_lower_lobe_right", "lung", right, spots=(0.04, "soft"), lobe="lower"),
        _Part("lung_upper_lobe_left", "lung", left, spots=(0.04, "soft"), lobe="upper_l"),
        _Part("lung_lower_lobe_left", "lung", left, spots=(0.04, "soft"), lobe="lower"),
    ]


def _atlas() -> list[_Part]:
    """All parts in painting order (later parts overwrite earlier ones)."""
    p: list[_Part] = []
    E, T = _ellipsoid, _tube
    # muscles outside the organ cavity
    p += _pair(
        "autochthon",
        lambda n: T(
            n,
            "muscle",
            (260, 28, -80, 20, 16),
            (430, 28, -82, 22, 18),
            (550, 27, -102, 20, 16),
            (700, 26, -88, 18, 15),
            (740, 20, -45, 14, 12),
        ),
    )
    p += _pair(
        "iliopsoas",
        lambda n: T(
            n,
            "muscle",
            (90, 85, 25, 14, 12),
            (120, 80, 20, 18, 15),
            (220, 70, -10, 22, 20),
            (320, 45, -30, 18, 16),
            (420, 30, -35, 10, 10),
        ),
    )
    p += _pair(
        "gluteus_maximus",
        lambda n: T(
            n, "muscle", (60, 80, -75, 45, 25), (150, 80, -82, 58, 30), (250, 70, -85, 45, 20)
        ),
    )
    p += _pair("gluteus_medius", lambda n: E(n, "muscle", (125, -35, 245), (26, 38, 50)))
    p += _pair("gluteus_minimus", lambda n: E(n, "muscle", (110, -15, 205), (15, 24, 45)))
    # head: face region, facial bones/air (unlabelled detail), skull, brain
    p += [T("face", "soft", (780, 0, 42, 55, 45), (830, 0, 50, 65, 48), (880, 0, 55, 66, 42))]
    p += [T(None, "teeth", (782, 0, 40, 52, 42), (815, 0, 44, 58, 44), inner=0.82)]
    p += [T(None, "gas", (820, 0, 68, 11, 20), (858, 0, 72, 9, 16))]
    p += _pair("", lambda n: E(n, "eye", (32, 62, 868), (13, 13, 12)))
    p += [E(None, "skull", (0, -5, 912), (76, 92, 84), inner=0.88)]
    p += [E("brain", "brain", (0, -5, 915), (66, 81, 72))]
    p += [E(None, "csf", (0, 0, 925), (10, 28, 18))]
    # neck / mediastinum
    p += [T("trachea", "airway", (615, 0, 0, 10, 10), (700, 0, 20, 9, 9), (780, 0, 30, 9, 9))]
    p += [
        T(
            "esophagus",
            "soft",
            (440, -35, 5, 8, 7),
            (470, -20, -15, 8, 7),
            (600, -5, -25, 8, 7),
            (700, 0, -10, 7, 6),
            (760, 0, 10, 7, 6),
        )
    ]
    p += _lobes()
    p += [T(None, "bone", (560, 0, 100, 14, 8), (680, 0, 95, 14, 8))]  # sternum
    # abdomen: bowel first, solid organs over it
    p += [E("small_bowel", "bowel", (-10, 30, 320), (100, 62, 70), spots=(0.06, "gas"))]
    gut = dict(spots=(0.35, "gas"))
    p += [
        T("colon", "colon", (240, 105, 0, 25, 25), (420, 105, 5, 24, 24), **gut),
        T("colon", "colon", (405, 0, 55, 120, 20), (435, 0, 55, 115, 18), **gut),
        T("colon", "colon", (250, -110, -5, 22, 22), (420, -110, 0, 22, 22), **gut),
        T("colon", "colon", (210, -35, 20, 45, 18), (250, -40, 15, 40, 18), **gut),
        T("colon", "colon", (120, 0, -55, 20, 18), (215, 0, -55, 22, 20), **gut),
    ]
    p += [
        T("duodenum", "bowel", (385, 40, 5, 14, 14), (440, 42, 8, 14, 14)),
        T("duodenum", "bowel", (380, 5, -5, 45, 11), (395, 5, -5, 45, 11)),
    ]
    p += [E("liver", "liver", (45, 10, 475), (110, 95, 68))]
    p += [E("gallbladder", "bile", (70, 60, 430), (15, 18, 28))]
    p += [E("spleen", "spleen", (-95, -40, 470), (30, 50, 45))]
    p += [E("stomach", "stomach", (-55, 35, 470), (50, 40, 50))]
    p += [T(None, "gas", (492, -55, 58, 30, 14), (515, -55, 58, 24, 10))]
    p += [
        T("pancreas", "pancreas", (415, 0, 5, 55, 12), (428, -5, 5, 68, 15), (440, -15, 0, 55, 12))
    ]
    p += [
        E("kidney_right", "kidney", (72, -45, 375), (28, 24, 55)),
        E("kidney_left", "kidney", (-72, -45, 390), (28, 24, 55)),
    ]
    p += _pair("adrenal_gland", lambda n: E(n, "adrenal", (38, -30, 455), (7, 12, 15)))
    p += [E("urinary_bladder", "bladder", (0, 55, 150), (45, 35, 35))]
    # heart and vessels
    p += [E(None, "fat", (-15, 30, 535), (75, 62, 70))]
    p += [E("heart_myocardium", "myocardium", (-35, 25, 520), (40, 36, 48))]
    p += [E("heart_ventricle_right", "blood", (5, 55, 525), (40, 22, 42))]
    p += [E("heart_atrium_right", "venous", (35, 15, 552), (28, 25, 30))]
    p += [E("heart_atrium_left", "blood", (-15, -15, 570), (30, 20, 22))]
    p += [E("heart_ventricle_left", "blood", (-35, 25, 522), (27, 24, 35))]
    p += [
        T(
            "pulmonary_artery",
            "blood",
            (560, 0, 40, 14, 14),
            (600, -10, 20, 16, 14),
            (615, 0, 0, 40, 10),
        )
    ]
    p += [
        T("aorta", "blood", (530, 10, 20, 15, 15), (630, 5, 10, 15, 15)),
        T("aorta", "blood", (630, -10, -10, 30, 14), (650, -10, -10, 30, 14)),
        T(
            "aorta",
            "blood",
            (330, -5, -25, 12, 12),
            (450, -15, -35, 12, 12),
            (640, -25, -35, 13, 13),
        ),
    ]
    p += [
        T(
            "inferior_vena_cava",
            "venous",
            (300, 20, -30, 11, 10),
            (520, 25, -15, 13, 12),
            (545, 25, 0, 14, 13),
        )
    ]
    p += [
        T("portal_vein_and_splenic_vein", "venous", (440, -15, -5, 50, 8), (452, -15, -5, 48, 8)),
        T("portal_vein_and_splenic_vein", "venous", (440, 30, 5, 8, 8), (470, 35, 10, 8, 8)),
    ]
    p += _pair(
        "iliac_artery",
        lambda n: T(n, "blood", (150, 80, 15, 7, 7), (250, 40, -20, 7, 7), (330, 6, -25, 7, 7)),
    )
    p += _pair(
        "iliac_vena",
        lambda n: T(n, "venous", (150, 82, 5, 9, 9), (240, 45, -30, 9, 9), (305, 12, -32, 9, 9)),
    )
    # skeleton
    p += [
        T(
            None,
            "disc",
            (280, 0, -45, 22, 17),
            (430, 0, -40, 22, 17),
            (550, 0, -60, 18, 14),
            (700, 0, -45, 16, 13),
            (720, 0, -20, 12, 10),
            (800, 0, -10, 12, 10),
        )
    ]
    for name, top, bottom in (*_CERV, *_THOR, *_LUMB):
        p += _vertebra(name, top, bottom)
    p += [T("sacrum", "bone", (180, 0, -95, 20, 12), (230, 0, -85, 40, 16), (280, 0, -65, 50, 18))]
    for i in range(1, 13):
        p += _rib(i)
    p += _pair("hip", lambda n: T(n, "bone", (200, 95, -35, 22, 18), (280, 95, -35, 50, 14)))
    p += _pair("hip", lambda n: T(n, "bone", (170, 90, -20, 25, 20), (205, 92, -25, 25, 20)))
    p += _pair("hip", lambda n: E(n, "bone", (85, 0, 148), (34, 34, 30), inner=0.72))
    p += _pair("hip", lambda n: T(n, "bone", (110, 40, 60, 30, 9), (135, 45, 55, 30, 9)))
    p += _pair("hip", lambda n: T(n, "bone", (90, 70, -40, 14, 18), (135, 72, -38, 14, 18)))
    p += _pair("femur", lambda n: E(n, "bone", (85, 0, 148), (23, 23, 23)))
    p += _pair("femur", lambda n: T(n, "bone", (112, 100, 5, 14, 14), (140, 95, 2, 14, 14)))
    p += _pair("femur", lambda n: T(n, "bone", (110, 120, -5, 18, 18), (135, 118, -5, 18, 18)))
    p += _pair("femur", lambda n: T(n, "marrow", (0, 100, 10, 15, 15), (120, 105, 5, 17, 17)))
    p += _pair(
        "femur", lambda n: T(n, "cortical", (0, 100, 10, 15, 15), (120, 105, 5, 17, 17), inner=0.65)
    )
    p += _pair("scapula", lambda n: T(n, "bone", (560, 95, -92, 40, 7), (690, 100, -80, 45, 8)))
    p += _pair("clavicula", lambda n: T(n, "bone", (684, 75, 70, 62, 7), (700, 75, 62, 62, 7)))
    p += _pair("humerus", lambda n: E(n, "bone", (150, -10, 672), (25, 25, 22)))
    p += _pair("humerus", lambda n: T(n, "marrow", (470, 205, 0, 13, 13), (665, 190, -5, 15, 15)))
    p += _pair(
        "humerus",
        lambda n: T(n, "cortical", (470, 205, 0, 13, 13), (665, 190, -5, 15, 15), inner=0.6),
    )
    return p


_PARTS = _atlas()

# Hounsfield units per tissue; "blood"/"venous"/"myocardium"/"kidney" depend on contrast
_HU: dict[str, float] = {
    "air": -1000, "gas": -950, "airway": -980, "lung": -850, "fat": -100, "visceral": -60,
    "muscle": 50, "soft": 40, "brain": 35, "csf": 8, "eye": 12, "liver": 62, "spleen": 48,
    "kidney": 35, "pancreas": 40, "adrenal": 25, "bile": 8, "stomach": 30, "bowel": 25,
    "colon": -30, "bladder": 10, "blood": 45, "venous": 45, "myocardium": 45, "disc": 80,
    "cancellous": 350, "cortical": 1000, "bone": 650, "rib": 650, "marrow": 320,
    "skull": 1100, "teeth": 1400, "table": 80,
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


def _lobe_mask(lobe: str, ay: Array, z: Array) -> npt.NDArray[np.bool_]:
    oblique = 560.0 - 0.9 * ay  # oblique fissure: high posteriorly, low anteriorly
    upper = z > oblique
    if lobe == "upper_r":
        return upper & (z > 575.0)
    if lobe == "middle":
        return upper & (z <= 575.0)
    if lobe == "upper_l":
        return upper
    return ~upper


def _rib_mask(
    rib: tuple[float, float, float, float], ax: Array, ay: Array, zs: Array, ca: Array, cb: Array
) -> npt.NDArray[np.bool_]:
    side, z_post, drop, phi_max = rib
    d = np.sqrt((ax / ca) ** 2 + (ay / cb) ** 2)
    phi = np.arctan2(np.abs(ax), -ay)  # 0 = posterior midline, pi = anterior midline
    zc = z_post - drop * (1 - np.cos(phi)) / 2
    mask = (d > 0.87) & (d < 1.0) & (ax * side > 0) & (phi > 0.35) & (phi < phi_max)
    return mask & (np.abs(zs[:, None, None] - zc) < 5.5)


# --- writing ---------------------------------------------------------------------------------


def _nifti_gz(data_zyx: npt.NDArray[np.generic], affine: Array) -> bytes:
    import nibabel as nib

    nifti: Any = nib.Nifti1Image
    img = nifti(data_zyx.transpose(2, 1, 0), affine)  # an F-ordered view: no copy
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_val = max(1, round(0.1 * n)) if n >= 3 else 0
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return [names[i] for i in rng.permutation(n)]


# --- realism options ------------------------------------------------------------------------

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


def _write_subject(
    out: Path, i: int, *, seed: int, shape: tuple[int, int], realism: PhantomRealism | None
) -> list[dict[str, str]]:
    """Render and write subject ``i`` (one folder per copy); returns their meta rows."""
    rng = np.random.default_rng([seed, i])
    subj = _draw_subject(rng, i, shape[1])
    plan = _plan(realism, seed, i)
    subj, rows, cols = _apply_plan(subj, plan, shape)
    tilt_tan = math.tan(math.radians(plan.tilt_deg))
    r = _render(
        subj, rng, (rows, cols), mr=plan.mr, tilt_step=subj.thickness * tilt_tan,
        brain=plan.skull_stripped,
    )  # fmt: skip
    image, labels = r.image, r.labels
    if plan.skull_stripped and r.brain is not None:
        image = np.where(r.brain, image, np.float32(0.0))
        labels = np.where(r.brain, labels, np.uint8(0)).astype(np.uint8)
    if plan.mr is not None:  # smooth in-plane bias field, then the intensity scale
        gy = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
        gx = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
        field = 1 + 0.3 * (plan.u[3] - 0.5) * gx + 0.3 * (plan.u[4] - 0.5) * gy
        image = (image * (field * plan.mr_scale)).astype(np.float32)
    age, sex = int(rng.integers(20, 90)), ("m", "f")[int(rng.integers(2))]
    source = f"s{i:04d}"
    modality = "CT" if plan.mr is None else "MR"
    study = f"{modality.lower()}{' ' + plan.weighting if plan.weighting else ''} "
    study += subj.fov.replace("_", " ")
    rows_out: list[dict[str, str]] = []
    for thickness in plan.thicknesses or (subj.thickness,):
        img, lab = _reslice(image, labels, subj.thickness, thickness)
        sid = source if not plan.thicknesses else f"{source}_{thickness:g}mm"
        below, above = plan.pad
        if plan.mr is None:
            data: npt.NDArray[Any] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
            pad_value: float = PAD_CT
        elif plan.mr_scale >= 255:
            data, pad_value = np.clip(np.rint(img), 0, 32767).astype(np.int16), 0
        else:
            data, pad_value = img.astype(np.float32), 0
        if below or above:
            data = np.pad(data, ((below, above), (0, 0), (0, 0)), constant_values=pad_value)
            lab = np.pad(lab, ((below, above), (0, 0), (0, 0)))
        step_y = thickness * tilt_tan
        affine = np.diag([subj.pixel, subj.pixel, thickness, 1.0])
        affine[1, 2] = step_y
        affine[:3, 3] = (
            -(cols - 1) / 2 * subj.pixel,
            -(rows - 1) / 2 * subj.pixel - below * step_y,
            r.z_world[0] - below * thickness,
        )
        _write_files(out / sid, data, lab, affine)
        rows_out.append(
            {
                "image_id": sid, "age": str(age), "gender": sex, "institute": "phantom",
                "study_type": study, "modality": modality,
                "slice_thickness_mm": f"{thickness:g}", "padding_below": str(below),
                "padding_above": str(above), "tilt_deg": f"{plan.tilt_deg:.4f}",
                "skull_stripped": str(int(plan.skull_stripped)), "source_id": source,
            }
        )  # fmt: skip
    return rows_out


def _write_files(
    folder: Path, image: npt.NDArray[Any], labels: npt.NDArray[np.uint8], affine: Array
) -> None:
    """``folder/ct.nii.gz`` and one ``segmentations/<class>.nii.gz`` per v1 class."""
    masks = folder / MASK_FOLDER
    masks.mkdir(parents=True)
    (folder / IMAGE_FILE).write_bytes(_nifti_gz(image, affine))
    present = set(np.unique(labels).tolist())
    empty: bytes | None = None
    for name, value in _LABEL.items():
        if value in present:
            data = _nifti_gz((labels == value).astype(np.uint8), affine)
        else:
            if empty is None:
                empty = _nifti_gz(np.zeros(labels.shape, np.uint8), affine)
            data = empty
        (masks / f"{name}.nii.gz").write_bytes(data)


#: Columns of the ``meta.csv`` that :func:`make_phantoms` writes.
META_COLUMNS: tuple[str, ...] = (
    "image_id", "age", "gender", "institute", "study_type", "split", "modality",
    "slice_thickness_mm", "padding_below", "padding_above", "tilt_deg", "skull_stripped",
    "source_id",
)  # fmt: skip


@dataclass(frozen=True)
class PhantomFacts:
    """What :func:`make_phantoms` recorded about one subject in ``meta.csv``.

    Attributes
    ----------
    modality
        ``"CT"`` or ``"MR"`` (the image file is ``ct.nii.gz`` either way).
    thickness_mm
        Slice thickness.
    padding
        Blank slices ``(below, above)`` the body.
    tilt_deg
        Gantry tilt (0: none).
    skull_stripped
        A brain-only head volume.
    source_id
        The subject it was rendered from (itself, or the original of a re-sliced copy).
    split
        ``train``, ``val`` or ``test``.
    """

    modality: str
    thickness_mm: float
    padding: tuple[int, int]
    tilt_deg: float
    skull_stripped: bool
    source_id: str
    split: str


def phantom_facts(root: str | os.PathLike[str]) -> dict[str, PhantomFacts]:
    """Per-subject facts of a phantom set, read from its ``meta.csv``.

    Parameters
    ----------
    root
        A folder written by :func:`make_phantoms`.

    Returns
    -------
    dict
        Subject id -> :class:`PhantomFacts`, in ``meta.csv`` order.

    Raises
    ------
    DatasetError
        No ``meta.csv``, or one without the columns :func:`make_phantoms` writes.

    Examples
    --------
    >>> import tempfile
    >>> ds = make_phantoms(tempfile.mkdtemp(), 2, shape=(24, 24))
    >>> phantom_facts(ds.root)["s0000"].modality
    'CT'
    """
    path = Path(root) / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the phantom meta file ({exc})") from None
    reader = csv.DictReader(text.splitlines(), delimiter=";")
    missing = [c for c in META_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise DatasetError(
            f"{path}: not a phantom meta file (make_phantoms); missing columns {missing}"
        )
    return {
        row["image_id"]: PhantomFacts(
            modality=row["modality"],
            thickness_mm=float(row["slice_thickness_mm"]),
            padding=(int(row["padding_below"]), int(row["padding_above"])),
            tilt_deg=float(row["tilt_deg"]),
            skull_stripped=row["skull_stripped"] == "1",
            source_id=row["source_id"],
            split=row["split"],
        )
        for row in reader
    }


def make_phantoms(
    root: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    shape: tuple[int, int] = (128, 128),
    realism: PhantomRealism | str | None = None,
    verbose: bool | None = None,
) -> TotalSegmentator:
    """Write ``n`` synthetic subjects in the TotalSegmentator layout (CT, or MR-like).

    Parameters
    ----------
    root
        Output folder; created if needed, and must be empty.
    n
        Number of subjects rendered (``s0000`` ...). Subject ``i`` cycles through the
        field-of-view presets of :data:`FIELDS_OF_VIEW` (``s0000`` is whole-body). A
        re-sliced subject (``realism``) is written once per thickness, so the data set
        may hold more than ``n`` subjects.
    seed
        Random seed; subject ``i`` depends only on ``(seed, i)`` (and ``realism``).
    shape
        In-plane size ``(rows, columns)`` of every slice (of the square ones, with
        ``realism``'s non-square option).
    realism
        A :class:`PhantomRealism`, the name of a preset of :data:`REALISM_PRESETS`
        (``"hard"``), or None (default): plain CT phantoms, byte-identical to those
        written without the option.
    verbose
        Progress bar: on a terminal only (``None``), always (``True``) or never (``False``).

    Returns
    -------
    TotalSegmentator
        The data set just written. Its ``meta.csv`` has the columns
        :data:`META_COLUMNS` (modality, slice thickness, padding, tilt, ...; read them
        with :func:`phantom_facts`).

    Raises
    ------
    DatasetError
        ``n`` < 1, a ``shape`` smaller than 16 pixels, a non-empty ``root`` or an
        unknown ``realism`` preset.

    Examples
    --------
    >>> import tempfile
    >>> ds = make_phantoms(tempfile.mkdtemp(), 1, shape=(32, 32))
    >>> vol = ds["s0000"]
    >>> vol.labels.contains("brain") and vol.labels.contains("femur_left")
    True
    """
    if n < 1:
        raise DatasetError(f"n must be >= 1, got {n}")
    if len(shape) != 2 or min(shape) < 16:
        raise DatasetError(f"shape must be (rows, columns), each >= 16, got {shape}")
    if isinstance(realism, str):
        if realism not in REALISM_PRESETS:
            raise DatasetError(
                f"unknown realism preset {realism!r}; valid: {', '.join(REALISM_PRESETS)}"
            )
        realism = REALISM_PRESETS[realism]
    out = Path(root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty folder; choose a new root")
    out.mkdir(parents=True, exist_ok=True)
    rows, cols = int(shape[0]), int(shape[1])
    meta = [";".join(META_COLUMNS)]
    splits = _splits(n, np.random.default_rng([seed, n, 7]))
    work = partial(_write_subject, out, seed=seed, shape=(rows, cols), realism=realism)
    # zlib and most numpy kernels release the GIL: subjects are written on threads
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        done = progress(pool.map(work, range(n)), verbose=verbose, total=n, desc="phantoms")
        for i, copies in enumerate(done):
            for row in copies:  # copies of one subject share its split
                row["split"] = splits[i]
                meta.append(";".join(row[c] for c in META_COLUMNS))
    (out / META_FILE).write_text("\n".join(meta) + "\n", encoding="utf-8")
    return TotalSegmentator(out)


__all__ = [
    "FIELDS_OF_VIEW",
    "MAX_SLICES",
    "META_COLUMNS",
    "REALISM_PRESETS",
    "PhantomFacts",
    "PhantomRealism",
    "make_phantoms",
    "phantom_facts",
]
