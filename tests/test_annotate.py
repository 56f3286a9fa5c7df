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


# --- 2. annotate -----------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["coarse", "fine"])
def test_annotate_beats_the_relative_z_baseline_on_held_out_phantoms(
    phantoms,
    reference,
    granularity,  # type: ignore[no-untyped-def]
) -> None:
    from cbirlib import annotate
    from cbirlib.annotation_eval import position_baseline, score_annotations, summarize

    _, index, held = reference
    queries = [phantoms.load(s) for s in held]
    truths = {v.id: v.labels for v in queries}
    anns = [annotate(v.with_labels(None), index, granularity=granularity) for v in queries]
    base = [
        position_baseline(
            v.n_slices, index, volume_id=v.id, z_mm=v.z_positions, granularity=granularity
        )
        for v in queries
    ]
    got = summarize(score_annotations(anns, truths))
    trivial = summarize(score_annotations(base, truths))
    assert got["f1_mean"] > trivial["f1_mean"] + 0.3
    assert got["f1_mean"] > (0.75 if granularity == "coarse" else 0.6)
    assert got["boundary_mm_median"] < trivial["boundary_mm_median"] / 3
    for ann in anns:
        assert ann.probabilities.min() >= 0 and ann.probabilities.max() <= 1
        assert list(ann.extents) == sorted(ann.extents, key=lambda s: ann.extents[s].first)


def test_annotated_volume_flows_into_region_queries(phantoms, reference) -> None:  # type: ignore[no-untyped-def]
    from cbirlib import annotate, region_query

    ex, index, held = reference
    vol = phantoms.load(held[0])
    truth = vol.labels
    ann = annotate(vol.with_labels(None), index, extractor=ex)
    labeled = ann.to_volume(vol.with_labels(None))
    assert labeled.labels is not None
    name = next(n for n in ann.extents if truth.contains(n))
    q = region_query(labeled, name)
    ext = ann.extents[name]
    assert q.source_slices[0] <= ext.first and q.source_slices[-1] >= ext.last
    # the predicted span overlaps the true one, and the JSON summary names it
    t_first, t_last = truth.span(name)
    assert ext.first <= t_last and ext.last >= t_first
    assert any(s["structure"] == name for s in json.loads(json.dumps(ann.to_dict()))["structures"])


def test_annotate_needs_a_labeled_index(reference) -> None:  # type: ignore[no-untyped-def]
    from cbirlib import annotate
    from cbirlib.errors import SettingError

    ex, _, _ = reference
    plain = ExactIndex(ex.dim, extractor_config=ex.to_config())
    vol = body = np.zeros((4, 48, 48), np.float32)
    from cbirlib.volume import Volume

    v = Volume("v", body)
    plain.add("x", ex.extract(v))
    with pytest.raises(LabelsError, match="no labeled volume"):
        annotate(v, plain, extractor=ex)
    with pytest.raises(SettingError, match="granularity"):
        annotate(v, plain, extractor=ex, granularity="medium")  # type: ignore[arg-type]
    del vol


# --- 3. find -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(phantoms, reference, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The held-out phantoms indexed with their labels hidden."""
    ex, _, held = reference
    sources = [(s, lambda s=s: phantoms.load(s, labels=False)) for s in held]
    return build_index(
        sources, ex, tmp_path_factory.mktemp("arc") / "idx", verbose=False, labels=False
    )


@pytest.mark.parametrize("method", ["annotate", "exemplar"])
@pytest.mark.parametrize("structure", ["liver", "brain", "lung", "femur_left"])
def test_find_returns_volumes_that_contain_the_structure(
    phantoms,
    reference,
    archive,
    method,
    structure,  # type: ignore[no-untyped-def]
) -> None:
    from cbirlib import find
    from cbirlib.annotation_eval import score_find
    from cbirlib.structures import COARSE_GROUPS

    _, ref, held = reference
    assert archive.labeled_volumes == []
    truths = {s: phantoms.labels(s) for s in held}
    hits = find(archive, structure, reference=ref, top=None, method=method)
    assert hits.level == "volume" and set(hits.query_id) <= {structure}
    assert list(hits.score) == sorted(hits.score, reverse=True)
    s = score_find(hits, truths, structure, k=5)
    contains = {
        v
        for v, lab in truths.items()
        if (lab if structure in lab.names else lab.grouped(COARSE_GROUPS)).contains(structure)
    }
    assert s["n_relevant"] == len(contains) > 0
    top1 = str(hits.volume_id[0])
    assert top1 in contains
    if method == "annotate":  # the default route: finds them, few false hits, spans on them
        assert s["recall"] >= 0.5
        assert s["precision"] >= 0.75 and s["localization_ratio"] > 0.6
    first, last = int(hits.extra["loc_first"][0]), int(hits.extra["loc_last"][0])
    assert 0 <= first <= last < len(truths[top1])
    assert len(find(archive, structure, reference=ref, top=1, method=method)) == 1


def test_find_refuses_bad_input(reference, archive) -> None:  # type: ignore[no-untyped-def]
    from cbirlib import find
    from cbirlib.errors import SettingError, UnknownStructureError

    _, ref, _ = reference
    with pytest.raises(UnknownStructureError, match="unknown structure"):
        find(archive, "livr", reference=ref)
    with pytest.raises(SettingError, match="method"):
        find(archive, "liver", reference=ref, method="magic")  # type: ignore[arg-type]
    with pytest.raises(LabelsError, match="no labeled volume"):
        find(archive, "liver", reference=archive)


def test_annotation_figure_draws_one_band_per_structure(
    phantoms, reference, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from cbirlib import annotate
    from cbirlib.viz import VizError, annotation_figure

    ex, index, held = reference
    vol = phantoms.load(held[0], labels=False)
    ann = annotate(vol, index, extractor=ex, granularity="coarse")
    fig = annotation_figure(vol, ann)
    bands = fig.axes[1].patches
    assert len(bands) == len(ann.extents) > 0
    for band, ext in zip(bands, ann.extents.values(), strict=True):
        dz = vol.spacing[0]
        assert band.get_y() == pytest.approx(ext.z_first_mm - dz / 2)
        assert band.get_y() + band.get_height() == pytest.approx(ext.z_last_mm + dz / 2)
    assert [t.get_text() for t in fig.axes[1].texts] == list(ann.extents)
    fig.savefig(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(VizError, match="covers"):
        annotation_figure(vol.slab(0, 5), ann)


def test_build_from_a_data_set_stores_labels_and_indexes_subjects_without_masks(
    tmp_path: Path,
) -> None:
    import shutil

    from cbirlib.datasets import TotalSegmentator, make_phantoms
    from cbirlib.plugins import create_extractor

    root = make_phantoms(tmp_path / "p", 3, shape=(32, 32), seed=1).root
    shutil.rmtree(root / "s0001" / "segmentations")  # a subject without masks
    ds = TotalSegmentator(root)
    ex = create_extractor("baseline")
    index = build_index(ds, ex, tmp_path / "idx", verbose=False)
    assert index.labeled_volumes == ["s0000", "s0002"] and index.n_volumes == 3
    assert index.labels("s0001") is None
    got = index.labels("s0002")
    assert got is not None
    np.testing.assert_array_equal(got.present, ds.labels("s0002").present)
    none = build_index(ds, ex, tmp_path / "idx2", verbose=False, labels=False)
    assert none.labeled_volumes == []


def test_find_refuses_an_archive_of_another_extractor(reference) -> None:  # type: ignore[no-untyped-def]
    from cbirlib import find
    from cbirlib.errors import ExtractorMismatchError

    _, ref, _ = reference
    other = ExactIndex(ref.dim, extractor_config={"name": "other"})
    other.add("x", np.eye(ref.dim)[:3])
    with pytest.raises(ExtractorMismatchError):
        find(other, "liver", reference=ref)
