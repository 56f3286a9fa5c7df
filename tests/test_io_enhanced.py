"""Enhanced (multi-frame) DICOM through highdicom: the same Volume as the slice series.

The multi-frame files are made with highdicom's legacy converter from a synthetic series
(``tests/dicom_helpers.py``), so each frame's position lies in the Per-frame Functional
Groups and the rescale in the Pixel Value Transformation functional group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from cbirlib.errors import DicomSeriesError, OptionalDependencyError, VolumeReadError
from cbirlib.io import dicom_series, load_volume
from cbirlib.volume import Volume
from tests.dicom_helpers import PATIENT_ID, PATIENT_NAME, write_dicom_series

hd = pytest.importorskip("highdicom")
legacy = pytest.importorskip("highdicom.legacy")

SPACING = (2.5, 0.8, 0.7)
ORIGIN = (-10.0, 20.0, -100.0)


@pytest.fixture
def zyx() -> npt.NDArray[np.float32]:
    """A (Z, Y, X) = (S, A, R) CT volume, non-square slices, every value unique."""
    rng = np.random.default_rng(1)
    return (rng.permutation(5 * 6 * 7).reshape(5, 6, 7) * 2 - 300).astype(np.float32)


def write_multiframe(
    series: Path, out: Path, *, modality: str = "CT", reverse: bool = False
) -> Path:
    """Convert the slice files of ``series`` into one legacy-converted enhanced file."""
    files = sorted(series.iterdir())  # shuffled names: frames not in spatial order
    datasets = [pydicom.dcmread(f) for f in (files[::-1] if reverse else files)]
    frame_of_reference = hd.UID()
    for ds in datasets:
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    converter = (
        legacy.LegacyConvertedEnhancedCTImage
        if modality == "CT"
        else legacy.LegacyConvertedEnhancedMRImage
    )
    image = converter(
        datasets,
        series_instance_uid=hd.UID(),
        series_number=7,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out)
    return out


def _assert_same(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-6)
    np.testing.assert_allclose(a.z_positions, b.z_positions, atol=1e-6)
    assert a.affine is not None and b.affine is not None
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the converter's notes on missing tags
@pytest.mark.parametrize("reverse", [False, True])
def test_multiframe_file_matches_its_series(
    tmp_path: Path, zyx: npt.NDArray[np.float32], reverse: bool
) -> None:
    series = tmp_path / "series"
    write_dicom_series(series, zyx, spacing=SPACING, origin=ORIGIN, slope=2.0, intercept=-1000.0)
    path = write_multiframe(series, tmp_path / "mf" / "enhanced.dcm", reverse=reverse)
    assert int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames) == 5
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, zyx)  # rescale applied, frames sorted
    np.testing.assert_allclose(vol.z_positions, ORIGIN[2] + SPACING[0] * np.arange(5))
    assert vol.modality == "CT" and vol.id == "enhanced"
    _assert_same(vol, load_volume(series))
    assert vol.source is not None and vol.source.series_number == 7
    text = repr(vol.source) + repr(vol)
    assert PATIENT_NAME not in text and PATIENT_ID not in text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_folder_holding_one_multiframe_mr(tmp_path: Path, zyx: npt.NDArray[np.float32]) -> None:
    series = tmp_path / "series"
    write_dicom_series(series, zyx + 400, spacing=SPACING, origin=ORIGIN, modality="MR")
    folder = tmp_path / "enhanced_mr"
    write_multiframe(series, folder / "IM0001", modality="MR")  # no suffix, as scanners write
    assert [(s.n_slices, s.modality) for s in dicom_series(folder)] == [(5, "MR")]
    vol = load_volume(folder)
    assert vol.modality == "MR" and vol.id == "enhanced_mr"
    _assert_same(vol, load_volume(series))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_irregular_frames_are_refused(tmp_path: Path, zyx: npt.NDArray[np.float32]) -> None:
    series = tmp_path / "series"
    write_dicom_series(series, zyx, spacing=SPACING, origin=ORIGIN, skip=[2])
    path = write_multiframe(series, tmp_path / "gap.dcm")
    with pytest.raises(DicomSeriesError, match=r"gap\.dcm.*regularly spaced") as info:
        load_volume(path)
    assert info.value.__cause__ is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_frames_without_positions_are_named(tmp_path: Path, zyx: npt.NDArray[np.float32]) -> None:
    """As pydicom-data's emri_small.dcm: reported as "not regularly spaced" before."""
    series = tmp_path / "series"
    write_dicom_series(series, zyx, spacing=SPACING, origin=ORIGIN)
    path = write_multiframe(series, tmp_path / "nowhere.dcm")
    ds = pydicom.dcmread(path)
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(DicomSeriesError, match=r"nowhere\.dcm: .* have no positions in space"):
        load_volume(path)


def test_single_frame_file_still_points_to_its_folder(
    tmp_path: Path, zyx: npt.NDArray[np.float32]
) -> None:
    write_dicom_series(tmp_path / "s", zyx, shuffle=False)
    with pytest.raises(VolumeReadError, match=r"img0000\.dcm.*single-frame.*pass the folder"):
        load_volume(tmp_path / "s" / "img0000.dcm")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_missing_highdicom_names_the_extra(
    tmp_path: Path, zyx: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
) -> None:
    series = tmp_path / "series"
    write_dicom_series(series, zyx)
    path = write_multiframe(series, tmp_path / "mf.dcm")
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(OptionalDependencyError, match=r"pip install cbirlib\[highdicom\]"):
        load_volume(path)
