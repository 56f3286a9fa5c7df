"""Tests for the synthetic phantom data set (written and read back through the loader)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cbirlib.datasets import FIELDS_OF_VIEW, TotalSegmentator, make_phantoms
from cbirlib.errors import DatasetError
from cbirlib.io import load_mask
from cbirlib.structures import COARSE_GROUPS, TOTALSEG_V1_CLASSES
from cbirlib.volume import Volume

N, SHAPE = 5, (64, 64)


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> TotalSegmentator:
    return make_phantoms(tmp_path_factory.mktemp("phantoms"), N, seed=3, shape=SHAPE)


@pytest.fixture(scope="module")
def whole_body(ds: TotalSegmentator) -> Volume:
    return ds["s0000"]  # subject 0 is always whole-body


def _mask(ds: TotalSegmentator, vol: Volume, name: str) -> np.ndarray:
    return load_mask(ds.root / vol.id / "segmentations" / f"{name}.nii.gz", like=vol)


def test_layout_is_totalsegmentator(ds: TotalSegmentator) -> None:
    root = ds.root
    assert sorted(p.name for p in root.iterdir()) == ["meta.csv", *(f"s{i:04d}" for i in range(N))]
    with (root / "meta.csv").open() as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert [r["image_id"] for r in rows] == list(ds.subjects)
    assert {"age", "gender", "institute", "study_type", "split"} <= set(rows[0])
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for sid in ds:
        ct = nib.load(root / sid / "ct.nii.gz")
        assert ct.get_data_dtype() == np.int16
        assert np.allclose(ct.header.get_zooms(), np.abs(np.diag(ct.affine)[:3]))
        assert ct.header.get_xyzt_units()[0] == "mm"
        seg = root / sid / "segmentations"
        assert sorted(p.name for p in seg.iterdir()) == sorted(
            f"{n}.nii.gz" for n in TOTALSEG_V1_CLASSES
        )
        for name in ("liver", "brain", "femur_left"):
            m = nib.load(seg / f"{name}.nii.gz")
            assert m.shape == ct.shape
            assert m.get_data_dtype() == np.uint8
            assert np.allclose(m.affine, ct.affine)


def test_loads_through_the_loader(ds: TotalSegmentator, whole_body: Volume) -> None:
    assert whole_body.shape[1:] == SHAPE
    assert whole_body.labels is not None
    assert whole_body.labels.names == TOTALSEG_V1_CLASSES
    assert TotalSegmentator(ds.root).subjects == ds.subjects


def test_many_structures_and_coarse_regions(ds: TotalSegmentator, whole_body: Volume) -> None:
    present: set[str] = set()
    for sid in ds:
        present |= ds.labels(sid).volume_structures()
    assert len(present) >= 20
    assert whole_body.labels is not None
    coarse = whole_body.labels.grouped(COARSE_GROUPS).volume_structures()
    assert len(coarse) >= 25  # a whole-body scan shows nearly every region


def _mean_z(vol: Volume, names: list[str]) -> float:
    assert vol.labels is not None
    idx = np.concatenate([vol.labels.slices_with(n) for n in names])
    assert idx.size, names
    return float(vol.z_positions[idx].mean())


def test_anatomical_order_along_z(whole_body: Volume) -> None:
    lungs = [n for n in TOTALSEG_V1_CLASSES if n.startswith("lung_")]
    order = [["brain"], lungs, ["liver"], ["urinary_bladder"], ["femur_left", "femur_right"]]
    z = [_mean_z(whole_body, names) for names in order]
    assert z == sorted(z, reverse=True)
    vertebrae = [_mean_z(whole_body, [f"vertebrae_{v}"]) for v in ("C2", "T1", "T8", "L1", "L5")]
    assert vertebrae == sorted(vertebrae, reverse=True)
    assert _mean_z(whole_body, ["sacrum"]) < vertebrae[-1]


def test_in_plane_anatomy_follows_ras(ds: TotalSegmentator, whole_body: Volume) -> None:
    def centroid(name: str) -> np.ndarray:
        return np.argwhere(_mask(ds, whole_body, name)).mean(axis=0)  # (z, y, x)

    # +x = patient's right: liver and right kidney at larger column index
    assert centroid("liver")[2] > centroid("spleen")[2]
    assert centroid("kidney_right")[2] > centroid("kidney_left")[2]
    assert centroid("lung_upper_lobe_right")[2] > centroid("lung_upper_lobe_left")[2]
    # +y = anterior: heart and bladder in front of the spine
    assert centroid("heart_ventricle_right")[1] > centroid("vertebrae_T8")[1]
    assert centroid("urinary_bladder")[1] > centroid("sacrum")[1]


def test_hounsfield_units_are_plausible(ds: TotalSegmentator, whole_body: Volume) -> None:
    def mean_hu(*names: str) -> float:
        mask = np.zeros(whole_body.shape, bool)
        for name in names:
            mask |= _mask(ds, whole_body, name)
        assert mask.any(), names
        return float(whole_body.array[mask].mean())

    assert mean_hu("lung_upper_lobe_left", "lung_lower_lobe_right") < -500
    assert mean_hu("vertebrae_L3", "vertebrae_T6", "femur_left", "hip_right", "rib_left_5") > 300
    assert 40 <= mean_hu("liver") <= 80
    assert 20 <= mean_hu("brain") <= 50
    assert mean_hu("trachea") < -800
    corner = whole_body.array[:, :3, :3]
    assert corner.mean() < -900  # air outside the body


def test_subjects_differ(ds: TotalSegmentator) -> None:
    vols = [ds.load(s, labels=False) for s in ds]
    assert len({v.n_slices for v in vols}) > 1
    assert len({v.spacing[0] for v in vols}) > 1
    assert len({round(v.spacing[1], 3) for v in vols}) == len(vols)
    with (ds.root / "meta.csv").open() as f:
        fovs = [row["study_type"] for row in csv.DictReader(f, delimiter=";")]
    assert len(set(fovs)) == N
    assert {f.removeprefix("ct ").replace(" ", "_") for f in fovs} <= set(FIELDS_OF_VIEW)
    assert all(v.n_slices <= 150 for v in vols)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_phantoms(tmp_path / "a", 2, seed=5, shape=(24, 24))
    b = make_phantoms(tmp_path / "b", 2, seed=5, shape=(24, 24))
    c = make_phantoms(tmp_path / "c", 1, seed=6, shape=(24, 24))
    one = make_phantoms(tmp_path / "one", 1, seed=5, shape=(24, 24))
    for sid in a:
        assert np.array_equal(a.load(sid).array, b.load(sid).array)
        for rel in ("ct.nii.gz", "segmentations/liver.nii.gz"):
            assert (a.root / sid / rel).read_bytes() == (b.root / sid / rel).read_bytes()
    assert not np.array_equal(a["s0000"].array, c["s0000"].array)
    # subject i depends on (seed, i) only, not on how many subjects are written
    assert np.array_equal(a["s0000"].array, one["s0000"].array)


def test_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("occupied")
    with pytest.raises(DatasetError, match="empty"):
        make_phantoms(tmp_path, 1, shape=(24, 24))
    with pytest.raises(DatasetError, match="n must be"):
        make_phantoms(tmp_path / "new", 0)
    with pytest.raises(DatasetError, match="shape"):
        make_phantoms(tmp_path / "new", 1, shape=(8, 8))
