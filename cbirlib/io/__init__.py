"""Readers: NIfTI, NRRD, DICOM series and Enhanced DICOM to :class:`~cbirlib.volume.Volume`.

This package is the only place that reads image files, one module per format
(:mod:`cbirlib.io.nifti`, :mod:`cbirlib.io.nrrd` (extra ``nrrd``),
:mod:`cbirlib.io.dicom`, :mod:`cbirlib.io.enhanced` for multi-frame DICOM and
:mod:`cbirlib.io.seg` for DICOM SEG masks (extra ``highdicom``)); :func:`load_volume`
picks the reader from the path. Every reader goes through one private function
(``_canonical_zyx``, in ``cbirlib.io._canonical``) so that images and masks always share
one layout:

* the image is reoriented to the closest canonical (RAS+) orientation with nibabel, so
  its data are indexed ``(i, j, k) = (R, A, S)``;
* the :class:`Volume` array is ``data.transpose(2, 1, 0)``, i.e. ``(Z, Y, X) = (S, A, R)``:
  ``array[0]`` is the most inferior axial slice, rows run posterior -> anterior and
  columns left -> right (patient's left to patient's right);
* ``spacing`` is ``(dz, dy, dx)`` in mm, ``z_positions`` the superior (RAS ``z``)
  world coordinate in mm of voxel ``(0, 0, k)`` of each slice (ascending), and
  ``affine`` the canonical voxel ``(x, y, z)`` -> RAS mm matrix; a header that gives
  its lengths in other units (NIfTI ``xyzt_units`` meter or micron, NRRD ``space units``
  m, cm, um) is converted to mm, a header without units is taken as mm.

DICOM series are read with pydicom. Slices are sorted by their ``ImagePositionPatient``
projected on the slice normal (the cross product of the two ``ImageOrientationPatient``
rows), never by file name or ``InstanceNumber``; ``RescaleSlope``/``RescaleIntercept``
(the modality LUT) are applied. A gap larger than 1.5 times the median slice spacing
raises :class:`~cbirlib.errors.MissingSliceError`; smaller spacing irregularities
(above 1 % of the median spacing, or 0.01 mm) only emit a ``UserWarning`` and the true
positions are kept in ``z_positions``. Only the files directly inside the folder are
read (no recursion); files that are not DICOM are skipped, and so are DICOM objects
that are no slices of a volume: objects that are not images (segmentations, RT dose
grids, structure sets, plans, reports: see ``cbirlib.io.dicom.NON_IMAGE_MODALITIES``)
and localizer (scout) images (``ImageType`` LOCALIZER), also when they share the
series they planned; reading only such objects raises
:class:`~cbirlib.errors.NotAnImageError` (a SEG's masks are read by
:func:`load_seg_masks`).

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

import logging
import numbers
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cbirlib._files import NIFTI_SUFFIXES, is_dicom_file, nifti_stem
from cbirlib.errors import MaskShapeError, SettingError, VolumeReadError
from cbirlib.io._canonical import TILT_WARN_DEGREES, _make_volume
from cbirlib.io._paths import NRRD_SUFFIXES, _check_exists, _unsupported, nrrd_stem
from cbirlib.io.dicom import (
    MAX_GAP_RATIO,
    ORIENTATION_TOL,
    SPACING_ABS_TOL,
    SPACING_REL_TOL,
    DicomSeries,
    _read_dicom_file,
    _read_dicom_series,
    dicom_series,
)
from cbirlib.io.nifti import (
    TOTALSEG_IMAGE_NAMES,
    _default_nifti_id,
    _read_nifti,
    _sidecar_modality,
    max_voxels,
    nifti_shape,
)
from cbirlib.io.nrrd import _read_nrrd
from cbirlib.io.seg import load_seg_masks
from cbirlib.modality import UNKNOWN, guess_modality, guess_modality_reason, normalize_modality
from cbirlib.provenance import Source
from cbirlib.volume import Volume

__all__ = [
    "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES",
    "TOTALSEG_IMAGE_NAMES",
    "guess_modality",
    "nifti_stem",
    "DicomSeries",
    "dicom_series",
    "load_mask",
    "load_seg_masks",
    "load_volume",
    "nifti_shape",
    "nrrd_stem",
]

# importable from here as before the split into modules (not in ``__all__``)
_REEXPORTED = (
    MAX_GAP_RATIO,
    ORIENTATION_TOL,
    SPACING_ABS_TOL,
    SPACING_REL_TOL,
    TILT_WARN_DEGREES,
    max_voxels,
)

logger = logging.getLogger(__name__)


def load_volume(
    path: str | os.PathLike[str],
    *,
    series_uid: str | int | None = None,
    id: str | None = None,
    modality: str | None = None,
    nan_fill: float | str | None = None,
) -> Volume:
    """Read a NIfTI, NRRD or DICOM image as a canonical :class:`Volume`.

    Parameters
    ----------
    path
        A ``.nii`` / ``.nii.gz`` file, a ``.nrrd`` / ``.nhdr`` file (``pip install
        cbirlib[nrrd]``), a folder whose files form one DICOM series, or an Enhanced
        (multi-frame) DICOM file or a folder holding one (``pip install
        cbirlib[highdicom]``).
    series_uid
        For a DICOM folder holding several series, the one to read: its
        ``SeriesInstanceUID``, or its number as listed in the error message and by
        :func:`dicom_series` (its ``SeriesNumber`` when the folder's series have
        distinct ones).
    id
        Volume id; defaults to the file name without ``.nii``/``.nii.gz`` (``.nrrd``,
        ``.nhdr``, or the last suffix of a DICOM file), or the folder name for DICOM;
        for a file named like a TotalSegmentator image (``ct.nii.gz``, ``mri.nii.gz``,
        see :data:`TOTALSEG_IMAGE_NAMES`) it is the name of the folder holding it
        (``s0011/ct.nii.gz`` is ``"s0011"``, as
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
    nan_fill
        What NaN and infinite voxels become: ``None`` (default) refuses the image
        (:class:`~cbirlib.errors.InvalidVolumeError`); ``"min"`` the smallest finite
        voxel (the background outside a resampled image's field of view, where SPM and
        resampling tools write NaN); a number, that value (``0`` for a signed
        statistical map, whose smallest voxel is its strongest negative value). A filled
        image logs a warning (logger ``cbirlib.io``) with the count.

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
        Unsupported file type, corrupt or truncated file, a folder without DICOM files,
        a single-frame DICOM file (pass its folder), an NRRD file not in patient space.
    DicomSeriesError
        Several series without ``series_uid``, an unknown ``series_uid``, mixed
        orientations or pixel shapes; :class:`MissingSliceError` for a gap; the frames
        of an Enhanced DICOM file that are not one regularly spaced volume.
    OptionalDependencyError
        An NRRD file without pynrrd, an Enhanced DICOM file without highdicom (the
        message names the extra to install).
    InvalidVolumeError
        Not a 3D image (2D, 4D), NaN or infinite voxels (without ``nan_fill``).

    SettingError
        ``modality`` is not a DICOM modality code, or ``nan_fill`` is neither None,
        ``"min"`` nor a finite number.

    Warns
    -----
    UserWarning
        A NIfTI file whose ``qform_code`` and ``sform_code`` are both 0: its orientation
        is unknown, and nibabel's default (LAS) is assumed. A gantry-tilted or oblique
        acquisition: the warning states the tilt and the true slice spacing (the
        distance between slice planes, which ``spacing[0]`` holds). An NRRD file
        without ``space directions``: its orientation is unknown (axes taken as R, A, S).

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
    fill = _check_nan_fill(nan_fill)
    _check_exists(p)
    given = None if modality is None else normalize_modality(modality)
    if p.is_dir():
        canon, tag, origin = _read_dicom_series(p, series_uid=series_uid)
        vid = id or p.resolve().name
        found = given if given not in (None, UNKNOWN) else (tag if tag != UNKNOWN else None)
        where = "the DICOM series has no Modality tag"
    elif (stem := nifti_stem(p)) is not None:
        canon = _read_nifti(p)
        origin = Source.from_file(p)
        vid = id or _default_nifti_id(p, stem)
        found = given if given not in (None, UNKNOWN) else _sidecar_modality(p, stem)
        where = "a NIfTI file does not record it"
    elif (stem := nrrd_stem(p)) is not None:
        canon = _read_nrrd(p)
        origin = Source.from_file(p)
        vid = id or stem
        found = given if given not in (None, UNKNOWN) else None
        where = "an NRRD file does not record it"
    elif is_dicom_file(p):
        canon, tag, origin = _read_dicom_file(p)
        vid = id or p.stem
        found = given if given not in (None, UNKNOWN) else (tag if tag != UNKNOWN else None)
        where = "the DICOM file has no Modality tag"
    else:
        raise _unsupported(p)
    if fill is not None and not canon.from_integers:
        _fill_non_finite(canon.array, fill, p)
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


def _check_nan_fill(value: float | str | None) -> float | str | None:
    if value is None or (isinstance(value, str) and value == "min"):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        number = float(value)
        if abs(number) <= float(np.finfo(np.float32).max):  # NaN fails this too
            return number
    raise SettingError(
        f"nan_fill must be None, 'min' or a number within float32's range, got {value!r}"
    )


def _fill_non_finite(array: npt.NDArray[np.float32], fill: float | str, path: Path) -> None:
    """Replace NaN and infinite voxels in place (by ``fill``, or the smallest finite one)."""
    bad = ~np.isfinite(array)
    n_bad = int(np.count_nonzero(bad))
    if not n_bad:
        return
    if fill == "min":
        finite = array[~bad]
        value = float(finite.min()) if finite.size else 0.0
    else:
        value = float(fill)
    array[bad] = value
    logger.warning(
        "%s: %d NaN or infinite voxel(s) (%.1f %% of the image) set to %g (nan_fill=%r)",
        path,
        n_bad,
        100.0 * n_bad / array.size,
        value,
        fill,
    )


def load_mask(path: str | os.PathLike[str], *, like: Volume | None = None) -> npt.NDArray[np.bool_]:
    """Read a NIfTI or NRRD segmentation mask as a boolean ``(Z, Y, X)`` array.

    The mask is canonicalised exactly like :func:`load_volume`, so it lines up with
    the image it was drawn on. Any non-zero voxel is True.

    Parameters
    ----------
    path
        A ``.nii`` / ``.nii.gz`` file, or a ``.nrrd`` / ``.nhdr`` label map (``pip install
        cbirlib[nrrd]``).
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
    if p.is_dir() or (nifti_stem(p) is None and nrrd_stem(p) is None):
        raise VolumeReadError(
            f"{p}: unsupported mask file; expected a NIfTI file ({', '.join(NIFTI_SUFFIXES)}) "
            f"or an NRRD file ({', '.join(NRRD_SUFFIXES)})"
        )
    canon = (
        _read_nifti(p, as_mask=True) if nifti_stem(p) is not None else _read_nrrd(p, as_mask=True)
    )
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
