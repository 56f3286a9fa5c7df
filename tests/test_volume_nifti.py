"""Volume.to_nibabel / Volume.save: a round trip through load_volume keeps everything."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cbirlib.errors import SettingError
from cbirlib.io import load_volume
from cbirlib.volume import Volume


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(linear: np.ndarray, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


ORIENTATIONS = {
    "RAS": _affine(np.diag([0.8, 0.9, 2.5])),
    "LPI": _affine(np.diag([-0.8, -0.9, -2.5])),
    # sagittal acquisition: voxel axes (i, j, k) run along (A, S, L)
    "sagittal ASL": _affine(np.array([[0, 0, -1.5], [0.7, 0, 0], [0, 0.6, 0]])),
    "coronal LIP": _affine(np.array([[-0.7, 0, 0], [0, 0, -3.0], [0, -0.6, 0]])),
    "oblique": _affine(_rotation(0, 12.0) @ np.diag([0.8, 0.9, 2.5])),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_save_then_load_gives_the_same_volume(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(0, 300, (7, 6, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, ORIENTATIONS[name]), tmp_path / "in.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the oblique one warns on reading
        first = load_volume(tmp_path / "in.nii.gz", modality="CT")
        path = first.save(tmp_path / "out.nii.gz")
        again = load_volume(path)
    np.testing.assert_array_equal(again.array, first.array)
    assert again.spacing == pytest.approx(first.spacing)
    np.testing.assert_allclose(again.z_positions, first.z_positions, atol=1e-6)
    assert first.affine is not None and again.affine is not None
    np.testing.assert_allclose(again.affine, first.affine, atol=1e-6)
    assert again.modality == "CT"  # from the JSON sidecar save() wrote
    assert json.loads((tmp_path / "out.json").read_text()) == {"Modality": "CT"}


def test_a_volume_without_affine_keeps_spacing_and_positions(tmp_path: Path) -> None:
    vol = Volume(
        "a",
        np.arange(60, dtype=np.float32).reshape(3, 4, 5),
        spacing=(2.5, 0.7, 0.9),
        z_positions=[-40.0, -37.5, -35.0],
    )
    back = load_volume(vol.save(tmp_path / "a.nii", sidecar=False), modality="MR")
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing == pytest.approx(vol.spacing)
    np.testing.assert_allclose(back.z_positions, vol.z_positions)
    assert not (tmp_path / "a.json").exists()


def test_a_slab_is_saved_where_it_lies(tmp_path: Path) -> None:
    nib.save(
        nib.Nifti1Image(np.arange(120, dtype=np.float32).reshape(4, 5, 6), ORIENTATIONS["LPI"]),
        tmp_path / "in.nii",
    )
    slab = load_volume(tmp_path / "in.nii", modality="CT").slab(2, 5)
    back = load_volume(slab.save(tmp_path / "slab.nii"))
    np.testing.assert_array_equal(back.array, slab.array)
    np.testing.assert_allclose(back.z_positions, slab.z_positions)


def test_uneven_slices_warn_and_a_bad_name_is_refused(tmp_path: Path) -> None:
    vol = Volume("u", np.zeros((3, 2, 2), np.float32), z_positions=[0.0, 1.0, 5.0])
    with pytest.warns(UserWarning, match="not evenly spaced"):
        vol.to_nibabel()
    with pytest.raises(SettingError, match=r"\.nii"):
        vol.save(tmp_path / "u.npy")


def test_channel_first_adapter_matches_the_world_coordinates() -> None:
    """The docs' MONAI/TorchIO adapter: (Z, Y, X) -> (C, X, Y, Z) with the NIfTI affine."""
    rng = np.random.default_rng(1)
    vol = Volume(
        "v", rng.normal(size=(4, 3, 2)), spacing=(2.0, 1.0, 0.5), z_positions=[5, 7, 9, 11]
    )
    cxyz = vol.array.transpose(2, 1, 0)[None]
    affine = vol.nifti_affine()
    assert cxyz.shape == (1, 2, 3, 4)
    z, y, x = 3, 1, 0
    assert cxyz[0, x, y, z] == vol.array[z, y, x]
    world = affine @ np.array([x, y, z, 1.0])
    assert world[2] == pytest.approx(vol.z_positions[z])
    back = Volume("v", cxyz[0].transpose(2, 1, 0), spacing=vol.spacing, z_positions=vol.z_positions)
    np.testing.assert_array_equal(back.array, vol.array)
