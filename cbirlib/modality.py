"""Imaging modality: its names, a guess from the intensities, and per-folder settings.

The modality decides how a slice is windowed: a CT is in Hounsfield units, so the
extractors apply an HU window; any other modality (MR, PET, ...) has an arbitrary
intensity scale and is windowed by the volume's own percentiles. The readers never
assume a modality silently: DICOM's ``Modality`` tag is used, a NIfTI file takes the
caller's ``modality=`` (or a dcm2niix/BIDS JSON sidecar), and otherwise
:func:`guess_modality` decides and the reader logs a warning.

A volume whose modality is ``"unknown"`` (an in-memory :class:`~cbirlib.volume.Volume`
built without one) is windowed as :func:`effective_modality` says: the same guess.

Examples
--------
>>> import numpy as np
>>> ct = np.full((4, 32, 32), -1000.0, np.float32); ct[:, 8:24, 8:24] = 40.0
>>> guess_modality(ct), guess_modality(ct + 1000.0), guess_modality(ct / 1000.0)
('CT', 'MR', 'MR')
>>> normalize_modality("mri"), normalize_modality(" ct "), normalize_modality("")
('MR', 'CT', 'unknown')
>>> setting = parse_modality_setting(["CT", "brains=MR"])
>>> modality_for("brains/s01", setting), modality_for("chest/s02", setting)
('MR', 'CT')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from cbirlib._text import did_you_mean
from cbirlib.errors import InvalidVolumeError, SettingError

__all__ = [
    "AIR_HU",
    "DICOM_MODALITIES",
    "UNKNOWN",
    "ModalitySetting",
    "effective_modality",
    "guess_modality",
    "guess_modality_reason",
    "modality_for",
    "normalize_modality",
    "parse_modality_setting",
    "unmatched_keys",
]

#: The modality of a volume nobody said anything about.
UNKNOWN = "unknown"
#: Intensities in ``[AIR_LOW_HU, AIR_HU]`` are air in a CT (air is -1000 HU).
AIR_HU = -500.0
AIR_LOW_HU = -1200.0
#: A CT has at least this fraction of its voxels in air (outside the body, lungs, gas).
AIR_FRACTION = 0.01
#: Without air, a CT crop still shows fat (about -100 HU) below this value...
FAT_HU = -50.0
#: ...stays below this value (the 12-bit HU range, with margin)...
CT_MAX_HU = 4000.0
#: ...and spans at least this many units between its 0.5th and 99.5th percentiles.
CT_MIN_SPREAD = 100.0
#: Voxels sampled (evenly spaced through the array) from large volumes by
#: :func:`guess_modality`: enough for its 0.5th/99.5th percentiles and air fraction,
#: and cheap beside reading the file (about 1 ms, whatever the volume's size).
GUESS_SAMPLES = 1 << 16

_ALIASES = {"MRI": "MR", "MRT": "MR", "UNKNOWN": UNKNOWN, "": UNKNOWN}
#: The DICOM Modality (0008,0060) defined terms (PS3.3 C.7.3.1.1.1), current and retired.
DICOM_MODALITIES: frozenset[str] = frozenset(
    [
        "AR",
        "ASMT",
        "AU",
        "BDUS",
        "BI",
        "BMD",
        "CD",
        "CF",
        "CP",
        "CR",
        "CS",
        "CT",
        "CTPROTOCOL",
        "DD",
        "DF",
        "DG",
        "DM",
        "DOC",
        "DS",
        "DX",
        "EC",
        "ECG",
        "EPS",
        "ES",
        "FA",
        "FID",
        "FS",
        "GM",
        "HC",
        "HD",
        "IO",
        "IOL",
        "IVOCT",
        "IVUS",
        "KER",
        "KO",
        "LEN",
        "LP",
        "LS",
        "MA",
        "MG",
        "MR",
        "MS",
        "M3D",
        "NM",
        "OAM",
        "OCT",
        "OP",
        "OPM",
        "OPR",
        "OPT",
        "OPTBSV",
        "OPTENF",
        "OPV",
        "OSS",
        "OT",
        "PLAN",
        "POS",
        "PR",
        "PT",
        "PX",
        "REG",
        "RESP",
        "RF",
        "RG",
        "RTDOSE",
        "RTIMAGE",
        "RTINTENT",
        "RTPLAN",
        "RTRAD",
        "RTRECORD",
        "RTSEGANN",
        "RTSTRUCT",
        "RWV",
        "SEG",
        "SM",
        "SMR",
        "SR",
        "SRF",
        "ST",
        "STAIN",
        "TEXTUREMAP",
        "TG",
        "US",
        "VA",
        "VF",
        "XA",
        "XC",
    ]
)


def normalize_modality(value: str) -> str:
    """The canonical spelling of a modality: a DICOM code (``"CT"``, ``"MR"``) or ``"unknown"``.

    Case and surrounding spaces are ignored, ``"MRI"`` is ``"MR"``, an empty string is
    ``"unknown"``.

    Raises
    ------
    SettingError
        Not a string, or not one of the DICOM modality codes
        (:data:`DICOM_MODALITIES`).
    """
    if not isinstance(value, str):
        raise SettingError(f"modality must be a string such as 'CT' or 'MR', got {value!r}")
    code = value.strip().upper()
    code = _ALIASES.get(code, code)
    if code != UNKNOWN and code not in DICOM_MODALITIES:
        hint = did_you_mean(code, DICOM_MODALITIES)
        raise SettingError(
            f"invalid modality {value!r}{hint}: give a DICOM modality code such as 'CT' or "
            "'MR' (or 'unknown')"
        )
    return code


def _sample(array: npt.ArrayLike) -> npt.NDArray[np.float32]:
    flat = np.asarray(array, dtype=np.float32).reshape(-1)
    if flat.size > GUESS_SAMPLES:  # evenly spaced, in memory order (no random gather)
        flat = flat[np.linspace(0, flat.size - 1, GUESS_SAMPLES).astype(np.intp)]
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        raise InvalidVolumeError("cannot guess the modality of a volume without finite voxels")
    return finite


def guess_modality(array: npt.ArrayLike) -> str:
    """Guess from its intensities whether a volume is a CT (``"CT"``) or not (``"MR"``).

    A CT is in Hounsfield units: it holds air (-1000 HU outside the body, in the lungs
    and bowel), or, when cropped inside the body, fat (about -100 HU) within the HU
    range. So a volume is ``"CT"`` when at least :data:`AIR_FRACTION` of its voxels lie
    between :data:`AIR_LOW_HU` and :data:`AIR_HU` (-1200 to -500), or, failing that,
    when its 0.5th percentile is below :data:`FAT_HU` (-50), its 99.5th percentile is
    at most :data:`CT_MAX_HU` (4000) and they are at least :data:`CT_MIN_SPREAD` (100)
    apart. Anything else - no voxel near air and a non-CT range: non-negative values
    (MR magnitude with a zero background, skull-stripped templates), a range of a few
    units (0..1 or z-scored images) or far above the HU range - is ``"MR"``.

    The guess cannot tell every case (a skull-stripped CT with a zero background reads
    as ``"MR"``); pass the modality to the reader when it is known. Large volumes are
    judged on :data:`GUESS_SAMPLES` evenly spaced voxels (deterministic).

    Parameters
    ----------
    array
        The voxels, any shape; non-finite values are ignored.

    Returns
    -------
    str
        ``"CT"`` or ``"MR"``.

    Raises
    ------
    InvalidVolumeError
        No finite voxel.

    Examples
    --------
    >>> import numpy as np
    >>> head = np.zeros((8, 32, 32), np.float32); head[:, 8:24, 8:24] = 650.0
    >>> guess_modality(head), guess_modality(head - 1000.0)   # zero vs air background
    ('MR', 'CT')
    """
    return guess_modality_reason(array)[0]


def guess_modality_reason(array: npt.ArrayLike) -> tuple[str, str]:
    """:func:`guess_modality` and the figures it went by, as a phrase for a warning.

    Examples
    --------
    >>> import numpy as np
    >>> guess_modality_reason(np.linspace(0.0, 1.0, 1000))
    ('MR', 'no air-like voxel (-1200 to -500), intensities 0.005 to 0.995')
    """
    values = _sample(array)
    air = np.count_nonzero((values >= AIR_LOW_HU) & (values <= AIR_HU)) / values.size
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    span = f"intensities {low:.4g} to {high:.4g}"
    if air >= AIR_FRACTION:
        return "CT", f"{100 * air:.0f} % of the voxels are air-like (-1200 to -500)"
    air_text = f"{100 * air:.1f} % air-like voxels" if air else "no air-like voxel"
    air_text += f" ({AIR_LOW_HU:.0f} to {AIR_HU:.0f})"
    if low <= FAT_HU and high <= CT_MAX_HU and high - low >= CT_MIN_SPREAD:
        return "CT", f"{air_text}, but {span} fit a CT cropped inside the body"
    return "MR", f"{air_text}, {span}"


def effective_modality(modality: str, array: npt.ArrayLike) -> str:
    """The modality that decides the window: ``modality``, or the guess when ``"unknown"``.

    Examples
    --------
    >>> import numpy as np
    >>> effective_modality("MR", np.full((2, 4, 4), -1000.0))
    'MR'
    >>> effective_modality("unknown", np.full((2, 4, 4), -1000.0))
    'CT'
    """
    return guess_modality(array) if modality == UNKNOWN else modality


#: A modality for every volume (a string), per folder or subject (a mapping from a path
#: prefix, relative to the data folder, or a subject id, to a modality; the key ``"*"``
#: is the default), or None: guess each volume's modality (with a logged warning).
ModalitySetting: TypeAlias = str | Mapping[str, str] | None


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in PurePath(path.replace("\\", "/")).parts if p not in ("", "."))


def _best_key(names: Sequence[str], setting: Mapping[str, str]) -> str | None:
    """The longest key of ``setting`` (not ``"*"``) that leads any of ``names``."""
    best, longest = None, 0
    for name in names:
        parts = _parts(name)
        for key in setting:
            prefix = _parts(key) if key != "*" else ()
            if prefix and parts[: len(prefix)] == prefix and len(prefix) > longest:
                best, longest = key, len(prefix)
    return best


def modality_for(path: str | Sequence[str], setting: ModalitySetting) -> str | None:
    """The modality that ``setting`` gives the volume at ``path`` (None: guess it).

    Parameters
    ----------
    path
        The volume's path relative to the data folder, or its id (a subject name), or
        several such names of one volume (its file's path and its id).
    setting
        See :data:`ModalitySetting`. A mapping's keys are matched against whole leading
        path components (``"mr"`` matches ``"mr/s01.nii.gz"``, not ``"mri/s01"``); the
        longest match wins, then ``"*"``.

    Raises
    ------
    SettingError
        A modality in ``setting`` that :func:`normalize_modality` refuses.

    Examples
    --------
    >>> modality_for("head/mr/s01", {"head": "CT", "head/mr": "MR"})
    'MR'
    >>> modality_for("abdomen/s02", {"head": "MR"}) is None
    True
    >>> modality_for(["ct1.nii.gz", "ct1"], {"*": "MR", "ct1": "CT"})
    'CT'
    """
    if setting is None:
        return None
    if isinstance(setting, str):
        code = normalize_modality(setting)
        return None if code == UNKNOWN else code
    key = _best_key([path] if isinstance(path, str) else list(path), setting)
    chosen = setting.get("*") if key is None else setting[key]
    if chosen is None:
        return None
    code = normalize_modality(chosen)
    return None if code == UNKNOWN else code


def unmatched_keys(volumes: Iterable[Sequence[str]], setting: ModalitySetting) -> list[str]:
    """The folders of a mapping ``setting`` (not ``"*"``) that lead none of ``volumes``.

    ``volumes`` gives each volume's names (its relative path, its id), as
    :func:`modality_for` takes them; a key listed here set no volume's modality.

    Examples
    --------
    >>> unmatched_keys([["mr/a.nii.gz", "mr/a"]], {"mr": "MR", "ct": "CT", "*": "CT"})
    ['ct']
    """
    if not isinstance(setting, Mapping):
        return []
    used = {_best_key(names, setting) for names in volumes}
    return [key for key in setting if key != "*" and key not in used]


def parse_modality_setting(values: Sequence[str] | None) -> ModalitySetting:
    """Turn ``--modality`` command-line values into a :data:`ModalitySetting`.

    Each value is a modality (``"MR"``: the default for every volume) or
    ``"FOLDER=MODALITY"`` (for the volumes under ``FOLDER``, or the subject of that id).
    No value gives None (guess each volume).

    Raises
    ------
    SettingError
        A malformed value, a modality :func:`normalize_modality` refuses, or the same
        folder given twice.

    Examples
    --------
    >>> parse_modality_setting(["mr"])
    'MR'
    >>> parse_modality_setting(["CT", "brains=MR"])
    {'*': 'CT', 'brains': 'MR'}
    """
    if not values:
        return None
    out: dict[str, str] = {}
    for value in values:
        folder, sep, code = value.rpartition("=")
        key = folder.strip().rstrip("/") if sep else "*"
        if sep and not key:
            raise SettingError(f"--modality {value!r}: give FOLDER=MODALITY or MODALITY")
        if key in out:
            raise SettingError(f"--modality: {key!r} is given twice ({out[key]} and {code})")
        out[key] = normalize_modality(code)
    return out["*"] if list(out) == ["*"] else out
