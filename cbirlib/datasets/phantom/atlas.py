"""The phantom's anatomy: one whole-body atlas of the 104 TotalSegmentator v1 structures.

In-plane millimetres of a lean adult body, ``z`` from mid-thigh (0 mm) to the vertex
(1000 mm), RAS+ (``+x`` the patient's right, ``+y`` anterior, ``+z`` superior). Each
structure is a stack of ellipses (or elliptic rings) interpolated between key frames
along ``z`` (:class:`_Part`); ribs are sloped arcs, the lung lobes are split by fissure
planes (:func:`_rib_mask`, :func:`_lobe_mask`). :data:`_PARTS` holds every part in
painting order. Names with a leading underscore are shared inside
:mod:`cbirlib.datasets.phantom` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib.structures import TOTALSEG_V1_CLASSES

__all__ = ["FIELDS_OF_VIEW"]

Array = npt.NDArray[np.floating[Any]]
ArrayLike = Array | float
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
