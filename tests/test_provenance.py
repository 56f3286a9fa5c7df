"""Provenance: volume sources recorded in the index, hits that lead back to the images."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbirlib.datasets import TotalSegmentator, make_phantoms
from cbirlib.errors import IndexFormatError, SliceIndexError
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.hits import Hits
from cbirlib.index import ExactIndex, SliceIndex, load_index
from cbirlib.index.build import build_index
from cbirlib.io import load_volume
from cbirlib.presets import default_chain
from cbirlib.provenance import Source
from cbirlib.search import SliceSearch
from cbirlib.viz import VizError, montage
from tests.dicom_helpers import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    write_dicom_series,
    write_nifti,
)
from tests.fakes import write_meta


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ts")
    make_phantoms(root, 4, shape=(32, 32), seed=2)
    return root


def _extractor() -> BaselineExtractor:
    return BaselineExtractor(bins=8, grid=4, size=32)


# --- ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct.nii.gz", "mri.nii.gz"])
def test_a_totalsegmentator_image_is_named_after_its_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "s0011"
    folder.mkdir()
    write_nifti(folder / name, np.zeros((3, 4, 4), np.float32))
    assert load_volume(folder / name, modality="CT").id == "s0011"
    assert load_volume(folder / name, modality="CT", id="mine").id == "mine"
    write_nifti(folder / "scan.nii.gz", np.zeros((3, 4, 4), np.float32))
    assert load_volume(folder / "scan.nii.gz", modality="CT").id == "scan"


def test_python_and_the_data_set_give_the_same_id(data: Path) -> None:
    subject = TotalSegmentator(data).subjects[0]
    direct = load_volume(TotalSegmentator(data).image_path(subject))
    assert direct.id == subject == TotalSegmentator(data).load(subject, labels=False).id


# --- sources -------------------------------------------------------------------------------


def test_readers_record_where_a_volume_came_from(data: Path) -> None:
    ds = TotalSegmentator(data)
    subject = ds.subjects[1]
    vol = ds.load(subject, labels=False)
    assert vol.source == Source(
        path=f"{subject}/ct.nii.gz", root=data.absolute().as_posix(), subject=subject
    )
    assert vol.source.resolve() == ds.image_path(subject).absolute()
    plain = load_volume(ds.image_path(subject))
    assert plain.source is not None and plain.source.resolve() == ds.image_path(subject).absolute()
    assert vol.slab(0, 2).source == vol.source


@pytest.mark.parametrize("cls", [SliceIndex, ExactIndex])
def test_sources_survive_save_and_load_and_follow_remove(tmp_path: Path, cls: type) -> None:
    index = cls(4)
    src = Source(path="s1/ct.nii.gz", root="/data", subject="s1")
    index.add("s1", np.eye(4), source=src)
    index.add("s2", np.eye(4))
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert loaded.sources == {"s1": src, "s2": None}
    assert loaded.source("s1") == src
    loaded.remove("s1")
    loaded.add("s1", np.eye(4))
    assert loaded.source("s1") is None
    with pytest.raises(SliceIndexError, match="source"):
        loaded.add("s3", np.eye(4), source="s3/ct.nii.gz")  # type: ignore[arg-type]


def test_an_index_without_sources_loads_with_unknown_sources(tmp_path: Path) -> None:
    index = SliceIndex(4)
    index.add("a", np.eye(4), source=Source(path="/x/a.nii.gz"))
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    del meta["files"]["sources.json"]  # what an index saved before this release holds
    (tmp_path / "idx" / "sources.json").unlink()
    write_meta(tmp_path / "idx", meta)
    loaded = load_index(tmp_path / "idx")
    assert loaded.sources == {"a": None}
    assert Hits(query_id=["q"], volume_id=["a"], score=[1.0]).with_paths(loaded).extra[
        "path"
    ].tolist() == [""]


@pytest.mark.parametrize("content", ['[{"path": 3}]', "[null, null]", '{"a": null}'])
def test_a_damaged_sources_file_is_refused(tmp_path: Path, content: str) -> None:
    index = SliceIndex(4)
    index.add("a", np.eye(4))
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / "sources.json").write_text(content)
    with pytest.raises(IndexFormatError, match=r"sources\.json"):
        load_index(tmp_path / "idx", verify=False)


def test_build_index_records_paths_relative_to_the_data_root(data: Path, tmp_path: Path) -> None:
    ds = TotalSegmentator(data)
    index = build_index(ds, _extractor(), tmp_path / "idx", exact=True, verbose=False)
    loaded = load_index(tmp_path / "idx")
    for vid in ds.subjects:
        src = loaded.source(vid)
        assert src is not None
        assert (src.path, src.subject, src.root) == (
            f"{vid}/ct.nii.gz",
            vid,
            data.absolute().as_posix(),
        )
    assert loaded.sources == index.sources
    # loaders of plain files, with an explicit root
    other = tmp_path / "other"
    pairs = [(s, lambda s=s: load_volume(ds.image_path(s))) for s in ds.subjects[:2]]
    built = build_index(pairs, _extractor(), other, exact=True, verbose=False, root=data)
    assert built.source(ds.subjects[0]) == Source(
        path=f"{ds.subjects[0]}/ct.nii.gz", root=data.absolute().as_posix()
    )


def test_results_open_again_with_no_loader(data: Path, tmp_path: Path) -> None:

    ds = TotalSegmentator(data)
    db, query_id = ds.subjects[:-1], ds.subjects[-1]
    index = build_index(
        [(s, lambda s=s: ds.load(s, labels=False)) for s in db],
        _extractor(),
        tmp_path / "idx",
        exact=True,
        verbose=False,
    )
    query = ds.load(query_id, labels=False)
    hits = default_chain(SliceSearch(_extractor(), index, k=10), top=3).retrieve([query])
    with pytest.raises(VizError, match="with_paths"):
        montage(query, hits)
    located = hits.with_paths(load_index(tmp_path / "idx"))
    assert [Path(p) for p in located.extra["path"].tolist()] == [
        ds.image_path(v).absolute() for v in hits.volume_id.tolist()
    ]
    fig = montage(query, located, top=2, plane=None)
    assert [ax.get_title().splitlines()[0] for ax in fig.axes[1:3]] == [
        f"#1 {hits.ranked().volume_id[0]}",
        f"#2 {hits.ranked().volume_id[1]}",
    ]
    # the data moved: resolve the recorded relative paths under the new root
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    relocated = hits.with_paths(index, root=moved)
    assert all(p.startswith(moved.as_posix()) for p in relocated.extra["path"].tolist())
    assert montage(query, relocated, top=1, plane=None).axes


def test_no_patient_identifier_reaches_any_index_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "dicom" / "series1"
    rng = np.random.default_rng(0)
    uid = write_dicom_series(folder, rng.normal(0, 200, (6, 16, 16)), spacing=(2.0, 1.0, 1.0))
    vol = load_volume(folder)
    assert vol.source is not None and vol.source.series_uid == "..." + uid[-8:]
    caplog.set_level(logging.DEBUG)
    build_index(
        [("series1", lambda: load_volume(folder))],
        _extractor(),
        tmp_path / "idx",
        verbose=False,
        root=tmp_path / "dicom",
    )
    loaded = load_index(tmp_path / "idx")
    assert loaded.source("series1") == Source(
        path="series1", root=(tmp_path / "dicom").as_posix(), series_uid="..." + uid[-8:]
    )
    files = sorted(p for p in (tmp_path / "idx").rglob("*") if p.is_file())
    assert any(p.name == "sources.json" for p in files)
    blobs = [p.read_bytes() for p in files] + [caplog.text.encode()]
    for identifier in (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "Doe", "Jane"):
        for blob in blobs:
            assert identifier.encode() not in blob


def test_records_use_the_column_names_of_python(data: Path, tmp_path: Path) -> None:
    ds = TotalSegmentator(data)
    index = build_index(
        [(s, lambda s=s: ds.load(s, labels=False)) for s in ds.subjects[:-1]],
        _extractor(),
        tmp_path / "idx",
        exact=True,
        verbose=False,
    )
    query = ds.load(ds.subjects[-1], labels=False)
    hits = default_chain(SliceSearch(_extractor(), index, k=10), top=3, localize=True)
    result = hits.retrieve([query]).with_paths(index).ranked()
    records = result.to_records()
    json.dumps(records, allow_nan=False)  # JSON-ready: no NaN, no numpy scalars
    frame = result.to_pandas()
    assert list(records[0]) == list(frame.columns)
    for row, (_, expected) in zip(records, frame.iterrows(), strict=True):
        assert row["volume_id"] == expected["volume_id"]
        assert row["loc_first"] == expected["loc_first"] and row["loc_last"] == expected["loc_last"]
        assert Path(row["path"]) == ds.image_path(row["volume_id"]).absolute()
