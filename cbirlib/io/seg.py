"""DICOM SEG masks through highdicom (the ``highdicom`` extra), on a volume's voxel grid.

A Segmentation object stores each segment's frames with their own positions (usually
only the frames where the segment is present). highdicom assembles them into a volume
(missing positions filled with empty frames); each segment then goes through the same
canonical layout as the images (:mod:`cbirlib.io._canonical`) and is placed on the
reference volume's grid, which it must share (the SEG was drawn on that series). The
masks can be used as custom structures: ``SliceLabels.from_masks(masks)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cbirlib.errors import DicomSeriesError, MaskShapeError, VolumeReadError
from cbirlib.io._canonical import _LPS_TO_RAS, _canonical_zyx
from cbirlib.io._paths import _check_exists
from cbirlib.io.enhanced import _highdicom
from cbirlib.volume import Volume

__all__ = ["load_seg_masks"]

#: Largest distance (in voxels) between a SEG voxel and the reference grid point it lands on.
GRID_TOL = 0.05


def load_seg_masks(
    path: str | os.PathLike[str], reference_volume: Volume
) -> dict[str, npt.NDArray[np.bool_]]:
    """Read the segments of a DICOM SEG file as boolean masks aligned to a volume.

    Parameters
    ----------
    path
        A DICOM Segmentation (SEG) file.
    reference_volume
        The volume the segmentation was drawn on (as :func:`~cbirlib.io.load_volume`
        read it): the masks get its shape ``(Z, Y, X)`` and layout.

    Returns
    -------
    dict
        Segment label (``SegmentLabel``; ``"<label> (<number>)"`` when two segments share
        a label) -> boolean mask of ``reference_volume.shape``, in segment-number order.
        Binary segments are True where set; fractional ones where at least 0.5.

    Raises
    ------
    OptionalDependencyError
        highdicom is not installed (``pip install cbirlib[highdicom]``).
    VolumeNotFoundError
        ``path`` does not exist.
    VolumeReadError
        Not a readable DICOM SEG file.
    DicomSeriesError
        The frames do not form one volume (several orientations or stacks).
    MaskShapeError
        The reference volume has no affine, or the segmentation does not lie on its
        voxel grid (another series, resampled, or reaching outside the volume).

    Notes
    -----
    The masks label the volume as custom structures (``tests/test_io_seg.py`` writes a
    SEG with highdicom and reads it back)::

        ct = load_volume("case-0001/ct/")
        masks = load_seg_masks("case-0001/seg.dcm", ct)
        ct = ct.with_labels(SliceLabels.from_masks(masks))
    """
    p = Path(path)
    _check_exists(p)
    if reference_volume.affine is None:
        raise MaskShapeError(
            f"{p}: volume {reference_volume.id!r} has no affine, so the SEG's positions "
            "cannot be placed on it; read it with cbirlib.io.load_volume"
        )
    hd = _highdicom("reading DICOM SEG masks")
    try:
        seg = hd.seg.segread(str(p))
    except Exception as exc:  # not DICOM, not a SEG, damaged
        raise VolumeReadError(
            f"{p}: cannot read as a DICOM SEG file ({type(exc).__name__}: {exc})"
        ) from None
    try:
        volume = seg.get_volume(combine_segments=False, allow_missing_positions=True)
    except Exception as exc:  # highdicom's RuntimeError/ValueError on unusable frames
        raise DicomSeriesError(
            f"{p}: the SEG frames do not form one volume ({type(exc).__name__}: {exc})"
        ) from None
    fractional = str(seg.get("SegmentationType", "")).upper() == "FRACTIONAL"
    numbers = [int(n) for n in seg.get_segment_numbers()]
    array = np.asarray(volume.array)
    if array.ndim == 3:  # a single segment may come without a channel axis
        array = array[..., None]
    affine = _LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    for channel, number in enumerate(numbers):
        present = array[..., channel] >= 0.5 if fractional else array[..., channel] != 0
        masks[_label(seg, number, masks)] = _on_grid(
            present.astype(np.uint8), affine, reference_volume, f"{p} segment {number}"
        )
    return masks


def _label(seg: Any, number: int, taken: dict[str, Any]) -> str:
    label = str(seg.get_segment_description(number).segment_label or f"segment {number}")
    return f"{label} ({number})" if label in taken else label


def _on_grid(
    data: npt.NDArray[np.uint8],
    affine: npt.NDArray[np.float64],
    reference: Volume,
    source: str,
) -> npt.NDArray[np.bool_]:
    """Place a mask (any voxel order, RAS ``affine``) on the reference volume's grid."""
    canon = _canonical_zyx(nib.Nifti1Image(data, affine), source, as_mask=True)  # type: ignore[no-untyped-call]
    assert reference.affine is not None
    to_ref = np.linalg.inv(reference.affine) @ canon.affine  # mask voxel -> reference voxel
    shape_xyz = canon.array.shape[::-1]
    linear = to_ref[:3, :3]
    used = [a for a in range(3) if shape_xyz[a] > 1]  # a lone slice's step is not known
    offset = np.round(to_ref[:3, 3])
    if not (
        np.allclose(linear[:, used], np.eye(3)[:, used], atol=GRID_TOL / max(shape_xyz))
        and np.allclose(to_ref[:3, 3], offset, atol=GRID_TOL)
    ):
        raise MaskShapeError(
            f"{source}: the segmentation does not lie on the voxel grid of volume "
            f"{reference.id!r} (it was drawn on another series, or resampled)"
        )
    out = np.zeros(reference.shape, dtype=bool)
    start = offset[::-1].astype(int)  # (z, y, x)
    src = canon.array
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.array(src.shape), np.array(reference.shape))
    inside = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    kept = src[inside] if (hi > lo).all() else src[:0, :0, :0]
    if int(kept.sum()) != int(src.sum()):
        raise MaskShapeError(
            f"{source}: {int(src.sum()) - int(kept.sum())} segmented voxel(s) lie outside "
            f"volume {reference.id!r} of shape {reference.shape}"
        )
    if kept.size:
        out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = kept
    return out
