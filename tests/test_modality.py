"""Modality is never assumed silently, and tilted acquisitions warn (issue 11, items 1, 7)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from cbirlib.datasets import make_phantoms
from cbirlib.datasets.totalsegmentator import TotalSegmentator
from cbirlib.errors import (
    DatasetError,
    IndexFormatError,
    InvalidVolumeError,
    ModalityMismatchWarning,
    SettingError,
    SliceIndexError,
    VolumeNotInIndexError,
)
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.index import ExactIndex, SliceIndex, build_index, load_index
from cbirlib.io import guess_modality, load_volume
from cbirlib.modality import (
    GUESS_SAMPLES,
    effective_modality,
    modality_for,
    normalize_modality,
    parse_modality_setting,
)
from cbirlib.pipeline import Pipeline
from cbirlib.search import SliceSearch
from cbirlib.volume import Volume
from tests.dicom_helpers import write_dicom_series
from tests.fakes import write_meta

F32 = npt.NDArray[np.float32]


# --- volumes with real-data habits ------------------------------------------------------


def _disc(size: int, radius: float, *, squash: float = 1.0) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    return np.asarray(np.sqrt((yy / squash) ** 2 + xx**2) <= radius)


def ct_chest(n: int = 12, size: int = 48, seed: int = 0) -> F32:
    """Air -1000 around the body, soft tissue 40, lungs -850, a bone ring 1000."""
    rng = np.random.default_rng(seed)
    vol = np.full((n, size, size), -1000.0, np.float32)
    for z in range(n):
        sl = vol[z]
        sl[_disc(size, 0.42 * size, squash=0.8)] = 40.0
        sl[_disc(size, 0.36 * size, squash=0.8) & ~_disc(size, 0.32 * size, squash=0.8)] = 1000.0
        lung = _disc(size, 0.12 * size + z % 3)
        sl[np.roll(lung, 8, axis=1) | np.roll(lung, -8, axis=1)] = -850.0
    return vol + rng.normal(0, 12, vol.shape).astype(np.float32)


def mr_head(n: int = 24, size: int = 64, seed: int = 0) -> F32:
    """A T1-like head: zero background, scalp, dark skull, grey and white matter, ventricles.

    Magnitude noise (``abs``) keeps every voxel non-negative, as in an MR magnitude image;
    values reach about 2500 (arbitrary units).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    vol = np.zeros((n, size, size), np.float32)
    for z in range(n):
        r = size * 0.42 * np.sqrt(1 - abs((z - n / 2) / (n / 2 + 2)))
        d = np.sqrt((yy / 1.15) ** 2 + xx**2)
        sl = vol[z]
        sl[d <= r] = 2400.0  # scalp
        sl[d <= 0.9 * r] = 300.0  # skull
        sl[d <= 0.82 * r] = 1400.0  # grey matter
        sl[d <= 0.6 * r] = 2000.0  # white matter
        vent = (yy / (0.3 * r + 1)) ** 2 + ((np.abs(xx) - 0.15 * r) / (0.08 * r + 1)) ** 2 <= 1
        sl[vent & (d <= 0.6 * r)] = 400.0 if z % 3 else 600.0
    return np.abs(vol + rng.normal(0, 60, vol.shape)).astype(np.float32)


def save_nifti(path: Path, zyx: F32, spacing: tuple[float, float, float] = (3, 1, 1)) -> Path:
    dz, dy, dx = spacing
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), np.diag([dx, dy, dz, 1.0])), path)
    return path


# --- guess_modality ---------------------------------------------------------------------


def test_guess_real_habit_ct() -> None:
    assert guess_modality(ct_chest()) == "CT"


@pytest.mark.parametrize("scale", [1.0, 1.6, 1 / 2500], ids=["0-2500", "0-4000", "0-1"])
def test_guess_mr_with_zero_background_at_any_scale(scale: float) -> None:
    assert guess_modality(mr_head() * scale) == "MR"


def test_guess_skull_stripped_template() -> None:
    template = mr_head()
    brain = np.zeros_like(template)
    inside = np.sqrt(np.abs(template - 1700.0)) < 25  # grey and white matter only
    brain[inside] = template[inside]
    assert brain.min() == 0 and brain.max() > 1000
    assert guess_modality(brain) == "MR"
    assert guess_modality(brain / brain.max()) == "MR"  # a template scaled to 0..1


def test_guess_mr_rescaled_1000x_and_with_ringing() -> None:
    mr = mr_head()
    assert guess_modality(mr * 1000.0) == "MR"
    ringing = mr.copy()
    ringing[:, ::9, ::7] *= -0.02  # interpolation undershoot: small negative values
    assert ringing.min() < -40
    assert guess_modality(ringing * 1000.0) == "MR"


@pytest.mark.parametrize("pad", [-1024.0, 0.0, -3024.0])
def test_guess_ct_with_blank_padding_slices(pad: float) -> None:
    ct = ct_chest(n=6)
    blank = np.full((10, *ct.shape[1:]), pad, np.float32)
    padded = np.concatenate([blank, ct, blank])  # most slices are padding
    assert guess_modality(padded) == "CT"


def test_guess_ct_cropped_inside_the_body() -> None:
    chest = ct_chest()
    crop = np.where(chest < -500, -100.0, chest)[:, 10:38, 6:42]  # fat, soft tissue, bone
    assert (crop > -500).all()
    assert guess_modality(crop) == "CT"
    zscored = (mr_head() - 1000.0) / 800.0  # an MR normalised to mean 0: a few units wide
    assert zscored.min() < 0
    assert guess_modality(zscored) == "MR"


def test_guess_needs_finite_voxels() -> None:
    assert guess_modality(np.array([np.nan, -1000.0, -990.0])) == "CT"
    with pytest.raises(InvalidVolumeError, match="finite"):
        guess_modality(np.full(5, np.nan))


def test_guess_is_deterministic_on_large_volumes() -> None:
    big = np.tile(ct_chest(n=4, size=32), (1, 1, 1))
    big = np.concatenate([big] * 600)  # 2.4 M voxels: sampled
    assert big.size > GUESS_SAMPLES
    assert {guess_modality(big) for _ in range(3)} == {"CT"}


# --- names and settings -----------------------------------------------------------------


def test_normalize_modality() -> None:
    assert [normalize_modality(v) for v in ("mr", "MRI", " Ct ", "PT", "", "Unknown")] == [
        "MR",
        "MR",
        "CT",
        "PT",
        "unknown",
        "unknown",
    ]
    for bad in ("magnetic resonance", "C", "x!", "brain"):
        with pytest.raises(SettingError, match="modality"):
            normalize_modality(bad)
    with pytest.raises(SettingError, match="did you mean 'MR'"):
        normalize_modality("MRR")


def test_volume_modality_defaults_to_unknown_and_is_normalised() -> None:
    arr = ct_chest(n=3)
    assert Volume("v", arr).modality == "unknown"
    assert Volume("v", arr, modality="mri").modality == "MR"
    assert Volume("v", arr, modality="MR").slab(0, 2).modality == "MR"
    with pytest.raises(InvalidVolumeError, match=r"'v'.*modality"):
        Volume("v", arr, modality="magnetic")


def test_per_folder_setting() -> None:
    setting = parse_modality_setting(["CT", "head=MR", "head/ct_scans=CT"])
    assert setting == {"*": "CT", "head": "MR", "head/ct_scans": "CT"}
    assert modality_for("head/s01.nii.gz", setting) == "MR"
    assert modality_for("head/ct_scans/s02", setting) == "CT"
    assert modality_for("header/s03", setting) == "CT"  # whole components only: the default
    assert modality_for("x", {"head": "MR"}) is None  # no match: guess
    assert modality_for("x", "mri") == "MR"
    assert modality_for("x", None) is None
    assert parse_modality_setting([]) is None
    with pytest.raises(SettingError, match="given twice"):
        parse_modality_setting(["a=MR", "a/=CT"])
    with pytest.raises(SettingError, match="FOLDER=MODALITY"):
        parse_modality_setting(["=MR"])
    with pytest.raises(SettingError, match="invalid modality"):
        parse_modality_setting(["head=brain"])


# --- readers ------------------------------------------------------------------------------


def test_nifti_without_modality_logs_the_guess(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_nifti(tmp_path / "head.nii.gz", mr_head(n=6))
    save_nifti(tmp_path / "chest.nii.gz", ct_chest(n=6))
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        assert load_volume(tmp_path / "head.nii.gz").modality == "MR"
        assert load_volume(tmp_path / "chest.nii.gz").modality == "CT"
    records = [r for r in caplog.records if r.name == "cbirlib.io"]
    assert len(records) == 2 and all(r.levelno == logging.WARNING for r in records)
    assert "head.nii.gz" in records[0].getMessage()
    assert "guessed MR" in records[0].getMessage() and "modality=" in records[0].getMessage()
    assert "guessed CT" in records[1].getMessage()


def test_nifti_modality_from_the_caller_or_a_sidecar_is_not_guessed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_nifti(tmp_path / "head.nii.gz", mr_head(n=6))
    save_nifti(tmp_path / "other.nii", mr_head(n=6))
    (tmp_path / "other.json").write_text(json.dumps({"Modality": "CT", "EchoTime": 0.01}))
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        assert load_volume(path, modality="CT").modality == "CT"  # the caller decides
        assert load_volume(path, modality="mri").modality == "MR"
        assert load_volume(tmp_path / "other.nii").modality == "CT"  # dcm2niix sidecar
    assert caplog.text == ""
    with pytest.raises(SettingError, match="invalid modality"):
        load_volume(path, modality="T1 weighted")


def test_dicom_modality_tag_is_used_and_its_absence_guessed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mr = np.round(mr_head(n=4, size=16))
    write_dicom_series(tmp_path / "tagged", mr, modality="MR", intercept=0.0)
    write_dicom_series(tmp_path / "untagged", mr, intercept=0.0, write_modality=False)
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        assert load_volume(tmp_path / "tagged").modality == "MR"
        assert caplog.text == ""
        assert load_volume(tmp_path / "untagged").modality == "MR"
    assert "no Modality tag" in caplog.text and "guessed MR" in caplog.text


# --- the failure: an MR windowed as a CT ----------------------------------------------------


def _cosines(a: F32, b: F32) -> F32:
    return np.asarray((a * b).sum(axis=1), dtype=np.float32)


def test_mr_and_its_rescaled_copy_embed_alike(tmp_path: Path) -> None:
    mr = mr_head()
    save_nifti(tmp_path / "mr.nii.gz", mr)
    save_nifti(tmp_path / "mr_scaled.nii.gz", mr * 0.00025)  # 0..0.6 instead of 0..2500
    ex = BaselineExtractor()

    def embed(name: str, modality: str | None) -> F32:
        return ex.extract(load_volume(tmp_path / name, modality=modality))

    # before: every NIfTI was a CT, so the HU window saw two different images
    as_ct = _cosines(embed("mr.nii.gz", "CT"), embed("mr_scaled.nii.gz", "CT"))
    assert as_ct.mean() < 0.8
    guessed = _cosines(embed("mr.nii.gz", None), embed("mr_scaled.nii.gz", None))
    given = _cosines(embed("mr.nii.gz", "MR"), embed("mr_scaled.nii.gz", "MR"))
    assert guessed.min() > 0.999 and given.min() > 0.999


def test_in_memory_unknown_volume_is_windowed_as_guessed() -> None:
    mr = mr_head(n=6)
    ex = BaselineExtractor()
    np.testing.assert_allclose(
        ex.extract(Volume("u", mr)), ex.extract(Volume("m", mr, modality="MR")), atol=1e-6
    )
    ct = ct_chest(n=4)
    np.testing.assert_allclose(
        ex.extract(Volume("u", ct)), ex.extract(Volume("c", ct, modality="CT")), atol=1e-6
    )
    assert effective_modality("unknown", mr) == "MR" and effective_modality("PT", ct) == "PT"


# --- data sets -------------------------------------------------------------------------------


def test_totalsegmentator_modality(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_phantoms(tmp_path / "ds", 3, shape=(24, 24), seed=1).root
    mri = root / "s0002" / "mri.nii.gz"
    (root / "s0002" / "ct.nii.gz").rename(mri)  # the TotalSegmentator MRI layout
    ds = TotalSegmentator(root)
    assert [ds.modality_of(s) for s in ds] == ["CT", "CT", "MR"]
    assert ds.image_path("s0002") == mri
    assert ds.load("s0002", labels=False).modality == "MR"
    assert ds.load("s0000", labels=False).modality == "CT"
    per_subject = TotalSegmentator(root, modality={"s0001": "mr", "*": "PT"})
    assert [per_subject.modality_of(s) for s in per_subject] == ["PT", "MR", "PT"]
    assert TotalSegmentator(root, modality="MR").load("s0000", labels=False).modality == "MR"
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        guessed = TotalSegmentator(root, modality="unknown").load("s0000", labels=False)
    assert guessed.modality == "CT" and "guessed CT" in caplog.text
    with pytest.raises(DatasetError, match="s0009"):
        TotalSegmentator(root, modality={"s0009": "MR"})
    with pytest.raises(SettingError):
        TotalSegmentator(root, modality="brain")


# --- the index records modalities ------------------------------------------------------------


@pytest.mark.parametrize("cls", [SliceIndex, ExactIndex])
def test_index_records_modality_and_round_trips(cls: type, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    index = cls(4)
    index.add("ct", rng.normal(size=(3, 4)), modality="CT")
    index.add("mr", rng.normal(size=(2, 4)), modality="mri")
    index.add("plain", rng.normal(size=(2, 4)))
    assert index.modalities == {"ct": "CT", "mr": "MR", "plain": "unknown"}
    index.remove("ct")
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert loaded.modalities == {"mr": "MR", "plain": "unknown"}
    assert loaded.modality("mr") == "MR"
    with pytest.raises(VolumeNotInIndexError):
        loaded.modality("ct")
    with pytest.raises(SliceIndexError, match=r"'x'.*modality"):
        index.add("x", rng.normal(size=(1, 4)), modality="x-ray!")


def test_index_without_modalities_loads_as_unknown(tmp_path: Path) -> None:
    index = SliceIndex(4)
    index.add("a", np.eye(4), modality="CT")
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    del meta["files"]["modalities.npy"]  # what an index saved before this release holds
    (tmp_path / "idx" / "modalities.npy").unlink()
    write_meta(tmp_path / "idx", meta)
    assert load_index(tmp_path / "idx").modalities == {"a": "unknown"}


def test_index_with_a_damaged_modality_file_is_refused(tmp_path: Path) -> None:
    index = SliceIndex(4)
    index.add("a", np.eye(4), modality="CT")
    index.save(tmp_path / "idx")
    np.save(tmp_path / "idx" / "modalities.npy", np.array(["CT", "MR"]))
    with pytest.raises(IndexFormatError, match=r"modalities\.npy"):
        load_index(tmp_path / "idx", verify=False)


def test_build_index_records_what_the_extractor_windowed(tmp_path: Path) -> None:
    vols = [
        Volume("chest", ct_chest(n=4, size=32)),  # unknown: recorded as guessed
        Volume("head", mr_head(n=4, size=32)),
        Volume("pet", mr_head(n=4, size=32, seed=1), modality="PT"),
    ]
    index = build_index(vols, BaselineExtractor(size=32), tmp_path / "idx", verbose=False)
    assert index.modalities == {"chest": "CT", "head": "MR", "pet": "PT"}


# --- a query of another modality warns ------------------------------------------------------


def test_query_of_another_modality_warns(tmp_path: Path) -> None:
    ex = BaselineExtractor(size=32)
    cts = [Volume(f"ct{i}", ct_chest(n=4, size=32, seed=i), modality="CT") for i in range(2)]
    index = build_index(cts, ex, tmp_path / "idx", verbose=False)
    chain = Pipeline([SliceSearch(ex, index, k=3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chain.retrieve([Volume("q_ct", ct_chest(n=4, size=32, seed=5))])  # guessed CT: quiet
    mr_query = Volume("q_mr", mr_head(n=4, size=32), modality="MR")
    with pytest.warns(ModalityMismatchWarning, match=r"1 query is MR \(e\.g\. 'q_mr'\).*CT"):
        chain.retrieve([mr_query])
    unknown = SliceIndex(ex.dim, extractor_config=ex.to_config())
    unknown.add("old", ex.extract(cts[0]))  # an index that recorded no modality
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline([SliceSearch(ex, unknown, k=3)]).retrieve([mr_query])


# --- tilted acquisitions (item 7) -------------------------------------------------------------


def test_dicom_gantry_tilt_warns_with_the_true_spacing(tmp_path: Path) -> None:
    zyx = np.round(ct_chest(n=8, size=16))
    write_dicom_series(
        tmp_path / "tilt", zyx, spacing=(2.5, 0.8, 0.7), origin=(0, 0, 10), tilt_degrees=20
    )
    true = 2.5 * np.cos(np.radians(20))
    with pytest.warns(UserWarning, match=rf"gantry tilt.*20\.0 degrees.*spacing {true:.3f} mm"):
        vol = load_volume(tmp_path / "tilt")
    assert vol.spacing == pytest.approx((true, 0.8, 0.7))
    np.testing.assert_allclose(np.diff(vol.z_positions), 2.5)  # the table moved 2.5 mm
    np.testing.assert_array_equal(vol.array, zyx)
    assert vol.affine is not None  # the voxel -> world matrix keeps the tilt
    plane_normal = np.cross(vol.affine[:3, 0], vol.affine[:3, 1])
    plane_normal /= np.linalg.norm(plane_normal)
    assert abs(vol.affine[:3, 2] @ plane_normal) == pytest.approx(true)


def test_nifti_rotated_and_sheared_affine_warns(tmp_path: Path) -> None:
    angle = np.radians(12.0)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.8, 3.0])
    affine[:3, 2] += [0.0, 0.5, 0.0]  # and a shear of the slice step
    zyx = ct_chest(n=6, size=16)
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), affine), tmp_path / "obl.nii.gz")
    normal = rot[:, 2]
    true = abs(affine[:3, 2] @ normal)
    with pytest.warns(UserWarning, match=rf"12\.0 degrees from axial.*spacing {true:.3f} mm"):
        vol = load_volume(tmp_path / "obl.nii.gz", modality="CT")
    assert vol.spacing[0] == pytest.approx(true)
    np.testing.assert_allclose(np.diff(vol.z_positions), affine[2, 2])
