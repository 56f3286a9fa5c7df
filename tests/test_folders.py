"""Volumes in folders (cbirlib.datasets.folders): discovery, one volume, split roots."""

from __future__ import annotations

import numpy as np
import pytest

from cbirlib.datasets import check_split_root, discover_volumes, make_phantoms, open_volume
from cbirlib.errors import DatasetError, VolumeNotFoundError
from tests.dicom_helpers import write_dicom_series, write_nifti


def test_discover_volumes_finds_nifti_files_and_dicom_series(tmp_path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(4, 6, 5)).astype(np.float32)
    (tmp_path / "nifti" / "deep").mkdir(parents=True)
    write_nifti(tmp_path / "nifti" / "a.nii.gz", array)
    write_nifti(tmp_path / "nifti" / "deep" / "b.nii", array)
    write_dicom_series(tmp_path / "dicom" / "series1", array, spacing=(2.0, 1.0, 1.0))
    (tmp_path / "notes.txt").write_text("not a volume")
    found = dict(discover_volumes(tmp_path))
    assert sorted(found) == ["dicom/series1", "nifti/a", "nifti/deep/b"]
    for vid, load in found.items():
        volume = load()
        assert volume.id == vid
        np.testing.assert_array_equal(volume.array, array)
    assert found["dicom/series1"]().spacing[0] == pytest.approx(2.0)


def test_discover_volumes_splits_a_multi_series_dicom_folder(tmp_path) -> None:
    rng = np.random.default_rng(1)
    first = rng.integers(-1000, 1000, size=(3, 6, 5)).astype(np.float32)
    second = rng.integers(-1000, 1000, size=(5, 6, 5)).astype(np.float32)
    write_dicom_series(tmp_path / "study", first, prefix="a", description="DOE JOHN abdomen")
    write_dicom_series(tmp_path / "study", second, prefix="b", seed=1)
    found = dict(discover_volumes(tmp_path))
    assert sorted(found) == ["study/series-1", "study/series-2"]
    shapes = sorted(found[v]().array.shape[0] for v in found)
    assert shapes == [3, 5]
    assert all(found[v]().id == v for v in found)


def test_dicom_files_named_ima_or_dicom_without_preamble_are_found(tmp_path) -> None:
    # the readers' rule (any of .dcm/.ima/.dicom, or the DICM marker): a Siemens-style
    # folder of .IMA files without the preamble is a series here too, not a data folder
    rng = np.random.default_rng(2)
    array = rng.integers(-1000, 1000, size=(4, 6, 5)).astype(np.float32)
    series = tmp_path / "siemens"
    write_dicom_series(series, array)
    for i, path in enumerate(sorted(series.iterdir())):
        data = path.read_bytes()
        assert data[128:132] == b"DICM"
        path.unlink()
        (series / f"{path.stem}.{('IMA', 'dicom')[i % 2]}").write_bytes(data[132:])
    assert not any(p.suffix == ".dcm" for p in series.iterdir())
    found = dict(discover_volumes(tmp_path))
    assert sorted(found) == ["siemens"]
    np.testing.assert_array_equal(found["siemens"]().array, array)
    np.testing.assert_array_equal(open_volume(series).array, array)


def test_discover_volumes_errors(tmp_path) -> None:
    with pytest.raises(VolumeNotFoundError, match="does not exist"):
        discover_volumes(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"no volumes found .* expected NIfTI files"):
        discover_volumes(tmp_path)


def test_the_cli_exports_the_library_function() -> None:
    import cbirlib.cli

    assert cbirlib.cli.discover_volumes is discover_volumes


def test_open_volume_reads_subject_folders_with_labels_and_refuses_data_folders(tmp_path) -> None:
    data = make_phantoms(tmp_path / "data", 3, shape=(32, 32))
    subject = data.subjects[0]
    volume = open_volume(tmp_path / "data" / subject)
    assert volume.id == subject and volume.labels is not None
    assert volume.labels.contains("liver") == data.labels(subject).contains("liver")
    plain = open_volume(tmp_path / "data" / subject / "ct.nii.gz")
    assert plain.id == subject and plain.labels is None
    np.testing.assert_array_equal(plain.array, volume.array)
    with pytest.raises(DatasetError, match="is a data folder"):
        open_volume(tmp_path / "data")


def test_check_split_root_accepts_a_split_root_and_names_what_is_missing(tmp_path) -> None:
    make_phantoms(tmp_path / "data", 3, shape=(32, 32))
    check_split_root(tmp_path / "data")
    with pytest.raises(VolumeNotFoundError, match="does not exist"):
        check_split_root(tmp_path / "nope")
    (tmp_path / "nii" / "sub").mkdir(parents=True)
    write_nifti(tmp_path / "nii" / "sub" / "scan.nii.gz", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(DatasetError, match="is not a TotalSegmentator-layout root"):
        check_split_root(tmp_path / "nii")
    (tmp_path / "data" / "meta.csv").unlink()
    with pytest.raises(DatasetError, match=r"has no meta\.csv"):
        check_split_root(tmp_path / "data")


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtstruct.dcm", "rtplan.dcm"])
def test_rt_objects_in_a_data_folder_are_not_volumes(tmp_path, name) -> None:
    """pydicom's RT dose grid, structure set and plan beside a series and at the top."""
    import shutil

    from pydicom.data import get_testdata_file

    from cbirlib.errors import NotAnImageError
    from cbirlib.io import dicom_series, load_volume

    rt = get_testdata_file(name)
    array = np.random.default_rng(2).integers(-1000, 1000, size=(4, 6, 5)).astype(np.float32)
    write_dicom_series(tmp_path / "ct", array, spacing=(2.0, 1.0, 1.0))
    shutil.copy(rt, tmp_path / "ct" / name)
    shutil.copy(rt, tmp_path / name)
    found = dict(discover_volumes(tmp_path))
    assert sorted(found) == ["ct"]
    np.testing.assert_array_equal(found["ct"]().array, array)
    assert [s.n_slices for s in dicom_series(tmp_path / "ct")] == [4]
    with pytest.raises(NotAnImageError, match=r"no volume to read: 1 RT"):
        load_volume(tmp_path / name)


def test_a_modality_key_may_be_a_volume_id_and_an_unused_key_is_warned_about(
    tmp_path, caplog
) -> None:
    """``--modality ctpad=CT`` (an id: the file is ctpad.nii.gz) matched nothing, silently."""
    import logging

    ct = np.full((4, 6, 5), -1000.0, np.float32)
    ct[:, 2:4, 1:4] = 40.0
    write_nifti(tmp_path / "ctpad.nii.gz", ct)
    (tmp_path / "brains").mkdir()
    write_nifti(tmp_path / "brains" / "s01.nii.gz", ct + 1000.0)
    setting = {"*": "MR", "ctpad": "CT", "no_such_dir": "CT", "brains/s01": "PT"}
    with caplog.at_level(logging.WARNING, logger="cbirlib"):
        found = dict(discover_volumes(tmp_path, modality=setting))
    assert found["ctpad"]().modality == "CT" and found["brains/s01"]().modality == "PT"
    unused = [r.getMessage() for r in caplog.records if "modality setting" in r.getMessage()]
    assert len(unused) == 1
    assert unused[0].startswith("modality setting for 'no_such_dir' unused: no volume under")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cbirlib"):
        discover_volumes(tmp_path, modality={"*": "MR", "brains": "MR"})
    assert not [r for r in caplog.records if "modality setting" in r.getMessage()]


def test_localizer_images_are_no_slices_of_the_volume(tmp_path) -> None:
    """Scouts stored in the series they planned gave 'mixed orientations'."""
    import pydicom
    from pydicom.uid import generate_uid

    from cbirlib.errors import NotAnImageError
    from cbirlib.io import dicom_series, load_volume

    array = np.random.default_rng(3).integers(-1000, 1000, size=(4, 6, 5)).astype(np.float32)
    write_dicom_series(tmp_path / "ct", array, spacing=(2.0, 1.0, 1.0))
    first = sorted((tmp_path / "ct").iterdir())[0]
    scouts = tmp_path / "scouts"
    scouts.mkdir()
    for i, orientation in enumerate(([1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])):
        ds = pydicom.dcmread(first)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = orientation
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / "ct" / f"scout{i}.dcm")
        ds.SeriesInstanceUID = "1.2.3.4"  # and a scout series of their own
        ds.save_as(scouts / f"scout{i}.dcm")
    assert [s.n_slices for s in dicom_series(tmp_path / "ct")] == [4]
    np.testing.assert_array_equal(load_volume(tmp_path / "ct").array, array)
    assert sorted(dict(discover_volumes(tmp_path))) == ["ct"]
    with pytest.raises(NotAnImageError, match="no volume to read: 2 LOCALIZER"):
        load_volume(scouts)
