"""Tests of cbirlib.io: NIfTI and DICOM readers, canonical layout, bad input."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform

from cbirlib.errors import (
    CbirError,
    DicomSeriesError,
    InvalidVolumeError,
    MaskShapeError,
    MissingSliceError,
    VolumeNotFoundError,
    VolumeReadError,
)
from cbirlib.io import dicom_series, load_mask, load_volume, nifti_shape
from tests.dicom_helpers import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    canonical_affine,
    write_dicom_series,
    write_nifti,
)

SPACING = (2.5, 0.8, 0.7)  # (dz, dy, dx)
ORIGIN = (-10.0, 20.0, -100.0)  # RAS mm of voxel (0, 0, 0)
NIFTI_DIR = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture
def zyx() -> npt.NDArray[np.float32]:
    """A (Z, Y, X) = (S, A, R) volume whose every voxel value is unique."""
    rng = np.random.default_rng(0)
    values = rng.permutation(5 * 6 * 7).reshape(5, 6, 7) * 2 - 300
    return values.astype(np.float32)


def expected_z(n: int) -> npt.NDArray[np.float64]:
    return ORIGIN[2] + SPACING[0] * np.arange(n)


def assert_no_raw_cause(exc: BaseException) -> None:
    """The cbirlib error does not drag a third-party traceback along."""
    assert isinstance(exc, CbirError)
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


# --- NIfTI -------------------------------------------------------------------------------


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LPI", "RAI", "ASR", "SAR", "PIL", "ILA"])
def test_nifti_non_canonical_is_reoriented(tmp_path: Path, zyx: np.ndarray, codes: str) -> None:
    canonical = nib.Nifti1Image(zyx.transpose(2, 1, 0), canonical_affine(SPACING, ORIGIN))
    img = canonical.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes)))
    assert nib.aff2axcodes(img.affine) == tuple(codes)
    nib.save(img, tmp_path / f"case_{codes}.nii.gz")

    vol = load_volume(tmp_path / f"case_{codes}.nii.gz")

    assert vol.id == f"case_{codes}"
    assert vol.modality == "CT"
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, zyx)
    np.testing.assert_allclose(vol.spacing, SPACING)
    np.testing.assert_allclose(vol.z_positions, expected_z(5))
    assert vol.affine is not None
    np.testing.assert_allclose(vol.affine, canonical_affine(SPACING, ORIGIN))


def test_nifti_hand_built_lpi(tmp_path: Path, zyx: np.ndarray) -> None:
    # stored (i, j, k) = (L, P, I): every axis reversed relative to RAS
    dz, dy, dx = SPACING
    nz, ny, nx = zyx.shape
    data = zyx.transpose(2, 1, 0)[::-1, ::-1, ::-1]
    affine = np.diag([-dx, -dy, -dz, 1.0])
    affine[:3, 3] = [
        ORIGIN[0] + (nx - 1) * dx,
        ORIGIN[1] + (ny - 1) * dy,
        ORIGIN[2] + (nz - 1) * dz,
    ]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), tmp_path / "lpi.nii")
    vol = load_volume(tmp_path / "lpi.nii")
    np.testing.assert_array_equal(vol.array, zyx)
    np.testing.assert_allclose(vol.z_positions, expected_z(nz))
    assert vol.id == "lpi"


def test_nifti_hand_built_permuted_axes(tmp_path: Path, zyx: np.ndarray) -> None:
    # stored in (S, A, R) index order: the affine maps i -> S, j -> A, k -> R
    dz, dy, dx = SPACING
    affine = np.array(
        [[0, 0, dx, ORIGIN[0]], [0, dy, 0, ORIGIN[1]], [dz, 0, 0, ORIGIN[2]], [0, 0, 0, 1]],
        dtype=float,
    )
    nib.save(nib.Nifti1Image(zyx, affine), tmp_path / "sar.nii.gz")
    vol = load_volume(str(tmp_path / "sar.nii.gz"), id="custom", modality="MR")
    np.testing.assert_array_equal(vol.array, zyx)
    np.testing.assert_allclose(vol.spacing, SPACING)
    np.testing.assert_allclose(vol.z_positions, expected_z(zyx.shape[0]))
    assert (vol.id, vol.modality) == ("custom", "MR")


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = load_volume(tmp_path / "scaled.nii.gz")
    expected = np.arange(8).reshape(2, 2, 2).transpose(2, 1, 0) * 2.0 - 1024.0
    np.testing.assert_array_equal(vol.array, expected)


def test_nifti_4d_trailing_singleton_is_squeezed(tmp_path: Path, zyx: np.ndarray) -> None:
    data = zyx.transpose(2, 1, 0)[..., None]
    nib.save(nib.Nifti1Image(data, canonical_affine(SPACING)), tmp_path / "t1.nii.gz")
    np.testing.assert_array_equal(load_volume(tmp_path / "t1.nii.gz").array, zyx)


def test_mask_is_canonicalised_like_the_image(tmp_path: Path, zyx: np.ndarray) -> None:
    canonical = nib.Nifti1Image(zyx.transpose(2, 1, 0), canonical_affine(SPACING, ORIGIN))
    to_lps = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("PIL"))
    nib.save(canonical.as_reoriented(to_lps), tmp_path / "ct.nii.gz")
    mask_zyx = zyx > 100
    mask_img = nib.Nifti1Image(
        mask_zyx.transpose(2, 1, 0).astype(np.uint8), canonical_affine(SPACING, ORIGIN)
    )
    nib.save(mask_img.as_reoriented(to_lps), tmp_path / "liver.nii.gz")

    vol = load_volume(tmp_path / "ct.nii.gz")
    mask = load_mask(tmp_path / "liver.nii.gz", like=vol)

    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, vol.array > 100)
    assert 0 < mask.sum() < mask.size


def test_mask_shape_mismatch(tmp_path: Path, zyx: np.ndarray) -> None:
    vol = load_volume(write_nifti(tmp_path / "ct.nii.gz", zyx, spacing=SPACING))
    write_nifti(tmp_path / "small.nii.gz", np.ones((5, 6, 6), np.uint8))
    with pytest.raises(MaskShapeError, match=r"small\.nii\.gz.*\(5, 6, 6\).*\(5, 6, 7\)"):
        load_mask(tmp_path / "small.nii.gz", like=vol)
    # without `like` the mask reads fine
    assert load_mask(tmp_path / "small.nii.gz").shape == (5, 6, 6)


# --- bad input ------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(VolumeNotFoundError, match="nothere"):
        load_volume(tmp_path / "nothere.nii.gz")
    with pytest.raises(VolumeNotFoundError, match="nothere"):
        load_mask(tmp_path / "nothere.nii.gz")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeNotFoundError, match="empty"):
        load_volume(tmp_path / "empty")


def test_folder_without_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    (folder / "data.bin").write_bytes(b"\x00" * 300)
    with pytest.raises(VolumeReadError, match=r"notes.*no DICOM") as info:
        load_volume(folder)
    assert not isinstance(info.value, VolumeNotFoundError)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.mha"
    path.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(VolumeReadError, match=r"scan\.mha.*\.nii\.gz"):
        load_volume(path)
    with pytest.raises(VolumeReadError, match=r"scan\.mha"):
        load_mask(path)


def test_truncated_nifti_gz(tmp_path: Path, zyx: np.ndarray) -> None:
    path = write_nifti(tmp_path / "cut.nii.gz", zyx)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeReadError, match=r"cut\.nii\.gz") as info:
        load_volume(path)
    assert_no_raw_cause(info.value)


def test_truncated_nifti_data(tmp_path: Path, zyx: np.ndarray) -> None:
    # a valid gzip stream whose NIfTI data is too short
    path = write_nifti(tmp_path / "short.nii.gz", zyx)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: 352 + 40]))
    with pytest.raises(VolumeReadError, match=r"short\.nii\.gz") as info:
        load_volume(path)
    assert_no_raw_cause(info.value)


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.nii"])
def test_corrupt_nifti(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(VolumeReadError, match=name.replace(".", r"\.")) as info:
        load_volume(path)
    assert_no_raw_cause(info.value)


def test_2d_image(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(InvalidVolumeError, match=r"flat\.nii.*2D"):
        load_volume(tmp_path / "flat.nii")


def test_4d_image(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(InvalidVolumeError, match=r"t\.nii.*4D.*\(4, 4, 4, 3\)"):
        load_volume(tmp_path / "t.nii")
    with pytest.raises(InvalidVolumeError, match=r"t\.nii.*4D"):
        load_mask(tmp_path / "t.nii")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_name_the_file(tmp_path: Path, zyx: np.ndarray, bad: float) -> None:
    data = zyx.copy()
    data[2, 3, 4] = bad
    path = write_nifti(tmp_path / "holes.nii.gz", data)
    with pytest.raises(InvalidVolumeError, match=r"holes\.nii\.gz.*1 voxels are NaN"):
        load_volume(path)


# --- DICOM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mirror_x", [False, True])
def test_dicom_matches_nifti(tmp_path: Path, zyx: np.ndarray, mirror_x: bool) -> None:
    folder = tmp_path / "series01"
    write_dicom_series(
        folder, zyx, spacing=SPACING, origin=ORIGIN, slope=2.0, intercept=-1024.0,
        mirror_x=mirror_x,
    )  # fmt: skip
    nifti = load_volume(write_nifti(tmp_path / "same.nii.gz", zyx, spacing=SPACING, origin=ORIGIN))
    dicom = load_volume(folder)

    assert dicom.id == "series01"
    assert dicom.modality == "CT"
    np.testing.assert_array_equal(dicom.array, zyx)
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_allclose(dicom.spacing, nifti.spacing)
    np.testing.assert_allclose(dicom.z_positions, nifti.z_positions)
    assert dicom.affine is not None and nifti.affine is not None
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-9)


def test_dicom_order_ignores_file_names_and_instance_numbers(
    tmp_path: Path, zyx: np.ndarray
) -> None:
    folder = tmp_path / "s"
    write_dicom_series(folder, zyx, spacing=SPACING, origin=ORIGIN, seed=3)
    files = sorted(folder.iterdir())
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    z_by_name = [float(h.ImagePositionPatient[2]) for h in heads]
    z_by_number = [
        float(h.ImagePositionPatient[2]) for h in sorted(heads, key=lambda h: h.InstanceNumber)
    ]
    # preconditions: neither file name nor InstanceNumber gives the position order
    assert z_by_name != sorted(z_by_name)
    assert z_by_number != sorted(z_by_number)

    vol = load_volume(folder)
    np.testing.assert_array_equal(vol.array, zyx)
    np.testing.assert_allclose(vol.z_positions, expected_z(zyx.shape[0]))


def test_dicom_rescale_is_applied(tmp_path: Path) -> None:
    hu = np.array([[[-1000, 0], [40, 1000]]] * 3, dtype=np.float32)
    folder = tmp_path / "hu"
    write_dicom_series(folder, hu, slope=0.5, intercept=-1024.0)
    raw = pydicom.dcmread(next(folder.iterdir())).pixel_array
    assert raw.max() > hu.max()  # stored values really differ from HU
    np.testing.assert_array_equal(load_volume(folder).array, hu)


def test_dicom_two_series(
    tmp_path: Path, zyx: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "study"
    uid_a = write_dicom_series(folder, zyx, description="DOE JOHN arterial", prefix="a")
    uid_b = write_dicom_series(
        folder, zyx[:3] + 5, description="DOE JOHN venous", prefix="b", spacing=(3.0, 1.0, 1.0)
    )
    first = min(uid_a, uid_b)  # no SeriesNumber: numbered in UID order
    with (
        caplog.at_level(logging.DEBUG, logger="cbirlib.io"),
        pytest.raises(DicomSeriesError, match="2 series") as info,
    ):
        load_volume(folder)
    message = str(info.value)
    assert "DOE" not in message and "arterial" not in message  # SeriesDescription is free text
    assert uid_a not in message and uid_b not in message  # full UIDs only at DEBUG
    assert uid_a in caplog.text and uid_b in caplog.text
    assert f"series 1: {5 if first == uid_a else 3} slices" in message
    assert f"(UID ...{uid_b[-8:]})" in message and "3.0 mm" in message

    vol = load_volume(folder, series_uid=uid_b)
    np.testing.assert_array_equal(vol.array, zyx[:3] + 5)
    assert load_volume(folder, series_uid=uid_a).n_slices == 5
    number_b = 1 if first == uid_b else 2
    assert load_volume(folder, series_uid=number_b).n_slices == 3  # the listed number
    assert load_volume(folder, series_uid=str(number_b)).n_slices == 3
    assert load_volume(folder, series_uid=uid_a[-8:]).n_slices == 5  # the shown UID end
    with pytest.raises(DicomSeriesError, match=r"no series '1\.2\.3'.*available: series 1"):
        load_volume(folder, series_uid="1.2.3")


def test_dicom_series_uses_series_numbers(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "study"
    uid_a = write_dicom_series(folder, zyx, prefix="a")
    uid_b = write_dicom_series(folder, zyx[:3] + 5, prefix="b")
    for path in folder.iterdir():  # SeriesNumber 7 (a) and 4 (b)
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = 7 if path.name.startswith("a") else 4
        if path.name.startswith("b"):  # 5 mm slices 20 mm apart: the listing says 5 mm
            ds.SliceThickness, ds.SpacingBetweenSlices = 5.0, 20.0
        ds.save_as(path)
    listed = dicom_series(folder)
    assert [(s.number, s.uid, s.n_slices) for s in listed] == [(4, uid_b, 3), (7, uid_a, 5)]
    assert listed[0].describe().startswith("series 4: 3 slices, 5.0 mm thick (UID ...")
    assert listed[0].thickness_mm == 5.0 and listed[1].thickness_mm == 1.0
    assert load_volume(folder, series_uid=7).n_slices == 5
    with pytest.raises(DicomSeriesError, match=r"available: series 4: 3 slices.*series 7"):
        load_volume(folder, series_uid=1)


def test_dicom_missing_slice(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "gap"
    write_dicom_series(folder, zyx, spacing=SPACING, origin=ORIGIN, skip=[2])
    # slices 1 and 3 lie at -97.5 and -92.5 mm
    with pytest.raises(MissingSliceError, match=r"gap.*between -97\.50 and -92\.50 mm"):
        load_volume(folder)


def test_dicom_uneven_spacing_warns_and_keeps_positions(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "uneven"
    write_dicom_series(folder, zyx, spacing=SPACING, origin=ORIGIN)
    moved = None
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        if float(ds.ImagePositionPatient[2]) == ORIGIN[2] + 2 * SPACING[0]:
            ds.ImagePositionPatient[2] = ORIGIN[2] + 2 * SPACING[0] + 0.5
            ds.save_as(f)
            moved = f
    assert moved is not None
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        vol = load_volume(folder)
    expected = expected_z(5)
    expected[2] += 0.5
    np.testing.assert_allclose(vol.z_positions, expected)
    np.testing.assert_array_equal(vol.array, zyx)


def test_dicom_non_dicom_file_is_skipped(
    tmp_path: Path, zyx: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "mixed"
    write_dicom_series(folder, zyx)
    (folder / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.DEBUG, logger="cbirlib.io"):
        vol = load_volume(folder)
    np.testing.assert_array_equal(vol.array, zyx)
    assert "notes.txt" in caplog.text


def test_dicom_mixed_orientation(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "tilted"
    write_dicom_series(folder, zyx)
    f = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]
    ds.save_as(f)
    with pytest.raises(DicomSeriesError, match=r"tilted.*mixed orientations"):
        load_volume(folder)


def test_dicom_mixed_pixel_shapes(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "shapes"
    uid = write_dicom_series(folder, zyx)
    write_dicom_series(tmp_path / "other", zyx[:, :4, :], series_uid=uid, prefix="o")
    extra = sorted((tmp_path / "other").iterdir())[0]
    ds = pydicom.dcmread(extra)
    ds.ImagePositionPatient[2] = 100.0
    ds.save_as(folder / "extra.dcm")
    with pytest.raises(DicomSeriesError, match=r"shapes.*mixed pixel shapes.*4x7"):
        load_volume(folder)


def test_dicom_duplicate_position(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "dup"
    write_dicom_series(folder, zyx)
    f = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "copy.dcm")
    with pytest.raises(DicomSeriesError, match="share the slice position"):
        load_volume(folder)


def test_no_patient_identifiers_anywhere(
    tmp_path: Path, zyx: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "anon"
    uid_a = write_dicom_series(folder, zyx, prefix="a")
    write_dicom_series(folder, zyx[:2], prefix="b")
    (folder / "junk.txt").write_text("x")
    with caplog.at_level(logging.DEBUG):
        vol = load_volume(folder, series_uid=uid_a)
        with pytest.raises(DicomSeriesError) as info:
            load_volume(folder)
    # the identifiers really are in the files
    head = pydicom.dcmread(sorted(folder.glob("a*.dcm"))[0], stop_before_pixels=True)
    assert str(head.PatientID) == PATIENT_ID
    texts = [caplog.text, str(info.value), repr(vol)]
    texts += [repr(getattr(vol, name)) for name in vol.__dataclass_fields__]
    assert caplog.text  # something was logged, so the check below means something
    for identifier in (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "Doe", "Jane"):
        for text in texts:
            assert identifier not in text


# --- real sample files shipped with nibabel and pydicom --------------------------------------


def test_nibabel_sample_anatomical(tmp_path: Path) -> None:
    path = NIFTI_DIR / "anatomical.nii"
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    raw = np.asarray(img.dataobj, dtype=np.float32)
    vol = load_volume(path)
    assert vol.id == "anatomical"
    assert vol.shape == (raw.shape[2], raw.shape[1], raw.shape[0])
    # L -> R: the first axis is reversed, then (i, j, k) -> (k, j, i)
    np.testing.assert_array_equal(vol.array, raw[::-1].transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing, (2.0, 2.0, 2.0))
    assert np.all(np.diff(vol.z_positions) > 0)


def test_nibabel_sample_4d_is_rejected() -> None:
    with pytest.raises(InvalidVolumeError, match=r"example4d\.nii\.gz.*4D"):
        load_volume(NIFTI_DIR / "example4d.nii.gz")


def test_nibabel_sample_standard() -> None:
    vol = load_volume(NIFTI_DIR / "standard.nii.gz")
    raw = np.asarray(nib.load(NIFTI_DIR / "standard.nii.gz").dataobj, dtype=np.float32)
    np.testing.assert_array_equal(vol.array, raw.transpose(2, 1, 0))  # already RAS


def test_pydicom_sample_ct_small(tmp_path: Path) -> None:
    source = pydicom.data.get_testdata_file("CT_small.dcm")
    assert source is not None
    folder = tmp_path / "ct_small"
    folder.mkdir()
    shutil.copy(source, folder / "slice.dcm")
    ds = pydicom.dcmread(source)

    vol = load_volume(folder)

    assert vol.shape == (1, int(ds.Rows), int(ds.Columns))
    assert vol.modality == "CT"
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # IOP [1,0,0,0,1,0]: rows run A -> P, columns R -> L, so both are reversed
    np.testing.assert_allclose(vol.array[0], hu[::-1, ::-1])
    assert vol.array.min() < -500  # HU, not raw stored values
    np.testing.assert_allclose(vol.spacing[1:], [float(s) for s in ds.PixelSpacing])
    np.testing.assert_allclose(vol.z_positions, [float(ds.ImagePositionPatient[2])])


def test_pydicom_sample_mr_small(tmp_path: Path) -> None:
    source = pydicom.data.get_testdata_file("MR_small.dcm")
    assert source is not None
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(source, folder / "x.dcm")
    vol = load_volume(folder)
    assert vol.modality == "MR"
    assert vol.shape[0] == 1
    assert vol.array.std() > 0


def test_single_dicom_file_points_to_its_folder(tmp_path: Path, zyx: np.ndarray) -> None:
    write_dicom_series(tmp_path / "s", zyx, shuffle=False)
    with pytest.raises(VolumeReadError, match=r"img0000\.dcm.*pass the folder"):
        load_volume(tmp_path / "s" / "img0000.dcm")


def test_dicom_missing_position(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "nopos"
    write_dicom_series(folder, zyx, shuffle=False)
    ds = pydicom.dcmread(folder / "img0003.dcm")
    del ds.ImagePositionPatient
    ds.save_as(folder / "img0003.dcm")
    with pytest.raises(DicomSeriesError, match=r"img0003\.dcm.*ImagePositionPatient"):
        load_volume(folder)


def test_dicom_float_noise_in_positions_is_not_uneven(tmp_path: Path, zyx: np.ndarray) -> None:
    folder = tmp_path / "noisy"
    write_dicom_series(folder, zyx, spacing=SPACING, shuffle=False)
    noise = np.random.default_rng(2).uniform(-1e-4, 1e-4, zyx.shape[0])
    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + noise[k]
        ds.save_as(f)
    vol = load_volume(folder)  # filterwarnings=error: no uneven-spacing warning
    np.testing.assert_allclose(vol.spacing[0], SPACING[0], atol=1e-3)


def test_mask_with_other_geometry_logs_a_warning(
    tmp_path: Path, zyx: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    ct = write_nifti(tmp_path / "ct.nii.gz", zyx, spacing=SPACING, origin=ORIGIN)
    vol = load_volume(ct, modality="CT")
    write_nifti(tmp_path / "aligned.nii.gz", zyx > 0, spacing=SPACING, origin=ORIGIN)
    write_nifti(tmp_path / "shifted.nii.gz", zyx > 0, spacing=SPACING)
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        load_mask(tmp_path / "aligned.nii.gz", like=vol)
        assert caplog.text == ""
        load_mask(tmp_path / "shifted.nii.gz", like=vol)
    assert "shifted.nii.gz" in caplog.text and "affine" in caplog.text


@pytest.mark.parametrize("codes", ["RAS", "PIL", "SAR", "ILA"])
def test_nifti_shape_matches_load_volume(tmp_path: Path, zyx: np.ndarray, codes: str) -> None:
    canonical = nib.Nifti1Image(zyx.transpose(2, 1, 0), canonical_affine(SPACING, ORIGIN))
    img = canonical.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes)))
    nib.save(img, tmp_path / "x.nii.gz")
    assert nifti_shape(tmp_path / "x.nii.gz") == load_volume(tmp_path / "x.nii.gz").shape
    assert nifti_shape(tmp_path / "x.nii.gz") == zyx.shape


def test_nifti_shape_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidVolumeError, match="4D"):
        nifti_shape(NIFTI_DIR / "example4d.nii.gz")
    with pytest.raises(VolumeNotFoundError):
        nifti_shape(tmp_path / "none.nii")


# --- NIfTI without orientation ----------------------------------------------------------------


def test_nifti_without_qform_or_sform_warns(tmp_path: Path, zyx: np.ndarray) -> None:
    path = tmp_path / "noorient.nii.gz"
    img = nib.Nifti1Image(zyx.transpose(2, 1, 0), None)
    img.header.set_xyzt_units("mm")
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (0, 0)
    nib.save(img, path)
    with pytest.warns(UserWarning, match=r"noorient\.nii\.gz.*orientation is unknown.*LAS"):
        vol = load_volume(path)
    # nibabel's default (LAS): the first axis runs right -> left, so it is flipped
    np.testing.assert_array_equal(vol.array, zyx[:, :, ::-1])
    assert np.all(np.diff(vol.z_positions) > 0)
    # an image with an sform (what nibabel writes for an affine) loads silently
    write = tmp_path / "oriented.nii.gz"
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), np.eye(4)), write)
    load_volume(write)  # a warning would be an error here (filterwarnings = error)
    load_mask(path)  # masks follow their image: no warning per mask file


def _with_nan_outside_the_field_of_view(path: Path) -> npt.NDArray[np.float32]:
    """An MR resampled as SPM writes it: NaN where the source did not reach."""
    rng = np.random.default_rng(5)
    data = rng.uniform(50, 900, (12, 10, 8)).astype(np.float32)
    data[:3] = np.nan
    data[:, :, -1] = np.nan
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return data


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_outside_the_field_of_view_is_refused_or_filled(
    tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from cbirlib.errors import InvalidVolumeError, SettingError

    path = tmp_path / f"wmr{suffix}"
    data = _with_nan_outside_the_field_of_view(path)
    with pytest.raises(InvalidVolumeError, match=r"NaN or infinite.*nan_fill='min'"):
        load_volume(path, modality="MR")
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        vol = load_volume(path, modality="MR", nan_fill="min")
    n_nan = int(np.isnan(data).sum())
    assert [f"{n_nan} NaN or infinite voxel(s)" in r.getMessage() for r in caplog.records] == [True]
    want = np.where(np.isnan(data), np.nanmin(data), data).transpose(2, 1, 0)
    np.testing.assert_array_equal(vol.array, want)
    assert np.array_equal(load_volume(path, modality="MR", nan_fill=0).array == 0, np.isnan(data).T)
    for bad in ("max", float("nan"), True, 1e39, -np.inf):  # 1e39: inf as a voxel
        with pytest.raises(SettingError, match="nan_fill"):
            load_volume(path, modality="MR", nan_fill=bad)  # type: ignore[arg-type]
    for number in (np.float32(-5), np.int64(-5), np.float64(-5.0), -5):
        assert np.array_equal(
            load_volume(path, modality="MR", nan_fill=number).array == -5, np.isnan(data).T
        )


def test_nan_fill_reaches_totalsegmentator_subjects(tmp_path: Path) -> None:
    """A subject folder or a data-set root ignored nan_fill (its error said to use it)."""
    from cbirlib.datasets import TotalSegmentator, discover_volumes, make_phantoms, open_volume
    from cbirlib.errors import InvalidVolumeError

    make_phantoms(tmp_path, 2, shape=(32, 32))
    image = tmp_path / "s0000" / "ct.nii.gz"
    img = nib.load(image)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[0, 0, :] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), image)
    with pytest.raises(InvalidVolumeError, match="NaN"):
        open_volume(tmp_path / "s0000")
    filled = open_volume(tmp_path / "s0000", nan_fill=-3000)
    assert filled.labels is not None
    assert np.count_nonzero(filled.array == -3000) == np.isnan(data).sum()
    found = dict(discover_volumes(tmp_path, nan_fill=-3000))["s0000"]()
    np.testing.assert_array_equal(found.array, filled.array)
    by_min = TotalSegmentator(tmp_path, nan_fill="min").load("s0000").array
    assert by_min.min() == np.nanmin(data) and not np.isnan(by_min).any()


def test_nan_fill_on_the_command_line(tmp_path: Path) -> None:
    from cbirlib.cli import main

    data = tmp_path / "data"
    data.mkdir()
    _with_nan_outside_the_field_of_view(data / "wmr.nii.gz")
    assert main(["index", str(data), str(tmp_path / "refused"), "--modality", "MR", "--quiet"]) == 1
    assert (
        main(
            [
                "index",
                str(data),
                str(tmp_path / "idx"),
                "--modality",
                "MR",
                "--nan-fill",
                "min",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(["query", str(tmp_path / "idx"), str(data / "wmr.nii.gz"), "--nan-fill", "min"]) == 0
    )
