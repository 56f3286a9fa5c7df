"""``cbirlib query`` batches and pipeline options, ``info``, ``rm``, CLI-spelled errors (issue 12).

Every test runs the real entry point, ``main(argv)``, on NIfTI files written in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbirlib.cli import main
from cbirlib.index import load_index, read_meta
from tests.dicom_helpers import write_nifti

SLICES = {"a": 5, "b": 7, "c": 6}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three distinct CT-like volumes and a baseline index of them: (data folder, index)."""
    root = tmp_path_factory.mktemp("cmds")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(7)
    for i, (name, n) in enumerate(SLICES.items()):
        array = rng.normal(-300 + 250 * i, 200, size=(n, 32, 32)).astype(np.float32)
        array[:, 4 + 6 * i : 14 + 6 * i, 6:26] = 400.0 * (i + 1)
        write_nifti(data / f"{name}.nii.gz", array, spacing=(2.0, 1.0, 1.0))
    assert main(["index", str(data), str(root / "idx"), "--quiet"]) == 0
    return data, root / "idx"


def _copy(index: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(index, tmp_path / "idx"))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cbirlib: error: "), err
    return err


# --- query ---------------------------------------------------------------------------------


def test_several_queries_load_the_extractor_once(indexed, monkeypatch, capsys) -> None:
    from cbirlib import plugins

    data, index = indexed
    created: list[str] = []
    create = plugins.create_extractor

    def counting(name: str, **options: object):  # type: ignore[no-untyped-def]
        created.append(name)
        return create(name, **options)

    monkeypatch.setattr(plugins, "create_extractor", counting)
    paths = [str(data / f"{name}.nii.gz") for name in ("b", "a", "c")]
    assert main(["query", str(index), *paths, "--top", "2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert created == ["baseline"]
    blocks = text.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["query b:", "query a:", "query c:"]
    for block, name in zip(blocks, ("b", "a", "c"), strict=True):
        ranked = [ln.split() for ln in block.splitlines() if ln.strip()[:1].isdigit()]
        assert [r[0] for r in ranked] == ["1", "2"]
        assert ranked[0][1] == name  # each volume is its own nearest neighbour


def test_jsonl_prints_one_line_per_query_and_json_a_list(indexed, capsys) -> None:
    data, index = indexed
    paths = [str(data / f"{name}.nii.gz") for name in SLICES]
    assert main(["query", str(index), *paths, "--jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(paths)
    answers = [json.loads(line) for line in lines]
    assert [a["query"] for a in answers] == list(SLICES)
    assert [a["source"] for a in answers] == paths
    for a in answers:
        assert a["score"] == "maxsim" and a["extractor"] == "baseline"
        assert a["results"][0]["volume_id"] == a["query"]
        assert a["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert main(["query", str(index), *paths[:2], "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["query"] for a in listed] == ["a", "b"]
    assert [a["results"] for a in listed] == [a["results"] for a in answers[:2]]


def test_count_votes_only_scores_are_votes_of_k_neighbours(indexed, capsys) -> None:
    data, index = indexed
    query = str(data / "b.nii.gz")
    argv = ["query", str(index), query, "--json", "--no-rerank", "--top", "3"]
    assert main([*argv, "-k", "1"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["score"] == "votes"
    scores = [r["score"] for r in answer["results"]]
    # one neighbour per query slice: the votes add up to the query's slices
    assert all(isinstance(s, int) for s in scores) and sum(scores) == SLICES["b"]
    assert main([*argv, "-k", "3"]) == 0
    scores = [r["score"] for r in json.loads(capsys.readouterr().out)["results"]]
    # fair votes (the default): a query slice votes at most once per volume
    assert all(s <= SLICES["b"] for s in scores)
    assert SLICES["b"] <= sum(scores) <= 3 * SLICES["b"]
    # vote-based spans lie inside the retrieved volume
    for r in answer["results"]:
        first, last = r["loc_first"], r["loc_last"]
        assert 0 <= first <= last < SLICES[r["volume_id"]]


def test_top_and_no_localize(indexed, capsys) -> None:
    data, index = indexed
    argv = ["query", str(index), str(data / "a.nii.gz"), "--json", "--top", "2"]
    assert main([*argv, "--no-localize"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 2 and all(r["loc_first"] is None for r in results)
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert all(r["loc_first"] is not None for r in results)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["{data}/b.nii.gz", "--series-uid", "1.2.3"], "--series-uid picks a series of one"),
        (["--vote-trim", "0.1"], "use it with --no-rerank"),
        (["--no-rerank", "--candidates", "30"], "drop --no-rerank"),
    ],
)
def test_query_option_clashes_are_one_line_errors(indexed, extra, message, capsys) -> None:
    data, index = indexed
    extra = [e.format(data=data) for e in extra]
    assert main(["query", str(index), str(data / "a.nii.gz"), *extra]) == 2
    assert message in _one_line_error(capsys)


def test_json_and_jsonl_exclude_each_other(indexed, capsys) -> None:
    data, index = indexed
    assert main(["query", str(index), str(data / "a.nii.gz"), "--json", "--jsonl"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --- info ------------------------------------------------------------------------------------


def test_info_reports_what_meta_json_records(indexed, capsys) -> None:
    _, index = indexed
    meta = read_meta(index)
    assert main(["info", str(index)]) == 0
    text = capsys.readouterr().out
    fields = dict(line.split(":", 1) for line in text.splitlines() if not line.startswith(" "))
    assert int(fields["volumes"]) == meta.n_volumes == len(SLICES)
    assert int(fields["slices"]) == meta.n_slices == sum(SLICES.values())
    assert int(fields["dimension"]) == meta.dim
    assert fields["extractor"].split()[0] == "baseline"
    assert "version 1" in fields["format"]
    assert all(name in text for name in meta.files)

    assert main(["info", str(index), "--volumes", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["volume_slices"] == SLICES
    # the fixture's volumes are CT-like NIfTI files without a sidecar: guessed CT
    assert info["modalities"] == {"CT": len(SLICES)}
    assert info["volume_modality"] == load_index(index).modalities
    assert info["files"] == {k: v["bytes"] for k, v in meta.files.items()}
    assert info["bytes"] == sum(v["bytes"] for v in meta.files.values())
    assert info["extractor"] == meta.extractor_config


def test_info_on_a_missing_or_foreign_folder_is_one_line(tmp_path, capsys) -> None:
    assert main(["info", str(tmp_path / "nope")]) == 1
    assert "does not exist" in _one_line_error(capsys)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("hello")
    assert main(["info", str(tmp_path / "mine")]) == 1
    _one_line_error(capsys)


# --- rm --------------------------------------------------------------------------------------


def test_rm_removes_volumes_and_a_resumed_index_adds_them_back(indexed, tmp_path, capsys):
    data, original = indexed
    index = _copy(original, tmp_path)
    assert main(["rm", str(index), "b"]) == 0
    assert "removed 1 volume (7 slices)" in capsys.readouterr().out
    kept = load_index(index)
    assert kept.volume_ids == ["a", "c"] and len(kept) == SLICES["a"] + SLICES["c"]
    assert read_meta(index).n_volumes == 2
    # b's own query no longer finds b
    assert main(["query", str(index), str(data / "b.nii.gz"), "--json"]) == 0
    ids = [r["volume_id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert "b" not in ids and sorted(ids) == ["a", "c"]
    # re-indexing the folder embeds only the removed volume
    assert main(["index", str(data), str(index), "--quiet"]) == 0
    assert "1 added, 2 already indexed" in capsys.readouterr().out
    assert sorted(load_index(index).volume_ids) == ["a", "b", "c"]


def test_rm_of_an_unknown_id_removes_nothing(indexed, tmp_path, capsys) -> None:
    _, original = indexed
    index = _copy(original, tmp_path)
    before = sorted(p.name for p in index.iterdir())
    assert main(["rm", str(index), "a", "bb"]) == 1
    err = _one_line_error(capsys)
    assert "no volume 'bb'" in err and "did you mean 'b'?" in err
    assert load_index(index).volume_ids == list(SLICES)
    assert sorted(p.name for p in index.iterdir()) == before


# --- errors in the command line's words ------------------------------------------------------


def test_missing_weights_fail_before_any_data_in_cli_syntax(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CBIRLIB_CACHE", str(tmp_path / "cache"))
    write_nifti(tmp_path / "a.nii.gz", np.zeros((3, 16, 16), np.float32))
    argv = ["index", str(tmp_path / "a.nii.gz"), str(tmp_path / "idx")]
    assert main([*argv, "--extractor", "radimagenet-resnet50"]) == 1
    err = _one_line_error(capsys)
    assert "--weights PATH" in err and "weights=" not in err and "create_extractor" not in err
    assert "resume" not in err
    assert not (tmp_path / "idx").exists()


def test_a_failed_build_prints_its_error_once(tmp_path, capsys) -> None:
    (tmp_path / "data").mkdir()
    write_nifti(tmp_path / "data" / "a.nii.gz", np.ones((4, 8, 8), np.float32))
    (tmp_path / "data" / "b.nii.gz").write_bytes(b"not a nifti file")
    assert main(["index", str(tmp_path / "data"), str(tmp_path / "idx")]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    # the library's own "build stopped" warning is not repeated: the command says it
    assert "build stopped" not in err and "build_index" not in err
    assert [ln for ln in lines if "cannot read as NIfTI" in ln] == [lines[-1]]
    assert lines[-1].startswith("cbirlib: error: ")


def test_resume_advice_names_the_cli_option(indexed, tmp_path, capsys) -> None:
    data, original = indexed
    index = _copy(original, tmp_path)
    argv = ["index", str(data), str(index), "--extractor-opt", "bins=8"]
    assert main(argv) == 1
    err = _one_line_error(capsys)
    assert "--no-resume" in err and "resume=False" not in err


# --- extractors ------------------------------------------------------------------------------


def test_extractors_filters_by_pattern_and_prints_dim_and_input_as_json(capsys) -> None:
    from cbirlib import create_extractor

    assert main(["extractors", "resnet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["fractaldb-resnet50", "radimagenet-resnet50"]
    assert all(r["dim"] == 2048 and r["input"] == {"size": [224, 224], "channels": 3} for r in rows)
    assert main(["extractors", "classical", "--json"]) == 0  # an alias matches too
    (row,) = json.loads(capsys.readouterr().out)
    baseline = create_extractor("baseline")
    assert row["name"] == "baseline" and row["weights"] is True
    assert row["dim"] == baseline.dim
    assert row["input"]["size"] == list(baseline.input_config.size)
    assert main(["extractors", "no-such-model"]) == 0
    assert "no extractor matches 'no-such-model'" in capsys.readouterr().out


def test_extractors_table_shows_dim_and_cli_syntax(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CBIRLIB_CACHE", str(tmp_path))  # no weights file found there
    assert main(["extractors", "radimagenet-resnet50"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("radim"))
    assert line.split()[1:4] == ["no", "2048", "3x224x224"]
    assert "--weights PATH or URL" in line and "weights=" not in line


# --- plugins ---------------------------------------------------------------------------------


def test_plugins_lists_each_plugin_with_its_version_and_extractors(capsys) -> None:
    import cbirlib
    from cbirlib.plugins import list_extractors

    assert main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["baseline"]["module"] == "cbirlib.extractors.baseline"
    assert plugins["baseline"]["version"] == cbirlib.__version__
    # every registered extractor is listed under the plugin that registered it
    for info in list_extractors():
        assert info.name in plugins[info.plugin]["extractors"]
    assert main(["plugins"]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[1:]}
    assert rows["study"][1] == cbirlib.__version__ and "radimagenet-resnet50," in rows["study"]
    assert rows["timm"][1] == cbirlib.__version__ and rows["timm"][2:] == [
        "cbirlib.extractors.timm",
        "timm:",
    ]


def test_plugins_lists_a_hook_object_registered_directly(capsys) -> None:
    from cbirlib import hookimpl, plugins

    class Mine:
        @hookimpl
        def register_extractors(self, register):  # type: ignore[no-untyped-def]
            register("mine-test", lambda: None, description="test")

    plugins.pm.register(Mine(), name="mine")
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["mine"] == {
        "name": "mine",
        "version": None,
        "module": __name__,
        "extractors": ["mine-test"],
    }


# --- benchmark -----------------------------------------------------------------------------


def test_benchmark_takes_weights_per_extractor_and_refuses_one_file_for_two(
    tmp_path, capsys
) -> None:
    from cbirlib.datasets import make_phantoms

    data = make_phantoms(tmp_path / "ds", 4, shape=(16, 16)).root
    shared = tmp_path / "r50.pt"
    shared.write_bytes(b"not read: the check comes first")
    two = ["--extractor", "radimagenet-resnet50", "fractaldb-resnet50"]
    argv = ["benchmark", str(data), *two, "--quiet"]
    argv += [
        "--weights",
        f"radimagenet-resnet50={shared}",
        "--weights",
        f"fractaldb-resnet50={shared}",
    ]
    assert main(argv) != 0
    err = _one_line_error(capsys)
    assert "radimagenet-resnet50" in err and "fractaldb-resnet50" in err
    # a weights name that is not among the extractors is named before any work
    argv = ["benchmark", str(data), "--quiet", "--weights", f"dinov2={shared}"]
    assert main(argv) != 0
    assert "dinov2" in _one_line_error(capsys)


def test_results_lead_back_to_the_files_and_a_montage(indexed, tmp_path, capsys) -> None:
    data, index = indexed
    query = str(data / "b.nii.gz")
    png = tmp_path / "m.png"
    assert main(["query", str(index), query, "--json", "--top", "2", "--montage", str(png)]) == 0
    answer = json.loads(capsys.readouterr().out)
    paths = [r["path"] for r in answer["results"]]
    assert paths[0] == str((data / "b.nii.gz").resolve())
    assert all(Path(p).is_file() for p in paths)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two = [str(data / "a.nii.gz"), query]
    assert main(["query", str(index), *two, "--montage", str(png)]) == 2
