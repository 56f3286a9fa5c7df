"""Tests of the ``cbirlib`` command: in-process through ``main(argv)``, once as a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbirlib import create_extractor
from cbirlib.cli import build_parser, main
from tests.dicom_helpers import write_nifti

DEMO_ARGS = ["--subjects", "8", "--size", "48", "--seed", "0", "--top", "3"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One small demo run shared by the tests: its output folder and stdout."""
    out = tmp_path_factory.mktemp("demo")
    capture = pytest.MonkeyPatch()
    import io

    buffer = io.StringIO()
    capture.setattr(sys, "stdout", buffer)
    try:
        status = main(["demo", "--out", str(out), *DEMO_ARGS])
    finally:
        capture.undo()
    assert status == 0, buffer.getvalue()
    return out, buffer.getvalue()


def _ranked_table(text: str, header: str) -> list[tuple[int, str, float, int, int]]:
    """Rows ``rank volume score first-last`` printed after ``header``."""
    block = text.split(header, 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\s+(\d+)\s+(s\d{4})\s+([\d.]+)\s+(\d+)-(\d+)\s", block, re.M)
    return [(int(r), v, float(s), int(a), int(b)) for r, v, s, a, b in rows]


def test_demo_prints_ranked_localized_results_and_writes_a_montage(demo) -> None:
    out, text = demo
    volume_rows = _ranked_table(text, "volume query ")
    region_rows = _ranked_table(text, "retrieved volumes, predicted span:")
    for rows in (volume_rows, region_rows):
        assert [r[0] for r in rows] == [1, 2, 3]
        scores = [r[2] for r in rows]
        assert scores == sorted(scores, reverse=True)
        assert all(first <= last for *_, first, last in rows)
    # the retrieved volumes are database subjects, never the held-out query
    query = re.search(r"region query (s\d{4}):liver: query slices (\d+)-(\d+)", text)
    assert query is not None
    assert query.group(1) not in {r[1] for r in region_rows}
    # the predicted liver span lies on the liver of the top retrieved volume
    from cbirlib.datasets import TotalSegmentator

    data = TotalSegmentator(out / "data")
    _, top, _, first, last = region_rows[0]
    liver = data.labels(top).slices_with("liver")
    assert first <= liver.max() and last >= liver.min()
    assert "per-structure recall" in text and "mean ± SD" in text
    assert re.search(r"^liver\s+[\d.]+\s+[\d.]+\s+[\d.]+$", text, re.M)
    png = out / "montage.png"
    assert f"montage: {png}" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_demo_reuses_its_data_and_refuses_foreign_folders(demo, tmp_path, capsys) -> None:
    out, _ = demo
    assert main(["demo", "--out", str(out), *DEMO_ARGS]) == 0
    assert "reusing the phantoms" in capsys.readouterr().out
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), *DEMO_ARGS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cbirlib: error: ") and "not written by `cbirlib demo`" in err
    assert (tmp_path / "data" / "mine.txt").read_text() == "keep me"


def test_index_then_query_recreates_the_extractor_from_the_index(demo, tmp_path, capsys) -> None:
    out, _ = demo
    data_dir = out / "data"
    index_dir = tmp_path / "index"
    assert main(["index", str(data_dir), str(index_dir), "--extractor", "baseline"]) == 0
    n = len([p for p in data_dir.iterdir() if p.is_dir()])
    first_run = capsys.readouterr().out
    assert f"({n} volumes" in first_run and f"{n} added, 0 already indexed" in first_run
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["extractor_config"]["name"] == "baseline"
    # a second run resumes: nothing to add, same index
    assert main(["index", str(data_dir), str(index_dir), "--resume"]) == 0
    resumed = capsys.readouterr().out
    assert f"resuming {index_dir}: {n} volumes already indexed" in resumed
    assert f"0 added, {n} already indexed" in resumed

    from cbirlib.datasets import TotalSegmentator

    data = TotalSegmentator(data_dir)
    subject = next(s for s in data.subjects if data.labels(s).contains("liver"))
    argv = ["query", str(index_dir), str(data_dir / subject), "--top", "4", "--json"]
    assert main([*argv, "--structure", "liver"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["extractor"] == "baseline" and payload["structure"] == "liver"
    results = payload["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    # the subject itself is in this index: it must come first
    assert results[0]["volume_id"] == subject
    span = data.labels(subject).span("liver")
    assert payload["query_span"] == list(span)
    first, last = results[0]["loc_first"], results[0]["loc_last"]
    assert first <= span[1] and last >= span[0]
    assert results[0]["loc_z_first"] <= results[0]["loc_z_last"]
    # JSON values are rounded (6 decimals for scores, 0.1 mm) and scores clipped to [-1, 1]
    for r in results:
        assert -1.0 <= r["score"] <= 1.0 and r["score"] == round(r["score"], 6)
        assert all(v == round(v, 1) for v in (r["loc_z_first"], r["loc_z_last"]))

    # a plain NIfTI file as the query, human-readable output
    assert main(["query", str(index_dir), str(data_dir / subject / "ct.nii.gz"), "--top", "2"]) == 0
    text = capsys.readouterr().out
    # every TotalSegmentator image is ct.nii.gz: the query is named after its subject
    assert text.startswith(f"query {subject}:") and re.search(rf"^\s+1\s+{subject}\s", text, re.M)


def test_query_with_structure_needs_masks(demo, tmp_path, capsys) -> None:
    out, _ = demo
    index_dir = tmp_path / "index"
    subject = sorted(p for p in (out / "data").iterdir() if p.is_dir())[0]
    assert main(["index", str(subject / "ct.nii.gz"), str(index_dir)]) == 0
    capsys.readouterr()
    status = main(["query", str(index_dir), str(subject / "ct.nii.gz"), "--structure", "liver"])
    assert status == 1
    assert "--structure needs segmentation masks" in capsys.readouterr().err


def test_extractors_lists_baseline_with_its_weights(capsys) -> None:
    assert main(["extractors"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("baseline"))
    assert line.split()[1] == "yes"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "{tmp}/missing", "x.nii.gz"], "index folder '{tmp}/missing' does not exist"),
        (["index", "{tmp}/nothing", "{tmp}/idx"], "data folder '{tmp}/nothing' does not exist"),
        (["index", "{tmp}", "{tmp}/idx", "--extractor", "basline"], "no volumes found"),
        (["demo", "--out", "{tmp}/d", "--extractor", "basline"], "no extractor named 'basline'"),
        (["demo", "--out", "{tmp}/d", "--subjects", "2"], "--subjects must be >= 3"),
        (["demo", "--out", "{tmp}/d", "--structure", "livr"], "did you mean 'liver'?"),
    ],
)
def test_errors_are_one_line_without_traceback(argv, message, tmp_path, capsys) -> None:
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert err_lines[-1].startswith("cbirlib: error: ")
    assert message.format(tmp=tmp_path) in err_lines[-1]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_command(where, tmp_path, capsys) -> None:
    argv = ["query", str(tmp_path / "missing"), "x"]
    assert main(["--debug", *argv] if where == "before" else [*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "VolumeNotFoundError" in err


def test_version_and_subcommand_help_with_examples(capsys) -> None:
    import cbirlib

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cbirlib {cbirlib.__version__}"
    for command in (
        "demo",
        "index",
        "query",
        "info",
        "rm",
        "benchmark",
        "evaluate",
        "extractors",
        "plugins",
    ):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "examples:" in text or "example:" in text
        assert f"cbirlib {command}" in text.split("example", 1)[1]
        assert "--debug" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--top", "0"],
        ["demo", "--subjects", "-1"],
        ["query", "i", "q", "--top", "0"],
        ["index", "d", "i", "--extractor-opt", "nokey"],
    ],
)
def test_bad_numbers_and_options_are_usage_errors(argv, capsys) -> None:
    assert main(argv) == 2
    assert "usage: cbirlib" in capsys.readouterr().err


def test_demo_checks_the_structure_before_indexing(tmp_path, capsys) -> None:
    # brain: a valid name that no held-out phantom contains (neck-to-thigh scans)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *DEMO_ARGS, "--structure", "brain"]) == 1
    assert "no held-out subject contains 'brain'" in capsys.readouterr().err
    assert not (out / "index").exists()


def test_extractor_options_reach_the_extractor_and_resume_checks_them(demo, tmp_path, capsys):
    out, _ = demo
    subject = sorted(p for p in (out / "data").iterdir() if p.is_dir())[0]
    index_dir = tmp_path / "idx"
    argv = ["index", str(subject / "ct.nii.gz"), str(index_dir)]
    assert main([*argv, "--extractor-opt", "bins=8"]) == 0
    assert "indexing 1 volume from" in capsys.readouterr().out
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["extractor_config"]["bins"] == 8
    # default options (bins=16: another dimension) on the same folder: refused before any work
    small, default = create_extractor("baseline", bins=8), create_extractor("baseline")
    assert small.dim != default.dim
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"cbirlib: error: index {str(index_dir)!r}: index built with 'baseline' "
        f"(dim {small.dim}), vectors come from 'baseline' (dim {default.dim}); pass another "
        "index folder, or --no-resume to replace it"
    ]
    # an option that keeps the dimension (size): refused, naming the option and both values
    assert main([*argv, "--extractor-opt", "bins=8", "--extractor-opt", "size=32"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"cbirlib: error: index {str(index_dir)!r}: extractor config differs from the one "
        "the index was built with (size: index has 64, given 32); pass another index "
        "folder, or --no-resume to replace it"
    ]
    assert main([*argv, "--no-resume"]) == 0
    assert json.loads((index_dir / "meta.json").read_text())["extractor_config"]["bins"] != 8
    capsys.readouterr()
    # --weights is passed to the extractor (baseline takes none: a clear error)
    assert main([*argv, "--no-resume", "--weights", "w.safetensors"]) == 1
    assert "weights" in capsys.readouterr().err


def test_a_failed_build_says_how_many_volumes_were_saved(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    write_nifti(tmp_path / "data" / "a.nii.gz", rng.normal(size=(4, 8, 8)).astype(np.float32))
    (tmp_path / "data" / "b.nii.gz").write_bytes(b"not a nifti file")
    index_dir = tmp_path / "idx"
    assert main(["index", str(tmp_path / "data"), str(index_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert f"cbirlib: 1 of 2 volumes saved in {index_dir}; run the same command to resume" in err
    assert err[-1].startswith("cbirlib: error: ") and "b.nii.gz" in err[-1]


def test_log_records_are_written_through_tqdm(monkeypatch, tmp_path, capsys) -> None:
    import logging

    from tqdm import tqdm

    from cbirlib import cli

    written: list[str] = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, s, **kw: written.append(s)))

    def command(args, out):
        logging.getLogger("cbirlib.index.build").warning("a warning during a progress bar")
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["extractors"].set_defaults(func=command)
    assert main(["extractors"]) == 0
    assert written == ["cbirlib: WARNING: a warning during a progress bar"]


def test_query_names_and_folder_errors(demo, tmp_path, capsys) -> None:
    out, _ = demo
    data_dir = out / "data"
    subject = sorted(p for p in data_dir.iterdir() if p.is_dir())[0]
    index_dir = tmp_path / "idx"
    assert main(["index", str(subject / "ct.nii.gz"), str(index_dir)]) == 0
    (tmp_path / "niftis").mkdir()
    write_nifti(tmp_path / "niftis" / "a.nii.gz", np.zeros((3, 4, 4), np.float32))
    for folder in (data_dir, tmp_path / "niftis"):
        assert main(["query", str(index_dir), str(folder)]) == 1
        assert "is a data folder" in capsys.readouterr().err


def test_evaluate_prints_a_compact_summary(demo, tmp_path, capsys) -> None:
    out, _ = demo
    argv = ["benchmark", str(out / "data"), "--modes", "volume", "--out", str(tmp_path / "ev")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "now `cbirlib benchmark`" not in captured.err
    assert "{" not in text and "DataFrame" not in text
    header = next(ln for ln in text.splitlines() if "baseline" in ln)
    assert header.split() == ["baseline", "baseline", "+", "MaxSim"]
    rows = [ln for ln in text.splitlines() if "volume_recall@" in ln or " ap " in ln]
    assert len(rows) == 2 * 5  # coarse and fine x recall@1,3,5,10 and AP
    assert all(ln.count("±") == 2 for ln in rows)
    assert f"per-structure tables (CSV and Markdown): {tmp_path / 'ev' / 'tables'}" in text
    assert (tmp_path / "ev" / "tables" / "tables.md").is_file()


def test_evaluate_needs_a_split_totalsegmentator_root(demo, tmp_path, capsys) -> None:
    out, _ = demo
    (tmp_path / "nii" / "sub").mkdir(parents=True)
    write_nifti(tmp_path / "nii" / "sub" / "scan.nii.gz", np.zeros((3, 4, 4), np.float32))
    assert main(["evaluate", str(tmp_path / "nii")]) == 1  # the old name still works
    err = capsys.readouterr().err
    assert "`cbirlib evaluate` is now `cbirlib benchmark`" in err
    assert "is not a TotalSegmentator-layout root" in err
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out / "data", copy)
    (copy / "meta.csv").unlink()
    assert main(["evaluate", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "has no meta.csv" in err and "split" in err


def test_bad_arguments_exit_2_with_usage(capsys) -> None:
    assert main(["query"]) == 2
    assert "usage: cbirlib query" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.out, args.extractor, args.subjects, args.seed) == (
        "cbirlib-demo",
        "baseline",
        12,
        0,
    )
    args = build_parser().parse_args(
        ["evaluate", "d", "--extractor", "a", "b", "--modes", "region"]
    )
    assert args.extractor == ["a", "b"] and args.modes == ["region"]


@pytest.mark.parametrize("module", ["cbirlib.cli", "cbirlib"])
def test_the_installed_command_reports_errors_in_one_line(tmp_path, module) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", module, "query", str(tmp_path / "missing"), "q.nii.gz"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"cbirlib: error: index folder '{tmp_path / 'missing'}' does not exist"
    ]
    assert proc.stdout == ""


def test_main_restores_the_cbirlib_logger(capsys) -> None:
    import logging

    package = logging.getLogger("cbirlib")
    before = (package.handlers[:], package.level, package.propagate)
    assert main(["query", "/nonexistent-index", "q"]) == 1
    assert (package.handlers, package.level, package.propagate) == before


def test_corrupt_demo_marker_is_one_line_naming_the_file(tmp_path, capsys) -> None:
    (tmp_path / "demo.json").write_text("{not json")
    assert main(["demo", "--out", str(tmp_path), *DEMO_ARGS]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "demo.json" in err and "unexpected" not in err


def test_multi_line_third_party_messages_print_as_one_line(tmp_path, capsys) -> None:
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    (index_dir / "meta.json").write_text('{"format": 1,\n "kind": "hnsw"}')
    assert main(["query", str(index_dir), str(tmp_path / "q.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cbirlib: error: ") and err.count("\n") == 1


def test_index_into_a_foreign_folder_does_not_suggest_resuming(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    write_nifti(tmp_path / "ct.nii.gz", (rng.normal(size=(4, 32, 32)) * 300).astype(np.float32))
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.docx").write_text("keep")
    assert main(["index", str(tmp_path / "ct.nii.gz"), str(target)]) == 1
    err = capsys.readouterr().err
    assert "resume" not in err and "not an index directory" in err and err.count("\n") == 1
    assert (target / "thesis.docx").read_text() == "keep"
