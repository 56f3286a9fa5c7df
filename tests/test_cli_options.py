"""Options every command shares: ``--quiet`` and progress bars, ``--modality`` (issue 12)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cbirlib.cli import build_parser, main
from cbirlib.datasets import TotalSegmentator, discover_volumes, make_phantoms, open_volume
from cbirlib.index import load_index
from tests.dicom_helpers import write_nifti


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, as an interactive shell's is."""

    def isatty(self) -> bool:
        return True


def _mr_folder(tmp_path: Path) -> Path:
    """Two MR-like volumes (intensities 0..1500, no HU scale), 6 slices each."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "mr"
    folder.mkdir()
    for name in ("a", "b"):
        array = rng.uniform(0, 1500, size=(6, 32, 32)).astype(np.float32)
        array[:, 8:24, 8:24] += 800.0
        write_nifti(folder / f"{name}.nii.gz", array)
    return folder


@pytest.mark.parametrize(
    ("argv_extra", "env", "terminal", "bars"),
    [
        ([], {}, True, True),
        (["--quiet"], {}, True, False),
        ([], {"TQDM_DISABLE": "1"}, True, False),
        ([], {}, False, False),
    ],
    ids=["terminal", "quiet", "TQDM_DISABLE", "not-a-terminal"],
)
def test_progress_bars_follow_tqdm_conventions(
    argv_extra, env, terminal, bars, tmp_path, monkeypatch, capsys
) -> None:
    data = _mr_folder(tmp_path)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["index", str(data), str(tmp_path / "idx"), *argv_extra]) == 0
    assert ("indexing:" in stderr.getvalue()) is bars, stderr.getvalue()
    # the results on stdout are the same either way
    assert "2 added, 0 already indexed" in capsys.readouterr().out


def test_quiet_goes_before_or_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--quiet", "extractors"]).quiet is True
    assert parser.parse_args(["extractors", "--quiet"]).quiet is True
    assert parser.parse_args(["extractors"]).quiet is False


def test_modality_reaches_the_extractor_through_index_and_query(tmp_path, capsys) -> None:
    data = _mr_folder(tmp_path)
    as_ct, as_mr = tmp_path / "ct-idx", tmp_path / "mr-idx"
    assert main(["index", str(data), str(as_ct), "--quiet", "--modality", "CT"]) == 0
    assert main(["index", str(data), str(as_mr), "--quiet", "--modality", "mr"]) == 0
    capsys.readouterr()
    # the baseline normalizes MR by percentiles and CT by a HU window: other vectors
    ct_vectors = load_index(as_ct).vectors("a")
    mr_vectors = load_index(as_mr).vectors("a")
    assert not np.allclose(ct_vectors, mr_vectors, atol=1e-3)

    def top_score(extra: list[str]) -> float:
        argv = ["query", str(as_mr), str(data / "a.nii.gz"), "--json", *extra]
        assert main(argv) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        assert results[0]["volume_id"] == "a"
        return float(results[0]["score"])

    # read as MR, the query embeds as the index did: the same vectors, score 1
    assert top_score(["--modality", "MR"]) == pytest.approx(1.0, abs=1e-5)
    assert top_score(["--modality", "CT"]) < 1.0 - 1e-4


@pytest.mark.parametrize("value", ["CTT", "=MR"])
def test_a_bad_modality_is_a_usage_error_before_any_work(value, tmp_path, capsys) -> None:
    data = _mr_folder(tmp_path)
    assert main(["index", str(data), str(tmp_path / "idx"), "--modality", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cbirlib: error: ") and "--modality" in err
    assert not (tmp_path / "idx").exists()
    args = build_parser().parse_args(["benchmark", "d", "--modality", "MR"])
    assert args.modality == ["MR"]


@pytest.mark.parametrize("value", ["max", "nan", "inf", "1e39"])  # 1e39: inf as a voxel
def test_a_bad_nan_fill_is_a_usage_error_before_any_work(value, tmp_path, capsys) -> None:
    data = _mr_folder(tmp_path)
    assert main(["index", str(data), str(tmp_path / "idx"), "--nan-fill", value]) == 2
    err = capsys.readouterr().err
    assert "error: argument --nan-fill: expected 'min' or a number" in err
    assert not (tmp_path / "idx").exists()
    args = build_parser().parse_args(["index", "d", "i", "--nan-fill=-3.4e38"])
    assert args.nan_fill == -3.4e38
    assert build_parser().parse_args(["index", "d", "i", "--nan-fill", "-1024"]).nan_fill == -1024


def test_modality_per_folder(tmp_path) -> None:
    data = _mr_folder(tmp_path)
    (data / "ct").mkdir()
    write_nifti(data / "ct" / "c.nii.gz", np.full((3, 16, 16), -1000.0, np.float32))
    assert main(["index", str(data), str(tmp_path / "idx"), "--quiet",
                 "--modality", "MR", "--modality", "ct=CT"]) == 0  # fmt: skip
    found = dict(discover_volumes(data, modality={"*": "MR", "ct": "CT"}))
    assert {vid: load().modality for vid, load in found.items()} == {
        "a": "MR",
        "b": "MR",
        "ct/c": "CT",
    }


def test_python_warnings_are_one_line_in_cli_syntax(tmp_path, capsys) -> None:
    data = _mr_folder(tmp_path)
    index = tmp_path / "idx"
    assert main(["index", str(data), str(index), "--quiet", "--modality", "MR"]) == 0
    capsys.readouterr()
    # a CT query against an MR index: a ModalityMismatchWarning, shown as one log line
    assert main(["query", str(index), str(data / "a.nii.gz"), "--modality", "CT"]) == 0
    err = capsys.readouterr().err.splitlines()
    (line,) = [ln for ln in err if "Mismatch" in ln]
    assert line.startswith("cbirlib: WARNING: ") and "pass --modality" in line
    assert "load_volume" not in line


def test_library_functions_take_the_modality(tmp_path) -> None:
    data = _mr_folder(tmp_path)
    assert {load().modality for _, load in discover_volumes(data, modality="MR")} == {"MR"}
    assert open_volume(data / "a.nii.gz", modality="MR").modality == "MR"
    make_phantoms(tmp_path / "ts", 2, shape=(32, 32))
    assert TotalSegmentator(tmp_path / "ts").load("s0000").modality == "CT"
    assert TotalSegmentator(tmp_path / "ts", modality="MR").load("s0000").modality == "MR"
    loaders = dict(discover_volumes(tmp_path / "ts", modality="MR"))
    assert loaders["s0000"]().modality == "MR"
