"""Labels in the index, annotate (structures of an unlabeled scan), find (by structure name)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbirlib.errors import LabelsError
from cbirlib.index import ExactIndex, SliceIndex, build_index
from cbirlib.labels import SliceLabels, pack_labels, unpack_labels
from cbirlib.structures import TOTALSEG_V1_CLASSES
from tests.fakes import write_meta

# --- 1. labels live in the index -----------------------------------------------------


def _random_labels(rng: np.random.Generator, n: int, names: tuple[str, ...]) -> SliceLabels:
    return SliceLabels(names, rng.random((n, len(names))) < 0.4)


def test_pack_round_trip_keeps_every_class_and_the_covered_set() -> None:
    rng = np.random.default_rng(1)
    full = _random_labels(rng, 7, TOTALSEG_V1_CLASSES)
    bits, known = pack_labels(full)
    assert bits.shape == (7, 13) and bits.dtype == np.uint8
    back = unpack_labels(bits, known)
    assert back.names == TOTALSEG_V1_CLASSES
    np.testing.assert_array_equal(back.present, full.present)
    some = full.select(["rib_left_3", "liver"])
    back = unpack_labels(*pack_labels(some))
    assert set(back.names) == {"liver", "rib_left_3"}  # uncovered classes stay unknown
    np.testing.assert_array_equal(back.select(["liver"]).present, some.select(["liver"]).present)
    with pytest.raises(LabelsError, match="not TotalSegmentator v1"):
        pack_labels(SliceLabels(("tumour",), np.zeros((2, 1), bool)))


@pytest.mark.parametrize("cls", [SliceIndex, ExactIndex])
def test_labels_round_trip_mixed_with_unlabeled_and_old_indexes_load(
    tmp_path: Path, cls: type[SliceIndex] | type[ExactIndex]
) -> None:
    rng = np.random.default_rng(0)
    index = cls(8)
    labels = {
        "a": _random_labels(rng, 5, TOTALSEG_V1_CLASSES),
        "b": _random_labels(rng, 3, ("liver", "spleen", "lung_upper_lobe_left")),
    }
    index.add("gone", rng.normal(size=(2, 8)), labels=_random_labels(rng, 2, ("liver",)))
    index.add("a", rng.normal(size=(5, 8)), labels=labels["a"])
    index.add("plain", rng.normal(size=(4, 8)))  # unlabeled, in the same index
    index.add("b", rng.normal(size=(3, 8)), labels=labels["b"])
    index.remove("gone")  # ExactIndex compacts its rows on save
    index.save(tmp_path / "idx")
    loaded = cls.load(tmp_path / "idx")
    assert loaded.labeled_volumes == ["a", "b"]
    assert loaded.n_labeled_slices == 8
    assert loaded.labels("plain") is None
    for vid, lab in labels.items():
        got = loaded.labels(vid)
        assert got is not None
        np.testing.assert_array_equal(got.select(lab.names).present, lab.present)
    coarse = loaded.labels("b", granularity="coarse")
    assert coarse is not None and set(coarse.names) == {"liver", "spleen", "lung"}
    np.testing.assert_array_equal(coarse.select(["lung"]).present[:, 0], labels["b"].present[:, 2])
    # the labels of matched slices travel with the search results
    m = loaded.search(loaded.vectors("a"), k=12)
    assert m.labels is not None and m.label_known is not None
    for row in range(len(m)):
        for col in range(m.k):
            vid, s = str(m.volume_ids[row, col]), int(m.slice_indices[row, col])
            assert m.label_known[row, col].any() == (vid != "plain")
            if vid != "plain":
                want = pack_labels(labels[vid])[0][s]
                np.testing.assert_array_equal(m.labels[row, col], want)
    # an index written before labels were stored: no labels.npy, every volume unlabeled
    for name in ("labels.npy", "label_classes.npy"):
        (tmp_path / "idx" / name).unlink()
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    del meta["files"]["labels.npy"], meta["files"]["label_classes.npy"]
    write_meta(tmp_path / "idx", meta)
    old = cls.load(tmp_path / "idx")
    assert old.labeled_volumes == [] and old.labels("a") is None
    assert old.n_volumes == 3


def test_bad_labels_are_refused() -> None:
    index = ExactIndex(4)
    with pytest.raises(LabelsError, match="cover 2 slices"):
        index.add("a", np.eye(4), labels=SliceLabels(("liver",), np.zeros((2, 1), bool)))
    with pytest.raises(LabelsError, match="not TotalSegmentator v1"):
        index.add("a", np.eye(4), labels=SliceLabels(("tumour",), np.zeros((4, 1), bool)))
    assert len(index) == 0


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from cbirlib.datasets import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("ph") / "p", 14, shape=(48, 48), seed=3)


@pytest.fixture(scope="module")
def reference(phantoms, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A labeled index of all but the first 4 phantoms (held out), baseline extractor."""
    from cbirlib.plugins import create_extractor

    held, rest = phantoms.subjects[:4], phantoms.subjects[4:]
    ex = create_extractor("baseline")
    sources = [(s, lambda s=s: phantoms.load(s)) for s in rest]
    index = build_index(sources, ex, tmp_path_factory.mktemp("ref") / "idx", verbose=False)
    return ex, index, held


def test_build_index_stores_the_data_sets_labels(phantoms, reference) -> None:  # type: ignore[no-untyped-def]
    _, index, held = reference
    assert index.labeled_volumes == [s for s in phantoms.subjects if s not in held]
    sid = index.labeled_volumes[0]
    truth = phantoms.labels(sid)
    got = index.labels(sid)
    assert got is not None
    np.testing.assert_array_equal(got.select(truth.names).present, truth.present)
