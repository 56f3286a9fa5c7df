"""NIfTI files: images, masks and header-only shapes (nibabel).

``.nii`` and ``.nii.gz`` files are read with nibabel and brought to the canonical layout
of :mod:`cbirlib.io`. A ``.nii.gz`` is inflated by :mod:`cbirlib._gzip` (isal when
installed): as a stream whose voxels are cast into the volume's array a few slices at a
time where that is nibabel's result bit for bit (:mod:`cbirlib.io._gzipped`), else in
one call and decoded by nibabel. The modality of an image comes from the ``"Modality"`` of a
dcm2niix/BIDS JSON sidecar when one lies beside it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cbirlib._files import NIFTI_SUFFIXES, TOTALSEG_IMAGE_FILES, nifti_stem
from cbirlib._gzip import gzip_backend
from cbirlib.errors import (
    InvalidVolumeError,
    SettingError,
    VolumeReadError,
)
from cbirlib.io._canonical import (
    _Canonical,
    _canonical_zyx,
    _check_affine,
    _streamed_canonical,
    _trailing_ones,
)
from cbirlib.io._gzipped import GzippedNifti, _nifti_class
from cbirlib.io._paths import _check_exists, _unsupported
from cbirlib.modality import UNKNOWN, normalize_modality

__all__ = [
    "NIFTI_SUFFIXES",
    "TOTALSEG_IMAGE_NAMES",
    "max_voxels",
    "nifti_shape",
    "nifti_stem",
]

#: The readers' one logger (``cbirlib.io``), named in the docs.
logger = logging.getLogger("cbirlib.io")


def _named_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _gzipped(path: Path) -> bool:
    """Whether the file is gzip-compressed, by its first bytes (its name when unreadable).

    A ``.nii`` that was gzipped without being renamed, or a ``.nii.gz`` that was never
    compressed, is read as what it is, not refused as corrupt.
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except OSError:
        return _named_gz(path)
    return magic == b"\x1f\x8b" if len(magic) == 2 else _named_gz(path)


def _warn_if_misnamed(path: Path) -> None:
    compressed = _gzipped(path)
    if compressed != _named_gz(path):
        logger.warning(
            "%s: %s; read as %s",
            path,
            "gzip-compressed, though not named .gz"
            if compressed
            else "named .gz, but not gzip-compressed",
            "a .nii.gz" if compressed else "a .nii",
        )


def _inflated_here(path: Path) -> bool:
    """A gzipped NIfTI that :mod:`cbirlib._gzip` inflates (not nibabel: ``CBIRLIB_GZIP``).

    A gzipped file not named ``.gz`` is inflated here whatever the backend (nibabel goes
    by the name).
    """
    return _gzipped(path) and (gzip_backend() != "nibabel" or not _named_gz(path))


@contextmanager
def _nifti_errors(path: Path) -> Iterator[None]:
    """Errors of opening or inflating a NIfTI file as a VolumeReadError."""
    try:
        yield
    except Exception as exc:
        raise VolumeReadError(
            f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt"
        ) from None


def _load_nifti_image(path: Path) -> Any:
    """The image nibabel reads (``.nii``, or ``.nii.gz`` when nibabel inflates it)."""
    with _nifti_errors(path):
        if _named_gz(path) and not _gzipped(path):  # nibabel would inflate it by its name
            data = path.read_bytes()
            return _nifti_class(data).from_bytes(data)
        return nib.load(path)


def _header_image(path: Path) -> Any:
    """The image of a NIfTI file for its header: a ``.nii.gz`` is inflated that far only."""
    if not _inflated_here(path):
        return _load_nifti_image(path)
    with _nifti_errors(path), GzippedNifti(path) as gz:
        return gz.image


def _read_nifti(path: Path, *, as_mask: bool = False) -> _Canonical:
    _warn_if_misnamed(path)
    gz = None
    if _inflated_here(path):
        with _nifti_errors(path):
            gz = GzippedNifti(path)  # the header, and the stream of the voxels
    with gz or nullcontext():
        img = _load_nifti_image(path) if gz is None else gz.image
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise VolumeReadError(f"{path}: not a NIfTI image (read as {type(img).__name__})")
        _check_nifti_data(img, path)
        if not as_mask:
            _warn_unknown_orientation(img, path)
        if gz is not None:
            canon = None if as_mask else _streamed_canonical(gz, str(path))
            if canon is not None:
                return canon
            with _nifti_errors(path):
                img = gz.whole_image()
    return _canonical_zyx(img, str(path), as_mask=as_mask)


def max_voxels() -> int:
    """Most voxels one image may hold: ``CBIRLIB_MAX_VOXELS`` or 2**31 (8 GiB as float32)."""
    value = os.environ.get("CBIRLIB_MAX_VOXELS", "")
    return int(value) if value.strip().isdigit() else 1 << 31


def _check_dimensions(shape: tuple[int, ...], path: Path) -> None:
    """Refuse negative dimensions (a corrupt header) and an empty image."""
    if any(int(n) < 0 for n in shape):
        raise VolumeReadError(
            f"{path}: the header declares negative dimensions {shape}; the file is corrupt"
        )
    if 0 in shape[:3]:
        raise InvalidVolumeError(f"{path}: the header declares an empty image, shape {shape}")


def _check_nifti_data(img: Any, path: Path) -> None:
    """Refuse complex data, and a header whose data cannot be in the file, before reading."""
    dtype = img.get_data_dtype()
    if dtype.kind == "c" or dtype.names:
        raise InvalidVolumeError(
            f"{path}: {dtype} voxels (complex or compound data) are not a scalar image; "
            "save the magnitude (or the wanted component) as a real-valued image"
        )
    _check_dimensions(tuple(img.shape), path)
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
    return size * _DEFLATE_MAX_RATIO if _gzipped(path) else size


def _warn_unknown_orientation(img: Any, path: Path) -> None:
    """Warn when neither the qform nor the sform says how the voxels lie in space.

    Or when both say it and disagree on the axes' directions (a left-right flip, axes
    swapped): the sform is used, as nibabel's ``img.affine`` does.
    """
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
        return
    if 0 in codes:
        return
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # a damaged form is refused when it is used
        try:
            q, s = (nib.aff2axcodes(f) for f in (header.get_qform(), header.get_sform()))  # type: ignore[no-untyped-call]
        except Exception:
            return
    if q != s:
        warnings.warn(
            f"{path}: the sform ({''.join(s)}) and the qform ({''.join(q)}) disagree on the "
            "orientation; the sform is used, as nibabel does, but tools that read the qform "
            "see the image flipped or rotated: check left-right and fix the header",
            UserWarning,
            stacklevel=4,
        )


#: File names of TotalSegmentator images: their volume id is their folder's name.
TOTALSEG_IMAGE_NAMES: tuple[str, ...] = tuple(TOTALSEG_IMAGE_FILES)


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


def nifti_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Shape ``(Z, Y, X)`` that :func:`load_volume` would give, read from the header only.

    Cheap: no voxel data are read (a ``.nii.gz`` is inflated as far as its header), so a
    file damaged after its header is found when the volume itself is read (or here,
    when the damage lies in what was inflated to reach the header).

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
    img = _header_image(p)
    shape = tuple(int(n) for n in img.shape)
    _check_dimensions(shape, p)
    if _trailing_ones(shape):
        shape = shape[:3]
    if len(shape) != 3:
        raise InvalidVolumeError(
            f"{p}: expected a 3D image, got {len(shape)}D data of shape {tuple(img.shape)}"
        )
    _check_affine(img.affine, str(p))
    ornt = nib.io_orientation(img.affine)  # type: ignore[no-untyped-call]
    ras = [0, 0, 0]
    for axis, (out_axis, _flip) in enumerate(ornt):
        ras[int(out_axis)] = shape[axis]
    return (ras[2], ras[1], ras[0])
