"""Tests for the TotalSegmentator layout loader (hand-built tiny data sets)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import cbirlib.io
from cbirlib.datasets import TotalSegmentator
from cbirlib.errors import DatasetError, MaskShapeError, UnknownStructureError, UnknownSubjectError
from cbirlib.structures import TOTALSEG_V1_CLASSES
from cbirlib.volume import Volume

SHAPE_XYZ = (5, 6, 4)  # NIfTI (i, j, k) = (R, A, S) -> Volume (Z, Y, X) = (4, 6, 5)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)


def _subject(root: Path, sid: str, masks: dict[str, list[int]] | None = None) -> None:
    """A subject whose mask ``name`` covers one voxel in each listed slice k."""
    rng = np.random.default_rng(len(sid))
    _write(root / sid / "ct.nii.gz", rng.integers(-1000, 1000, SHAPE_XYZ).astype(np.int16))
    for name, slices in (masks or {}).items():
        m = np.zeros(SHAPE_XYZ, np.uint8)
        for k in slices:
            m[1, 2, k] = 1
        _write(root / sid / "segmentations" / f"{name}.nii.gz", m)


META = "image_id;age;gender;institute;study_type;split\n{rows}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _subject(tmp_path, "s0002", {"liver": [1, 2], "heart": [3], "skull": [0], "spleen": []})
    _subject(tmp_path, "s0000", {"liver": [0]})
    _subject(tmp_path, "s0001", {"brain": [3]})
    rows = "s0000;64;m;A;ct abdomen;train\ns0001;71;f;B;ct head;test\ns0002;50;f;A;ct thorax;val\n"
    (tmp_path / "meta.csv").write_text(META.format(rows=rows))
    return tmp_path


def test_listing_reads_no_image(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was read")

    monkeypatch.setattr(cbirlib.io, "load_volume", boom)
    monkeypatch.setattr(cbirlib.io, "load_mask", boom)
    ds = TotalSegmentator(root)
    assert ds.subjects == ("s0000", "s0001", "s0002")
    assert list(ds) == list(ds.subjects) and len(ds) == 3
    assert "s0001" in ds and "s9999" not in ds
    assert [ds.split_of(s) for s in ds] == ["train", "test", "val"]
    assert ds.subjects_in("test") == ("s0001",)
    assert TotalSegmentator(root, split="train").subjects == ("s0000",)


def test_load_volume_and_labels(root: Path) -> None:
    vol = TotalSegmentator(root)["s0002"]
    assert isinstance(vol, Volume)
    assert vol.id == "s0002"
    assert vol.shape == (4, 6, 5)
    assert vol.spacing == (3.0, 1.5, 1.5)
    labels = vol.labels
    assert labels is not None
    assert labels.names == TOTALSEG_V1_CLASSES
    assert labels.slices_with("liver").tolist() == [1, 2]
    assert not labels.contains("spleen")  # empty mask file
    assert not labels.contains("brain")  # absent mask file
    # the v2 "heart" mask marks every v1 heart class; "skull" has no v1 class
    for name in ("heart_myocardium", "heart_atrium_left", "heart_ventricle_right"):
        assert labels.slices_with(name).tolist() == [3]
    assert labels.volume_structures() == {"liver", *(n for n in labels.names if "heart_" in n)}


def test_labels_only_reads_no_image(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = TotalSegmentator(root)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CT was read")

    monkeypatch.setattr(cbirlib.io, "load_volume", boom)
    labels = ds.labels("s0000")
    assert len(labels) == 4
    assert labels.slices_with("liver").tolist() == [0]


def test_load_without_labels(root: Path) -> None:
    assert TotalSegmentator(root).load("s0001", labels=False).labels is None


def test_classes_and_min_pixels(tmp_path: Path) -> None:
    _subject(tmp_path, "a", {"liver": [1], "lung_upper_lobe_left": [2]})
    m = np.zeros(SHAPE_XYZ, np.uint8)
    m[:2, :2, 0] = 1  # 4 pixels in slice 0
    m[0, 0, 3] = 1  # 1 pixel in slice 3
    _write(tmp_path / "a" / "segmentations" / "spleen.nii.gz", m)
    ds = TotalSegmentator(tmp_path, classes=["spleen", "lung"])
    labels = ds.labels("a")
    assert labels.names[0] == "spleen" and len(labels.names) == 6
    assert labels.slices_with("spleen").tolist() == [0, 3]
    assert labels.slices_with("lung_upper_lobe_left").tolist() == [2]
    strict = TotalSegmentator(tmp_path, classes=["spleen"], min_pixels=2).labels("a")
    assert strict.slices_with("spleen").tolist() == [0]
    with pytest.raises(UnknownStructureError, match="liver"):
        TotalSegmentator(tmp_path, classes=["livr"])


def test_meta_is_optional_and_comma_separated_is_accepted(tmp_path: Path) -> None:
    _subject(tmp_path, "s1", {"liver": [0]})
    _subject(tmp_path, "s2", {"liver": [0]})
    ds = TotalSegmentator(tmp_path)
    assert ds.split_of("s1") is None
    with pytest.raises(DatasetError, match=r"meta\.csv"):
        TotalSegmentator(tmp_path, split="train")
    (tmp_path / "meta.csv").write_text("image_id,age,split\ns1,30,train\ns2,40,test\n")
    assert TotalSegmentator(tmp_path).split_of("s2") == "test"


@pytest.mark.parametrize(
    "text, message",
    [
        ("id;split\ns1;train\n", "image_id"),
        ("image_id;split\ns1;training\n", "training"),
        ("image_id;age;split\ns1;train\n", "line 2"),
        ("image_id;split\ns1;train\ns1;test\n", "duplicate"),
        ("", "empty"),
    ],
)
def test_malformed_meta_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    _subject(tmp_path, "s1")
    (tmp_path / "meta.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        TotalSegmentator(tmp_path)


def test_layout_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        TotalSegmentator(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no subject"):
        TotalSegmentator(tmp_path)
    _subject(tmp_path, "good")
    (tmp_path / "bad").mkdir()
    with pytest.raises(DatasetError, match=r"bad/ct\.nii\.gz"):
        TotalSegmentator(tmp_path)
    with pytest.raises(DatasetError, match="split"):
        TotalSegmentator(tmp_path, split="training")
    with pytest.raises(DatasetError, match="min_pixels"):
        TotalSegmentator(tmp_path, min_pixels=0)


def test_missing_segmentations_folder(tmp_path: Path) -> None:
    _subject(tmp_path, "s1")  # no masks at all
    ds = TotalSegmentator(tmp_path)
    assert ds.load("s1", labels=False).shape == (4, 6, 5)
    with pytest.raises(DatasetError, match="segmentations"):
        ds.load("s1")


def test_mask_of_wrong_shape(tmp_path: Path) -> None:
    _subject(tmp_path, "s1", {"liver": [0]})
    _write(tmp_path / "s1" / "segmentations" / "spleen.nii.gz", np.zeros((5, 6, 3), np.uint8))
    with pytest.raises(MaskShapeError, match="spleen"):
        TotalSegmentator(tmp_path).load("s1")


def test_unknown_subject(root: Path) -> None:
    ds = TotalSegmentator(root)
    with pytest.raises(UnknownSubjectError, match="s0003") as info:
        ds["s0003"]
    assert isinstance(info.value, KeyError)
    assert "s0000" in str(info.value)  # lists subjects / close matches
    with pytest.raises(UnknownSubjectError):
        ds.split_of("nope")
    assert ds.get("nope") is None  # Mapping semantics


def test_demographics_are_not_parsed(tmp_path: Path) -> None:
    _subject(tmp_path, "s1", {"liver": [0]})
    (tmp_path / "meta.csv").write_text("image_id;age;gender;split\ns1;not-a-number;?;train\n")
    ds = TotalSegmentator(tmp_path)
    vol = ds["s1"]
    assert ds.split_of("s1") == "train"
    assert "not-a-number" not in repr(vars(ds)) + repr(vars(vol))


def test_merged_v2_masks_are_or_ed_voxel_wise(tmp_path: Path) -> None:
    """heart_atrium_left <- v2 'heart' | 'atrial_appendage_left': a voxel in both files
    counts once, so summing per-file pixel counts would be wrong."""
    _write(tmp_path / "s0" / "ct.nii.gz", np.zeros(SHAPE_XYZ, np.int16))
    heart = np.zeros(SHAPE_XYZ, np.uint8)
    appendage = np.zeros(SHAPE_XYZ, np.uint8)
    heart[1, 2, 0] = appendage[1, 2, 0] = 1  # slice 0: the same voxel in both files
    heart[1, 2, 1] = appendage[3, 4, 1] = 1  # slice 1: two different voxels
    appendage[0, 0, 2] = 1  # slice 2: one voxel, appendage only
    _write(tmp_path / "s0" / "segmentations" / "heart.nii.gz", heart)
    _write(tmp_path / "s0" / "segmentations" / "atrial_appendage_left.nii.gz", appendage)
    ds = TotalSegmentator(
        tmp_path, min_pixels=2, classes=["heart_atrium_left", "heart_ventricle_left"]
    )
    labels = ds.labels("s0")
    assert labels.slices_with("heart_atrium_left").tolist() == [1]
    assert labels.slices_with("heart_ventricle_left").tolist() == []  # heart alone: 1 px
    ds1 = TotalSegmentator(tmp_path, classes=["heart_atrium_left", "heart_ventricle_left"])
    assert ds1.labels("s0").slices_with("heart_atrium_left").tolist() == [0, 1, 2]
    assert ds1.labels("s0").slices_with("heart_ventricle_left").tolist() == [0, 1]


def test_labels_keep_one_mask_in_memory_at_a_time(tmp_path: Path) -> None:
    import tracemalloc

    from cbirlib.datasets import make_phantoms

    ds = make_phantoms(tmp_path, 1, shape=(64, 64), seed=0)
    subject = ds.subjects[0]
    n_files = len(list((tmp_path / subject / "segmentations").glob("*.nii.gz")))
    z, y, x = ds.load(subject, labels=False).shape
    mask_bytes = z * y * x  # one boolean mask
    tracemalloc.start()
    try:
        labels = ds.labels(subject)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n_files >= 50 and len(labels.names) == 104
    # all masks at once would be >= n_files masks; a few masks' worth is the read itself
    assert peak < 15 * mask_bytes, f"peak {peak / mask_bytes:.1f} masks for {n_files} files"
