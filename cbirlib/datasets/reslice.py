"""Copies of a volume at another slice thickness, to test how retrieval copes with it.

A data set rarely has one slice thickness; :func:`reslice_z` makes thin and thick copies
of the same subject (say of :func:`~cbirlib.datasets.make_phantoms` volumes), so a
benchmark can ask whether a ranking rule favours thin scans (see the count-vote
``normalize=`` option and ``benchmarks/fair_votes_spans.py``).

Examples
--------
>>> import numpy as np
>>> from cbirlib.volume import Volume
>>> vol = Volume("v", np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2)),
...              spacing=(2.0, 1.0, 1.0))
>>> thin = reslice_z(vol, 1.0, id="v-thin")
>>> thin.id, thin.n_slices, thin.spacing, thin.array[:3, 0, 0].tolist()
('v-thin', 9, (1.0, 1.0, 1.0), [0.0, 0.5, 1.0])
"""

from __future__ import annotations

import math

import numpy as np

from cbirlib.errors import InvalidVolumeError
from cbirlib.labels import SliceLabels
from cbirlib.volume import Volume

__all__ = ["reslice_z"]


def reslice_z(volume: Volume, dz: float, *, id: str | None = None) -> Volume:
    """``volume`` re-sliced to slice spacing ``dz`` mm along z, over the same z range.

    The image is interpolated linearly at ``z0, z0 + dz, ...`` (up to the last original
    slice); each new slice takes the labels of the nearest original slice. An affine, if
    the volume has one, keeps its origin and direction, with the slice axis scaled to
    ``dz``. The copy has no :attr:`~cbirlib.volume.Volume.source`: no file holds it.

    Parameters
    ----------
    volume
        A volume of at least two slices.
    dz
        The new slice spacing in mm (positive, finite).
    id
        The copy's id (default: the volume's).

    Returns
    -------
    Volume
        The re-sliced copy (float32, ``modality`` kept).

    Raises
    ------
    InvalidVolumeError
        ``dz`` is not a positive number, or ``volume`` has fewer than two slices.
    """
    if not (math.isfinite(dz) and dz > 0):
        raise InvalidVolumeError(f"volume {volume.id!r}: dz must be a positive number, got {dz}")
    if volume.n_slices < 2:
        raise InvalidVolumeError(
            f"volume {volume.id!r}: re-slicing needs at least 2 slices, got {volume.n_slices}"
        )
    z = volume.z_positions
    new_z = z[0] + np.arange(int(np.floor((z[-1] - z[0]) / dz + 1e-9)) + 1) * dz
    hi = np.clip(np.searchsorted(z, new_z, side="right"), 1, len(z) - 1)
    lo = hi - 1
    w = np.clip((new_z - z[lo]) / (z[hi] - z[lo]), 0.0, 1.0).astype(np.float32)[:, None, None]
    array = volume.array[lo] * (1 - w) + volume.array[hi] * w
    labels = None
    if volume.labels is not None:
        nearest = np.where(w[:, 0, 0] < 0.5, lo, hi)
        labels = SliceLabels(volume.labels.names, volume.labels.present[nearest])
    affine = None
    if volume.affine is not None:
        affine = np.array(volume.affine, dtype=np.float64)
        affine[:3, 2] *= dz / volume.spacing[0]
    return Volume(
        id if id is not None else volume.id,
        array,
        spacing=(dz, volume.spacing[1], volume.spacing[2]),
        z_positions=new_z,
        labels=labels,
        modality=volume.modality,
        affine=affine,
    )
