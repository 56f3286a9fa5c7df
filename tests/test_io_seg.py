"""DICOM SEG masks through highdicom, read back on the grid of the series they label.

Each test writes a small synthetic CT series (``tests/dicom_helpers.py``), makes a SEG
of known masks on it with ``highdicom.seg.Segmentation`` and checks that
:func:`cbirlib.io.load_seg_masks` gives those masks back in the volume's layout.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from cbirlib.errors import MaskShapeError, OptionalDependencyError, VolumeReadError
from cbirlib.io import load_seg_masks, load_volume
from cbirlib.labels import SliceLabels
from tests.dicom_helpers import PATIENT_NAME, write_dicom_series

hd = pytest.importorskip("highdicom")
codes = pytest.importorskip("pydicom.sr.codedict").codes

SHAPE = (6, 5, 7)  # (Z, Y, X): non-square slices
SPACING = (2.5, 0.8, 0.7)
ORIGIN = (10.0, -20.0, 30.0)


def write_series(
    folder: Path, *, mirror_x: bool = False, origin: tuple[float, ...] = ORIGIN
) -> list[pydicom.Dataset]:
    """A CT series with what a SEG's source images need; its datasets sorted by z."""
    volume = np.linspace(-500, 500, int(np.prod(SHAPE))).reshape(SHAPE)
    write_dicom_series(folder, volume, spacing=SPACING, origin=origin, mirror_x=mirror_x)
    frame_of_reference = hd.UID()
    datasets = []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame_of_reference
        for keyword in ("PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"):
            setattr(ds, keyword, "")
        ds.ReferringPhysicianName = ""
        ds.save_as(path)
        datasets.append(ds)
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def write_seg(
    path: Path,
    sources: list[pydicom.Dataset],
    masks_zyx: dict[str, npt.NDArray[np.bool_]],
    *,
    mirror_x: bool = False,
) -> Path:
    """A binary SEG of ``masks_zyx`` (cbirlib layout) on the sorted ``sources``."""
    # tests/dicom_helpers.py writes slice k's pixels as array[k, ::-1, ::-1] (or
    # array[k, ::-1, :] when mirror_x): rows run anterior -> posterior
    to_pixels = (
        slice(None),
        slice(None, None, -1),
        slice(None) if mirror_x else slice(None, None, -1),
    )
    pixels = np.stack([m[to_pixels] for m in masks_zyx.values()], axis=-1).astype(np.uint8)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name.split("#")[0],
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in enumerate(masks_zyx, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="cbirlib-tests",
        manufacturer_model_name="synthetic",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(path)
    return path


def known_masks() -> dict[str, npt.NDArray[np.bool_]]:
    liver = np.zeros(SHAPE, bool)
    liver[1:3, 1:4, 2:6] = True  # slices 1-2
    lesion = np.zeros(SHAPE, bool)
    lesion[5, 4, 0] = True  # one voxel in a corner, slices 3-4 empty between them
    return {"liver": liver, "lesion": lesion}


@pytest.mark.parametrize("mirror_x", [False, True])
def test_seg_masks_come_back_on_the_series_grid(tmp_path: Path, mirror_x: bool) -> None:
    sources = write_series(tmp_path / "ct", mirror_x=mirror_x)
    masks = known_masks()
    seg = write_seg(tmp_path / "seg.dcm", sources, masks, mirror_x=mirror_x)
    volume = load_volume(tmp_path / "ct")
    got = load_seg_masks(seg, volume)
    assert list(got) == ["liver", "lesion"]
    for name, mask in masks.items():
        assert got[name].dtype == np.bool_ and got[name].shape == volume.shape
        np.testing.assert_array_equal(got[name], mask)
    assert PATIENT_NAME not in repr(got.keys())


def test_seg_masks_are_custom_structures(tmp_path: Path) -> None:
    sources = write_series(tmp_path / "ct")
    seg = write_seg(tmp_path / "seg.dcm", sources, known_masks())
    volume = load_volume(tmp_path / "ct")
    labelled = volume.with_labels(SliceLabels.from_masks(load_seg_masks(seg, volume)))
    assert labelled.labels is not None
    assert labelled.labels.span("liver") == (1, 2)
    assert labelled.labels.span("lesion") == (5, 5)


def test_repeated_labels_stay_apart(tmp_path: Path) -> None:
    sources = write_series(tmp_path / "ct")
    liver = known_masks()["liver"]
    other = np.roll(liver, 2, axis=0)
    seg = write_seg(tmp_path / "seg.dcm", sources, {"lesion#1": liver, "lesion#2": other})
    got = load_seg_masks(seg, load_volume(tmp_path / "ct"))
    assert list(got) == ["lesion", "lesion (2)"]
    np.testing.assert_array_equal(got["lesion (2)"], other)


def test_seg_of_another_series_is_refused(tmp_path: Path) -> None:
    sources = write_series(tmp_path / "ct")
    seg = write_seg(tmp_path / "seg.dcm", sources, known_masks())
    write_series(tmp_path / "shifted", origin=(10.3, -20.0, 30.0))  # 0.3 mm: not on the grid
    with pytest.raises(MaskShapeError, match="voxel grid"):
        load_seg_masks(seg, load_volume(tmp_path / "shifted"))
    write_series(tmp_path / "moved", origin=(10.0, -20.0, 40.0))  # 4 slices up: outside
    with pytest.raises(MaskShapeError, match="outside"):
        load_seg_masks(seg, load_volume(tmp_path / "moved"))
    volume = load_volume(tmp_path / "ct")
    with pytest.raises(MaskShapeError, match="no affine"):
        load_seg_masks(seg, replace(volume, affine=None))


def test_not_a_seg_file(tmp_path: Path) -> None:
    write_series(tmp_path / "ct")
    image = sorted((tmp_path / "ct").iterdir())[0]
    with pytest.raises(VolumeReadError, match="DICOM SEG") as info:
        load_seg_masks(image, load_volume(tmp_path / "ct"))
    assert info.value.__cause__ is None


def test_missing_highdicom_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_series(tmp_path / "ct")
    seg = write_seg(tmp_path / "seg.dcm", sources, known_masks())
    volume = load_volume(tmp_path / "ct")
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(OptionalDependencyError, match=r"pip install cbirlib\[highdicom\]"):
        load_seg_masks(seg, volume)


# --- a SEG is not an image: never indexed as one ------------------------------------------


def test_a_seg_beside_its_series_is_skipped_not_read_as_a_second_volume(
    tmp_path: Path,
) -> None:
    from cbirlib.datasets.folders import discover_volumes
    from cbirlib.io import dicom_series

    folder = tmp_path / "data" / "ctA"
    sources = write_series(folder)
    write_seg(folder / "seg.dcm", sources, known_masks())
    series = dicom_series(folder)
    assert [s.n_slices for s in series] == [SHAPE[0]]  # the CT only
    found = discover_volumes(tmp_path / "data")
    assert [vid for vid, _ in found] == ["ctA"]  # not ctA/series-1 and ctA/series-2
    volume = found[0][1]()
    assert volume.modality == "CT" and volume.shape == SHAPE
    got = load_seg_masks(folder / "seg.dcm", volume)  # and the SEG still reads as masks
    np.testing.assert_array_equal(got["liver"], known_masks()["liver"])


def test_loading_a_seg_as_a_volume_is_refused_and_points_to_its_reader(tmp_path: Path) -> None:
    from cbirlib.datasets.folders import discover_volumes
    from cbirlib.errors import NotAnImageError

    sources = write_series(tmp_path / "ct")
    alone = tmp_path / "data" / "segs"
    alone.mkdir(parents=True)
    write_seg(alone / "seg.dcm", sources, known_masks())
    with pytest.raises(NotAnImageError, match=r"no volume to read: 1 SEG .*load_seg_masks"):
        load_volume(alone / "seg.dcm")
    with pytest.raises(NotAnImageError, match="load_seg_masks"):
        load_volume(alone)  # a folder of segmentations only
    shutil.copytree(tmp_path / "ct", tmp_path / "data" / "ct")
    assert [vid for vid, _ in discover_volumes(tmp_path / "data")] == ["ct"]
