"""Reading in worker processes, and gzip through isal or zlib: bit for bit today's reader."""

from __future__ import annotations

import gzip
import os
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cbirlib._gzip import gunzip, gzip_backend
from cbirlib.datasets.phantom import make_phantoms
from cbirlib.errors import SettingError, VolumeNotFoundError, VolumeSourceError
from cbirlib.ingest import read_volumes
from cbirlib.io import load_volume
from cbirlib.volume import Volume
from tests.dicom_helpers import write_dicom_series


@pytest.fixture(scope="module")
def nifti_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Phantom CTs plus files that exercise nibabel's decoding paths."""
    root = tmp_path_factory.mktemp("nifti")
    ds = make_phantoms(root / "ds", 2, shape=(48, 48))
    files = [ds.image_path(s) for s in ds.subjects]
    rng = np.random.default_rng(0)
    scaled = nib.Nifti1Image(rng.integers(-1000, 2000, (20, 16, 9)).astype(np.int16), None)
    scaled.header.set_slope_inter(0.5, -1024.0)  # scl_slope / scl_inter applied on read
    lpi = np.diag([-0.8, -0.8, -2.5, 1.0])  # slices stored superior -> inferior
    images = {
        "scaled.nii.gz": scaled,
        "lpi.nii.gz": nib.Nifti1Image(rng.normal(size=(12, 10, 7)).astype(np.float32), lpi),
        "nifti2.nii.gz": nib.Nifti2Image(rng.integers(0, 255, (8, 8, 5)).astype(np.uint8), lpi),
        "plain.nii": nib.Nifti1Image(rng.normal(size=(6, 6, 4)), np.eye(4)),
    }
    for name, img in images.items():
        img.set_qform(img.affine, code=1)
        nib.save(img, root / name)
        files.append(root / name)
    return files


def same_volume(got: Volume, want: Volume) -> None:
    assert got.id == want.id and got.modality == want.modality
    assert got.array.dtype == want.array.dtype == np.float32
    assert got.array.shape == want.array.shape
    assert got.array.tobytes() == want.array.tobytes()  # bit for bit
    assert got.spacing == want.spacing
    assert got.z_positions.tobytes() == want.z_positions.tobytes()
    assert want.affine is not None and got.affine is not None
    assert got.affine.tobytes() == want.affine.tobytes()
    assert got.source == want.source and got.source is not None  # the path read, for the index
    assert got.labels == want.labels and got.origin == want.origin


def reference(paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> list[Volume]:
    """Today's reader: nibabel opens the files itself, in this process."""
    with monkeypatch.context() as m:
        m.setenv("CBIRLIB_GZIP", "nibabel")
        return [load_volume(p) for p in paths]


@pytest.mark.parametrize("backend", ["isal", "zlib"])
def test_gzip_backends_give_todays_volumes(
    nifti_files: list[Path], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    want = reference(nifti_files, monkeypatch)
    monkeypatch.setenv("CBIRLIB_GZIP", backend)
    assert gzip_backend() == backend
    for path, expected in zip(nifti_files, want, strict=True):
        same_volume(load_volume(path), expected)


def test_worker_processes_give_todays_volumes_in_order(
    nifti_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    want = reference(nifti_files, monkeypatch)
    sources = [*nifti_files[:3], *(partial(load_volume, p) for p in nifti_files[3:])]
    got = list(read_volumes(sources, workers=2, ahead=3))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        same_volume(g, w)


def test_dicom_series_folders_are_read_in_workers_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folders = []
    for i in range(3):
        folders.append(tmp_path / f"series{i}")
        hu = rng.integers(-1000, 1500, (5, 12, 10)).astype(np.float64)
        write_dicom_series(folders[-1], hu, spacing=(2.5, 0.8, 0.8), seed=i)
    want = [load_volume(f) for f in folders]
    got = list(read_volumes(folders, workers=2))
    for g, w in zip(got, want, strict=True):
        same_volume(g, w)
        assert g.modality == "CT"  # from the DICOM tag, no guess


def test_a_read_error_comes_at_its_position(nifti_files: list[Path], tmp_path: Path) -> None:
    sources = [nifti_files[0], tmp_path / "missing.nii.gz", nifti_files[1]]
    stream = read_volumes(sources, workers=2)
    assert next(stream).id == nifti_files[0].parent.name  # a TotalSegmentator image: its subject
    with pytest.raises(VolumeNotFoundError, match="missing"):
        next(stream)


def _blocks() -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith(("psm_", "cbirlib-"))}


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm")
def test_closing_early_frees_the_volumes_read_ahead(nifti_files: list[Path]) -> None:
    before = _blocks()
    stream = read_volumes(nifti_files, workers=2, ahead=4)
    assert next(stream).n_slices > 0
    stream.close()  # three or four volumes were read ahead and never consumed
    assert _blocks() - before == set()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm")
def test_blocks_are_reused_and_views_held_keep_their_voxels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    files = []
    for i in range(8):  # same shape (each fits the others' blocks), distinct voxels
        files.append(tmp_path / f"v{i}.nii.gz")
        voxels = rng.integers(-1000, 1000, (24, 20, 6)).astype(np.int16)
        nib.save(nib.Nifti1Image(voxels, np.eye(4)), files[-1])
    want = reference(files, monkeypatch)
    before = _blocks()
    seen: set[str] = set()
    held = []
    for i, volume in enumerate(read_volumes(files, workers=2, ahead=2)):
        seen |= _blocks() - before
        if i % 2:  # keep only a view of every other volume; drop the Volume itself
            held.append((i, volume.array[1:, ::2]))
        del volume
    # blocks of dropped volumes were refilled: fewer blocks than reads
    assert 0 < len(seen) < len(files)
    assert _blocks() - before == set()  # all unlinked at the end, views still valid
    for i, view in held:
        assert view.tobytes() == want[i].array[1:, ::2].tobytes()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm")
def test_a_worker_unmaps_blocks_the_consumer_unlinked(tmp_path: Path) -> None:
    from cbirlib import ingest

    stale, kept = ingest._worker_block(None, 64)[0], ingest._worker_block(None, 64)[0]
    try:
        (Path("/dev/shm") / stale).unlink()  # retired by the consumer
        name, _ = ingest._worker_block(kept, 64)
        assert name == kept and stale not in ingest._mapped and kept in ingest._mapped
    finally:
        for n in list(ingest._mapped):
            ingest._mapped.pop(n).close()
            (Path("/dev/shm") / n).unlink(missing_ok=True)


def test_bad_sources_and_settings_are_named() -> None:
    with pytest.raises(VolumeSourceError, match="cannot read"):
        next(read_volumes([42]))  # type: ignore[list-item]
    with pytest.raises(VolumeSourceError, match="cannot be sent to a worker"):
        next(read_volumes([lambda: Volume("v", np.zeros((2, 4, 4)))], workers=1))
    with pytest.raises(SettingError, match="workers"):
        read_volumes([], workers=0)
    with pytest.raises(SettingError, match="ahead"):
        read_volumes([], workers=1, ahead=0)


def test_gunzip_reads_every_member_with_both_backends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(b"first member ") + gzip.compress(b"second member"))
    for backend in ("isal", "zlib"):
        assert gunzip(path, backend=backend) == b"first member second member"
    monkeypatch.setenv("CBIRLIB_GZIP", "brotli")
    with pytest.raises(SettingError, match="CBIRLIB_GZIP"):
        gzip_backend()


def test_build_index_reads_in_processes_to_the_same_index(
    nifti_files: list[Path], tmp_path: Path
) -> None:
    from cbirlib.index import build_index
    from cbirlib.plugins import create_extractor

    files = nifti_files[1:]  # one phantom is enough
    ids = [f"{i}-{p.name}" for i, p in enumerate(files)]
    sources = [(v, partial(load_volume, p, id=v)) for v, p in zip(ids, files, strict=True)]
    extractor = create_extractor("baseline")
    threads = build_index(sources, extractor, tmp_path / "t", verbose=False, workers=2)
    procs = build_index(
        sources, extractor, tmp_path / "p", verbose=False, workers=2, processes=True
    )
    assert procs.volume_ids == threads.volume_ids == ids
    assert procs.sources == threads.sources  # where each volume came from, recorded
    assert all(source is not None for source in procs.sources.values())
    for vid in threads.volume_ids:
        assert procs.vectors(vid).tobytes() == threads.vectors(vid).tobytes()


def test_extract_many_reads_in_processes_to_the_same_embeddings(
    nifti_files: list[Path],
) -> None:
    from cbirlib.plugins import create_extractor

    extractor = create_extractor("baseline")
    loaders = [partial(load_volume, p) for p in nifti_files[1:]]  # one phantom is enough
    threads = list(extractor.extract_many(loaders, workers=2))
    procs = list(extractor.extract_many(loaders, workers=2, processes=True))
    assert [v for v, _ in procs] == [v for v, _ in threads]
    for (_, got), (_, want) in zip(procs, threads, strict=True):
        assert got.tobytes() == want.tobytes()
