"""Custom structures: a lesion or user mask in a subject's ``segmentations/`` folder.

A mask file whose name is not a TotalSegmentator class is usable in region queries
(API and ``cbirlib query --structure``), warns when left out of the labels, and never
reaches the study's per-class tables.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cbirlib.cli import main
from cbirlib.datasets import TotalSegmentator, make_phantoms
from cbirlib.errors import CustomStructureWarning, MaskShapeError, UnknownStructureError
from cbirlib.io import load_mask
from cbirlib.labels import slice_counts
from cbirlib.search import region_query
from cbirlib.structures import TOTALSEG_V1_CLASSES

LESION = "lesion_1"


def _write_lesion(root: Path, subject: str, name: str = LESION) -> Path:
    """A small box mask written with the subject's image affine, in its voxel layout."""
    image = nib.load(root / subject / "ct.nii.gz")
    shape = image.shape
    mask = np.zeros(shape, dtype=np.uint8)
    z = shape[2]
    mask[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2, z // 3 : z // 2] = 1
    path = root / subject / "segmentations" / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(mask, image.affine), path)
    return path


def _extent(path: Path, ds: TotalSegmentator, subject: str) -> tuple[int, int]:
    """First and last slice of the mask in the volume's own (canonical) slice numbering."""
    volume = ds.load(subject, labels=False)
    where = np.flatnonzero(slice_counts(load_mask(path, like=volume)))
    return int(where[0]), int(where[-1])


@pytest.fixture
def lesion_set(tmp_path: Path) -> tuple[Path, Path]:
    """Four phantom subjects; ``s0000`` holds an extra ``lesion_1`` mask: (root, mask)."""
    root = tmp_path / "data"
    make_phantoms(root, 4, shape=(32, 32), seed=3)
    return root, _write_lesion(root, "s0000")


def test_region_query_on_a_custom_mask_spans_exactly_the_mask(lesion_set) -> None:
    root, path = lesion_set
    ds = TotalSegmentator(root)
    assert ds.custom_structures("s0000") == (LESION,)
    assert ds.custom_structures("s0001") == ()
    volume = ds.load("s0000", custom=[LESION])
    assert volume.labels is not None
    # the class columns come first and are those of the default labels
    assert volume.labels.names == (*TOTALSEG_V1_CLASSES, LESION)
    first, last = _extent(path, ds, "s0000")
    assert 0 < first <= last < volume.n_slices - 1  # a strict sub-range: a real test
    region = region_query(volume, LESION)
    assert (region.first_slice, region.first_slice + region.n_slices - 1) == (first, last)
    assert region.id == f"s0000:{LESION}"
    np.testing.assert_array_equal(region.array, volume.array[first : last + 1])
    # custom=True takes every custom mask of the subject
    assert ds.load("s0000", custom=True).labels.span(LESION) == (first, last)


def test_a_left_out_custom_mask_warns_once_naming_it(lesion_set) -> None:
    root, _ = lesion_set
    ds = TotalSegmentator(root)
    with pytest.warns(CustomStructureWarning) as caught:
        volume = ds.load("s0000")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert LESION in message
    assert "not a TotalSegmentator class" in message and "custom structure" in message
    assert volume.labels is not None and volume.labels.names == TOTALSEG_V1_CLASSES
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.load("s0000")  # once per name and data set
        ds.load("s0000", custom=[LESION])  # asked for: no warning
        TotalSegmentator(root).load("s0001")  # no custom mask: no warning


def test_a_misspelt_custom_name_suggests_the_mask(lesion_set) -> None:
    root, _ = lesion_set
    ds = TotalSegmentator(root)
    with pytest.raises(UnknownStructureError, match=f"did you mean '{LESION}'"):
        ds.load("s0000", custom=["lesoin_1"])
    volume = ds.load("s0000", custom=True)
    with pytest.raises(UnknownStructureError, match=f"did you mean '{LESION}'"):
        region_query(volume, "lesoin_1")
    # labels loaded without the mask say how to load it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CustomStructureWarning)
        plain = ds.load("s0000")
    with pytest.raises(UnknownStructureError, match=rf"custom=\['{LESION}'\]"):
        region_query(plain, LESION)


def test_cli_query_with_a_custom_structure(lesion_set, tmp_path, capsys) -> None:
    root, path = lesion_set
    index = tmp_path / "idx"
    moved = path.rename(tmp_path / path.name)  # index the classes only, then add the lesion
    assert main(["index", str(root), str(index), "--quiet"]) == 0
    moved.rename(path)
    capsys.readouterr()
    argv = ["query", str(index), str(root / "s0000"), "--structure", LESION, "--json", "--quiet"]
    assert main([*argv, "--top", "2"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["structure"] == LESION
    assert answer["query"] == f"s0000:{LESION}"
    assert tuple(answer["query_span"]) == _extent(path, TotalSegmentator(root), "s0000")
    assert len(answer["results"]) == 2
    # the name is the mask's, case-insensitively
    assert main([*argv[:4], "LESION_1", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["structure"] == LESION
    # a whole-volume query of the subject says that the mask is there to use
    assert main([*argv[:3], "--json", "--top", "1"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["query"] == "s0000"
    assert f"--structure {LESION}" in err and "CustomStructureWarning" in err


def test_cli_query_with_a_misspelt_structure_suggests_the_mask(lesion_set, tmp_path, capsys):
    root, path = lesion_set
    index = tmp_path / "idx"
    moved = path.rename(tmp_path / path.name)
    assert main(["index", str(root), str(index), "--quiet"]) == 0
    moved.rename(path)
    capsys.readouterr()
    argv = ["query", str(index), str(root / "s0000"), "--structure", "lesoin_1", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unknown structure 'lesoin_1'" in err and f"'{LESION}'" in err
    # a subject without the mask does not offer it
    argv[2] = str(root / "s0001")
    assert main(argv) == 1
    assert LESION not in capsys.readouterr().err


def test_evaluation_tables_leave_custom_names_out(tmp_path) -> None:
    """The study's tables list no custom name, and their numbers do not move with one."""
    from cbirlib import benchmark

    def run(root: Path, lesions: bool) -> dict:
        ds = make_phantoms(root, 6, shape=(32, 32), seed=0)
        if not lesions:
            return benchmark(root, ["baseline"], ("region",), rerank=(False,), verbose=False)
        for subject in ds:  # every subject: queries and database both hold one
            _write_lesion(root, subject)
        with pytest.warns(CustomStructureWarning, match=LESION):
            return benchmark(root, ["baseline"], ("region",), rerank=(False,), verbose=False)

    plain, with_lesions = run(tmp_path / "plain", False), run(tmp_path / "lesions", True)
    assert set(plain) == set(with_lesions) and any(k.startswith("fine/") for k in plain)
    for key, table in with_lesions.items():
        names = {str(n) for n in table.index} | {str(c) for c in table.columns}
        if "structure" in table.columns:
            names |= {str(s) for s in table["structure"]}
        assert LESION not in names, key
        pd.testing.assert_frame_equal(table, plain[key])


def test_a_v2_only_class_is_a_custom_structure_without_a_warning(lesion_set) -> None:
    root, _ = lesion_set
    path = _write_lesion(root, "s0001", name="sternum")  # TotalSegmentator v2, not v1
    ds = TotalSegmentator(root)
    assert ds.custom_structures("s0001") == ("sternum",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = ds.load("s0001", custom=False)
    assert volume.labels is not None and "sternum" not in volume.labels.names
    region = region_query(ds.load("s0001", custom=["sternum"]), "sternum")
    first, last = _extent(path, ds, "s0001")
    assert (region.first_slice, region.first_slice + region.n_slices - 1) == (first, last)


def test_a_custom_mask_of_another_shape_is_refused(lesion_set) -> None:
    root, _ = lesion_set
    image = nib.load(root / "s0001" / "ct.nii.gz")
    small = np.ones(tuple(n - 1 for n in image.shape), dtype=np.uint8)
    nib.save(nib.Nifti1Image(small, image.affine), root / "s0001/segmentations/cut.nii.gz")
    with pytest.raises(MaskShapeError, match="cut"):
        TotalSegmentator(root).load("s0001", custom=["cut"])


def test_custom_masks_stay_out_of_the_label_cache(lesion_set, tmp_path) -> None:
    root, path = lesion_set
    ds = TotalSegmentator(root, labels_cache=tmp_path / "cache")
    first = ds.load("s0000", custom=[LESION]).labels  # fills the cache
    again = TotalSegmentator(root, labels_cache=tmp_path / "cache")
    with pytest.warns(CustomStructureWarning):
        plain = again.labels("s0000")  # from the cache: the class columns only
    assert plain.names == TOTALSEG_V1_CLASSES
    cached = again.labels("s0000", custom=[LESION])
    assert first is not None and cached.names == first.names
    np.testing.assert_array_equal(cached.present, first.present)
    assert cached.span(LESION) == _extent(path, ds, "s0000")
