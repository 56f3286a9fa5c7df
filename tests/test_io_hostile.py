"""Hostile and damaged inputs to the readers (issue 10, items 3, 4, 6, 7)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cbirlib.errors import (
    CbirError,
    DicomSeriesError,
    InvalidVolumeError,
    MissingSliceError,
    VolumeReadError,
)
from cbirlib.io import load_mask, load_volume
from tests.dicom_helpers import write_dicom_series, write_nifti
from tests.fakes import lying_header


@pytest.fixture
def zyx() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.permutation(8 * 6 * 7).reshape(8, 6, 7) * 2 - 300).astype(np.float32)


def _series(tmp_path: Path, zyx: np.ndarray) -> Path:
    folder = tmp_path / "series"
    write_dicom_series(folder, zyx, shuffle=False, spacing=(2.0, 0.8, 0.7))
    return folder


# --- DICOM: files lost at the ends of a series --------------------------------------------


def test_truncated_last_file_is_an_error_not_a_shorter_volume(
    tmp_path: Path, zyx: np.ndarray
) -> None:
    folder = _series(tmp_path, zyx)
    last = folder / "img0007.dcm"
    last.write_bytes(last.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(MissingSliceError, match=r"img0007\.dcm"):
        load_volume(folder)


def test_empty_first_file_is_an_error(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = _series(tmp_path, zyx)
    (folder / "img0000.dcm").write_bytes(b"")
    with pytest.raises(MissingSliceError, match=r"1 of its 8 DICOM files.*img0000\.dcm"):
        load_volume(folder)


def test_files_without_preamble_are_read(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = _series(tmp_path, zyx)
    reference = load_volume(folder)
    for name in ("img0000.dcm", "img0007.dcm"):
        data = (folder / name).read_bytes()
        assert data[128:132] == b"DICM"
        (folder / name).write_bytes(data[132:])  # no preamble, no DICM marker
    vol = load_volume(folder)
    assert vol.n_slices == 8
    np.testing.assert_array_equal(vol.array, reference.array)
    np.testing.assert_array_equal(vol.z_positions, reference.z_positions)


def test_unreadable_file_beside_two_series_warns_with_its_name(
    tmp_path: Path, zyx: np.ndarray
) -> None:
    folder = tmp_path / "two"
    write_dicom_series(folder, zyx, prefix="a", series_uid="1.2.3.1")
    write_dicom_series(folder, zyx, prefix="b", series_uid="1.2.3.2")
    (folder / "broken.dcm").write_bytes(b"\0" * 40)
    with pytest.warns(UserWarning, match=r"broken\.dcm"):
        vol = load_volume(folder, series_uid="1.2.3.1")
    assert vol.n_slices == 8


def test_non_dicom_side_files_do_not_count_as_lost_slices(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = _series(tmp_path, zyx)
    (folder / "notes.txt").write_text("scanned on Monday")
    (folder / "thumbnail.jpg").write_bytes(b"\xff\xd8\xff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(folder).n_slices == 8


# --- DICOM: malformed geometry ---------------------------------------------------------------


def _edit(folder: Path, name: str, **tags: object) -> None:
    ds = pydicom.dcmread(folder / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we write
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(folder / name)


@pytest.mark.parametrize(
    ("tags", "pattern"),
    [
        ({"ImagePositionPatient": [0.0, 1.0]}, "ImagePositionPatient must be 3"),
        (
            {"ImagePositionPatient": ["nan", 0.0, 0.0]},
            "(invalid|finite).*ImagePositionPatient|ImagePositionPatient must be 3 finite",
        ),
        ({"PixelSpacing": [0.0, 0.7]}, "PixelSpacing must be 2 positive"),
        ({"PixelSpacing": [-0.8, -0.7]}, "PixelSpacing must be 2 positive"),
        ({"PixelSpacing": [0.8]}, "(invalid PixelSpacing|PixelSpacing must be 2)"),
        ({"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}, "degenerate"),
        ({"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]}, "degenerate"),
        ({"ImageOrientationPatient": [1, 0, 0, 0]}, "ImageOrientationPatient must be 6"),
    ],
)
def test_malformed_geometry_names_tag_and_file(
    tmp_path: Path, zyx: np.ndarray, tags: dict[str, object], pattern: str
) -> None:
    folder = _series(tmp_path, zyx)
    for i in range(8):
        _edit(folder, f"img{i:04d}.dcm", **tags)
    with pytest.raises(DicomSeriesError, match=rf"img0000\.dcm.*{pattern}") as info:
        load_volume(folder)
    assert "\n" not in str(info.value)


# --- NIfTI: silent wrong results and lying headers -----------------------------------------


def test_complex_nifti_is_refused(tmp_path: Path) -> None:
    data = (np.arange(60).reshape(3, 4, 5) * (1 + 1j)).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "c.nii.gz")
    with pytest.raises(InvalidVolumeError, match="complex"):
        load_volume(tmp_path / "c.nii.gz")


def test_nan_voxels_in_a_mask_are_absent(tmp_path: Path, zyx: np.ndarray) -> None:
    write_nifti(tmp_path / "ct.nii.gz", zyx)
    mask = np.zeros(zyx.shape, np.float32)
    mask[2:4] = 1.0
    mask[[0, 7]] = np.nan
    write_nifti(tmp_path / "m.nii.gz", mask)
    with pytest.warns(UserWarning, match="NaN"):
        loaded = load_mask(tmp_path / "m.nii.gz", like=load_volume(tmp_path / "ct.nii.gz"))
    assert np.flatnonzero(loaded.any(axis=(1, 2))).tolist() == [2, 3]


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_lying_header_fails_fast_without_allocating(tmp_path: Path, name: str) -> None:
    import tracemalloc

    lying_header(tmp_path / name, (1024, 1024, 1024))
    tracemalloc.start()
    t0 = time.monotonic()
    with pytest.raises(CbirError, match="1024, 1024, 1024"):
        load_volume(tmp_path / name)
    elapsed = time.monotonic() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1 and peak < 100 * 2**20, (elapsed, peak)


def test_voxel_limit_is_configurable(
    tmp_path: Path, zyx: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_nifti(tmp_path / "ct.nii.gz", zyx)
    monkeypatch.setenv("CBIRLIB_MAX_VOXELS", "100")
    with pytest.raises(InvalidVolumeError, match="CBIRLIB_MAX_VOXELS"):
        load_volume(tmp_path / "ct.nii.gz")
    monkeypatch.setenv("CBIRLIB_MAX_VOXELS", str(zyx.size))
    assert load_volume(tmp_path / "ct.nii.gz").n_slices == 8


def test_short_uncompressed_nifti_names_the_sizes(tmp_path: Path) -> None:
    lying_header(tmp_path / "short.nii", (40, 40, 40))
    with pytest.raises(VolumeReadError, match="truncated or its header is wrong"):
        load_volume(tmp_path / "short.nii")


# --- tilted acquisitions (issue 11, item 7) -------------------------------------------------


def test_gantry_tilt_warns_with_true_spacing_and_keeps_positions(
    tmp_path: Path, zyx: np.ndarray
) -> None:
    tilt = np.radians(15.0)
    affine = np.diag([0.7, 0.8, 1.0, 1.0])
    affine[:3, 2] = [0.0, 2.5 * np.sin(tilt), 2.5 * np.cos(tilt)]  # sheared slice step
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), affine), tmp_path / "tilt.nii.gz")
    with pytest.warns(UserWarning, match=r"gantry tilt.*15\.0 degrees.*spacing 2\.415 mm"):
        vol = load_volume(tmp_path / "tilt.nii.gz")
    assert vol.spacing[0] == pytest.approx(2.5 * np.cos(tilt))
    np.testing.assert_allclose(vol.z_positions, np.arange(8) * 2.5 * np.cos(tilt))
    np.testing.assert_array_equal(vol.array, zyx)


def test_oblique_slices_warn(tmp_path: Path, zyx: np.ndarray) -> None:
    angle = np.radians(20.0)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.8, 2.0])
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), affine), tmp_path / "obl.nii.gz")
    with pytest.warns(UserWarning, match=r"oblique slices.*20\.0 degrees.*spacing 2\.000 mm"):
        vol = load_volume(tmp_path / "obl.nii.gz")
    assert vol.spacing[0] == pytest.approx(2.0)


def test_axial_volume_does_not_warn(tmp_path: Path, zyx: np.ndarray) -> None:
    write_nifti(tmp_path / "ax.nii.gz", zyx, spacing=(2.5, 0.8, 0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(tmp_path / "ax.nii.gz").spacing == pytest.approx((2.5, 0.8, 0.7))


def test_side_files_without_suffix_are_not_lost_slices(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = _series(tmp_path, zyx)
    (folder / "README").write_text("exported by the PACS")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(folder).n_slices == 8
    (folder / "IM0009").write_bytes(b"")  # an empty file where a slice should be
    with pytest.raises(MissingSliceError, match="IM0009"):
        load_volume(folder)


def _sform_only(path: Path, shape: tuple[int, ...], rows: list[list[float]]) -> Path:
    img = nib.Nifti1Image(np.zeros(shape, np.int16), None)
    img.header.set_qform(None, code=0)
    for name, row in zip(("srow_x", "srow_y", "srow_z"), rows, strict=True):
        img.header[name] = row
    img.header["sform_code"] = 1
    nib.save(img, path)
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_affine_is_refused_naming_the_header(
    tmp_path: Path, suffix: str, bad: float
) -> None:
    from cbirlib.io import nifti_shape

    rows = [[1, 0, 0, bad], [0, 1, 0, 0], [0, 0, 2, 0]]  # an x offset only: z was fine
    path = _sform_only(tmp_path / f"a{suffix}", (10, 12, 6), rows)
    for read in (lambda: load_volume(path, modality="MR"), lambda: nifti_shape(path)):
        with pytest.raises(VolumeReadError, match=r"unusable affine .* NaN or infinite"):
            read()  # the volume's affine was NaN, silently


def test_an_axis_with_no_direction_is_named_without_numpy_warnings(tmp_path: Path) -> None:
    path = _sform_only(tmp_path / "flat.nii", (8, 9, 1), [[1, 0, 0, 0], [0, 1, 0, 0], [0] * 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nibabel's RuntimeWarnings leaked before
        with pytest.raises(VolumeReadError, match="an axis with no direction in space"):
            load_volume(path, modality="MR")  # was "truncated or corrupt"


def test_float64_voxels_beyond_float32_are_refused_and_not_filled(tmp_path: Path) -> None:
    data = np.where(np.arange(500).reshape(10, 10, 5) % 2, 1e300, 5.0)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "f.nii")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy "overflow encountered in cast"
        for fill in (None, "min"):  # nan_fill made the brightest voxels background
            with pytest.raises(InvalidVolumeError, match="beyond float32's range"):
                load_volume(tmp_path / "f.nii", modality="MR", nan_fill=fill)


def test_a_2d_image_is_told_how_to_be_a_single_slice(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.int16), np.eye(4)), tmp_path / "2d.nii")
    with pytest.raises(InvalidVolumeError, match=r"saved as \(x, y, 1\)"):
        load_volume(tmp_path / "2d.nii", modality="MR")


def test_qform_and_sform_that_disagree_are_named(tmp_path: Path) -> None:
    sform = np.diag([-1.0, -1.0, 2.0, 1.0])
    img = nib.Nifti1Image(np.arange(10 * 12 * 6, dtype=np.int16).reshape(10, 12, 6), sform)
    img.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    img.set_sform(sform, code=2)
    nib.save(img, tmp_path / "qs.nii")
    with pytest.warns(UserWarning, match=r"sform \(LPS\) and the qform \(RAS\) disagree"):
        vol = load_volume(tmp_path / "qs.nii", modality="MR")
    want = nib.as_closest_canonical(nib.load(tmp_path / "qs.nii")).get_fdata()
    np.testing.assert_array_equal(vol.array, want.transpose(2, 1, 0))  # the sform's
    img.set_qform(sform, code=1)  # agreeing forms: no warning
    nib.save(img, tmp_path / "agree.nii")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_volume(tmp_path / "agree.nii", modality="MR")


def test_slices_rotated_in_their_plane_are_named(tmp_path: Path) -> None:
    t = np.radians(30)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    affine = rotation @ np.diag([1.0, 1.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 6), np.int16), affine), tmp_path / "r.nii")
    with pytest.warns(UserWarning, match=r"rotated in plane.*rows 30\.0 degrees"):
        vol = load_volume(tmp_path / "r.nii", modality="MR")
    assert vol.spacing[0] == pytest.approx(3.0)
