"""NRRD files (``.nrrd``, detached ``.nhdr``) through pynrrd (the ``nrrd`` extra).

The header's ``space`` (LPS, RAS or LAS, as 3D Slicer and ITK write it), ``space
directions`` and ``space origin`` give the voxel -> patient mm affine; it is turned into
a RAS affine and the image goes through the same canonical layout as a NIfTI file
(:mod:`cbirlib.io._canonical`), so there is one orientation path for every format. A
file without ``space directions`` has no known orientation: its ``spacings`` are used,
its axes are assumed to run right, anterior, superior, and a ``UserWarning`` says so.
Only the geometry is read of the header (no key/value pair, which may hold anything).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cbirlib.errors import InvalidVolumeError, OptionalDependencyError, VolumeReadError
from cbirlib.io._canonical import MM_PER_UNIT, _Canonical, _canonical_zyx, _in_mm
from cbirlib.io.nifti import max_voxels

#: ``space`` values -> the signs that take their axes to RAS.
_SPACE_TO_RAS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}


def _pynrrd() -> Any:
    try:
        import nrrd
    except ImportError:
        raise OptionalDependencyError(
            "reading NRRD files (.nrrd, .nhdr) needs pynrrd: pip install cbirlib[nrrd]"
        ) from None
    return nrrd


def _nrrd_affine(header: dict[str, Any], *, source: str = "NRRD") -> npt.NDArray[np.float64]:
    """The voxel -> RAS mm affine of an NRRD header's spatial axes.

    Parameters
    ----------
    header
        A header as :func:`nrrd.read_header` returns it: ``space`` (LPS, RAS or LAS,
        long or short names, optionally ``-time``), ``space directions`` (one row per
        axis, NaN rows for non-spatial axes) and ``space origin``.
    source
        What to name in errors and warnings (the file).

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` matrix taking voxel ``(i, j, k)`` of the spatial axes, in file order,
        to RAS mm.

    Raises
    ------
    VolumeReadError
        A ``space`` that is not patient space (``scanner-xyz``, ``3D-right-handed``...),
        or not 3 spatial axes.

    Warns
    -----
    UserWarning
        No ``space directions``: the orientation is unknown (axes assumed R, A, S).

    Examples
    --------
    >>> import numpy as np
    >>> header = {"space": "left-posterior-superior",
    ...           "space directions": np.diag([0.5, 0.5, 2.0]),
    ...           "space origin": np.array([10.0, 20.0, -30.0])}
    >>> _nrrd_affine(header).tolist()
    [[-0.5, 0.0, 0.0, -10.0], [0.0, -0.5, 0.0, -20.0], [0.0, 0.0, 2.0, -30.0], [0.0, 0.0, 0.0, 1.0]]
    """
    dirs = header.get("space directions")
    if dirs is None:
        spacings = np.asarray(header.get("spacings", [1.0, 1.0, 1.0]), dtype=np.float64)[:3]
        unusable = ~np.isfinite(spacings) | (spacings == 0)
        if unusable.any():
            warnings.warn(
                f"{source}: 'spacings' {spacings.tolist()} has no usable spacing on axes "
                f"{np.flatnonzero(unusable).tolist()}; 1 mm is assumed there",
                UserWarning,
                stacklevel=4,
            )
        spacings = np.where(unusable, 1.0, spacings)  # a negative one: the axis runs back
        warnings.warn(
            f"{source}: no 'space directions', so the orientation is unknown; the axes are "
            "assumed to run right, anterior, superior with the 'spacings' given",
            UserWarning,
            stacklevel=4,
        )
        return np.diag([*(spacings * _units_mm(header, "units", source, axes=3)).tolist(), 1.0])
    space = str(header.get("space", "")).lower().removesuffix("-time")
    if space not in _SPACE_TO_RAS:
        raise VolumeReadError(
            f"{source}: NRRD space {header.get('space')!r} is not a patient space; expected "
            "left-posterior-superior, right-anterior-superior or left-anterior-superior"
        )
    rows = np.asarray(dirs, dtype=np.float64)
    spatial = rows[np.isfinite(rows).all(axis=1)] if rows.ndim == 2 else rows
    if spatial.shape != (3, 3):
        raise VolumeReadError(
            f"{source}: NRRD 'space directions' must give 3 spatial axes of 3 numbers, "
            f"got {rows.tolist()}"
        )
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if origin.shape != (3,):
        raise VolumeReadError(
            f"{source}: NRRD 'space origin' must give 3 numbers, got {origin.tolist()}"
        )
    if not np.isfinite(origin).all():  # pynrrd reads an absent origin "(nan,nan,nan)" too
        warnings.warn(
            f"{source}: NRRD 'space origin' {origin.tolist()} is not finite on axes "
            f"{np.flatnonzero(~np.isfinite(origin)).tolist()}; 0 mm is assumed there "
            "(slice positions along such an axis are relative to the first slice)",
            UserWarning,
            stacklevel=4,
        )
        origin = np.where(np.isfinite(origin), origin, 0.0)
    affine = np.eye(4)
    affine[:3, :3] = spatial.T  # column a: the step of spatial axis a
    affine[:3, 3] = origin
    return _in_mm(
        np.diag([*_SPACE_TO_RAS[space], 1.0]) @ affine, _units_mm(header, "space units", source)
    )


def _units_mm(header: dict[str, Any], field: str, source: str, axes: int | None = None) -> float:
    """Millimetres per unit of the header's ``field`` (``space units``, or the per-axis
    ``units`` of a file without ``space directions``, of its first ``axes`` axes); none
    given: mm.

    Raises
    ------
    VolumeReadError
        The spatial axes have different units.
    """
    units = [str(u).strip() for u in np.atleast_1d(header.get(field, []))][:axes]
    units = [u for u in units if u]
    if not units:
        return 1.0
    if len(set(units)) > 1:
        raise VolumeReadError(f"{source}: NRRD {field!r} differ between axes: {units}")
    unit = units[0]
    if unit.lower() in MM_PER_UNIT:
        return MM_PER_UNIT[unit.lower()]
    if unit in MM_PER_UNIT:
        return MM_PER_UNIT[unit]
    warnings.warn(
        f"{source}: unknown NRRD {field!r} {unit!r}; lengths are taken as mm",
        UserWarning,
        stacklevel=5,
    )
    return 1.0


def _spatial_data(data: npt.NDArray[Any], header: dict[str, Any], path: Path) -> npt.NDArray[Any]:
    """The data of the 3 spatial axes: a non-spatial axis of length 1 is dropped."""
    dirs = header.get("space directions")
    if dirs is None or data.ndim == 3:
        return data
    rows = np.asarray(dirs, dtype=np.float64)
    extra = [a for a in range(data.ndim) if not np.isfinite(rows[a]).all()]
    if any(data.shape[a] != 1 for a in extra):
        raise InvalidVolumeError(
            f"{path}: expected a 3D image, got {data.ndim}D data of shape {data.shape} "
            "(only a non-spatial axis of length 1 is accepted)"
        )
    return np.squeeze(data, axis=tuple(extra))


def _read_nrrd(path: Path, *, as_mask: bool = False) -> _Canonical:
    """Read an NRRD file (an image, or a mask: ``as_mask``) into the canonical layout."""
    nrrd = _pynrrd()
    try:
        header = nrrd.read_header(str(path))
    except Exception as exc:  # NRRDError, OSError, UnicodeDecodeError of a damaged header
        raise VolumeReadError(
            f"{path}: cannot read as NRRD ({type(exc).__name__}: {exc})"
        ) from None
    sizes = [int(n) for n in np.atleast_1d(header.get("sizes", []))]
    n_voxels = int(np.prod(sizes, dtype=np.float64)) if sizes else 0
    if n_voxels > max_voxels():
        raise InvalidVolumeError(
            f"{path}: the header declares {n_voxels} voxels (sizes {sizes}), more than the "
            f"limit {max_voxels()} (set CBIRLIB_MAX_VOXELS to raise it)"
        )
    affine = _nrrd_affine(header, source=str(path))
    try:
        data, _ = nrrd.read(str(path))
    except Exception as exc:  # truncated data, missing detached data file, bad encoding
        raise VolumeReadError(
            f"{path}: cannot read the NRRD data ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt"
        ) from None
    data = _spatial_data(np.asarray(data), header, path)
    if data.dtype.kind not in "biuf":
        raise InvalidVolumeError(f"{path}: {data.dtype} voxels are not a scalar image")
    if as_mask and data.dtype.kind != "f":
        data = (data != 0).astype(np.uint8)  # NaN (floats) stays for the canonical warning
    else:
        data = data.astype(np.float32, copy=False)
    img = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
    return _canonical_zyx(img, str(path), as_mask=as_mask)
