"""The :class:`Volume`: one 3D scan as a stack of axial slices in canonical orientation.

Examples
--------
>>> import numpy as np
>>> from cbirlib.volume import Volume
>>> v = Volume("s0001", np.zeros((3, 4, 4), np.float32), spacing=(2.0, 1.0, 1.0))
>>> v.n_slices, v.z_positions.tolist()
(3, [0.0, 2.0, 4.0])
>>> v.slab(1, 3).z_positions.tolist()
[2.0, 4.0]

A region query (:func:`cbirlib.region_query`) is a volume whose :attr:`Volume.origin`
says where it was cut from:

>>> from cbirlib.volume import RegionOrigin
>>> r = Volume("s0001:liver", np.zeros((2, 4, 4), np.float32),
...            origin=RegionOrigin("s0001", "liver", first_slice=5))
>>> r.origin.source_slices(r.n_slices).tolist()
[5, 6]
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._files import nifti_stem
from cbirlib.errors import InvalidVolumeError, MaskShapeError, SettingError
from cbirlib.labels import SliceLabels
from cbirlib.modality import UNKNOWN, normalize_modality
from cbirlib.preprocess import PERCENTILE_WINDOW, window_bounds
from cbirlib.provenance import Source

__all__ = ["RegionOrigin", "Volume"]

#: Voxels checked at a time for NaN and infinity (1 MiB of float32).
_FINITE_CHUNK = 2**18


def _all_finite(array: npt.NDArray[np.float32]) -> bool:
    """No NaN or infinite voxel, checked a few slices at a time.

    ``np.isfinite(array).all()`` makes a boolean array as large as the volume (a
    quarter of its float32 size); slices checked into one small buffer, while they are
    in the CPU cache, need no such memory and are faster (5.8 vs 8.6 ms at 512x512x140).
    """
    if array.ndim != 3 or array.size <= _FINITE_CHUNK:
        return bool(np.isfinite(array).all())
    per_slice = array.shape[1] * array.shape[2]
    k = max(1, _FINITE_CHUNK // max(per_slice, 1))
    buffer = np.empty(k * per_slice, bool)
    for z in range(0, array.shape[0], k):
        part = array[z : z + k]
        if not np.isfinite(part, out=buffer[: part.size].reshape(part.shape)).all():
            return False
    return True


#: The array a reader has just made from integer voxels (finite by construction).
_FINITE_BY_CONSTRUCTION: ContextVar[object | None] = ContextVar(
    "cbirlib_finite_by_construction", default=None
)


@contextmanager
def _finite_by_construction(array: npt.NDArray[np.float32]) -> Iterator[None]:
    """Within the block, a :class:`Volume` of exactly ``array`` skips the NaN/inf check.

    For readers only: ``array`` is the float32 cast of stored integers, which has no
    NaN or infinity, so checking its voxels again would only cost time (1.5-2 ms per
    256x256x140 volume, 6 ms at 512x512).
    """
    token = _FINITE_BY_CONSTRUCTION.set(array)
    try:
        yield
    finally:
        _FINITE_BY_CONSTRUCTION.reset(token)


def _window_pair(value: object) -> tuple[float, float] | None:
    """``(low, high)`` as two floats, or None when it is not two finite numbers, low < high."""
    try:
        low, high = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return (low, high) if np.isfinite([low, high]).all() and low < high else None


@dataclass(frozen=True)
class RegionOrigin:
    """Where a region query was cut from: one source volume's slab around one structure.

    Set by :func:`cbirlib.region_query` as :attr:`Volume.origin`; evaluation reads the
    structure (a region query is evaluated for that structure only) and the source (a
    query whose source is a database volume is refused; ``SliceSearch(...,
    exclude_source=True)`` leaves the source out of the hits).

    Parameters
    ----------
    source_id
        Id of the volume the slab was cut from.
    structure
        The structure (or coarse region) the region query was made for.
    first_slice
        Index, in the source volume, of the slab's first slice.
    window_percentiles
        The source volume's ``"percentile"`` window bounds ``(low, high)``
        (:meth:`Volume.percentile_bounds`), for a volume windowed by percentiles (MR,
        PET...: any modality but CT): the slab is windowed as its whole source was when
        indexed, not by the slab's own intensities. ``None``: the slab's own. Not part
        of the origin's identity (two origins of the same slab compare equal).

    Raises
    ------
    InvalidVolumeError
        An empty ``source_id`` or ``structure``, a negative ``first_slice``, or
        ``window_percentiles`` that are not two finite numbers, low below high.

    Examples
    --------
    >>> o = RegionOrigin("s1", "liver", first_slice=3)
    >>> o.shifted(2).first_slice, o.source_slices(2).tolist()
    (5, [3, 4])
    """

    source_id: str
    structure: str
    first_slice: int = 0
    window_percentiles: tuple[float, float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("source_id", "structure"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidVolumeError(
                    f"RegionOrigin({name}=...) needs a non-empty string, got {value!r}"
                )
        first = self.first_slice
        if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
            raise InvalidVolumeError(
                f"RegionOrigin(first_slice=...) needs an integer >= 0, got {first!r}"
            )
        if self.window_percentiles is not None:
            bounds = _window_pair(self.window_percentiles)
            if bounds is None:
                raise InvalidVolumeError(
                    "RegionOrigin(window_percentiles=...) needs (low, high), two finite "
                    f"numbers with low < high, got {self.window_percentiles!r}"
                )
            object.__setattr__(self, "window_percentiles", bounds)
        object.__setattr__(self, "first_slice", int(first))

    def source_slices(self, n_slices: int) -> npt.NDArray[np.int64]:
        """Indices, in the source volume, of a slab of ``n_slices`` slices cut from it."""
        return np.arange(self.first_slice, self.first_slice + n_slices, dtype=np.int64)

    def shifted(self, start: int) -> RegionOrigin:
        """The origin of the sub-slab that starts ``start`` slices further into the source."""
        return replace(self, first_slice=self.first_slice + start)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scan reoriented (not resampled) to canonical (RAS+) orientation.

    Parameters
    ----------
    id
        Identifier of the volume (a subject or series name). It is stored in indexes,
        results and logs; readers default it to the file or folder name, so choose
        pseudonymous names (or pass ``id=`` to :func:`~cbirlib.load_volume`) when the
        names identify a patient.
    array
        Voxel values of shape ``(Z, Y, X)``, float32; Hounsfield units for CT.
        ``array[z]`` is an axial slice; ``z`` runs from inferior to superior.
    spacing
        Voxel size in mm as ``(dz, dy, dx)``.
    z_positions
        Position of each slice along the superior axis in mm, finite and strictly
        increasing; defaults to ``arange(Z) * dz``.
    labels
        Optional per-slice structure labels (ground truth for evaluation only).
    modality
        ``"CT"``, ``"MR"`` (any DICOM modality code, case-insensitive; ``"MRI"`` is
        ``"MR"``) or ``"unknown"`` (the default). It decides the window: CT volumes get
        an HU window, others a percentile window, and an ``"unknown"`` one is windowed
        as :func:`cbirlib.modality.guess_modality` says from its intensities. The
        readers (:func:`cbirlib.load_volume`) always set it.
    affine
        Optional 4x4 voxel-to-world (RAS, mm) matrix of the array indexed ``(x, y, z)``.
    source
        Where the volume was read from (:class:`cbirlib.provenance.Source`: a path, a
        subject id, a DICOM series; never patient data). The readers set it; indexes
        record it, so results can be opened again.
    origin
        For a region query, the volume and slices it was cut from and the structure it
        was made for (:class:`RegionOrigin`, set by :func:`cbirlib.region_query`);
        ``None`` for a whole volume. :meth:`slab` keeps it pointing into the source.

    Raises
    ------
    InvalidVolumeError
        Not a finite real 3D array, bad spacing, z positions that are not finite
        and strictly increasing, or an invalid modality.
    MaskShapeError
        Labels that do not cover the slices.
    """

    id: str
    array: npt.NDArray[np.float32]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    z_positions: npt.NDArray[np.float64] = field(default=None)  # type: ignore[arg-type]
    labels: SliceLabels | None = None
    modality: str = UNKNOWN
    affine: npt.NDArray[np.float64] | None = None
    source: Source | None = None
    origin: RegionOrigin | None = None

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InvalidVolumeError(
                f"volume {self.id!r}: expected a 3D array (Z, Y, X), got shape {array.shape}"
            )
        if min(array.shape) < 1:
            raise InvalidVolumeError(f"volume {self.id!r}: empty array of shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise InvalidVolumeError(f"volume {self.id!r}: non-real voxel type {array.dtype}")
        array = array.astype(np.float32, copy=False)
        checked = array is _FINITE_BY_CONSTRUCTION.get()
        if not checked and not _all_finite(array):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise InvalidVolumeError(f"volume {self.id!r}: {bad} voxels are NaN or infinite")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InvalidVolumeError(
                f"volume {self.id!r}: spacing must be 3 positive numbers, got {self.spacing}"
            )
        if self.z_positions is None:
            z = np.arange(array.shape[0], dtype=np.float64) * spacing[0]
        else:
            z = np.asarray(self.z_positions, dtype=np.float64)
            if z.shape != (array.shape[0],):
                raise InvalidVolumeError(
                    f"volume {self.id!r}: {z.shape[0] if z.ndim else 0} z positions "
                    f"for {array.shape[0]} slices"
                )
            if not np.isfinite(z).all():
                raise InvalidVolumeError(
                    f"volume {self.id!r}: z positions must be finite, got "
                    f"{int(np.count_nonzero(~np.isfinite(z)))} NaN or infinite values"
                )
            steps = np.diff(z)
            if (steps <= 0).any():
                bad = int(np.flatnonzero(steps <= 0)[0])
                raise InvalidVolumeError(
                    f"volume {self.id!r}: z positions must increase strictly (slices run "
                    f"inferior -> superior), but slice {bad + 1} is at {z[bad + 1]:g} mm "
                    f"after {z[bad]:g} mm; reverse the slice order or fix the positions"
                )
        if self.origin is not None and not isinstance(self.origin, RegionOrigin):
            raise InvalidVolumeError(
                f"volume {self.id!r}: origin must be a RegionOrigin or None, "
                f"got {type(self.origin).__name__}"
            )
        if self.labels is not None and len(self.labels) != array.shape[0]:
            raise MaskShapeError(
                f"volume {self.id!r}: labels cover {len(self.labels)} slices, "
                f"the image has {array.shape[0]}"
            )
        try:
            modality = normalize_modality(self.modality)
        except SettingError as exc:
            raise InvalidVolumeError(f"volume {self.id!r}: {exc}") from None
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "modality", modality)
        object.__setattr__(self, "z_positions", z)

    @property
    def n_slices(self) -> int:
        """Number of axial slices."""
        return int(self.array.shape[0])

    def percentile_bounds(self) -> tuple[float, float]:
        """The bounds of the ``"percentile"`` window for this volume (any modality but CT).

        Its own 0.5th/99.5th intensity percentiles
        (:func:`cbirlib.preprocess.window_bounds`); for a slab cut by
        :func:`cbirlib.region_query`, its source volume's
        (:attr:`RegionOrigin.window_percentiles`).

        Examples
        --------
        >>> import numpy as np
        >>> v = Volume("mr", np.arange(1000, dtype=np.float32).reshape(10, 10, 10))
        >>> v.percentile_bounds()
        (4.995, 994.005)
        >>> part = v.slab(0, 2)
        >>> part.percentile_bounds()
        (0.995, 198.005)
        >>> o = RegionOrigin("mr", "liver", 0, window_percentiles=v.percentile_bounds())
        >>> replace(part, origin=o).percentile_bounds()
        (4.995, 994.005)
        """
        fixed = None if self.origin is None else self.origin.window_percentiles
        if fixed is not None:
            return fixed
        return window_bounds(self.array, PERCENTILE_WINDOW)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(Z, Y, X)``."""
        z, y, x = self.array.shape
        return (int(z), int(y), int(x))

    def slab(self, start: int, stop: int, *, id: str | None = None) -> Volume:
        """The sub-volume of slices ``start:stop`` (labels, positions and origin follow).

        A region query's :attr:`origin` still points into its source volume
        (``first_slice`` moves by ``start``).
        """
        if not 0 <= start < stop <= self.n_slices:
            raise InvalidVolumeError(
                f"volume {self.id!r}: slab [{start}, {stop}) outside 0..{self.n_slices}"
            )
        return replace(self, id=id if id is not None else self.id, **self._slab_fields(start, stop))

    def _slab_fields(self, start: int, stop: int) -> dict[str, Any]:
        """The per-slice fields of the slab ``start:stop`` (subclasses add their own)."""
        affine = self.affine
        if affine is not None and start:
            affine = np.array(affine, dtype=np.float64)
            affine[:3, 3] += affine[:3, 2] * start  # voxel (0, 0, 0) is now slice `start`
        return {
            "array": self.array[start:stop],
            "z_positions": self.z_positions[start:stop],
            "labels": self.labels.slab(start, stop) if self.labels is not None else None,
            "affine": affine,
            "origin": self.origin.shifted(start) if self.origin is not None else None,
        }

    # -- NIfTI -------------------------------------------------------------------------

    def nifti_affine(self) -> npt.NDArray[np.float64]:
        """The 4x4 voxel ``(x, y, z)`` -> RAS mm matrix that :meth:`to_nibabel` writes.

        :attr:`affine` when set; else ``diag(dx, dy, dz)`` with the first slice at
        ``z_positions[0]``.
        """
        if self.affine is not None:
            return np.array(self.affine, dtype=np.float64)
        dz, dy, dx = self.spacing
        affine = np.diag([dx, dy, dz, 1.0])
        affine[2, 3] = float(self.z_positions[0])
        return affine

    def to_nibabel(self) -> Any:
        """The volume as a ``nibabel.Nifti1Image`` (float32 data indexed ``(x, y, z)``).

        The data is the canonical (RAS+) array transposed to NIfTI's ``(x, y, z)`` order,
        with :meth:`nifti_affine` as both qform and sform (code 1, scanner), so that
        :func:`cbirlib.load_volume` gives back the same array, spacing, z positions and
        affine. Labels, the id and the source are not part of the image; see
        :meth:`save` for the modality.

        Warns
        -----
        UserWarning
            Unevenly spaced z positions (from some DICOM series), which a NIfTI affine
            cannot hold: the file has evenly spaced slices.
        """
        import nibabel as nib

        affine = self.nifti_affine()
        expected = affine[2, 2] * np.arange(self.n_slices) + affine[2, 3]
        if not np.allclose(expected, self.z_positions, rtol=0.0, atol=1e-3):
            warnings.warn(
                f"volume {self.id!r}: its z positions are not evenly spaced; NIfTI stores "
                f"evenly spaced slices, so the file's z positions differ (by up to "
                f"{float(np.abs(expected - self.z_positions).max()):.3g} mm)",
                UserWarning,
                stacklevel=2,
            )
        data = np.ascontiguousarray(self.array.transpose(2, 1, 0))
        img = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
        img.set_qform(affine, code=1)  # type: ignore[no-untyped-call]
        img.set_sform(affine, code=1)  # type: ignore[no-untyped-call]
        return img

    def save(self, path: str | os.PathLike[str], *, sidecar: bool = True) -> Path:
        """Write the volume as a NIfTI file (``.nii`` or ``.nii.gz``), see :meth:`to_nibabel`.

        Parameters
        ----------
        path
            The file to write; its name must end in ``.nii`` or ``.nii.gz``.
        sidecar
            Also write the modality (when known) to a BIDS-style JSON sidecar
            ``<name>.json`` beside it (``{"Modality": "CT"}``, nothing else), which
            :func:`cbirlib.load_volume` reads back.

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        SettingError
            A file name without a NIfTI suffix.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> from cbirlib.io import load_volume
        >>> v = Volume("a", np.arange(24, dtype=np.float32).reshape(2, 3, 4), modality="MR")
        >>> path = v.save(pathlib.Path(tempfile.mkdtemp()) / "a.nii.gz")
        >>> back = load_volume(path)
        >>> bool((back.array == v.array).all()), back.spacing, back.modality
        (True, (1.0, 1.0, 1.0), 'MR')
        """
        import nibabel as nib

        target = Path(path)
        stem = nifti_stem(target)
        if stem is None:
            raise SettingError(f"{str(target)!r}: a volume is saved as .nii or .nii.gz")
        nib.save(self.to_nibabel(), target)
        if sidecar and self.modality != UNKNOWN:
            side = target.with_name(stem + ".json")
            side.write_text(json.dumps({"Modality": self.modality}) + "\n", encoding="utf-8")
        return target

    def with_labels(self, labels: SliceLabels | None) -> Volume:
        """A copy of this volume with other labels."""
        return replace(self, labels=labels)

    def __repr__(self) -> str:
        z, y, x = self.shape
        sp = "x".join(f"{s:g}" for s in self.spacing)
        return f"Volume({self.id!r}, shape=({z}, {y}, {x}), spacing={sp} mm, {self.modality})"
