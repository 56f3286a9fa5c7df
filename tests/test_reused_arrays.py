"""Volume arrays on reused memory (threaded read-ahead): reused only once nothing holds them."""

from __future__ import annotations

import gc
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cbirlib._reused_arrays import ReusedArrays
from cbirlib.ingest import read_ahead
from cbirlib.io import load_volume
from cbirlib.io._canonical import images_allocated_by

SHAPE = (6, 32, 48)


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def test_memory_of_a_dropped_array_is_reused() -> None:
    arrays = ReusedArrays(keep=2)
    first = arrays.allocate(SHAPE)
    where = _address(first)
    del first
    gc.collect()
    again = arrays.allocate(SHAPE)
    assert _address(again) == where
    assert again.shape == SHAPE and again.dtype == np.float32 and again.flags.c_contiguous
    assert again.flags.writeable


@pytest.mark.parametrize(
    "hold",
    [
        lambda a: a[2:4],  # a slice
        lambda a: a.reshape(-1),  # a reshape
        lambda a: a.transpose(2, 1, 0)[::2],  # a view of a view
        lambda a: torch.from_numpy(a),  # a tensor on the same memory
        lambda a: memoryview(a),  # a buffer export
        lambda a: np.frombuffer(a[1], np.float32),  # an array over its buffer
    ],
    ids=["slice", "reshape", "view-of-view", "torch", "memoryview", "frombuffer"],
)
def test_a_held_view_is_never_overwritten(hold: object) -> None:
    arrays = ReusedArrays(keep=4)
    first = arrays.allocate(SHAPE)
    first[...] = 1.0
    held = hold(first)  # type: ignore[operator]
    del first
    gc.collect()
    for _ in range(3):
        other = arrays.allocate(SHAPE)
        other[...] = 2.0
        del other
        gc.collect()
    assert (np.asarray(held) == 1.0).all()


def test_a_free_map_fits_smaller_arrays_down_to_half_its_size() -> None:
    arrays = ReusedArrays(keep=2)
    big = arrays.allocate((10, 32, 32))
    where = _address(big)
    del big
    gc.collect()
    tiny = arrays.allocate((2, 32, 32))  # a fifth: a new map, the big one kept free
    assert _address(tiny) != where
    half = arrays.allocate((5, 32, 32))
    assert _address(half) == where


def test_at_most_keep_free_maps_are_kept() -> None:
    arrays = ReusedArrays(keep=1)
    held = [arrays.allocate((k + 1, 16, 16)) for k in range(4)]
    del held
    gc.collect()
    arrays.allocate((1, 1, 1))  # returned maps are sorted in here
    assert len(arrays._free) <= 1


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1]) if affine is None else affine), path)
    return path


def test_read_ahead_on_threads_gives_the_readers_volumes_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(8):  # sizes that do and do not fit each other's freed maps
        data = rng.integers(-1024, 1500, (40, 36 + 4 * (k % 3), 5 + k), dtype=np.int16)
        paths.append(_write(tmp_path / f"v{k}.nii.gz", data))
    loaders = [partial(load_volume, p, modality="CT") for p in paths]
    held = list(read_ahead(loaders, workers=2))  # every volume kept while others are read
    expected = [load_volume(p, modality="CT") for p in paths]
    for got, want in zip(held, expected, strict=True):
        assert got.id == want.id
        assert np.array_equal(got.array, want.array)
        assert got.z_positions.tolist() == want.z_positions.tolist()
    # dropped one by one, as extract_many does: each still equals its file
    streamed = read_ahead(loaders, workers=2)
    for volume, want in zip(streamed, expected, strict=True):
        assert np.array_equal(volume.array, want.array)
    assert len({_address(v.array) for v in held}) == len(held)  # none shared memory


def test_only_new_keeps_nibabels_own_float32_array(tmp_path: Path) -> None:
    asked: list[tuple[int, int, int]] = []

    def allocate(shape: tuple[int, int, int]) -> np.ndarray:
        asked.append(shape)
        return np.empty(shape, np.float32)

    scaled = nib.Nifti1Image(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    scaled.header.set_slope_inter(0.5, 1.0)  # nibabel's get_fdata makes a new array
    _write(tmp_path / "f.nii.gz", np.ones((4, 5, 6), np.float32))
    nib.save(scaled, tmp_path / "s.nii")
    with images_allocated_by(allocate, only_new=True):
        load_volume(tmp_path / "s.nii", modality="CT")
    assert asked == []  # nibabel's float32 array kept as it is
    with images_allocated_by(allocate, only_new=True):
        load_volume(tmp_path / "f.nii.gz", modality="CT")  # streamed: a new array
    assert asked == [(6, 5, 4)]
    asked.clear()
    with images_allocated_by(allocate):  # without only_new every image goes there
        load_volume(tmp_path / "s.nii", modality="CT")
    assert asked == [(4, 3, 2)]
