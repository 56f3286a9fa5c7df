"""``cbirlib annotate`` and ``cbirlib find`` through the real entry point, on phantoms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cbirlib.cli import main
from cbirlib.datasets import make_phantoms
from cbirlib.structures import COARSE_GROUPS

N_REFERENCE = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, object]:
    """A labeled reference index, and an archive of unlabeled copies of held-out scans."""
    root = tmp_path_factory.mktemp("annotate")
    data = make_phantoms(root / "ds", N_REFERENCE + 3, shape=(48, 48), seed=5)
    held_out = data.subjects[N_REFERENCE:]
    reference = root / "reference"
    shutil.copytree(data.root, reference)
    for sid in held_out:
        shutil.rmtree(reference / sid)
    archive = root / "archive"
    archive.mkdir()
    for sid in held_out:  # plain files: no masks travel with them
        shutil.copy(data.image_path(sid), archive / f"{sid}.nii.gz")
    assert main(["index", str(reference), str(root / "ref_idx"), "--quiet"]) == 0
    assert main(["index", str(archive), str(root / "arch_idx"), "--quiet"]) == 0
    return root / "ref_idx", root / "arch_idx", archive, data


def test_annotate_prints_the_structures_of_an_unlabeled_scan(setup, tmp_path, capsys) -> None:
    ref_idx, _, archive, data = setup
    sid = data.subjects[N_REFERENCE]
    png = tmp_path / "a.png"
    argv = ["annotate", str(ref_idx), str(archive / f"{sid}.nii.gz"), "--json"]
    assert main([*argv, "--granularity", "coarse", "--png", str(png)]) == 0
    answer = json.loads(capsys.readouterr().out)
    found = {s["structure"]: s for s in answer["structures"]}
    truth = data.load(sid).labels.grouped(COARSE_GROUPS)
    present = truth.volume_structures()
    assert len(found) >= 3
    # most structures found are really there, and their spans overlap the true slices
    assert len(set(found) & present) >= 0.8 * len(found)
    for name in set(found) & present:
        rows = truth.slices_with(name)
        assert found[name]["first"] <= rows.max() and found[name]["last"] >= rows.min()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["annotate", str(ref_idx), str(archive / f"{sid}.nii.gz")]) == 0
    table = capsys.readouterr().out
    assert "structures found" in table and next(iter(found)) in table


def test_annotate_needs_a_labeled_index(setup, capsys) -> None:
    _, arch_idx, archive, data = setup
    sid = data.subjects[N_REFERENCE]
    assert main(["annotate", str(arch_idx), str(archive / f"{sid}.nii.gz")]) == 1
    assert "label" in capsys.readouterr().err.lower()


def test_find_ranks_archive_volumes_that_show_the_structure(setup, capsys) -> None:
    ref_idx, arch_idx, _, data = setup
    argv = ["find", str(arch_idx), "liver", "--reference", str(ref_idx), "--json"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["structure"] == "liver"
    with_liver = {
        sid for sid in data.subjects[N_REFERENCE:] if data.load(sid).labels.contains("liver")
    }
    got = [r["volume_id"] for r in answer["results"]]
    assert with_liver and set(got[: len(with_liver)]) == with_liver
    assert all(r["path"] and r["loc_first"] is not None for r in answer["results"][:1])
    assert main(["find", str(arch_idx), "livr", "--reference", str(ref_idx)]) != 0
    assert "liver" in capsys.readouterr().err
