"""Readers: NIfTI files and DICOM series to :class:`~cbirlib.volume.Volume`.

This is the only module that reads image files. Both readers go through one private
function (``_canonical_zyx``) so that images and masks always share one layout:

* the image is reoriented to the closest canonical (RAS+) orientation with nibabel, so
  its data are indexed ``(i, j, k) = (R, A, S)``;
* the :class:`Volume` array is ``data.transpose(2, 1, 0)``, i.e. ``(Z, Y, X) = (S, A, R)``:
  ``array[0]`` is the most inferior axial slice, rows run posterior -> anterior and
  columns left -> right (patient's left to patient's right);
* ``spacing`` is ``(dz, dy, dx)`` in mm, ``z_positions`` the superior (RAS ``z``)
  world coordinate in mm of voxel ``(0, 0, k)`` of each slice (ascending), and
  ``affine`` the canonical voxel ``(x, y, z)`` -> RAS mm matrix.

DICOM series are read with pydicom. Slices are sorted by their ``ImagePositionPatient``
projected on the slice normal (the cross product of the two ``ImageOrientationPatient``
rows), never by file name or ``InstanceNumber``; ``RescaleSlope``/``RescaleIntercept``
(the modality LUT) are applied. A gap larger than 1.5 times the median slice spacing
raises :class:`~cbirlib.errors.MissingSliceError`; smaller spacing irregularities
(above 1 % of the median spacing, or 0.01 mm) only emit a ``UserWarning`` and the true
positions are kept in ``z_positions``. Only the files directly inside the folder are
read (no recursion); files that are not DICOM are skipped.

The modality is never assumed silently: the caller's ``modality=``, else DICOM's
``Modality`` tag, else (NIfTI) the ``"Modality"`` of a dcm2niix/BIDS JSON sidecar, else
:func:`guess_modality` from the intensities, with a logged warning that states the guess.

A gantry-tilted or oblique acquisition keeps its true slice positions; ``spacing[0]``
is the distance between the slice planes along their normal, and a ``UserWarning``
states the tilt and that spacing.

No patient identifier (name, ID, birth date, ...) is copied into the volume or logged.

Examples
--------
>>> import numpy as np, nibabel as nib, tempfile, pathlib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)   # (i, j, k) = (R, A, S)
>>> nib.save(nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), tmp / "case1.nii.gz")
>>> vol = load_volume(tmp / "case1.nii.gz", modality="MR")
>>> vol
Volume('case1', shape=(4, 3, 2), spacing=3x2x1 mm, MR)
>>> vol.z_positions.tolist()
[0.0, 3.0, 6.0, 9.0]
>>> bool((vol.array == data.transpose(2, 1, 0)).all())
True
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cbirlib._gzip import gunzip, gzip_backend
from cbirlib.errors import (
    DicomSeriesError,
    InvalidVolumeError,
    MaskShapeError,
    MissingSliceError,
    SettingError,
    VolumeNotFoundError,
    VolumeReadError,
)
from cbirlib.modality import UNKNOWN, guess_modality, guess_modality_reason, normalize_modality
from cbirlib.provenance import Source
from cbirlib.volume import Volume

__all__ = [
    "NIFTI_SUFFIXES",
    "TOTALSEG_IMAGE_NAMES",
    "guess_modality",
    "nifti_stem",
    "DicomSeries",
    "dicom_series",
    "load_mask",
    "load_volume",
    "nifti_shape",
]

logger = logging.getLogger(__name__)

#: File name endings read as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

#: A gap larger than this many median spacings is a missing slice.
MAX_GAP_RATIO = 1.5
#: Relative spacing deviation above which an uneven DICOM series triggers a warning.
SPACING_REL_TOL = 0.01
#: Absolute spacing deviation (mm) below which spacing is always considered even.
SPACING_ABS_TOL = 0.01
#: Tolerance on ImageOrientationPatient direction cosines within one series.
ORIENTATION_TOL = 1e-4

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --- shared layout --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Canonical:
    """Image data in the Volume layout, with its geometry."""

    array: npt.NDArray[Any]  # (Z, Y, X) = (S, A, R)
    affine: npt.NDArray[np.float64]  # canonical voxel (x, y, z) -> RAS mm
    spacing: tuple[float, float, float]  # (dz, dy, dx)
    z_positions: npt.NDArray[np.float64]


def _canonical_zyx(img: Any, source: str, *, as_mask: bool = False) -> _Canonical:
    """Reorient a nibabel image to RAS+ and return its data as ``(Z, Y, X)``.

    The one place where the layout convention lives: images and masks both go here.
    """
    if img.ndim == 4 and img.shape[3] == 1:
        img = nib.funcs.squeeze_image(img)  # type: ignore[no-untyped-call]
    if img.ndim != 3:
        raise InvalidVolumeError(
            f"{source}: expected a 3D image, got {img.ndim}D data of shape {tuple(img.shape)}"
            " (only a 4D image with a trailing dimension of 1 is accepted)"
        )
    try:
        img = nib.as_closest_canonical(img)  # type: ignore[no-untyped-call]
        if as_mask:
            data: npt.NDArray[Any] = _mask_data(img, source)
        else:
            data = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # nibabel, zlib, gzip and numpy errors of a damaged file
        raise VolumeReadError(
            f"{source}: cannot read the image data ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt"
        ) from None
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # (dx, dy, dz)
    n_z = data.shape[2]
    z = affine[2, 2] * np.arange(n_z, dtype=np.float64) + affine[2, 3]
    dz = _slice_spacing(affine, source) if n_z > 1 and not as_mask else float(zooms[2])
    return _Canonical(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)),
        affine=affine,
        spacing=(dz, float(zooms[1]), float(zooms[0])),
        z_positions=z,
    )


#: Degrees between the slice axis and the body axis above which a tilt is reported.
TILT_WARN_DEGREES = 0.5


def _slice_spacing(affine: npt.NDArray[np.float64], source: str) -> float:
    """The distance between slice planes, warning when the slices are tilted or oblique.

    The slice step (the affine's third column) of a gantry-tilted series is not
    perpendicular to the slice planes, so its length overstates the spacing; of an
    oblique series it is not along the body axis, so ``z_positions`` advance by less
    than the spacing. Positions are kept as they are (the S coordinate of each slice
    origin); the returned spacing is the perpendicular distance between the planes.
    """
    step = affine[:3, 2]
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    norm = float(np.linalg.norm(normal))
    if norm == 0 or not np.isfinite(norm):
        return float(np.linalg.norm(step))
    normal /= norm
    spacing = abs(float(step @ normal))
    shear = np.degrees(np.arccos(min(1.0, spacing / float(np.linalg.norm(step)))))
    oblique = np.degrees(np.arccos(min(1.0, abs(float(normal[2])))))
    if max(shear, oblique) > TILT_WARN_DEGREES:
        kind = "gantry tilt" if shear > TILT_WARN_DEGREES else "oblique slices"
        warnings.warn(
            f"{source}: {kind}: the slice planes are tilted {oblique:.1f} degrees from axial "
            f"and the slice step {shear:.1f} degrees from their normal; true slice spacing "
            f"{spacing:.3f} mm, z positions advance by {abs(step[2]):.3f} mm per slice",
            UserWarning,
            stacklevel=5,
        )
    return spacing if spacing > 0 else float(np.linalg.norm(step))


def _mask_data(img: Any, source: str) -> npt.NDArray[np.bool_]:
    """A mask's voxels as booleans: nonzero is present, NaN is absent (with a warning)."""
    raw = np.asanyarray(img.dataobj)
    present: npt.NDArray[np.bool_] = raw != 0
    if raw.dtype.kind == "f":
        nan = np.isnan(raw)
        if nan.any():
            warnings.warn(
                f"{source}: {int(nan.sum())} NaN voxel(s) in a mask are treated as absent",
                UserWarning,
                stacklevel=5,
            )
            present &= ~nan
    return present


def _make_volume(
    source: str, canon: _Canonical, *, id: str, modality: str, origin: Source | None = None
) -> Volume:
    """Build the Volume, making sure validation errors name the source file."""
    try:
        return Volume(
            id,
            canon.array,
            spacing=canon.spacing,
            z_positions=canon.z_positions,
            modality=modality,
            affine=canon.affine,
            source=origin,
        )
    except InvalidVolumeError as exc:
        raise type(exc)(f"{source}: {exc}") from None


# --- NIfTI ------------------------------------------------------------------------------------


def nifti_stem(path: str | os.PathLike[str]) -> str | None:
    """File name without its NIfTI suffix, or None if it is not a NIfTI name."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VolumeNotFoundError(f"{path}: no such file or folder")


# --- gzip-opening hook (cbirlib._gzip): inflate with isal or zlib, nibabel decodes ---


def _load_gzipped_nifti(path: Path) -> Any:
    """A ``.nii.gz`` image decompressed in one call (:func:`cbirlib._gzip.gunzip`).

    nibabel decodes the bytes (header, data type, scaling) exactly as from the file.
    """
    raw = gunzip(path)
    sizeof_hdr = int.from_bytes(raw[:4], "little")
    if sizeof_hdr not in (348, 540):
        sizeof_hdr = int.from_bytes(raw[:4], "big")
    klass = nib.Nifti2Image if sizeof_hdr == 540 else nib.Nifti1Image
    holder = nib.FileHolder(filename=str(path), fileobj=io.BytesIO(raw))
    return klass.from_file_map({"header": holder, "image": holder})  # type: ignore[no-untyped-call]


# --- end of the gzip-opening hook -------------------------------------------------------


def _load_nifti_image(path: Path) -> Any:
    try:
        if path.name.lower().endswith(".gz") and gzip_backend() != "nibabel":
            return _load_gzipped_nifti(path)
        return nib.load(path)
    except Exception as exc:
        raise VolumeReadError(
            f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt"
        ) from None


def _read_nifti(path: Path, *, as_mask: bool = False) -> _Canonical:
    img = _load_nifti_image(path)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeReadError(f"{path}: not a NIfTI image (read as {type(img).__name__})")
    _check_nifti_data(img, path)
    if not as_mask:
        _warn_unknown_orientation(img, path)
    return _canonical_zyx(img, str(path), as_mask=as_mask)


def max_voxels() -> int:
    """Most voxels one image may hold: ``CBIRLIB_MAX_VOXELS`` or 2**31 (8 GiB as float32)."""
    value = os.environ.get("CBIRLIB_MAX_VOXELS", "")
    return int(value) if value.strip().isdigit() else 1 << 31


def _check_nifti_data(img: Any, path: Path) -> None:
    """Refuse complex data, and a header whose data cannot be in the file, before reading."""
    dtype = img.get_data_dtype()
    if dtype.kind == "c" or dtype.names:
        raise InvalidVolumeError(
            f"{path}: {dtype} voxels (complex or compound data) are not a scalar image; "
            "save the magnitude (or the wanted component) as a real-valued image"
        )
    n_voxels = int(np.prod(img.shape, dtype=np.float64))
    if n_voxels > max_voxels():
        raise InvalidVolumeError(
            f"{path}: the header declares {n_voxels} voxels (shape {tuple(img.shape)}), more "
            f"than the limit {max_voxels()} (set CBIRLIB_MAX_VOXELS to raise it)"
        )
    needed = int(getattr(img.dataobj, "offset", 0)) + n_voxels * dtype.itemsize
    available = _nifti_data_size(path)
    if available < needed:
        raise VolumeReadError(
            f"{path}: the header declares shape {tuple(img.shape)} of {dtype} ({needed} bytes "
            f"with the header) but the file can hold at most {available} bytes; it is truncated or "
            "its header is wrong"
        )


#: deflate's largest compression ratio: a gzip file holds at most this many bytes per byte.
_DEFLATE_MAX_RATIO = 1032


def _nifti_data_size(path: Path) -> int:
    """The most bytes of content an image file can hold.

    The file size, or for gzip files the file size times deflate's largest ratio (the
    gzip trailer's recorded size is not used: it is modulo 4 GiB and covers only the
    last member of multi-member files such as bgzip's).
    """
    size = path.stat().st_size
    return size * _DEFLATE_MAX_RATIO if path.name.lower().endswith(".gz") else size


def _warn_unknown_orientation(img: Any, path: Path) -> None:
    """Warn when neither the qform nor the sform says how the voxels lie in space."""
    header = img.header
    try:
        codes = (int(header["qform_code"]), int(header["sform_code"]))
    except (KeyError, TypeError, ValueError):  # pragma: no cover - not a NIfTI header
        return
    if codes == (0, 0):
        warnings.warn(
            f"{path}: qform_code and sform_code are both 0, so the orientation is unknown; "
            "assumed LAS (nibabel's default). Check that the slices run inferior -> superior, "
            "or fix the header (e.g. with nibabel's set_qform/set_sform).",
            UserWarning,
            stacklevel=4,
        )


def _unsupported(path: Path) -> VolumeReadError:
    hint = ""
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        hint = f"; for DICOM pass the folder of the series ({path.parent})"
    return VolumeReadError(
        f"{path}: unsupported file type; expected a NIfTI file "
        f"({', '.join(NIFTI_SUFFIXES)}) or a folder holding one DICOM series{hint}"
    )


# --- DICOM ------------------------------------------------------------------------------------


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
    series_uid=number)`` reads it.
    """

    number: int
    uid: str
    n_slices: int
    thickness_mm: float | None
    modality: str

    def describe(self) -> str:
        """``"series 2: 20 slices, 3.0 mm (UID ...12345678)"``; never the full UID."""
        mm = f", {self.thickness_mm:.1f} mm" if self.thickness_mm else ""
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
        info = DicomSeries(number, uid, len(g), g[0].slice_spacing, g[0].modality)
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
    for f in files:
        try:
            ds = _read_header(f)
        except Exception as exc:  # InvalidDicomError, truncated headers, unreadable files
            if _could_be_dicom(f):
                unreadable.append(f)
            logger.debug("%s: skipped, not a readable DICOM file (%s)", f, type(exc).__name__)
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
            )
        )
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

    Empty files, files with a DICOM suffix and files with the ``DICM`` marker count;
    other side files (``README``, ``notes.txt``, thumbnails) do not.
    """
    if path.name.startswith("."):
        return False
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return not head or head[128:132] == b"DICM"


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
            f"{folder}: holds {len(groups)} series; pick one with series_uid= (its number "
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


# --- public API ---------------------------------------------------------------------------


def load_volume(
    path: str | os.PathLike[str],
    *,
    series_uid: str | int | None = None,
    id: str | None = None,
    modality: str | None = None,
) -> Volume:
    """Read a NIfTI file or a DICOM series folder as a canonical :class:`Volume`.

    Parameters
    ----------
    path
        A ``.nii`` / ``.nii.gz`` file, or a folder whose files form one DICOM series.
    series_uid
        For a DICOM folder holding several series, the one to read: its
        ``SeriesInstanceUID``, or its number as listed in the error message and by
        :func:`dicom_series` (its ``SeriesNumber`` when the folder's series have
        distinct ones).
    id
        Volume id; defaults to the file name without ``.nii``/``.nii.gz``, or the
        folder name for DICOM; for a file named like a TotalSegmentator image
        (``ct.nii.gz``, ``mri.nii.gz``, see :data:`TOTALSEG_IMAGE_NAMES`) it is the
        name of the folder holding it (``s0011/ct.nii.gz`` is ``"s0011"``, as
        :class:`~cbirlib.datasets.TotalSegmentator` and the command line name it).
        Never taken from patient data (no DICOM tag is used).
        **The default is only as anonymous as the path**: the id ends up in indexes,
        results and logs, so when a file or folder is named after a patient (e.g.
        ``DOE^JOHN/``), pass an explicit pseudonymous ``id=`` (a study code, a counter,
        a hash you keep the key of).
    modality
        ``"CT"``, ``"MR"``, ... (it decides the window: an HU window for CT,
        percentiles for the others). Without it: the DICOM ``Modality`` tag; for a
        NIfTI file the ``"Modality"`` of its dcm2niix/BIDS JSON sidecar
        (``<name>.json`` beside it); failing both, :func:`guess_modality` decides from
        the intensities and a warning is logged (logger ``cbirlib.io``) that states
        the guess. ``"unknown"`` is the same as None.

    Returns
    -------
    Volume
        float32 array ``(Z, Y, X)`` in RAS+ orientation, slices inferior -> superior,
        with spacing, z positions and affine set (see the module docstring), and its
        :attr:`~cbirlib.Volume.source`: the absolute path read and, for DICOM, the
        series number and short UID (no other header field is read).

    Raises
    ------
    VolumeNotFoundError
        The path does not exist, or is an empty folder.
    VolumeReadError
        Unsupported file type, corrupt or truncated file, a folder without DICOM files.
    DicomSeriesError
        Several series without ``series_uid``, an unknown ``series_uid``, mixed
        orientations or pixel shapes; :class:`MissingSliceError` for a gap.
    InvalidVolumeError
        Not a 3D image (2D, 4D), NaN or infinite voxels.

    SettingError
        ``modality`` is not a DICOM modality code.

    Warns
    -----
    UserWarning
        A NIfTI file whose ``qform_code`` and ``sform_code`` are both 0: its orientation
        is unknown, and nibabel's default (LAS) is assumed. A gantry-tilted or oblique
        acquisition: the warning states the tilt and the true slice spacing (the
        distance between slice planes, which ``spacing[0]`` holds).

    Examples
    --------
    >>> import numpy as np, nibabel as nib, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> flipped = np.diag([-1.0, -1.0, -2.5, 1.0])   # LPI: z runs superior -> inferior
    >>> data = np.zeros((4, 4, 3), np.int16); data[..., 0] = 7   # k = 0 is the top slice
    >>> nib.save(nib.Nifti1Image(data, flipped), tmp / "lpi.nii")
    >>> vol = load_volume(tmp / "lpi.nii", modality="MR")
    >>> vol.array[:, 0, 0].tolist(), vol.spacing, vol.modality
    ([0.0, 0.0, 7.0], (2.5, 1.0, 1.0), 'MR')
    """
    p = Path(path)
    _check_exists(p)
    given = None if modality is None else normalize_modality(modality)
    if p.is_dir():
        canon, tag, origin = _read_dicom_series(p, series_uid=series_uid)
        vid = id or p.resolve().name
        found = given if given not in (None, UNKNOWN) else (tag if tag != UNKNOWN else None)
        where = "the DICOM series has no Modality tag"
    else:
        stem = nifti_stem(p)
        if stem is None:
            raise _unsupported(p)
        canon = _read_nifti(p)
        origin = Source.from_file(p)
        vid = id or _default_nifti_id(p, stem)
        found = given if given not in (None, UNKNOWN) else _sidecar_modality(p, stem)
        where = "a NIfTI file does not record it"
    if found is None:
        found, reason = guess_modality_reason(canon.array)
        logger.warning(
            "%s: modality not given (%s); guessed %s: %s. If that is wrong, pass "
            "modality='CT' or 'MR' to load_volume (or --modality on the command line)",
            p,
            where,
            found,
            reason,
        )
    return _make_volume(str(p), canon, id=vid, modality=found, origin=origin)


#: File names of TotalSegmentator images: their volume id is their folder's name.
TOTALSEG_IMAGE_NAMES = ("ct.nii.gz", "mri.nii.gz")


def _default_nifti_id(path: Path, stem: str) -> str:
    """The folder name for a TotalSegmentator image (``s0011/ct.nii.gz``), else the stem."""
    if path.name in TOTALSEG_IMAGE_NAMES:
        folder = path.absolute().parent.name
        if folder:
            return folder
    return stem


def _sidecar_modality(path: Path, stem: str) -> str | None:
    """The ``"Modality"`` of a dcm2niix/BIDS JSON sidecar (``<stem>.json``), if any.

    Nothing else is read from the sidecar (it may hold acquisition dates and more).
    """
    sidecar = path.with_name(stem + ".json")
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get("Modality")
        code = normalize_modality(str(value)) if value is not None else UNKNOWN
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, SettingError) as exc:
        logger.warning("%s: unreadable JSON sidecar, its Modality is ignored (%s)", sidecar, exc)
        return None
    if code == UNKNOWN:
        return None
    logger.debug("%s: modality %s from its JSON sidecar", path, code)
    return code


def load_mask(path: str | os.PathLike[str], *, like: Volume | None = None) -> npt.NDArray[np.bool_]:
    """Read a NIfTI segmentation mask as a boolean ``(Z, Y, X)`` array.

    The mask is canonicalised exactly like :func:`load_volume`, so it lines up with
    the image it was drawn on. Any non-zero voxel is True.

    Parameters
    ----------
    path
        A ``.nii`` / ``.nii.gz`` file.
    like
        The volume the mask belongs to; its shape must match.

    Raises
    ------
    MaskShapeError
        The mask's shape differs from ``like.shape``.
    VolumeNotFoundError, VolumeReadError, InvalidVolumeError
        As for :func:`load_volume`.

    Examples
    --------
    >>> import numpy as np, nibabel as nib, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> m = np.zeros((2, 3, 4), np.uint8); m[1, 2, 3] = 1
    >>> nib.save(nib.Nifti1Image(m, np.eye(4)), tmp / "liver.nii.gz")
    >>> mask = load_mask(tmp / "liver.nii.gz")
    >>> mask.shape, mask.dtype, np.argwhere(mask).tolist()
    ((4, 3, 2), dtype('bool'), [[3, 2, 1]])
    """
    p = Path(path)
    _check_exists(p)
    if p.is_dir() or nifti_stem(p) is None:
        raise VolumeReadError(
            f"{p}: unsupported mask file; expected a NIfTI file ({', '.join(NIFTI_SUFFIXES)})"
        )
    canon = _read_nifti(p, as_mask=True)
    mask: npt.NDArray[np.bool_] = canon.array.astype(bool, copy=False)
    if like is not None:
        if mask.shape != like.shape:
            raise MaskShapeError(
                f"{p}: mask shape {mask.shape} (Z, Y, X) differs from the shape "
                f"{like.shape} of volume {like.id!r}"
            )
        if like.affine is not None and not np.allclose(canon.affine, like.affine, atol=1e-2):
            logger.warning(
                "%s: mask affine differs from the affine of volume %r; "
                "the mask may not be aligned with the image",
                p,
                like.id,
            )
    return mask


def nifti_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Shape ``(Z, Y, X)`` that :func:`load_volume` would give, read from the header only.

    Cheap: no voxel data are read.

    Raises
    ------
    VolumeNotFoundError, VolumeReadError, InvalidVolumeError
        As for :func:`load_volume` (NIfTI files only).

    Examples
    --------
    >>> import numpy as np, nibabel as nib, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> sar = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 1.0]])
    >>> nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), sar), tmp / "p.nii")
    >>> nifti_shape(tmp / "p.nii")
    (5, 6, 7)
    """
    p = Path(path)
    _check_exists(p)
    if p.is_dir() or nifti_stem(p) is None:
        raise _unsupported(p)
    img = _load_nifti_image(p)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InvalidVolumeError(
            f"{p}: expected a 3D image, got {len(shape)}D data of shape {tuple(img.shape)}"
        )
    try:
        ornt = nib.io_orientation(img.affine)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise VolumeReadError(f"{p}: unusable affine ({type(exc).__name__}: {exc})") from None
    ras = [0, 0, 0]
    for axis, (out_axis, _flip) in enumerate(ornt):
        ras[int(out_axis)] = shape[axis]
    return (ras[2], ras[1], ras[0])
