"""Tests for cbirlib.structures: TotalSegmentator class lists and coarse grouping."""

from __future__ import annotations

import numpy as np
import pytest

from cbirlib.errors import CbirError, UnknownStructureError
from cbirlib.labels import SliceLabels
from cbirlib.structures import (
    COARSE_GROUPS,
    TOTALSEG_V1_CLASSES,
    TOTALSEG_V2_CLASSES,
    V2_TO_V1,
    coarse_regions,
    coarse_structure,
    fine_classes,
    resolve_structure,
)


def test_class_counts_and_uniqueness() -> None:
    assert len(TOTALSEG_V1_CLASSES) == 104
    assert len(set(TOTALSEG_V1_CLASSES)) == 104
    assert len(TOTALSEG_V2_CLASSES) == 117
    assert len(set(TOTALSEG_V2_CLASSES)) == 117
    assert len(coarse_regions()) == 29
    assert fine_classes() == TOTALSEG_V1_CLASSES
    assert fine_classes("v2") == TOTALSEG_V2_CLASSES


def test_v1_families_are_complete() -> None:
    v1 = set(TOTALSEG_V1_CLASSES)
    vertebrae = {n for n in v1 if n.startswith("vertebrae_")}
    assert len(vertebrae) == 24
    assert {"vertebrae_C1", "vertebrae_T12", "vertebrae_L5"} <= vertebrae
    assert len({n for n in v1 if n.startswith("rib_")}) == 24
    assert len({n for n in v1 if n.startswith("lung_")}) == 5
    assert len({n for n in v1 if n.startswith("heart_")}) == 5
    # the label-map order starts and ends as TotalSegmentator's v1 map does
    assert TOTALSEG_V1_CLASSES[:3] == ("spleen", "kidney_right", "kidney_left")
    assert TOTALSEG_V1_CLASSES[-1] == "urinary_bladder"


def test_every_fine_class_has_a_coarse_region() -> None:
    assert set(COARSE_GROUPS) == set(TOTALSEG_V1_CLASSES)
    for name in TOTALSEG_V1_CLASSES:
        assert coarse_structure(name) in coarse_regions()
    assert {COARSE_GROUPS[f"vertebrae_{v}"] for v in ("C3", "T7", "L2")} == {"vertebrae"}
    assert COARSE_GROUPS["rib_right_11"] == "ribs"
    assert COARSE_GROUPS["kidney_left"] == COARSE_GROUPS["kidney_right"] == "kidney"
    assert COARSE_GROUPS["heart_atrium_left"] == "heart"


def test_v2_to_v1_maps_only_v2_names_onto_v1_names() -> None:
    v1, v2 = set(TOTALSEG_V1_CLASSES), set(TOTALSEG_V2_CLASSES)
    for source, targets in V2_TO_V1.items():
        assert source in v2 and source not in v1
        assert targets and set(targets) <= v1
    assert set(V2_TO_V1["heart"]) == {n for n in v1 if n.startswith("heart_")}
    # names shared by both releases need no mapping
    assert len(v1 & v2) == 97


def test_resolve_fine_and_coarse() -> None:
    assert resolve_structure("liver") == ("fine", ("liver",))
    kind, members = resolve_structure("vertebrae")
    assert kind == "coarse"
    assert len(members) == 24
    assert members == tuple(n for n in TOTALSEG_V1_CLASSES if n.startswith("vertebrae_"))
    custom = {"liver": "abdomen", "spleen": "abdomen"}
    assert resolve_structure("abdomen", custom) == ("coarse", ("spleen", "liver"))


@pytest.mark.parametrize("bad, hint", [("livr", "liver"), ("vertebra", "vertebrae")])
def test_unknown_structure_suggests_close_matches(bad: str, hint: str) -> None:
    with pytest.raises(UnknownStructureError) as info:
        resolve_structure(bad)
    assert isinstance(info.value, KeyError) and isinstance(info.value, CbirError)
    assert bad in str(info.value)
    assert hint in str(info.value)


def test_unknown_fine_name_and_version() -> None:
    with pytest.raises(UnknownStructureError, match="kidney_left"):
        coarse_structure("kidney_lft")
    with pytest.raises(UnknownStructureError, match="v1, v2"):
        fine_classes("v3")


def test_grouped_labels_from_masks() -> None:
    shape = (4, 6, 6)
    masks = {name: np.zeros(shape, bool) for name in TOTALSEG_V1_CLASSES}
    masks["lung_upper_lobe_left"][0:2, 1, 1] = True
    masks["lung_lower_lobe_right"][2, 3, 3] = True
    masks["vertebrae_T5"][3, 2, 2] = True
    masks["vertebrae_L1"][1, 2, 2] = True
    labels = SliceLabels.from_masks(masks)
    coarse = labels.grouped(COARSE_GROUPS)
    assert coarse.names == coarse_regions()
    assert coarse.slices_with("lung").tolist() == [0, 1, 2]
    assert coarse.slices_with("vertebrae").tolist() == [1, 3]
    assert coarse.volume_structures() == {"lung", "vertebrae"}


def _fine_labels() -> SliceLabels:
    names = (
        "liver",
        "spleen",
        "kidney_left",
        "kidney_right",
        *(f"rib_left_{i}" for i in range(1, 13)),
    )
    present = np.zeros((6, len(names)), bool)
    present[1:3, 0] = True  # liver
    present[3:5, 3] = True  # kidney_right
    return SliceLabels(names, present)


def test_name_typo_suggests_close_match_and_coarse_regions() -> None:
    from cbirlib.structures import resolve_structure

    with pytest.raises(UnknownStructureError) as info:
        resolve_structure("livr")
    message = str(info.value)
    assert "did you mean 'liver'?" in message
    assert "'kidney'" in message and "coarse_regions()" in message
    assert len(message) < 400  # not a dump of ~110 names
    assert resolve_structure("Liver") == ("fine", ("liver",))
    assert resolve_structure("KIDNEY") == ("coarse", ("kidney_right", "kidney_left"))


def test_labels_column_is_case_insensitive_and_suggests() -> None:
    labels = _fine_labels()
    assert labels.column("Liver") == 0 and labels.contains("LIVER")
    with pytest.raises(UnknownStructureError) as info:
        labels.column("livr")
    message = str(info.value)
    assert "did you mean 'liver'?" in message
    assert "16 structures" in message and "rib_left_7" not in message
    assert "'kidney'" in message


def test_region_query_names_are_forgiving() -> None:
    from cbirlib.search import region_query
    from cbirlib.volume import Volume

    vol = Volume("s1", np.zeros((6, 4, 4), np.float32), labels=_fine_labels())
    assert region_query(vol, "Liver").source_slices.tolist() == [1, 2]
    assert region_query(vol, "Kidney").source_slices.tolist() == [3, 4]  # coarse, any case
    assert region_query(vol, "K", groups={"kidney_right": "K"}).n_slices == 2
    with pytest.raises(UnknownStructureError) as info:
        region_query(vol, "livr")
    message = str(info.value)
    assert "did you mean 'liver'?" in message and "'kidney'" in message
    assert "rib_left_7" not in message
