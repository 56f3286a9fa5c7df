"""The bad-input corpus through the CLI: every case one line, a named error, exit 1 (issue 10)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cbirlib.cli import main
from tests.dicom_helpers import write_dicom_series, write_nifti
from tests.fakes import META_EDITS, lying_header, small_index, write_meta


def _volume(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "q.nii.gz"
    write_nifti(path, (rng.normal(size=(6, 32, 32)) * 200).astype(np.float32))
    return path


def _series(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    folder = tmp_path / "series"
    write_dicom_series(
        folder, (rng.normal(size=(6, 32, 32)) * 200).astype(np.float32), shuffle=False
    )
    return folder


def _edit_all(folder: Path, **tags: object) -> Path:
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(f)
    return folder


VOLUMES: dict[str, Callable[[Path], Path]] = {
    "lying header .nii": lambda t: (lying_header(t / "a.nii", (1024, 1024, 1024)), t / "a.nii")[1],
    "lying header .nii.gz": lambda t: (
        lying_header(t / "a.nii.gz", (1024, 1024, 1024)),
        t / "a.nii.gz",
    )[1],
    "short .nii": lambda t: (lying_header(t / "s.nii", (40, 40, 40)), t / "s.nii")[1],
    "empty .nii.gz": lambda t: _write(t / "e.nii.gz", b""),
    "text as .nii": lambda t: _write(t / "x.nii", b"hello"),
    "truncated DICOM end file": lambda t: _truncate_last(_series(t)),
    "empty DICOM first file": lambda t: _empty_first(_series(t)),
    "DICOM 2-value position": lambda t: _edit_all(_series(t), ImagePositionPatient=[0, 1]),
    "DICOM zero spacing": lambda t: _edit_all(_series(t), PixelSpacing=[0, 0.7]),
    "DICOM negative spacing": lambda t: _edit_all(_series(t), PixelSpacing=[-0.7, -0.7]),
    "DICOM degenerate orientation": lambda t: _edit_all(
        _series(t), ImageOrientationPatient=[1, 0, 0, 1, 0, 0]
    ),
    "folder of text files": lambda t: _text_folder(t),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncate_last(folder: Path) -> Path:
    last = sorted(folder.iterdir())[-1]
    last.write_bytes(last.read_bytes()[:200])
    return folder


def _empty_first(folder: Path) -> Path:
    sorted(folder.iterdir())[0].write_bytes(b"")
    return folder


def _text_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.dcm").write_text("not dicom")
    return folder


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cbirlib: error: ")]
    assert len(lines) == 1 and "unexpected" not in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", sorted(VOLUMES))
def test_hostile_volume_through_cbirlib_index(case: str, tmp_path: Path, capsys) -> None:
    source = VOLUMES[case](tmp_path)
    assert main(["index", str(source), str(tmp_path / "idx")]) == 1
    _one_line_error(capsys)


@pytest.mark.parametrize("case", sorted(META_EDITS))
def test_hostile_index_through_cbirlib_query(case: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "idx"
    small_index().save(path)
    meta = json.loads((path / "meta.json").read_text())
    META_EDITS[case](meta)
    write_meta(path, meta)
    assert main(["query", str(path), str(_volume(tmp_path))]) == 1
    _one_line_error(capsys)
