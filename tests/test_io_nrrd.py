"""NRRD files through pynrrd: the same Volume as the equivalent NIfTI file."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from cbirlib.errors import (
    InvalidVolumeError,
    OptionalDependencyError,
    VolumeReadError,
)
from cbirlib.io import load_mask, load_volume
from cbirlib.volume import Volume

nrrd = pytest.importorskip("nrrd")

ORIGIN = np.array([12.0, -30.0, 41.5])
#: (space, space directions (one row per file axis), signs taking that space to RAS)
GEOMETRIES = {
    "lps-axial": ("left-posterior-superior", np.diag([0.7, 0.8, 2.5]), (-1, -1, 1)),
    "ras-flipped-a": ("right-anterior-superior", np.diag([0.7, -0.8, 2.5]), (1, 1, 1)),
    "lps-sagittal": (
        "left-posterior-superior",
        np.array([[0.0, 0.8, 0.0], [0.0, 0.0, -2.5], [0.7, 0.0, 0.0]]),
        (-1, -1, 1),
    ),
    "las-short-name": ("LAS", np.diag([0.7, 0.8, 2.5]), (-1, 1, 1)),
}


@pytest.fixture
def data() -> npt.NDArray[np.int16]:
    """File-order voxels (5 x 6 x 4: non-square slices), every value unique."""
    rng = np.random.default_rng(3)
    return (rng.permutation(5 * 6 * 4).reshape(5, 6, 4) * 3 - 200).astype(np.int16)


def _ras_affine(dirs: npt.NDArray[np.float64], signs: tuple[int, ...]) -> npt.NDArray[np.float64]:
    affine = np.eye(4)
    affine[:3, :3] = dirs.T
    affine[:3, 3] = ORIGIN
    return np.diag([*signs, 1]) @ affine


def _as_nifti(path: Path, data: npt.NDArray[np.int16], affine: npt.NDArray[np.float64]) -> Volume:
    nib.save(nib.Nifti1Image(data, affine), path)  # type: ignore[no-untyped-call]
    return load_volume(path, modality="CT")


def _assert_same(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-9)
    np.testing.assert_allclose(a.z_positions, b.z_positions, atol=1e-9)
    assert a.affine is not None and b.affine is not None
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_nrrd_matches_the_equivalent_nifti(
    tmp_path: Path, data: npt.NDArray[np.int16], name: str
) -> None:
    space, dirs, signs = GEOMETRIES[name]
    path = tmp_path / f"{name}.nrrd"
    header = {"space": space, "space directions": dirs, "space origin": ORIGIN}
    nrrd.write(str(path), data, header)
    vol = load_volume(path, modality="CT")
    assert vol.id == name and vol.modality == "CT"
    _assert_same(vol, _as_nifti(tmp_path / f"{name}.nii.gz", data, _ras_affine(dirs, signs)))


def test_lps_nrrd_in_cbirlib_layout(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    """Independently of NIfTI: LPS file axes (L, P, S) become (Z, Y, X) = (S, A, R)."""
    path = tmp_path / "ct.nrrd"
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.7, 0.8, 2.5]),
        "space origin": ORIGIN,
    }
    nrrd.write(str(path), data, header)
    vol = load_volume(path, modality="CT")
    expected = data[::-1, ::-1, :].transpose(2, 1, 0).astype(np.float32)
    np.testing.assert_array_equal(vol.array, expected)
    assert vol.shape == (4, 6, 5)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7))
    np.testing.assert_allclose(vol.z_positions, ORIGIN[2] + 2.5 * np.arange(4))
    # the world position of voxel (z, y, x) = (0, 0, 0): the file's last L and P voxel
    assert vol.affine is not None
    np.testing.assert_allclose(
        vol.affine[:3, 3], [-ORIGIN[0] - 4 * 0.7, -ORIGIN[1] - 5 * 0.8, 41.5]
    )


def test_detached_gzip_header(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    space, dirs, signs = GEOMETRIES["lps-sagittal"]
    path = tmp_path / "head.nhdr"
    header = {"space": space, "space directions": dirs, "space origin": ORIGIN, "encoding": "gzip"}
    nrrd.write(str(path), data, header, detached_header=True)
    assert path.read_bytes().startswith(b"NRRD")  # the data lie in a file beside it
    vol = load_volume(path, modality="CT")
    assert vol.id == "head"
    _assert_same(vol, _as_nifti(tmp_path / "head.nii", data, _ras_affine(dirs, signs)))


def test_trailing_axis_of_one_is_dropped(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    dirs = np.vstack([np.diag([0.7, 0.8, 2.5]), np.full(3, np.nan)])
    header = {"space": "LPS", "space directions": dirs, "space origin": ORIGIN}
    nrrd.write(str(tmp_path / "t.nrrd"), data[..., None], header)
    flat = tmp_path / "flat.nrrd"
    nrrd.write(str(flat), data, {**header, "space directions": dirs[:3]})
    _assert_same(load_volume(tmp_path / "t.nrrd", modality="CT"), load_volume(flat, modality="CT"))
    nrrd.write(str(tmp_path / "4d.nrrd"), np.stack([data, data], axis=-1), header)
    with pytest.raises(InvalidVolumeError, match=r"4d\.nrrd.*3D"):
        load_volume(tmp_path / "4d.nrrd", modality="CT")


def test_no_space_directions_warns_and_uses_spacings(
    tmp_path: Path, data: npt.NDArray[np.int16]
) -> None:
    path = tmp_path / "bare.nrrd"
    nrrd.write(str(path), data, {"spacings": [0.7, 0.8, 2.5]})
    with pytest.warns(UserWarning, match="orientation is unknown") as record:
        vol = load_volume(path, modality="CT")
    assert record[0].filename == __file__  # the warning points at the caller
    np.testing.assert_array_equal(vol.array, data.transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7))


def test_scanner_space_is_refused(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    path = tmp_path / "scanner.nrrd"
    header = {"space": "scanner-xyz", "space directions": np.eye(3), "space origin": ORIGIN}
    nrrd.write(str(path), data, header)
    with pytest.raises(VolumeReadError, match=r"scanner-xyz.*not a patient space"):
        load_volume(path, modality="CT")


def test_truncated_nrrd(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    path = tmp_path / "cut.nrrd"
    nrrd.write(str(path), data, {"space": "LPS", "space directions": np.eye(3)})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 50])
    with pytest.raises(VolumeReadError, match=r"cut\.nrrd") as info:
        load_volume(path, modality="CT")
    assert info.value.__cause__ is None


def test_missing_pynrrd_names_the_extra(
    tmp_path: Path, data: npt.NDArray[np.int16], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.nrrd"
    nrrd.write(str(path), data, {"space": "LPS", "space directions": np.eye(3)})
    monkeypatch.setitem(sys.modules, "nrrd", None)  # `import nrrd` raises ImportError
    with pytest.raises(OptionalDependencyError, match=r"pip install cbirlib\[nrrd\]"):
        load_volume(path)


def test_folders_of_nrrd_files_are_discovered(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    from cbirlib.datasets import discover_volumes

    header = {"space": "LPS", "space directions": np.diag([0.7, 0.8, 2.5])}
    (tmp_path / "site").mkdir()
    nrrd.write(str(tmp_path / "site" / "a.nrrd"), data, header)
    nrrd.write(str(tmp_path / "b.nhdr"), data, header, detached_header=True)
    found = dict(discover_volumes(tmp_path, modality="CT"))
    assert sorted(found) == ["b", "site/a"]  # the .nhdr's data file is not a volume
    np.testing.assert_array_equal(found["site/a"]().array, found["b"]().array)
    assert [vid for vid, _ in discover_volumes(tmp_path / "b.nhdr")] == ["b"]


def test_nrrd_label_map_as_mask(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    space, dirs, signs = GEOMETRIES["lps-sagittal"]
    header = {"space": space, "space directions": dirs, "space origin": ORIGIN}
    nrrd.write(str(tmp_path / "ct.nrrd"), data, header)
    labels = np.zeros(data.shape, np.uint8)
    labels[1:3, 2:5, 1] = 2  # a label map: any nonzero label is present
    labels[4, 0, 3] = 7
    nrrd.write(str(tmp_path / "liver.nrrd"), labels, header)
    nib.save(nib.Nifti1Image(labels, _ras_affine(dirs, signs)), tmp_path / "liver.nii.gz")  # type: ignore[no-untyped-call]
    volume = load_volume(tmp_path / "ct.nrrd", modality="CT")
    mask = load_mask(tmp_path / "liver.nrrd", like=volume)
    assert mask.dtype == np.bool_ and mask.shape == volume.shape and int(mask.sum()) == 7
    np.testing.assert_array_equal(mask, load_mask(tmp_path / "liver.nii.gz"))


@pytest.mark.parametrize(("unit", "mm"), [("cm", 10.0), ("m", 1000.0), ("um", 0.001), ("mm", 1.0)])
def test_space_units_are_converted_to_mm(
    tmp_path: Path, data: npt.NDArray[np.int16], unit: str, mm: float
) -> None:
    space, dirs, signs = GEOMETRIES["lps-sagittal"]
    header = {
        "space": space,
        "space directions": dirs / mm,
        "space origin": ORIGIN / mm,
        "space units": [unit] * 3,
    }
    nrrd.write(str(tmp_path / "v.nrrd"), data, header)
    vol = load_volume(tmp_path / "v.nrrd", modality="CT")
    want = _as_nifti(tmp_path / "v.nii.gz", data, _ras_affine(dirs, signs))
    np.testing.assert_array_equal(vol.array, want.array)
    np.testing.assert_allclose(vol.spacing, want.spacing, rtol=1e-6)
    np.testing.assert_allclose(vol.z_positions, want.z_positions, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(vol.affine, want.affine, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(("unit", "mm"), [("m", 1000.0), ("cm", 10.0)])
def test_units_of_spacings_are_converted_to_mm(
    tmp_path: Path, data: npt.NDArray[np.int16], unit: str, mm: float
) -> None:
    """A file with ``spacings`` and ``units`` (no ``space directions``) was read as mm."""
    header = {"spacings": np.array([0.7, 0.8, 2.5]) / mm, "units": [unit] * 3}
    nrrd.write(str(tmp_path / "s.nrrd"), data, header)
    with pytest.warns(UserWarning, match="no 'space directions'"):
        vol = load_volume(tmp_path / "s.nrrd", modality="CT")
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))


def test_unknown_or_mixed_space_units(tmp_path: Path, data: npt.NDArray[np.int16]) -> None:
    header = {"space": "RAS", "space directions": np.diag([0.7, 0.8, 2.5])}
    nrrd.write(str(tmp_path / "odd.nrrd"), data, {**header, "space units": ["furlong"] * 3})
    with pytest.warns(UserWarning, match="unknown NRRD 'space units' 'furlong'"):
        assert load_volume(tmp_path / "odd.nrrd", modality="CT").spacing == (2.5, 0.8, 0.7)
    nrrd.write(str(tmp_path / "mixed.nrrd"), data, {**header, "space units": ["mm", "cm", "mm"]})
    with pytest.raises(VolumeReadError, match="'space units' differ between axes"):
        load_volume(tmp_path / "mixed.nrrd", modality="CT")


def test_a_negative_spacing_runs_its_axis_back_and_a_zero_one_is_named(
    tmp_path: Path, data: npt.NDArray[np.int16]
) -> None:
    path = tmp_path / "back.nrrd"
    nrrd.write(str(path), data, {"spacings": [0.7, 0.8, -2.5]})
    with pytest.warns(UserWarning, match="orientation is unknown"):
        vol = load_volume(path, modality="CT")
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7))  # was 1 mm, silently
    np.testing.assert_array_equal(vol.array, data.transpose(2, 1, 0)[::-1])
    nrrd.write(str(path), data, {"spacings": [0.7, 0.0, 2.5]})
    with pytest.warns(UserWarning) as record:
        vol = load_volume(path, modality="CT")
    assert any("no usable spacing on axes [1]; 1 mm" in str(w.message) for w in record)
    np.testing.assert_allclose(vol.spacing, (2.5, 1.0, 0.7))


def test_a_nan_origin_component_keeps_the_others(
    tmp_path: Path, data: npt.NDArray[np.int16]
) -> None:
    path = tmp_path / "nan-origin.nrrd"
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.7, 0.8, 2.5]),
        "space origin": np.array([np.nan, -90.0, 40.0]),
    }
    nrrd.write(str(path), data, header)
    with pytest.warns(UserWarning, match=r"'space origin' .* not finite on axes \[0\]"):
        vol = load_volume(path, modality="CT")
    assert vol.z_positions[0] == pytest.approx(40.0)  # the whole origin was zeroed
    # posterior -90 is anterior +90 in RAS; the y axis flipped to run anterior
    assert vol.affine[1, 3] == pytest.approx(90.0 - 0.8 * (data.shape[1] - 1))
    header["space origin"] = np.array([1.0, 2.0])
    nrrd.write(str(path), data, header)
    with pytest.raises(VolumeReadError, match="'space origin' must give 3 numbers"):
        load_volume(path, modality="CT")
