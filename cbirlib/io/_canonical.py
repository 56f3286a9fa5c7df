"""The canonical layout every reader produces: RAS+, an array indexed ``(Z, Y, X)``.

The one place where the layout convention lives (see :mod:`cbirlib.io`): every reader
builds a nibabel image (its data and its voxel -> RAS mm affine) and hands it to
:func:`_canonical_zyx`, so images and masks of every format share one layout and one
orientation path.
"""

from __future__ import annotations

import io
import logging
import mmap
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cbirlib.errors import CbirError, InvalidVolumeError, VolumeReadError
from cbirlib.io._gzipped import GzippedNifti
from cbirlib.provenance import Source
from cbirlib.volume import Volume, _finite_by_construction

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class _Canonical:
    """Image data in the Volume layout, with its geometry."""

    array: npt.NDArray[Any]  # (Z, Y, X) = (S, A, R)
    affine: npt.NDArray[np.float64]  # canonical voxel (x, y, z) -> RAS mm
    spacing: tuple[float, float, float]  # (dz, dy, dx)
    z_positions: npt.NDArray[np.float64]
    from_integers: bool = False  # cast from stored integers: no NaN or infinity


_Allocate = Callable[[tuple[int, int, int]], npt.NDArray[np.float32]]

#: Allocates an image's float32 ``(Z, Y, X)`` array, given its shape, and whether only
#: where a new array would be made anyway (``only_new``); None: numpy.
_ALLOCATE: ContextVar[tuple[_Allocate, bool] | None] = ContextVar(
    "cbirlib_image_allocator", default=None
)

#: Voxel types that float32 holds exactly: their conversion is the same by every route.
_EXACT_IN_FLOAT32 = frozenset(
    np.dtype(t) for t in ("bool", "int8", "uint8", "int16", "uint16", "float32")
)


@contextmanager
def images_allocated_by(allocate: _Allocate, *, only_new: bool = False) -> Iterator[None]:
    """Within the block, readers write each image's voxels into ``allocate(shape)``.

    ``allocate`` returns a C-contiguous float32 array of the shape ``(Z, Y, X)`` asked
    for; the volume's array is that array (:mod:`cbirlib.ingest`'s workers use it to
    decode straight into shared memory). With ``only_new``, an image whose float32 array
    nibabel made in that layout keeps it (no copy; :mod:`cbirlib._reused_arrays`).
    Masks are not affected.
    """
    token = _ALLOCATE.set((allocate, only_new))
    try:
        yield
    finally:
        _ALLOCATE.reset(token)


#: Millimetres in one unit of length, by the names NRRD headers use (``space units``,
#: ``units``; NIfTI's ``xyzt_units`` codes are ``_MM_PER_SPACE_CODE``); a header without
#: units is in mm, as both formats' writers (and every reader) assume.
MM_PER_UNIT = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "metre": 1000.0,
    "um": 0.001,
    "\N{MICRO SIGN}m": 0.001,
    "\N{GREEK SMALL LETTER MU}m": 0.001,
    "micron": 0.001,
}


_SPACE_UNIT_BITS = 0x07  # the space part of NIfTI's xyzt_units (time is in bits 3-5)
_MM_PER_SPACE_CODE = {1: 1000.0, 2: 1.0, 3: 0.001}  # meter, mm, micron


def _mm_per_unit(img: Any) -> float:
    """Millimetres per unit of a NIfTI image's affine (its header's ``xyzt_units``)."""
    header = getattr(img, "header", None)
    try:
        code = int(header["xyzt_units"]) & _SPACE_UNIT_BITS  # type: ignore[index]
    except (KeyError, ValueError, TypeError, IndexError):  # no xyzt_units (not NIfTI)
        return 1.0
    return _MM_PER_SPACE_CODE.get(code, 1.0)  # 0 "unknown" and undefined codes: mm


def _in_mm(affine: npt.NDArray[np.float64], mm_per_unit: float) -> npt.NDArray[np.float64]:
    """The affine with its lengths (steps and origin) in mm."""
    if mm_per_unit == 1.0:
        return affine
    scaled = np.array(affine, dtype=np.float64)
    scaled[:3, :] *= mm_per_unit
    return scaled


def _trailing_ones(shape: tuple[int, ...]) -> bool:
    """A 4D or 5D... shape whose dimensions beyond the third are all 1: a 3D image."""
    return len(shape) > 3 and all(int(n) == 1 for n in shape[3:])


def _unscaled_exact(proxy: Any) -> bool:
    """nibabel would not scale the proxy's voxels and float32 holds them exactly."""
    unscaled = getattr(proxy, "slope", 1.0) == 1 and getattr(proxy, "inter", 0.0) == 0
    return unscaled and np.dtype(proxy.dtype).newbyteorder("=") in _EXACT_IN_FLOAT32


def _over_bytes_in_memory(img: Any) -> Any:
    """The image over a view of its voxels when the whole file is in memory already.

    A ``.nii.gz`` inflated whole (:meth:`cbirlib.io._gzipped.GzippedNifti.whole_image`) is a
    ``BytesIO`` over the inflated bytes; nibabel would copy its voxels out of it. With
    unscaled voxels of a type float32 holds exactly, the image is rebuilt over a
    read-only view of those bytes (``getvalue`` hands them over without a copy; its
    affine unchanged; the header is only used for the layout here), so the one pass is
    the float32 cast into the volume's array.
    """
    proxy = img.dataobj
    if type(proxy) is not nib.arrayproxy.ArrayProxy or not isinstance(proxy.file_like, io.BytesIO):
        return img
    if not _unscaled_exact(proxy):
        return img
    data = proxy.file_like.getvalue()
    dtype = np.dtype(proxy.dtype)
    if len(data) < proxy.offset + int(np.prod(proxy.shape)) * dtype.itemsize:
        return img  # truncated: nibabel's read reports it
    view = np.ndarray(proxy.shape, dtype, buffer=data, offset=proxy.offset, order=proxy.order)
    return type(img)(view, img.affine, img.header)


def _stored_or_float32(img: Any, source: str) -> npt.NDArray[Any]:
    """The image's voxels ``(X, Y, Z)``, in a type whose float32 cast is nibabel's.

    The stored values when nibabel would not scale them (identity slope and intercept,
    or an image built from an array) and float32 holds them exactly (8 and 16 bit
    integers, float32): casting them is bit for bit ``get_fdata(dtype=float32)``, one
    pass fewer. Otherwise ``get_fdata(dtype=float32)`` itself.
    """
    proxy = img.dataobj
    known = isinstance(proxy, np.ndarray) or type(proxy) is nib.arrayproxy.ArrayProxy
    if known and _unscaled_exact(proxy):
        return np.asanyarray(proxy)
    try:
        with np.errstate(over="raise"):  # a value past float32's range would become inf
            data: npt.NDArray[np.float32] = img.get_fdata(dtype=np.float32)
    except FloatingPointError:
        raise InvalidVolumeError(
            f"{source}: voxel values beyond float32's range (|value| > "
            f"{np.finfo(np.float32).max:.3g}); cbirlib holds voxels as float32: rescale "
            "the image before reading it"
        ) from None
    return data


def _as_zyx(data: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Image voxels ``(X, Y, Z)`` as a C-contiguous float32 ``(Z, Y, X)`` array.

    Written in one pass into the array of the active allocator
    (:func:`images_allocated_by`) or a new one.
    """
    zyx = data.transpose(2, 1, 0)
    active = _ALLOCATE.get()
    kept = active is None or active[1]  # nibabel's own array may be the volume's
    fits = zyx.dtype == np.float32 and zyx.flags.c_contiguous and zyx.flags.writeable
    if kept and fits and not _file_backed(zyx):
        return zyx  # no copy: nibabel's array is in this layout
    out = _new_float32(zyx.shape)
    np.copyto(out, zyx, casting="unsafe")
    return out


def _file_backed(array: npt.NDArray[Any]) -> bool:
    """A view of a memory-mapped file (nibabel maps an uncompressed ``.nii``).

    Such an array changes when the file is overwritten (and faults when it is cut
    short), so a volume never keeps one.
    """
    base: object = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def _new_float32(shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """An image's ``(Z, Y, X)`` array, from the active allocator or numpy."""
    active = _ALLOCATE.get()
    if active is None:
        return np.empty(shape, np.float32)
    return active[0]((int(shape[0]), int(shape[1]), int(shape[2])))


@contextmanager
def _reading(source: str) -> Iterator[None]:
    """nibabel, zlib, gzip and numpy errors of a damaged file as a VolumeReadError."""
    try:
        yield
    except CbirError:
        raise
    except Exception as exc:
        raise VolumeReadError(
            f"{source}: cannot read the image data ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt"
        ) from None


def _canonical_zyx(img: Any, source: str, *, as_mask: bool = False) -> _Canonical:
    """Reorient a nibabel image to RAS+ and return its data as ``(Z, Y, X)``.

    The one place where the layout convention lives: images and masks both go here.
    """
    _check_affine(img.affine, source)
    with _reading(source):
        img = _over_bytes_in_memory(img)
        if _trailing_ones(img.shape):
            img = nib.funcs.squeeze_image(img)  # type: ignore[no-untyped-call]
    if img.ndim != 3:
        why = (
            "a single slice is read when saved as (x, y, 1), its position in the affine"
            if img.ndim < 3
            else "only images whose dimensions beyond the third are all 1 are accepted"
        )
        raise InvalidVolumeError(
            f"{source}: expected a 3D image, got {img.ndim}D data of shape "
            f"{tuple(img.shape)} ({why})"
        )
    mm_per_unit = _mm_per_unit(img)
    with _reading(source):
        img = nib.as_closest_canonical(img)  # type: ignore[no-untyped-call]
        data = _mask_data(img, source) if as_mask else _stored_or_float32(img, source)
    array = np.ascontiguousarray(data.transpose(2, 1, 0)) if as_mask else _as_zyx(data)
    affine = _in_mm(img.affine, mm_per_unit)
    return _placed(array, affine, source, as_mask=as_mask, from_integers=_integers(img.dataobj))


def _check_affine(affine: npt.NDArray[np.float64], source: str) -> None:
    """Refuse an affine that places no voxel: not finite, or an axis with no direction.

    Raises
    ------
    VolumeReadError
        Naming the header, not the voxels (nibabel's own error would be an SVD failure
        or an orientation error, read as a damaged file).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise VolumeReadError(
            f"{source}: unusable affine (voxel to mm): it holds NaN or infinite values "
            f"{affine[:3].tolist()}; the header's orientation (NIfTI sform/qform, NRRD "
            "space directions) is damaged"
        )
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            ornt = nib.io_orientation(affine)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise VolumeReadError(
                f"{source}: unusable affine ({type(exc).__name__}: {exc})"
            ) from None
    if np.isnan(ornt).any():
        raise VolumeReadError(
            f"{source}: unusable affine (an axis with no direction in space: "
            f"{affine[:3].tolist()}); the header's orientation is damaged"
        )


def _streamed_canonical(gz: GzippedNifti, source: str) -> _Canonical | None:
    """The image of a ``.nii.gz``, its voxels cast into place as they are inflated.

    For the files where that is nibabel's result bit for bit, and the slices stay
    slices: unscaled voxels of a type float32 holds exactly, a plain 3D (or 4D with a
    trailing 1) image whose canonical layout only flips axes (axial storage in any
    orientation: RAS, LPS, LPI...). ``None`` for other files (nothing read beyond the
    header): nibabel decodes them as :func:`_canonical_zyx` does.
    """
    img = gz.image
    shape = tuple(int(n) for n in img.shape)
    _check_affine(img.affine, source)
    if _trailing_ones(shape):
        shape = shape[:3]
    if len(shape) != 3 or not gz.voxels_fit() or not _unscaled_exact(img.dataobj):
        return None
    with _reading(source):
        ornt = nib.io_orientation(img.affine)  # type: ignore[no-untyped-call]
    if not np.array_equal(ornt[:, 0], [0, 1, 2]):
        return None  # axes swapped (sagittal or coronal storage): nibabel reorders
    affine = img.affine
    if (ornt[:, 1] < 0).any():  # as nib.as_closest_canonical computes it
        affine = affine.dot(nib.orientations.inv_ornt_aff(ornt, shape))  # type: ignore[no-untyped-call]
    flip_x, flip_y, flip_z = (int(f) for f in ornt[:, 1])
    with _reading(source):  # a header's shape may not fit in memory (MemoryError)
        array = _new_float32((shape[2], shape[1], shape[0]))
        complete = gz.cast_voxels_into(array[::flip_z, ::flip_y, ::flip_x])
    if not complete:
        raise VolumeReadError(
            f"{source}: cannot read the image data (the file ends before its last voxel, "
            f"shape {tuple(img.shape)} of {img.dataobj.dtype}); the file may be truncated "
            "or corrupt"
        )
    affine = _in_mm(affine, _mm_per_unit(img))
    return _placed(array, affine, source, as_mask=False, from_integers=_integers(img.dataobj))


def _integers(proxy: Any) -> bool:
    """Unscaled stored integers (or booleans): their float32 values are all finite.

    Even 64-bit integers stay below float32's largest value (3.4e38).
    """
    unscaled = getattr(proxy, "slope", 1.0) == 1 and getattr(proxy, "inter", 0.0) == 0
    return unscaled and np.dtype(getattr(proxy, "dtype", "float64")).kind in "biu"


def _placed(
    array: npt.NDArray[Any],
    affine: npt.ArrayLike,
    source: str,
    *,
    as_mask: bool,
    from_integers: bool = False,
) -> _Canonical:
    """The ``(Z, Y, X)`` array with its geometry, from its canonical affine."""
    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # (dx, dy, dz)
    n_z = array.shape[0]
    z = affine[2, 2] * np.arange(n_z, dtype=np.float64) + affine[2, 3]
    dz = _slice_spacing(affine, source) if n_z > 1 and not as_mask else float(zooms[2])
    return _Canonical(
        array=array,
        affine=affine,
        spacing=(dz, float(zooms[1]), float(zooms[0])),
        z_positions=z,
        from_integers=from_integers,
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
    row = affine[:3, 0]  # rows run along x (left to right) in an axial slice
    rotated = np.degrees(np.arccos(min(1.0, abs(float(row[0])) / float(np.linalg.norm(row)))))
    if max(shear, oblique, rotated) > TILT_WARN_DEGREES:
        kind = (
            "gantry tilt"
            if shear > TILT_WARN_DEGREES
            else "oblique slices"
            if oblique > TILT_WARN_DEGREES
            else "slices rotated in plane"
        )
        warnings.warn(
            f"{source}: {kind}: the slice planes are tilted {oblique:.1f} degrees from axial, "
            f"their rows {rotated:.1f} degrees from left-right, "
            f"and the slice step {shear:.1f} degrees from their normal; true slice spacing "
            f"{spacing:.3f} mm, z positions advance by {abs(step[2]):.3f} mm per slice",
            UserWarning,
            stacklevel=6,
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


logger = logging.getLogger("cbirlib.io")

#: In-plane spacing ratio of axial slices past which a volume is said to be stored in
#: another plane (a sagittal or coronal stack: its axial slices are strips).
ANISOTROPY_WARN_RATIO = 3.0


def _warn_if_not_axial(source: str, spacing: tuple[float, float, float]) -> None:
    """Log when the axial slices' pixels are far from square (resliced from thick
    sagittal or coronal slices): their embeddings compare poorly with axial scans'."""
    dy, dx = spacing[1], spacing[2]
    if max(dy, dx) > ANISOTROPY_WARN_RATIO * min(dy, dx):
        logger.warning(
            "%s: its axial slices have pixels of %.3g x %.3g mm (stored as sagittal or "
            "coronal slices?); slices are embedded axially, and such strips compare "
            "poorly with the slices of axial scans",
            source,
            dy,
            dx,
        )


def _make_volume(
    source: str, canon: _Canonical, *, id: str, modality: str, origin: Source | None = None
) -> Volume:
    """Build the Volume, making sure validation errors name the source file."""
    _warn_if_not_axial(source, canon.spacing)
    finite = _finite_by_construction(canon.array) if canon.from_integers else nullcontext()
    try:
        with finite:
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
        hint = ""
        if canon.array.dtype.kind == "f" and not np.isfinite(canon.array).all():
            hint = (
                "; to read it, set them to the background with load_volume(..., "
                "nan_fill='min') (--nan-fill min on the command line)"
            )
        raise type(exc)(f"{source}: {exc}{hint}") from None
