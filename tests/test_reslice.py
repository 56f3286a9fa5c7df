"""Copies of a volume at another slice thickness (cbirlib.datasets.reslice_z)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbirlib.datasets import make_phantoms, reslice_z
from cbirlib.errors import InvalidVolumeError
from cbirlib.labels import SliceLabels
from cbirlib.volume import Volume


def _ramp(n: int = 5, dz: float = 2.0) -> Volume:
    # intensity = z in mm, so linear interpolation along z is exact
    z = 10.0 + dz * np.arange(n)
    array = np.broadcast_to(z[:, None, None], (n, 3, 3)).astype(np.float32)
    present = np.zeros((n, 2), dtype=bool)
    present[:2, 0] = True  # "a" on the first two slices
    present[3:, 1] = True  # "b" from the fourth on
    labels = SliceLabels(("a", "b"), present)
    return Volume("ramp", array, spacing=(dz, 0.5, 0.5), z_positions=z, labels=labels)


def test_thin_copy_interpolates_along_z_and_keeps_the_range() -> None:
    thin = reslice_z(_ramp(), 0.5, id="thin")
    assert thin.id == "thin" and thin.spacing == (0.5, 0.5, 0.5)
    np.testing.assert_allclose(thin.z_positions, 10.0 + 0.5 * np.arange(17))
    np.testing.assert_allclose(thin.array[:, 1, 1], thin.z_positions, rtol=1e-6)


def test_thick_copy_takes_every_other_slice_of_a_uniform_volume() -> None:
    vol = _ramp(n=7)
    thick = reslice_z(vol, 4.0)
    assert thick.id == "ramp"
    np.testing.assert_array_equal(thick.array, vol.array[::2])


def test_labels_come_from_the_nearest_slice() -> None:
    thin = reslice_z(_ramp(), 1.0)  # z 10, 11, ..., 18; originals at 10, 12, ..., 18
    assert thin.labels is not None
    # 11 mm is half-way: the upper slice (12, "a"); 13 -> 14 (neither); 15 -> 16 ("b")
    assert thin.labels.slices_with("a").tolist() == [0, 1, 2]
    assert thin.labels.slices_with("b").tolist() == [5, 6, 7, 8]


def test_affine_slice_axis_follows_the_new_thickness(tmp_path: Path) -> None:
    vol = make_phantoms(tmp_path, 1, shape=(32, 32)).load("s0000")
    assert vol.affine is not None
    thin = reslice_z(vol, vol.spacing[0] / 2)
    assert thin.affine is not None
    np.testing.assert_allclose(thin.affine[:3, 2], vol.affine[:3, 2] / 2)
    np.testing.assert_allclose(thin.affine[:3, 3], vol.affine[:3, 3])  # same first slice
    assert thin.source is None  # no file holds the copy


@pytest.mark.parametrize("dz", [0.0, -1.0, float("nan")])
def test_bad_thickness_is_a_named_error(dz: float) -> None:
    with pytest.raises(InvalidVolumeError, match="dz must be a positive number"):
        reslice_z(_ramp(), dz)


def test_one_slice_cannot_be_resliced() -> None:
    one = Volume("one", np.zeros((1, 2, 2), np.float32))
    with pytest.raises(InvalidVolumeError, match="at least 2 slices"):
        reslice_z(one, 1.0)
