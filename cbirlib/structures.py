"""TotalSegmentator class lists and the default fine -> coarse grouping.

The fine classes are those of TotalSegmentator v1 (104 structures, the names of the
files in each subject's ``segmentations`` folder) and v2 (117 structures, task
``total``). Retrieval is evaluated on the v1 names, per fine class or per coarse region.

v2 -> v1 (:data:`V2_TO_V1`)
    v2 kept every v1 name except the five heart classes, ``pulmonary_artery`` and
    ``face``. The v2 structures that are part of a v1 structure are mapped onto it:

    * ``heart`` -> the five v1 heart classes (``heart_myocardium``, the two atria and
      the two ventricles): v2 has a single heart mask, so loading v2 data marks every v1
      heart class where the heart is (exact for the coarse region ``heart``, an
      over-estimate for the fine heart classes);
    * ``atrial_appendage_left`` -> ``heart_atrium_left`` (part of it in v1);
    * ``vertebrae_S1`` -> ``sacrum`` (v1's sacrum includes S1);
    * ``kidney_cyst_left`` / ``kidney_cyst_right`` -> ``kidney_left`` / ``kidney_right``
      (v1 kidney masks include cysts).

    The other v2-only classes (``thyroid_gland``, ``prostate``, ``pulmonary_vein``,
    ``brachiocephalic_trunk``, ``subclavian_artery_*``, ``common_carotid_artery_*``,
    ``brachiocephalic_vein_*``, ``superior_vena_cava``, ``spinal_cord``, ``skull``,
    ``sternum``, ``costal_cartilages``) have no v1 counterpart and are not mapped.
    v1's ``pulmonary_artery`` and ``face`` have no v2 counterpart in ``total``.

Coarse regions (:data:`COARSE_GROUPS`)
    The benchmark paper groups the 104 classes into 29 coarse regions without publishing
    the table. cbirlib's default grouping (29 regions):

    * all 24 vertebrae -> ``vertebrae``; the 5 lung lobes -> ``lung``; the 24 ribs ->
      ``ribs``;
    * the heart chambers, ``heart_myocardium`` and ``pulmonary_artery`` -> ``heart``;
    * left/right pairs -> one region: ``kidney``, ``adrenal_gland``, ``humerus``,
      ``femur``, ``hip``, ``autochthon``, ``iliopsoas``;
    * ``scapula_*`` and ``clavicula_*`` -> ``shoulder_girdle``;
    * the six gluteus muscles -> ``gluteus``;
    * the iliac arteries and veins -> ``iliac_vessels``;
    * ``small_bowel``, ``duodenum`` and ``colon`` -> ``intestine``;
    * every other class is its own region (``spleen``, ``gallbladder``, ``liver``,
      ``stomach``, ``aorta``, ``inferior_vena_cava``, ``portal_vein_and_splenic_vein``,
      ``pancreas``, ``esophagus``, ``trachea``, ``brain``, ``sacrum``, ``face``,
      ``urinary_bladder``).

    Pass your own mapping wherever a grouping is accepted to use another table.

Examples
--------
>>> from cbirlib.structures import TOTALSEG_V1_CLASSES, COARSE_GROUPS, resolve_structure
>>> len(TOTALSEG_V1_CLASSES), len(set(COARSE_GROUPS.values()))
(104, 29)
>>> COARSE_GROUPS["lung_middle_lobe_right"]
'lung'
>>> resolve_structure("kidney")
('coarse', ('kidney_right', 'kidney_left'))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from cbirlib._text import did_you_mean
from cbirlib.errors import UnknownStructureError

_VERTEBRAE_V1 = (
    *(f"vertebrae_L{i}" for i in range(5, 0, -1)),
    *(f"vertebrae_T{i}" for i in range(12, 0, -1)),
    *(f"vertebrae_C{i}" for i in range(7, 0, -1)),
)
_RIBS = (
    *(f"rib_left_{i}" for i in range(1, 13)),
    *(f"rib_right_{i}" for i in range(1, 13)),
)
_HEART_V1 = (
    "heart_myocardium",
    "heart_atrium_left",
    "heart_ventricle_left",
    "heart_atrium_right",
    "heart_ventricle_right",
)
_LIMB_GIRDLE = (
    "humerus_left",
    "humerus_right",
    "scapula_left",
    "scapula_right",
    "clavicula_left",
    "clavicula_right",
    "femur_left",
    "femur_right",
    "hip_left",
    "hip_right",
)
_MUSCLES = (
    "gluteus_maximus_left",
    "gluteus_maximus_right",
    "gluteus_medius_left",
    "gluteus_medius_right",
    "gluteus_minimus_left",
    "gluteus_minimus_right",
    "autochthon_left",
    "autochthon_right",
    "iliopsoas_left",
    "iliopsoas_right",
)
_LUNG = (
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
)
_ILIAC = ("iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right")

#: The 104 TotalSegmentator v1 classes, in the order of the v1 label map (1..104).
TOTALSEG_V1_CLASSES: tuple[str, ...] = (
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
    *_LUNG,
    *_VERTEBRAE_V1,
    "esophagus",
    "trachea",
    *_HEART_V1,
    "pulmonary_artery",
    "brain",
    *_ILIAC,
    "small_bowel",
    "duodenum",
    "colon",
    *_RIBS,
    *_LIMB_GIRDLE,
    "sacrum",
    "face",
    *_MUSCLES,
    "urinary_bladder",
)

#: The 117 TotalSegmentator v2 classes (task ``total``), in label-map order (1..117).
TOTALSEG_V2_CLASSES: tuple[str, ...] = (
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "liver",
    "stomach",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
    *_LUNG,
    "esophagus",
    "trachea",
    "thyroid_gland",
    "small_bowel",
    "duodenum",
    "colon",
    "urinary_bladder",
    "prostate",
    "kidney_cyst_left",
    "kidney_cyst_right",
    "sacrum",
    "vertebrae_S1",
    *_VERTEBRAE_V1,
    "heart",
    "aorta",
    "pulmonary_vein",
    "brachiocephalic_trunk",
    "subclavian_artery_right",
    "subclavian_artery_left",
    "common_carotid_artery_right",
    "common_carotid_artery_left",
    "brachiocephalic_vein_left",
    "brachiocephalic_vein_right",
    "atrial_appendage_left",
    "superior_vena_cava",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    *_ILIAC,
    *_LIMB_GIRDLE,
    "spinal_cord",
    *_MUSCLES,
    "brain",
    "skull",
    *_RIBS,
    "sternum",
    "costal_cartilages",
)

#: v2 class -> the v1 classes it is part of (only where the names differ; see above).
V2_TO_V1: dict[str, tuple[str, ...]] = {
    "heart": _HEART_V1,
    "atrial_appendage_left": ("heart_atrium_left",),
    "vertebrae_S1": ("sacrum",),
    "kidney_cyst_left": ("kidney_left",),
    "kidney_cyst_right": ("kidney_right",),
}


def _default_groups() -> dict[str, str]:
    special: dict[str, str] = {
        **dict.fromkeys(_VERTEBRAE_V1, "vertebrae"),
        **dict.fromkeys(_LUNG, "lung"),
        **dict.fromkeys(_RIBS, "ribs"),
        **dict.fromkeys((*_HEART_V1, "pulmonary_artery"), "heart"),
        **dict.fromkeys(_ILIAC, "iliac_vessels"),
        **dict.fromkeys(("small_bowel", "duodenum", "colon"), "intestine"),
        **dict.fromkeys(
            ("scapula_left", "scapula_right", "clavicula_left", "clavicula_right"),
            "shoulder_girdle",
        ),
        **{n: "gluteus" for n in _MUSCLES if n.startswith("gluteus_")},
    }
    groups: dict[str, str] = {}
    for name in TOTALSEG_V1_CLASSES:
        if name in special:
            groups[name] = special[name]
        elif name.endswith(("_left", "_right")):
            groups[name] = name.rsplit("_", 1)[0]
        else:
            groups[name] = name
    return groups


#: Default fine (v1) -> coarse region mapping with 29 regions (see the module docstring).
COARSE_GROUPS: dict[str, str] = _default_groups()

_VERSIONS: dict[str, tuple[str, ...]] = {"v1": TOTALSEG_V1_CLASSES, "v2": TOTALSEG_V2_CLASSES}


def fine_classes(version: str = "v1") -> tuple[str, ...]:
    """The fine TotalSegmentator classes of one release.

    Parameters
    ----------
    version
        ``"v1"`` (104 classes) or ``"v2"`` (117 classes).

    Returns
    -------
    tuple of str
        Class names in label-map order.

    Raises
    ------
    UnknownStructureError
        For another version string.

    Examples
    --------
    >>> len(fine_classes("v2"))
    117
    """
    try:
        return _VERSIONS[version]
    except KeyError:
        raise UnknownStructureError(
            f"unknown TotalSegmentator version {version!r}; valid: {', '.join(_VERSIONS)}"
        ) from None


def coarse_regions(groups: Mapping[str, str] = COARSE_GROUPS) -> tuple[str, ...]:
    """The coarse region names of a grouping, sorted.

    Examples
    --------
    >>> coarse_regions()[:3]
    ('adrenal_gland', 'aorta', 'autochthon')
    """
    return tuple(sorted(set(groups.values())))


def match_name(name: str, candidates: Iterable[str]) -> str | None:
    """``name`` as spelled in ``candidates``: exact, else the one case-insensitive match.

    Examples
    --------
    >>> match_name("Liver", ["liver", "spleen"]), match_name("livr", ["liver"])
    ('liver', None)
    """
    names = list(candidates)
    if name in names:
        return name
    folded = [c for c in dict.fromkeys(names) if c.casefold() == str(name).casefold()]
    return folded[0] if len(folded) == 1 else None


#: Coarse regions named in "unknown structure" messages as examples.
_EXAMPLE_REGIONS = ("kidney", "lung", "ribs", "vertebrae", "heart")


def coarse_hint(groups: Mapping[str, str] = COARSE_GROUPS) -> str:
    """A sentence saying that coarse region names work too, with examples."""
    regions = set(groups.values())
    examples = [r for r in _EXAMPLE_REGIONS if r in regions] or sorted(regions)[:4]
    return (
        f"coarse regions work too ({', '.join(repr(r) for r in examples)}, ...: "
        "cbirlib.structures.coarse_regions())"
    )


def _unknown(
    name: str, candidates: tuple[str, ...], what: str, groups: Mapping[str, str] = COARSE_GROUPS
) -> UnknownStructureError:
    coarse = f"; {coarse_hint(groups)}" if what == "structure" else ""
    return UnknownStructureError(
        f"unknown {what} {name!r}{did_you_mean(name, candidates)} (names are matched "
        f"case-insensitively; fine names: cbirlib.structures.fine_classes(){coarse})"
    )


def coarse_structure(name: str, groups: Mapping[str, str] = COARSE_GROUPS) -> str:
    """The coarse region of a fine (v1) structure.

    Parameters
    ----------
    name
        A fine structure name (a key of ``groups``).
    groups
        Fine -> coarse mapping; defaults to :data:`COARSE_GROUPS`.

    Raises
    ------
    UnknownStructureError
        If ``name`` is not a key of ``groups`` (the message lists close matches).

    Examples
    --------
    >>> coarse_structure("vertebrae_T7")
    'vertebrae'
    """
    key = match_name(name, groups)
    if key is None:
        raise _unknown(name, tuple(groups), "fine structure")
    return groups[key]


def resolve_structure(
    name: str, groups: Mapping[str, str] = COARSE_GROUPS
) -> tuple[Literal["fine", "coarse"], tuple[str, ...]]:
    """Resolve a fine or coarse structure name to its fine member classes.

    A name that is both a fine class and a coarse region (``"liver"``) resolves as
    fine; the members are then just that class. Names match case-insensitively
    (``"Liver"`` is ``"liver"``).

    Parameters
    ----------
    name
        A v1 fine class name or a coarse region name of ``groups``.
    groups
        Fine -> coarse mapping; defaults to :data:`COARSE_GROUPS`.

    Returns
    -------
    kind, members
        ``"fine"`` or ``"coarse"``, and the fine classes (in v1 order).

    Raises
    ------
    UnknownStructureError
        If ``name`` is neither; the message lists close matches.

    Examples
    --------
    >>> resolve_structure("Liver")
    ('fine', ('liver',))
    >>> resolve_structure("lung")[1][:2]
    ('lung_upper_lobe_left', 'lung_lower_lobe_left')
    """
    fine = match_name(name, (*groups, *TOTALSEG_V1_CLASSES))
    if fine is not None:
        return "fine", (fine,)
    region = match_name(name, groups.values())
    members = tuple(n for n, g in groups.items() if g == region)
    if members:
        order = {n: i for i, n in enumerate(TOTALSEG_V1_CLASSES)}
        members = tuple(sorted(members, key=lambda n: order.get(n, len(order))))
        return "coarse", members
    candidates = tuple(dict.fromkeys((*groups, *groups.values())))
    raise _unknown(name, candidates, "structure", groups)


__all__ = [
    "COARSE_GROUPS",
    "TOTALSEG_V1_CLASSES",
    "TOTALSEG_V2_CLASSES",
    "V2_TO_V1",
    "coarse_hint",
    "coarse_regions",
    "coarse_structure",
    "did_you_mean",
    "fine_classes",
    "match_name",
    "resolve_structure",
]
