"""DICOM series folders: discovery, sorting along the slice normal, tilt (pydicom).

Only the files directly inside the folder are read (no recursion); files that are not
DICOM are skipped. Slices are sorted by their ``ImagePositionPatient`` projected on the
slice normal, never by file name or ``InstanceNumber``; the modality LUT is applied;
gaps, duplicates and uneven spacing are checked (see :mod:`cbirlib.io`). Only the
series number and the short form of the series UID are kept of the headers.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cbirlib._files import is_dicom_file
from cbirlib.errors import (
    DicomSeriesError,
    MissingSliceError,
    NotAnImageError,
    SettingError,
    VolumeNotFoundError,
    VolumeReadError,
)
from cbirlib.io._canonical import _LPS_TO_RAS, _Canonical, _canonical_zyx
from cbirlib.io._paths import _check_exists
from cbirlib.io.enhanced import _read_enhanced
from cbirlib.modality import UNKNOWN, normalize_modality
from cbirlib.provenance import Source

__all__ = ["DicomSeries", "dicom_series"]

#: The readers' one logger (``cbirlib.io``), named in the docs.
logger = logging.getLogger("cbirlib.io")

#: A gap larger than this many median spacings is a missing slice.
MAX_GAP_RATIO = 1.5
#: Relative spacing deviation above which an uneven DICOM series triggers a warning.
SPACING_REL_TOL = 0.01
#: Absolute spacing deviation (mm) below which spacing is always considered even.
SPACING_ABS_TOL = 0.01
#: Tolerance on ImageOrientationPatient direction cosines within one series.
ORIENTATION_TOL = 1e-4
#: Modality codes of DICOM objects that are not images of the anatomy, though some have
#: Rows and Columns: segmentations, RT dose grids, structure sets, plans, reports,
#: presentation states, key objects, documents, registrations.
NON_IMAGE_MODALITIES = frozenset(
    ["SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "DOC", "REG", "RWV"]
)
#: Their SOP classes, for objects whose Modality tag is missing or wrong. (Localizer
#: images, ``ImageType`` LOCALIZER, are skipped too.)
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7": "SEG",  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",  # RT Dose Storage
}


@dataclass(frozen=True)
class _DicomHeader:
    """What the scan keeps of one DICOM file (no patient data)."""

    path: Path
    series_uid: str
    series_number: int | None  # SeriesNumber (0020,0011)
    modality: str
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6,)
    position: tuple[float, ...] | None  # ImagePositionPatient (3,)
    pixel_spacing: tuple[float, ...] | None  # (row spacing, column spacing)
    shape: tuple[int, int]  # (Rows, Columns)
    slice_spacing: float | None  # SpacingBetweenSlices or SliceThickness
    thickness: float | None = None  # SliceThickness
    frames: int = 1  # NumberOfFrames: more than 1 for an Enhanced (multi-frame) image


def _series_number(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _short_uid(uid: str) -> str:
    """The end of a UID, enough to tell series apart without printing it whole."""
    return uid if len(uid) <= 12 else "..." + uid[-8:]


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder, as :func:`dicom_series` lists it (no patient data).

    ``number`` is the series' ``SeriesNumber`` when every series of the folder has a
    distinct one, else its position (from 1) in the listing; ``load_volume(folder,
    series_uid=number)`` reads it. ``thickness_mm`` is its first slice's
    ``SliceThickness`` (None when absent), not the spacing between slices.
    """

    number: int
    uid: str
    n_slices: int
    thickness_mm: float | None
    modality: str

    def describe(self) -> str:
        """``"series 2: 20 slices, 3.0 mm thick (UID ...12345678)"``; never the full UID."""
        mm = f", {self.thickness_mm:.1f} mm thick" if self.thickness_mm else ""
        return f"series {self.number}: {self.n_slices} slices{mm} (UID {_short_uid(self.uid)})"


def _group_series(headers: list[_DicomHeader]) -> list[tuple[DicomSeries, list[_DicomHeader]]]:
    groups: dict[str, list[_DicomHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    numbers = [g[0].series_number for g in groups.values()]
    distinct = None not in numbers and len(set(numbers)) == len(numbers)
    order = sorted(
        groups,
        key=lambda u: (groups[u][0].series_number is None, groups[u][0].series_number or 0, u),
    )
    out = []
    for pos, uid in enumerate(order, start=1):
        g = groups[uid]
        number = g[0].series_number if distinct else pos
        assert number is not None
        n_slices = sum(h.frames for h in g)  # the frames of an Enhanced file
        info = DicomSeries(number, uid, n_slices, g[0].thickness, g[0].modality)
        logger.debug("series %d: SeriesInstanceUID %s", number, uid)
        out.append((info, g))
    return out


def dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """The DICOM series directly inside ``folder``, ordered by series number.

    Reads headers only. Full UIDs are logged at DEBUG level only.

    Raises
    ------
    VolumeNotFoundError
        ``folder`` does not exist or is empty.
    VolumeReadError
        No DICOM image file in ``folder``.
    """
    p = Path(folder)
    _check_exists(p)
    if not p.is_dir():
        raise VolumeReadError(f"{p}: not a folder; dicom_series() lists a DICOM series folder")
    return [info for info, _ in _group_series(_scan_dicom_folder(p))]


def _tag_modality(value: Any, path: Path) -> str:
    """The Modality tag's code, or ``"unknown"`` when it is absent or malformed."""
    try:
        return normalize_modality(str(value or ""))
    except SettingError:
        logger.debug("%s: unusable Modality tag %r; ignored", path, value)
        return UNKNOWN


def _non_image_kind(ds: Any) -> str | None:
    """What a DICOM object that is no slice of a volume is (``"SEG"``...), else None.

    Objects that are not images (by their SOP class or Modality) and localizer (scout)
    images (``ImageType`` LOCALIZER: projections planning the scan, which scanners often
    store in the series they planned).
    """
    kind = _NON_IMAGE_SOP_CLASSES.get(str(ds.get("SOPClassUID", "")).strip())
    if kind is None:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        kind = modality if modality in NON_IMAGE_MODALITIES else None
    if kind is None and "LOCALIZER" in _image_type(ds):
        kind = "LOCALIZER"
    return kind


def _image_type(ds: Any) -> list[str]:
    value = ds.get("ImageType")
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in values]


def _not_an_image(where: Path, kinds: dict[str, int]) -> str:
    """Why ``where`` (a file or folder of such objects) is not read as a volume."""
    listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    hint = (
        "; a SEG is a segmentation: read its masks with cbirlib.io.load_seg_masks"
        if "SEG" in kinds
        else ""
    )
    return (
        f"{where}: no volume to read: {listed} DICOM object(s), which are not slices of an "
        f"image series{hint}"
    )


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _scan_dicom_folder(folder: Path) -> list[_DicomHeader]:
    """Headers of the DICOM image files directly inside ``folder``."""

    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise VolumeNotFoundError(f"{folder}: empty folder (no files; subfolders are not searched)")
    headers: list[_DicomHeader] = []
    unreadable: list[Path] = []
    non_image: dict[str, int] = {}
    for f in files:
        try:
            ds = _read_header(f)
        except Exception as exc:  # InvalidDicomError, truncated headers, unreadable files
            if _could_be_dicom(f):
                unreadable.append(f)
            logger.debug("%s: skipped, not a readable DICOM file (%s)", f, type(exc).__name__)
            continue
        kind = _non_image_kind(ds)
        if kind is not None:
            non_image[kind] = non_image.get(kind, 0) + 1
            logger.debug("%s: skipped, a %s object, not a slice of a volume", f, kind)
            continue
        uid = ds.get("SeriesInstanceUID")
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if uid is None or rows is None or cols is None:
            if uid is None and _could_be_dicom(f) and not _is_dicomdir(f, ds):
                unreadable.append(f)  # a header cut short (an interrupted copy)
            logger.debug("%s: skipped, a DICOM file without image or series", f)
            continue
        thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        headers.append(
            _DicomHeader(
                path=f,
                series_uid=str(uid),
                series_number=_series_number(ds.get("SeriesNumber")),
                modality=_tag_modality(ds.get("Modality", ""), f),
                orientation=_floats(ds.get("ImageOrientationPatient")),
                position=_floats(ds.get("ImagePositionPatient")),
                pixel_spacing=_floats(ds.get("PixelSpacing")),
                shape=(int(rows), int(cols)),
                slice_spacing=_positive_float(thickness),
                thickness=_positive_float(ds.get("SliceThickness")),
                frames=_frames(ds.get("NumberOfFrames")),
            )
        )
    if non_image and headers:
        logger.info(
            "%s: skipped %s (not slices of a volume)",
            folder,
            ", ".join(f"{n} {kind} object(s)" for kind, n in sorted(non_image.items())),
        )
    if not headers and non_image and not unreadable:
        raise NotAnImageError(_not_an_image(folder, non_image))
    if not headers:
        what = f"; {len(unreadable)} look like damaged DICOM files" if unreadable else ""
        raise VolumeReadError(
            f"{folder}: no DICOM image files among its {len(files)} file(s){what}"
        )
    if unreadable:
        names = ", ".join(f.name for f in unreadable[:10]) + (
            " ..." if len(unreadable) > 10 else ""
        )
        if len({h.series_uid for h in headers}) == 1:
            raise MissingSliceError(
                f"{folder}: {len(unreadable)} of its {len(unreadable) + len(headers)} DICOM "
                f"files cannot be read ({names}), so the series' extent is not covered; "
                "restore or remove those files"
            )
        warnings.warn(
            f"{folder}: skipped {len(unreadable)} unreadable DICOM file(s): {names}",
            UserWarning,
            stacklevel=4,
        )
    return headers


def _could_be_dicom(path: Path) -> bool:
    """Whether an unreadable file was probably meant to be a DICOM slice.

    DICOM files (:func:`cbirlib._files.is_dicom_file`) and empty files count; hidden
    files and other side files (``README``, ``notes.txt``, thumbnails) do not.
    """
    if path.name.startswith("."):
        return False
    if is_dicom_file(path):
        return True
    try:
        with open(path, "rb") as fh:
            return not fh.read(1)
    except OSError:
        return False


def _is_dicomdir(path: Path, ds: Any) -> bool:
    sop = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return path.name.upper() == "DICOMDIR" or str(sop) == "1.2.840.10008.1.3.10"


def _read_header(path: Path) -> Any:
    """The header of a DICOM file, with or without the 128-byte preamble and ``DICM``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            raise
        return ds


def _frames(value: Any) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def _positive_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _pick_series(
    folder: Path, headers: list[_DicomHeader], series_uid: str | int | None
) -> list[_DicomHeader]:
    groups = _group_series(headers)

    def listing() -> str:
        return "; ".join(info.describe() for info, _ in groups)

    if series_uid is not None:
        wanted = str(series_uid).strip()
        for info, g in groups:
            if wanted == info.uid:
                return g
        by_number = [g for info, g in groups if wanted == str(info.number)]
        suffix = wanted.lstrip(".")
        by_suffix = [g for info, g in groups if len(suffix) >= 4 and info.uid.endswith(suffix)]
        if len(by_number) == 1:
            return by_number[0]
        if len(by_suffix) == 1:
            return by_suffix[0]
        raise DicomSeriesError(
            f"{folder}: no series {_short_uid(wanted)!r} (give a listed series number or a "
            f"SeriesInstanceUID); available: {listing()}"
        )
    if len(groups) > 1:
        raise DicomSeriesError(
            f"{folder}: holds {len(groups)} series; pick one with series_uid= (--series-uid on "
            "the command line: its number "
            f"or SeriesInstanceUID): {listing()}"
        )
    return groups[0][1]


def _check_series(folder: Path, series: list[_DicomHeader]) -> None:
    """Raise on missing geometry, mixed orientations, pixel shapes or spacings."""
    first = series[0]
    for h in series:
        for attr, tag in (
            ("orientation", "ImageOrientationPatient"),
            ("position", "ImagePositionPatient"),
            ("pixel_spacing", "PixelSpacing"),
        ):
            if getattr(h, attr) is None:
                raise DicomSeriesError(f"{h.path}: missing or invalid {tag}")
        _check_geometry(h)
        assert h.orientation is not None and first.orientation is not None
        if not np.allclose(h.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise DicomSeriesError(
                f"{folder}: mixed orientations in series {_short_uid(first.series_uid)}: "
                f"{h.path.name} has ImageOrientationPatient {list(h.orientation)}, "
                f"{first.path.name} has {list(first.orientation)}"
            )
        if h.shape != first.shape:
            raise DicomSeriesError(
                f"{folder}: mixed pixel shapes in series {_short_uid(first.series_uid)}: "
                f"{h.path.name} is {h.shape[0]}x{h.shape[1]}, "
                f"{first.path.name} is {first.shape[0]}x{first.shape[1]} (Rows x Columns)"
            )
        assert h.pixel_spacing is not None and first.pixel_spacing is not None
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise DicomSeriesError(
                f"{folder}: mixed PixelSpacing in series {_short_uid(first.series_uid)}: "
                f"{h.path.name} has {list(h.pixel_spacing)}, "
                f"{first.path.name} has {list(first.pixel_spacing)}"
            )


def _check_geometry(h: _DicomHeader) -> None:
    """Raise :class:`DicomSeriesError` naming the tag and file of malformed geometry."""
    assert h.orientation is not None and h.position is not None
    assert h.pixel_spacing is not None
    if len(h.position) != 3 or not np.isfinite(h.position).all():
        raise DicomSeriesError(
            f"{h.path}: ImagePositionPatient must be 3 finite numbers, got {list(h.position)}"
        )
    spacing = h.pixel_spacing
    if len(spacing) != 2 or not np.isfinite(spacing).all() or min(spacing) <= 0:
        raise DicomSeriesError(
            f"{h.path}: PixelSpacing must be 2 positive numbers (row, column spacing in mm), "
            f"got {list(spacing)}"
        )
    o = np.asarray(h.orientation, dtype=np.float64)
    if o.shape != (6,) or not np.isfinite(o).all():
        raise DicomSeriesError(
            f"{h.path}: ImageOrientationPatient must be 6 finite numbers, got {list(o)}"
        )
    row, col = o[:3], o[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-2
        or abs(np.linalg.norm(col) - 1) > 1e-2
        or abs(float(row @ col)) > 1e-2
    ):
        raise DicomSeriesError(
            f"{h.path}: ImageOrientationPatient {list(o)} is degenerate: its row and column "
            "directions must be orthogonal unit vectors"
        )


def _slice_steps(folder: Path, uid: str, proj: npt.NDArray[np.float64], names: list[str]) -> float:
    """Check sorted slice positions for duplicates, gaps and unevenness; median step."""
    diffs = np.diff(proj)
    dup = np.flatnonzero(diffs < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise DicomSeriesError(
            f"{folder}: series {uid}: {names[i]} and {names[i + 1]} share the slice "
            f"position {proj[i]:.3f} mm along the slice normal (duplicate files, or "
            "several echoes/phases/acquisitions in one series, which is not supported)"
        )
    median = float(np.median(diffs))
    gaps = np.flatnonzero(diffs > MAX_GAP_RATIO * median)
    if gaps.size:
        where = ", ".join(
            f"between {proj[i]:.2f} and {proj[i + 1]:.2f} mm "
            f"({names[i]} and {names[i + 1]}, gap {diffs[i]:.2f} mm)"
            for i in gaps.tolist()
        )
        raise MissingSliceError(
            f"{folder}: series {uid} is missing slices: {where}; "
            f"median spacing {median:.2f} mm over {proj.size} slices"
        )
    deviation = float(np.abs(diffs - median).max())
    if deviation > max(SPACING_ABS_TOL, SPACING_REL_TOL * median):
        warnings.warn(
            f"{folder}: series {uid} has uneven slice spacing (from {diffs.min():.3f} to "
            f"{diffs.max():.3f} mm, median {median:.3f} mm); true positions are kept in "
            "z_positions",
            UserWarning,
            stacklevel=4,
        )
    return median


def _read_pixels(path: Path) -> npt.NDArray[np.float32]:
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut

    try:
        ds = pydicom.dcmread(path, force=True)
        raw = ds.pixel_array
        values = apply_modality_lut(raw, ds)
    except Exception as exc:
        raise VolumeReadError(
            f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {exc})"
        ) from None
    if values.ndim != 2:
        raise DicomSeriesError(
            f"{path}: pixel data of shape {values.shape}; only single-frame grayscale "
            "slices are supported"
        )
    return np.asarray(values, dtype=np.float32)


def _read_dicom_series(
    folder: Path, *, series_uid: str | int | None
) -> tuple[_Canonical, str, Source]:
    """Read one DICOM series folder into the canonical layout, with its modality and source.

    The source holds the folder, ``SeriesNumber`` and the short form of the series UID,
    nothing else of the headers.
    """
    series = _pick_series(folder, _scan_dicom_folder(folder), series_uid)
    if len(series) == 1 and series[0].frames > 1:
        return _read_multiframe(series[0], folder)
    if any(h.frames > 1 for h in series):
        raise DicomSeriesError(
            f"{folder}: series {_short_uid(series[0].series_uid)} is split over "
            f"{len(series)} multi-frame files, which is not supported; load each file"
        )
    _check_series(folder, series)
    first = series[0]
    assert first.orientation is not None and first.pixel_spacing is not None
    row_dir = np.asarray(first.orientation[:3])  # direction of increasing column index
    col_dir = np.asarray(first.orientation[3:])  # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([h.position for h in series], dtype=np.float64)  # LPS mm
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    series = [series[i] for i in order.tolist()]
    positions, proj = positions[order], proj[order]
    names = [h.path.name for h in series]
    if len(series) > 1:
        median = _slice_steps(folder, _short_uid(first.series_uid), proj, names)
        step = (positions[-1] - positions[0]) / (len(series) - 1)
    else:
        median = first.slice_spacing or 1.0
        step = normal * median
    logger.debug(
        "%s: series %s, %d slices, spacing %.3f mm", folder, first.series_uid, len(series), median
    )
    stack = np.stack([_read_pixels(h.path) for h in series])  # (k, row, column)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * first.pixel_spacing[1]
    lps[:3, 1] = col_dir * first.pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    img = nib.Nifti1Image(  # type: ignore[no-untyped-call]
        stack.transpose(2, 1, 0), _LPS_TO_RAS @ lps
    )  # data indexed (column, row, k)
    canon = _canonical_zyx(img, str(folder))
    if len(series) > 2 and int(np.argmax(np.abs(normal))) == 2:
        # axial-like series: keep the true (possibly uneven) slice positions
        z_true = np.sort(positions[:, 2])
        offset = canon.z_positions[0] - z_true[0]
        canon = replace(canon, z_positions=z_true + offset)
    source = Source.from_file(
        folder, series_number=first.series_number, series_uid=_short_uid(first.series_uid)
    )
    return canon, first.modality, source


def _read_multiframe(header: _DicomHeader, origin: Path) -> tuple[_Canonical, str, Source]:
    """Read one Enhanced (multi-frame) file: canonical layout, modality, source."""
    canon = _read_enhanced(header.path)
    logger.debug(
        "%s: multi-frame series %s, %d frames", header.path, header.series_uid, header.frames
    )
    source = Source.from_file(
        origin, series_number=header.series_number, series_uid=_short_uid(header.series_uid)
    )
    return canon, header.modality, source


def _read_dicom_file(path: Path) -> tuple[_Canonical, str, Source]:
    """Read a single DICOM file: an Enhanced (multi-frame) image holding a whole series.

    Raises
    ------
    VolumeReadError
        Not a DICOM image file, or a single-frame slice (its folder is the series).
    """
    try:
        ds = _read_header(path)
    except Exception as exc:  # InvalidDicomError, truncated headers, unreadable files
        raise VolumeReadError(
            f"{path}: cannot read as DICOM ({type(exc).__name__}: {exc})"
        ) from None
    kind = _non_image_kind(ds)
    if kind is not None:
        raise NotAnImageError(_not_an_image(path, {kind: 1}))
    header = _DicomHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_number=_series_number(ds.get("SeriesNumber")),
        modality=_tag_modality(ds.get("Modality", ""), path),
        orientation=None,
        position=None,
        pixel_spacing=None,
        shape=(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)),
        slice_spacing=None,
        frames=_frames(ds.get("NumberOfFrames")),
    )
    if header.frames < 2:
        raise VolumeReadError(
            f"{path}: a single-frame DICOM slice; for a series of slices pass the folder "
            f"holding them ({path.parent})"
        )
    return _read_multiframe(header, path)
