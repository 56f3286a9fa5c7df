"""Tests of the package surface, Volume, SliceLabels and the error hierarchy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cbirlib
from cbirlib.errors import (
    CbirError,
    InvalidVolumeError,
    LabelsError,
    MaskShapeError,
    SliceOutOfRangeError,
    UnknownStructureError,
)
from cbirlib.labels import SliceLabels
from cbirlib.volume import Volume


def test_import_is_cheap() -> None:
    code = (
        "import sys, cbirlib; "
        "heavy = [m for m in ('torch', 'timm', 'hnswlib', 'pydicom', 'nibabel', 'matplotlib',"
        " 'pandas') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _stub_names() -> dict[str, str]:
    """Public name -> the module it comes from, as ``cbirlib/__init__.pyi`` writes it."""
    tree = ast.parse((Path(cbirlib.__file__).parent / "__init__.pyi").read_text())
    names = {}
    for node in tree.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.unparse(node)
        for alias in node.names:
            # `X as X`: the stub form that re-exports a name
            assert alias.asname == alias.name, ast.unparse(node)
            names[alias.name] = f"cbirlib.{node.module}" if node.module else f"cbirlib.{alias.name}"
    return names


def test_every_public_name_resolves() -> None:
    import importlib

    names = _stub_names()
    assert sorted(cbirlib.__all__) == sorted(names)
    assert set(cbirlib.__all__) <= set(dir(cbirlib))
    for name in cbirlib.__all__:
        obj = getattr(cbirlib, name)
        module = importlib.import_module(names[name])
        # the object its defining module holds, not a stand-in or a submodule
        assert obj is (module if module.__name__ == f"cbirlib.{name}" else getattr(module, name))
        if name != "__version__":
            assert getattr(obj, "__doc__", None), f"{name} has no docstring"


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        cbirlib.no_such_name  # noqa: B018


def test_errors_inherit_builtins() -> None:
    # errors raised by real calls are caught by the builtin an existing caller expects
    with pytest.raises(ValueError, match=r"volume 'bad': expected a 3D array.*\(4, 4\)"):
        Volume("bad", np.zeros((4, 4)))
    labels = SliceLabels(("liver",), np.array([[True], [False]]))
    with pytest.raises(KeyError) as info:
        labels.slices_with("livr")
    # KeyError subclasses keep a readable message (no extra quotes).
    assert str(info.value).startswith("unknown structure 'livr'; did you mean 'liver'?")
    assert str(UnknownStructureError("bad name")) == "bad name"


def test_volume_validates_and_slabs() -> None:
    arr = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)
    liver = np.zeros((5, 4, 3), bool)
    liver[2:4] = True
    labels = SliceLabels.from_masks({"liver": liver})
    v = Volume("v", arr, spacing=(2.5, 1, 1), z_positions=np.arange(5) * 2.5 + 10, labels=labels)
    assert v.array.dtype == np.float32
    assert v.shape == (5, 4, 3)
    sub = v.slab(2, 4)
    assert sub.n_slices == 2
    assert sub.z_positions.tolist() == [15.0, 17.5]
    assert sub.labels is not None and sub.labels.span("liver") == (0, 1)
    np.testing.assert_array_equal(sub.array, v.array[2:4])


@pytest.mark.parametrize(
    ("array", "kwargs", "match"),
    [
        (np.zeros((4, 4)), {}, "3D"),
        (np.zeros((2, 4, 4, 1)), {}, "3D"),
        (np.full((2, 2, 2), np.nan), {}, "NaN"),
        (np.zeros((2, 2, 2)), {"spacing": (0, 1, 1)}, "spacing"),
        (np.zeros((2, 2, 2)), {"z_positions": [0.0]}, "z positions"),
        (np.zeros((2, 2, 2)), {"z_positions": [0.0, np.nan]}, "finite"),
        (np.zeros((3, 2, 2)), {"z_positions": [0.0, 2.0, 2.0]}, r"increase strictly.*slice 2"),
        (np.zeros((3, 2, 2)), {"z_positions": [4.0, 2.0, 0.0]}, "inferior -> superior"),
    ],
)
def test_volume_rejects_bad_input(array: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidVolumeError, match=match):
        Volume("bad", array, **kwargs)


@pytest.mark.parametrize(
    "where", [(0, 0, 0), (6, 2, 3), (-1, -1, -1)], ids=["first", "mid", "last"]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layout", ["contiguous", "transposed view", "every other slice"])
def test_a_non_finite_voxel_is_found_in_any_chunk_and_layout(
    where: tuple[int, int, int], bad: float, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cbirlib import volume as volume_module

    monkeypatch.setattr(volume_module, "_FINITE_CHUNK", 40)  # chunks of 2 slices of 5 x 4
    base = np.zeros((7, 5, 4), np.float32)
    array = {
        "contiguous": base,
        "transposed view": np.zeros((4, 5, 7), np.float32).transpose(2, 1, 0),
        "every other slice": np.zeros((14, 5, 4), np.float32)[::2],
    }[layout]
    Volume("fine", array)  # all finite: accepted
    array[where] = bad
    with pytest.raises(InvalidVolumeError, match="1 voxels are NaN or infinite"):
        Volume("bad", array)


def test_a_large_volume_is_checked_for_non_finite_voxels_in_chunks() -> None:
    array = np.zeros((12, 256, 256), np.float32)  # 3 chunks of 4 slices
    Volume("fine", array)
    array[11, 255, 255] = np.nan
    with pytest.raises(InvalidVolumeError, match="1 voxels are NaN"):
        Volume("bad", array)


def test_volume_rejects_labels_of_other_length() -> None:
    labels = SliceLabels(("a",), np.zeros((3, 1), bool))
    with pytest.raises(MaskShapeError):
        Volume("v", np.zeros((4, 2, 2)), labels=labels)


def test_slice_labels_min_pixels_and_grouping() -> None:
    a = np.zeros((3, 4, 4), bool)
    a[0, 0, 0] = True  # one pixel
    a[1, :2, :2] = True  # four pixels
    b = np.zeros((3, 4, 4), bool)
    b[2, 0, :3] = True
    labels = SliceLabels.from_masks({"rib_left_1": a, "rib_right_1": b}, min_pixels=2)
    assert labels.structures(0) == frozenset()
    assert labels.structures(1) == {"rib_left_1"}
    assert labels.volume_structures() == {"rib_left_1", "rib_right_1"}
    coarse = labels.grouped({"rib_left_1": "ribs", "rib_right_1": "ribs"})
    assert coarse.names == ("ribs",)
    assert coarse.slices_with("ribs").tolist() == [1, 2]
    with pytest.raises(UnknownStructureError, match="rib_left_1"):
        labels.slices_with("liver")


def test_slice_labels_mask_shapes_must_agree() -> None:
    with pytest.raises(MaskShapeError, match="b"):
        SliceLabels.from_masks({"a": np.zeros((2, 2, 2)), "b": np.zeros((3, 2, 2))})
    with pytest.raises(CbirError):
        SliceLabels.from_masks({"a": np.zeros((2, 2))})


def test_public_functions_are_not_shadowed_by_submodules() -> None:
    code = (
        "import importlib, cbirlib\n"
        "for m in ('evaluation', 'benchmarking', 'metrics', 'search', 'io', 'index'):\n"
        "    importlib.import_module('cbirlib.' + m)\n"
        "assert callable(cbirlib.evaluate) and callable(cbirlib.benchmark)\n"
        "assert callable(cbirlib.load_volume) and callable(cbirlib.build_index)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slice_labels_errors_are_named_cbirlib_errors() -> None:
    with pytest.raises(LabelsError, match="repeated: liver") as err:
        SliceLabels(("liver", "lung", "liver"), np.zeros((2, 3), bool))
    assert isinstance(err.value, ValueError)
    for bad in (0, -1):
        with pytest.raises(LabelsError, match=f"min_pixels.*{bad}"):
            SliceLabels.from_masks({"a": np.ones((2, 2, 2))}, min_pixels=bad)
    labels = SliceLabels(("a",), np.array([[True], [False]]))
    assert labels.structures(0) == {"a"}
    for index in (2, -1):
        with pytest.raises(SliceOutOfRangeError, match=rf"slice {index} .*0\.\.1"):
            labels.structures(index)
    # caught as the builtin IndexError and as a labels error, naming the slice
    with pytest.raises(IndexError, match=r"^slice 2 out of range; the labels cover slices 0\.\.1$"):
        labels.structures(2)
    with pytest.raises(LabelsError, match="slice -1 out of range"):
        labels.structures(-1)


def test_slice_labels_from_counts_matches_from_masks() -> None:
    from cbirlib.labels import slice_counts

    rng = np.random.default_rng(0)
    masks = {n: rng.random((5, 6, 6)) < p for n, p in (("a", 0.05), ("b", 0.3))}
    counts = {n: slice_counts(m) for n, m in masks.items()}
    for min_pixels in (1, 3):
        a = SliceLabels.from_masks(masks, min_pixels=min_pixels)
        b = SliceLabels.from_counts(counts, min_pixels=min_pixels)
        assert a.names == b.names
        np.testing.assert_array_equal(a.present, b.present)
    with pytest.raises(LabelsError, match="different lengths"):
        SliceLabels.from_counts({"a": [1, 2], "b": [1, 2, 3]})
