"""Tests for the synthetic phantom data set (written and read back through the loader)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cbirlib.datasets import (
    FIELDS_OF_VIEW,
    PhantomFacts,
    PhantomRealism,
    TotalSegmentator,
    make_phantoms,
    phantom_facts,
)
from cbirlib.datasets.phantom import PAD_CT
from cbirlib.errors import DatasetError
from cbirlib.io import load_mask, load_volume
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


# --- realism options -------------------------------------------------------------------------

REAL = PhantomRealism(
    mr_fraction=0.4,
    skull_stripped_fraction=0.2,
    padding_fraction=0.5,
    non_square_fraction=0.5,
    resliced_fraction=0.2,
    tilt_fraction=0.3,
)
REAL_N, REAL_SHAPE = 10, (40, 40)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> TotalSegmentator:
    return make_phantoms(
        tmp_path_factory.mktemp("realism"), REAL_N, seed=4, shape=REAL_SHAPE, realism=REAL
    )


def _facts(ds: TotalSegmentator, **want: object) -> dict[str, PhantomFacts]:
    """The subjects whose facts match every ``want`` (``padding=True``: any padding)."""
    out = {}
    for sid, f in phantom_facts(ds.root).items():
        ok = True
        for key, value in want.items():
            have = getattr(f, key)
            ok &= bool(any(have)) == value if key == "padding" else have == value
        if ok:
            out[sid] = f
    assert out, f"no subject with {want}"
    return out


def _nifti(ds: TotalSegmentator, sid: str, rel: str = "ct.nii.gz") -> nib.Nifti1Image:
    return nib.load(ds.root / sid / rel)


def _zyx(img: nib.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj).transpose(2, 1, 0)


def _load(ds: TotalSegmentator, sid: str, f: PhantomFacts) -> Volume:
    """``load_volume`` with the recorded modality (a tilted one warns: tested below)."""
    with warnings.catch_warnings():
        if f.tilt_deg:
            warnings.filterwarnings("ignore", ".*gantry tilt", UserWarning)
        return load_volume(ds.root / sid / "ct.nii.gz", modality=f.modality)


def test_realism_off_writes_the_plain_phantoms(tmp_path: Path) -> None:
    plain = make_phantoms(tmp_path / "a", 2, seed=5, shape=(24, 24))
    off = make_phantoms(tmp_path / "b", 2, seed=5, shape=(24, 24), realism=PhantomRealism())
    for sid in plain:
        for rel in ("ct.nii.gz", "segmentations/liver.nii.gz", "segmentations/brain.nii.gz"):
            assert (plain.root / sid / rel).read_bytes() == (off.root / sid / rel).read_bytes()
    facts = phantom_facts(plain.root)
    assert {f.modality for f in facts.values()} == {"CT"}
    assert all(f.padding == (0, 0) and f.tilt_deg == 0 for f in facts.values())
    assert list(facts) == list(plain.subjects)


def test_mr_contrast_has_zero_background_and_non_ct_contrast(tmp_path: Path) -> None:
    ct = make_phantoms(tmp_path / "ct", 2, seed=1, shape=(48, 48))
    mr = make_phantoms(
        tmp_path / "mr", 2, seed=1, shape=(48, 48),
        realism=PhantomRealism(mr_fraction=1.0, mr_scales=(4000.0,)),
    )  # fmt: skip
    for sid in ct:
        assert phantom_facts(mr.root)[sid].modality == "MR"
        a, b = _zyx(_nifti(ct, sid)).astype(float), _zyx(_nifti(mr, sid))
        assert b.shape == a.shape and b.dtype == np.int16
        assert b.min() == 0 and 2000 < b.max() < 6000  # arbitrary positive scale
        assert (b[:, :2, :2] == 0).all()  # background (air) is exactly zero
        # the same anatomy: every mask is identical
        for name in ("liver", "brain", "vertebrae_L3", "femur_left"):
            rel = f"segmentations/{name}.nii.gz"
            assert (ct.root / sid / rel).read_bytes() == (mr.root / sid / rel).read_bytes()
        # contrast unlike CT: fat (CT -100) brighter than muscle (CT +50), cortical bone dark
        muscle = np.zeros(a.shape, bool)
        for name in ("autochthon_left", "autochthon_right", "iliopsoas_left"):
            muscle |= _zyx(_nifti(ct, sid, f"segmentations/{name}.nii.gz")) > 0
        fat = (a > -160) & (a < -60)
        assert muscle.any() and fat.any()
        assert b[fat].mean() > 1.5 * b[muscle].mean()
        assert b[a > 900].mean() < b[fat].mean()
        # read back: a NIfTI records no modality, and the intensities say MR
        assert load_volume(mr.root / sid / "ct.nii.gz").modality == "MR"
        assert load_volume(ct.root / sid / "ct.nii.gz").modality == "CT"


def test_mr_unit_scale_is_float(tmp_path: Path) -> None:
    ds = make_phantoms(
        tmp_path, 1, seed=2, shape=(32, 32),
        realism=PhantomRealism(mr_fraction=1.0, mr_scales=(1.0,)),
    )  # fmt: skip
    img = _nifti(ds, "s0000")
    data = _zyx(img)
    assert img.get_data_dtype() == np.float32
    assert data.min() == 0.0 and 0.5 < data.max() < 1.5
    vol = load_volume(ds.root / "s0000" / "ct.nii.gz", modality="MR")
    assert vol.modality == "MR" and np.array_equal(vol.array, data)


def test_skull_stripped_keeps_only_the_brain(real: TotalSegmentator) -> None:
    for sid, f in _facts(real, skull_stripped=True).items():
        assert f.modality == "MR"
        image = _zyx(_nifti(real, sid))
        brain = _zyx(_nifti(real, sid, "segmentations/brain.nii.gz")) > 0
        assert brain.any() and (image[~brain] == 0).all()
        assert image[brain].mean() > 0
        assert (image[-1] == 0).all()  # empty slices above the vertex
        counts = brain.reshape(len(brain), -1).sum(axis=1)
        assert counts[-1] == 0 and counts.max() > 10 * max(1, counts[counts > 0][-1])
        assert real.labels(sid).volume_structures() == {"brain"}  # every other mask empty


def test_padding_slices_are_blank_and_constant(real: TotalSegmentator) -> None:
    for sid, f in _facts(real, padding=True).items():
        below, above = f.padding
        image = _zyx(_nifti(real, sid))
        pad = PAD_CT if f.modality == "CT" else 0
        blank = np.concatenate([image[:below], image[len(image) - above :]])
        assert len(blank) == below + above and (blank == pad).all()
        if not f.skull_stripped:  # (a brain-only head's own end slices are blank too)
            assert image[below].std() > 0 and image[len(image) - above - 1].std() > 0
        liver = _zyx(_nifti(real, sid, "segmentations/liver.nii.gz"))
        assert not liver[:below].any() and not liver[len(image) - above :].any()
        vol = _load(real, sid, f)
        step = np.diff(vol.z_positions)
        assert np.allclose(step, f.thickness_mm)


def test_non_square_matrix_with_square_pixels(real: TotalSegmentator) -> None:
    shapes = set()
    for sid, f in phantom_facts(real.root).items():
        img = _nifti(real, sid)
        rows, cols = img.shape[1], img.shape[0]
        shapes.add((rows, cols))
        if (rows, cols) == REAL_SHAPE:
            continue
        assert min(rows, cols) >= 0.74 * REAL_SHAPE[0] and max(rows, cols) == REAL_SHAPE[0]
        # bodies are wider than deep (fewer rows), brain-only heads deeper than wide
        assert (cols < rows) == f.skull_stripped
        vol = _load(real, sid, f)
        assert vol.shape[1:] == (rows, cols)
        assert vol.spacing[1] == pytest.approx(vol.spacing[2])
        assert np.allclose(img.header.get_zooms()[:2], vol.spacing[1])
    assert len(shapes) > 1


def test_resliced_copies_are_consistent(real: TotalSegmentator) -> None:
    facts = phantom_facts(real.root)
    copies: dict[str, list[str]] = {}
    for sid, f in facts.items():
        if sid != f.source_id:
            copies.setdefault(f.source_id, []).append(sid)
    assert copies
    for source, sids in copies.items():
        assert source not in facts
        assert sorted(sids) == sorted(f"{source}_{t:g}mm" for t in REAL.thicknesses)
        assert len({facts[s].split for s in sids}) == 1  # one split: no query/database leak
        vols = {}
        for sid in sids:
            vols[facts[sid].thickness_mm] = _load(real, sid, facts[sid])
        base = vols[1.5]
        z0 = base.z_positions[0]
        extent = base.z_positions[-1] - z0
        for t, vol in vols.items():
            assert vol.spacing[0] == pytest.approx(t)
            assert vol.z_positions[0] == pytest.approx(z0)
            assert extent - t < vol.z_positions[-1] - z0 <= extent + 1e-6
            sid = f"{source}_{t:g}mm"
            mask = load_mask(real.root / sid / "segmentations" / "liver.nii.gz", like=vol)
            base_mask = load_mask(
                real.root / f"{source}_1.5mm" / "segmentations" / "liver.nii.gz", like=base
            )
            # masks: the base slice nearest in mm; image: exact where the grids meet
            k = np.rint((vol.z_positions - z0) / 1.5).astype(int)
            assert np.array_equal(mask, base_mask[k])
            meet = np.flatnonzero(np.isclose((vol.z_positions - z0) / 1.5, k))
            assert meet.size >= 2
            assert np.array_equal(vol.array[meet], base.array[k[meet]])
        # linear in between: 2.5 mm slice 1 lies 2/3 of the way from base slice 1 to 2
        # (to the rounding of both images, away from CT's clipping at -1024 HU)
        mid = vols[2.5].array[1].astype(float)
        expect = base.array[1] / 3 + 2 * base.array[2].astype(float) / 3
        away = (base.array[1] > -1000) & (base.array[2] > -1000)
        assert away.sum() > 20 and np.abs(mid - expect)[away].max() <= 1.0 + 1e-3


def test_gantry_tilt_shears_the_affine(real: TotalSegmentator) -> None:
    for sid, f in _facts(real).items():
        affine = _nifti(real, sid).affine
        if f.tilt_deg == 0:
            assert affine[1, 2] == 0
            continue
        assert 20 / 3 - 1e-6 <= abs(f.tilt_deg) <= 20
        step = f.thickness_mm * np.tan(np.radians(f.tilt_deg))
        assert affine[1, 2] == pytest.approx(step, rel=1e-4) and affine[2, 2] == pytest.approx(
            f.thickness_mm
        )
        assert np.allclose(_nifti(real, sid, "segmentations/liver.nii.gz").affine, affine)
        with pytest.warns(UserWarning, match="gantry tilt"):
            vol = load_volume(real.root / sid / "ct.nii.gz", modality=f.modality)
        assert vol.spacing[0] == pytest.approx(f.thickness_mm)  # the true slice spacing
        assert np.allclose(np.diff(vol.z_positions), f.thickness_mm)
    assert any(f.tilt_deg for f in phantom_facts(real.root).values())


def test_realism_is_deterministic_and_validated(tmp_path: Path) -> None:
    a = make_phantoms(tmp_path / "a", 4, seed=9, shape=(24, 24), realism="hard")
    b = make_phantoms(tmp_path / "b", 4, seed=9, shape=(24, 24), realism="hard")
    assert a.subjects == b.subjects
    for sid in a:
        for rel in ("ct.nii.gz", "segmentations/brain.nii.gz"):
            assert (a.root / sid / rel).read_bytes() == (b.root / sid / rel).read_bytes()
    assert (a.root / "meta.csv").read_bytes() == (b.root / "meta.csv").read_bytes()
    with pytest.raises(DatasetError, match="realism preset"):
        make_phantoms(tmp_path / "c", 1, shape=(24, 24), realism="easy")
    with pytest.raises(DatasetError, match="mr_fraction"):
        PhantomRealism(mr_fraction=1.5)
    with pytest.raises(DatasetError, match="thicknesses"):
        PhantomRealism(thicknesses=(2.5, 2.5))
    with pytest.raises(DatasetError, match="tilt_deg"):
        PhantomRealism(tilt_deg=60)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "meta.csv").write_text("image_id;split\ns1;train\n")
    with pytest.raises(DatasetError, match="missing columns"):
        phantom_facts(tmp_path / "d")
