"""End-to-end checks on real scans shipped offline with test dependencies.

* nilearn's wheel (a test dependency, never imported here): the MNI152 2009a T1
  template (skull-stripped, non-square slices, 1 mm), its grey-matter probability map
  and a NeuroVault statistical map (signed values, 3 mm, stored LAS);
* pydicom's test files: a real five-slice CT series stored superior -> inferior.

The files are found with ``importlib.util.find_spec`` (which does not import nilearn);
a test fails, naming the missing dependency, when the files are absent.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform

from cbirlib import (
    CountVotes,
    Localize,
    MaxSimRerank,
    SliceLabels,
    SliceSearch,
    build_index,
    informative_slices,
    load_volume,
    region_query,
)
from cbirlib.errors import InvalidVolumeError
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.modality import guess_modality

T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
STAT = "image_10426.nii.gz"


def nilearn_data(name: str) -> Path:
    """A file of nilearn's ``datasets/data`` folder (nilearn is in the test extra: a
    missing file is a broken install, a failure, not a skip)."""
    spec = importlib.util.find_spec("nilearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / name
        if path.is_file():
            return path
    pytest.fail(f"nilearn's sample data ({name}) not found: install the test extra (nilearn)")


@pytest.fixture(scope="module")
def t1() -> Path:
    return nilearn_data(T1)


@pytest.fixture(scope="module")
def mni(t1: Path):
    return load_volume(t1, id="mni", modality="MR")


def test_mni_template_geometry_is_nibabels_in_every_storage_orientation(
    t1: Path, mni, tmp_path: Path
) -> None:
    canonical = nib.as_closest_canonical(nib.load(t1))
    np.testing.assert_array_equal(mni.array, canonical.get_fdata(dtype=np.float32).T)
    assert mni.shape == (189, 233, 197) and mni.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(mni.affine, canonical.affine)
    np.testing.assert_allclose(mni.z_positions, np.arange(-72.0, 117.0))
    img = nib.load(t1)
    for codes in ("LPI", "ASR", "PIL"):  # flipped (streamed) and axes swapped (nibabel)
        other = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes)))
        nib.save(other, tmp_path / f"{codes}.nii.gz")
        copy = load_volume(tmp_path / f"{codes}.nii.gz", modality="MR")
        np.testing.assert_array_equal(copy.array, mni.array, err_msg=codes)
        np.testing.assert_allclose(copy.affine, mni.affine, err_msg=codes)
        np.testing.assert_allclose(copy.z_positions, mni.z_positions, err_msg=codes)


def test_statistical_map_stored_las_reads_as_nibabel_and_is_not_ct() -> None:
    path = nilearn_data(STAT)
    vol = load_volume(path, modality="MR")
    canonical = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(vol.array, canonical.get_fdata(dtype=np.float32).T)
    assert vol.spacing == (3.0, 3.0, 3.0) and vol.z_positions[0] == -50.0
    assert vol.array.min() < 0 < vol.array.max()  # signed statistics
    assert guess_modality(vol.array) == "MR"  # "not CT": windowed by its percentiles


@pytest.mark.parametrize("name", [T1, GM, STAT])
def test_real_mr_and_maps_are_guessed_mr(name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        vol = load_volume(nilearn_data(name))
    assert vol.modality == "MR"
    assert "guessed MR" in caplog.text  # never silent


def test_template_blank_slices_are_flagged_and_brain_slices_kept(mni) -> None:
    flags = informative_slices(mni)
    z = mni.z_positions
    assert not flags[z >= 82].any()  # above the vertex: empty or a few voxels
    assert flags[(z >= -60) & (z <= 76)].all()  # cerebellum to the top of the brain
    assert 130 <= flags.sum() <= 150


def test_nan_outside_the_brain_is_refused_or_filled(tmp_path: Path) -> None:
    path = nilearn_data(STAT)
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    with_nan = data.copy()
    with_nan[data == 0] = np.nan  # as SPM writes it
    nib.save(nib.Nifti1Image(with_nan, img.affine), tmp_path / "spm.nii.gz")
    with pytest.raises(InvalidVolumeError, match="nan_fill"):
        load_volume(tmp_path / "spm.nii.gz", modality="MR")
    zero = load_volume(tmp_path / "spm.nii.gz", modality="MR", nan_fill=0.0)
    plain = load_volume(path, modality="MR")
    np.testing.assert_array_equal(zero.array, plain.array)
    assert zero.percentile_bounds() == plain.percentile_bounds()
    np.testing.assert_array_equal(informative_slices(zero), informative_slices(plain))
    lowest = load_volume(tmp_path / "spm.nii.gz", modality="MR", nan_fill="min")
    assert np.isfinite(lowest.array).all()
    filled = lowest.array[plain.array == 0]  # outside the brain, in the canonical layout
    assert (filled == np.nanmin(with_nan)).all() and filled[0] == lowest.array.min()


def _gm_region(mni, z_range: tuple[float, float] = (20.0, 60.0)):
    gm = load_volume(nilearn_data(GM), modality="MR").array
    z = mni.z_positions
    present = gm.reshape(mni.n_slices, -1).max(1) > 127  # grey matter probability > 0.5
    present &= (z >= z_range[0]) & (z <= z_range[1])
    labelled = mni.with_labels(SliceLabels(("gm_upper",), present[:, None]))
    return region_query(labelled, "gm_upper")


def test_region_query_from_a_structure_mask_is_windowed_as_its_source(mni) -> None:
    region = _gm_region(mni)
    assert region.z_positions[0] == 20.0 and region.z_positions[-1] == 60.0
    assert region.origin.window_percentiles == mni.percentile_bounds()
    ex = BaselineExtractor()
    first = region.origin.first_slice
    np.testing.assert_allclose(
        ex.extract(region), ex.extract(mni)[first : first + region.n_slices], atol=1e-6
    )


def test_small_real_index_retrieves_copies_and_localizes_in_mm(
    t1: Path, mni, tmp_path: Path
) -> None:
    img = nib.load(t1)
    data = np.asanyarray(img.dataobj)
    nib.save(img.slicer[:, :, 60:130], tmp_path / "crop.nii.gz")  # z -12 .. 57 mm
    half = nib.Nifti1Image(data[::2, ::2, ::2].copy(), img.affine @ np.diag([2, 2, 2, 1]))
    nib.save(half, tmp_path / "2mm.nii.gz")  # z -72 .. 114 mm
    lpi = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LPI")))
    nib.save(lpi, tmp_path / "lpi.nii.gz")
    database = [
        mni,
        load_volume(tmp_path / "crop.nii.gz", id="crop", modality="MR"),
        load_volume(tmp_path / "2mm.nii.gz", id="2mm", modality="MR"),
        load_volume(nilearn_data(GM), id="gm", modality="MR"),
        load_volume(nilearn_data(STAT), id="stat", modality="MR"),
    ]
    ex = BaselineExtractor()
    index = build_index(database, ex, tmp_path / "index", exact=True, verbose=False, workers=0)
    chain = SliceSearch(ex, index, k=20) >> CountVotes() >> MaxSimRerank(top=5) >> Localize()

    query = load_volume(tmp_path / "lpi.nii.gz", id="query", modality="MR")
    hits = chain.retrieve(query).to_pandas()
    top = hits.iloc[0]
    assert top.volume_id == "mni" and top.score == pytest.approx(1.0, abs=1e-5)
    assert (top.loc_z_first, top.loc_z_last) == (-63.0, 78.0)  # its informative slices
    assert set(hits.volume_id[:3]) == {"mni", "2mm", "crop"}

    region = _gm_region(mni)
    search = SliceSearch(ex, index, k=20, exclude_source=True)
    hits = (search >> CountVotes() >> MaxSimRerank(top=5) >> Localize()).retrieve(region)
    spans = hits.to_pandas().set_index("volume_id")
    assert "mni" not in spans.index
    assert list(spans.index[:2]) in (["crop", "2mm"], ["2mm", "crop"])
    assert spans.loc["crop", "loc_z_first"] == pytest.approx(20.0, abs=1.0)
    assert spans.loc["crop", "loc_z_last"] == 57.0  # the crop ends there
    assert spans.loc["2mm", "loc_z_first"] == pytest.approx(20.0, abs=2.0)
    assert spans.loc["2mm", "loc_z_last"] == pytest.approx(60.0, abs=2.5)


def test_real_ct_series_stored_superior_to_inferior() -> None:
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    folder = folder / "98892001" / "CT5N"  # shipped with pydicom's wheel
    vol = load_volume(folder)
    slices = sorted(
        (pydicom.dcmread(p) for p in folder.iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    assert vol.modality == "CT" and vol.shape == (5, 16, 16)
    np.testing.assert_allclose(vol.z_positions, [-1.2375, 1.2625, 3.7625, 6.2625, 8.7625])
    np.testing.assert_allclose(vol.spacing, (2.5, 0.488281, 0.488281))
    for k, ds in enumerate(slices):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(vol.array[k], hu[::-1, ::-1])  # IOP 1,0,0,0,1,0: LPS
    assert informative_slices(vol).all()
