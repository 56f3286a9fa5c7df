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
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from cbirlib.errors import InvalidVolumeError, MaskShapeError, SettingError
from cbirlib.labels import SliceLabels
from cbirlib.modality import UNKNOWN, normalize_modality
from cbirlib.provenance import Source


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scan resampled to canonical (RAS+) orientation.

    Parameters
    ----------
    id
        Identifier of the volume (a subject or series name; never a patient identifier).
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
        if not np.isfinite(array).all():
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

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(Z, Y, X)``."""
        z, y, x = self.array.shape
        return (int(z), int(y), int(x))

    def slab(self, start: int, stop: int, *, id: str | None = None) -> Volume:
        """The sub-volume of slices ``start:stop`` (labels and positions follow)."""
        if not 0 <= start < stop <= self.n_slices:
            raise InvalidVolumeError(
                f"volume {self.id!r}: slab [{start}, {stop}) outside 0..{self.n_slices}"
            )
        return replace(
            self,
            id=id if id is not None else self.id,
            array=self.array[start:stop],
            z_positions=self.z_positions[start:stop],
            labels=self.labels.slab(start, stop) if self.labels is not None else None,
        )

    def with_labels(self, labels: SliceLabels | None) -> Volume:
        """A copy of this volume with other labels."""
        return replace(self, labels=labels)

    def __repr__(self) -> str:
        z, y, x = self.shape
        sp = "x".join(f"{s:g}" for s in self.spacing)
        return f"Volume({self.id!r}, shape=({z}, {y}, {x}), spacing={sp} mm, {self.modality})"
