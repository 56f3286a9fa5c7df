"""The readers' voxel decoding: bit for bit nibabel's float32 data, by the fast route too.

``cbirlib.io`` casts the stored voxels to float32 in one pass, straight into the
volume's array, when nibabel would not scale them and float32 holds them exactly;
every other case goes through ``get_fdata(dtype=float32)``. Both must give nibabel's
own values (the reference below), for every stored type, scaling and orientation.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from cbirlib.io import load_volume
from cbirlib.io._canonical import images_allocated_by
from cbirlib.queries import RegionVolume
from cbirlib.volume import RegionOrigin

NIFTI_DIR = Path(nib.__file__).parent / "tests" / "data"
STORED = ["uint8", "int8", "int16", "uint16", "int32", "float32", "float64"]
AFFINES = {
    "RAS": np.diag([0.8, 0.7, 2.5, 1.0]),
    "LPI": np.diag([-0.8, -0.7, -2.5, 1.0]),  # flipped on every axis by the reader
}


def nibabel_zyx(path: Path) -> npt.NDArray[np.float32]:
    """The reference: nibabel's canonical float32 data, in the ``(Z, Y, X)`` layout."""
    img = nib.as_closest_canonical(nib.load(path))
    return np.ascontiguousarray(img.get_fdata(dtype=np.float32).transpose(2, 1, 0))


def write(path: Path, stored: str, affine: npt.NDArray[np.float64], scaled: bool) -> Path:
    rng = np.random.default_rng(7)
    info = np.iinfo(stored) if np.dtype(stored).kind in "iu" else None
    if info is None:
        data = rng.normal(0, 300, (9, 8, 6)).astype(stored)
    else:  # the whole range, so that scaling and rounding are exercised
        data = rng.integers(info.min, info.max, (9, 8, 6), endpoint=True).astype(stored)
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(stored)
    if scaled:
        img.header.set_slope_inter(0.37, -1024.5)
    nib.save(img, path)
    return path


@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "scaled"])
@pytest.mark.parametrize("orientation", list(AFFINES))
@pytest.mark.parametrize("stored", STORED)
def test_voxels_are_nibabels_float32_for_every_stored_type(
    tmp_path: Path, stored: str, orientation: str, scaled: bool
) -> None:
    path = write(tmp_path / "v.nii.gz", stored, AFFINES[orientation], scaled)
    proxy = nib.load(path).dataobj
    want_scaling = (0.37, -1024.5) if scaled else (1.0, 0.0)
    assert (proxy.slope, proxy.inter) == pytest.approx(want_scaling)
    got = load_volume(path, modality="CT").array
    want = nibabel_zyx(path)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"])
def test_nibabels_shipped_scans_decode_to_nibabels_values(name: str) -> None:
    path = NIFTI_DIR / name
    assert load_volume(path, modality="MR").array.tobytes() == nibabel_zyx(path).tobytes()


@pytest.mark.parametrize("scaled", [False, True], ids=["decoded into it", "copied into it"])
def test_an_allocator_receives_the_image_voxels(tmp_path: Path, scaled: bool) -> None:
    path = write(tmp_path / "v.nii.gz", "int16", AFFINES["LPI"], scaled)
    given: list[npt.NDArray[np.float32]] = []

    def allocate(shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
        given.append(np.full(shape, np.nan, np.float32))
        return given[-1]

    with images_allocated_by(allocate):
        volume = load_volume(path, modality="CT")
    assert len(given) == 1 and volume.array is given[0]
    assert volume.array.tobytes() == nibabel_zyx(path).tobytes()
    assert load_volume(path, modality="CT").array is not given[0]  # outside: numpy's


def test_masks_are_not_given_to_the_allocator(tmp_path: Path) -> None:
    from cbirlib.io import load_mask

    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), np.eye(4)), path)
    with images_allocated_by(lambda shape: pytest.fail("a mask went to the allocator")):
        assert load_mask(path).all()


def region_of(path: str) -> RegionVolume:
    volume = load_volume(path, modality="CT")
    cut = volume.slab(2, 6)
    return RegionVolume(
        "r", cut.array, spacing=cut.spacing, z_positions=cut.z_positions,
        modality="CT", origin=RegionOrigin(volume.id, "liver", first_slice=2),
    )  # fmt: skip


def second_of(first: str, second: str) -> object:
    load_volume(first, modality="CT")  # decoded first: into the worker's block
    return load_volume(second, modality="CT")


def test_loaders_that_cut_or_read_several_images_get_their_own_voxels(tmp_path: Path) -> None:
    import os
    from functools import partial

    from cbirlib.ingest import read_volumes

    small = str(write(tmp_path / "small.nii.gz", "int16", AFFINES["RAS"], False))
    big = tmp_path / "big.nii.gz"
    voxels = np.arange(40 * 30 * 20, dtype=np.int16).reshape(40, 30, 20)
    nib.save(nib.Nifti1Image(voxels, AFFINES["RAS"]), big)
    blocks = {p for p in os.listdir("/dev/shm") if p.startswith("cbirlib-")}
    loaders = [
        partial(region_of, small),  # a slab: a view into the block, copied into it
        partial(second_of, small, str(big)),  # a bigger second image than the first
        partial(second_of, str(big), small),
    ]
    got = list(read_volumes(loaders, workers=1, ahead=1))
    want = [loader() for loader in loaders]
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w)  # a RegionVolume stays one
        assert g.array.tobytes() == w.array.tobytes() and g.id == w.id and g.origin == w.origin
        assert g.z_positions.tobytes() == w.z_positions.tobytes()
    del got
    assert {p for p in os.listdir("/dev/shm") if p.startswith("cbirlib-")} == blocks


@pytest.mark.parametrize("orientation", list(AFFINES))
@pytest.mark.parametrize("stored", ["int16", "float32"])
def test_voxels_of_a_decompressed_file_are_used_in_place_yet_the_array_is_the_volumes(
    tmp_path: Path, stored: str, orientation: str
) -> None:
    from cbirlib.io._canonical import _over_bytes_in_memory
    from cbirlib.io.nifti import _load_gzipped_nifti

    path = write(tmp_path / "v.nii.gz", stored, AFFINES[orientation], False)
    img = _load_gzipped_nifti(path)
    in_place = _over_bytes_in_memory(img)
    assert isinstance(in_place.dataobj, np.ndarray)  # a view of the bytes: no copy
    inflated = np.frombuffer(img.dataobj.file_like.getvalue(), np.uint8)
    assert np.shares_memory(in_place.dataobj, inflated)
    assert np.array_equal(in_place.affine, img.affine)
    scaled = _load_gzipped_nifti(write(tmp_path / "s.nii.gz", stored, AFFINES[orientation], True))
    assert _over_bytes_in_memory(scaled) is scaled  # nibabel scales these: its own read

    volume = load_volume(path, modality="CT")
    volume.array[0, 0, 0] = 12345.0  # the volume's own, writable array
    assert load_volume(path, modality="CT").array[0, 0, 0] != 12345.0


def test_an_image_refused_after_decoding_leaves_no_shared_block(tmp_path: Path) -> None:
    import os

    from cbirlib.errors import InvalidVolumeError
    from cbirlib.ingest import read_volumes

    voxels = np.zeros((8, 8, 4), np.float32)
    voxels[2, 3, 1] = np.nan  # decoded into the worker's block, then refused by Volume
    nib.save(nib.Nifti1Image(voxels, AFFINES["RAS"]), tmp_path / "nan.nii.gz")
    blocks = {p for p in os.listdir("/dev/shm") if p.startswith("cbirlib-")}
    with pytest.raises(InvalidVolumeError, match="NaN"):
        list(read_volumes([tmp_path / "nan.nii.gz"], workers=1))
    assert {p for p in os.listdir("/dev/shm") if p.startswith("cbirlib-")} == blocks
