"""The readers' voxel decoding: bit for bit nibabel's float32 data, by the fast routes too.

``cbirlib.io`` casts the stored voxels to float32 in one pass, straight into the
volume's array, when nibabel would not scale them and float32 holds them exactly;
every other case goes through ``get_fdata(dtype=float32)``. A ``.nii.gz`` inflated by
cbirlib (isal or zlib) is streamed: its voxels cast into place a few slices at a time
where the canonical layout only flips axes, else inflated whole. Every route must give
nibabel's own values (the reference below) and the same geometry, for every stored
type, scaling and orientation.
"""

from __future__ import annotations

import functools
import gzip
import io
import logging
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from cbirlib.errors import CbirError, InvalidVolumeError, VolumeReadError, VolumeSourceError
from cbirlib.ingest import read_volumes
from cbirlib.io import _gzipped, load_volume
from cbirlib.io._canonical import images_allocated_by
from cbirlib.queries import RegionVolume
from cbirlib.volume import RegionOrigin, Volume

NIFTI_DIR = Path(nib.__file__).parent / "tests" / "data"
STORED = ["uint8", "int8", "int16", "uint16", "int32", "float32", "float64"]
AFFINES = {
    "RAS": np.diag([0.8, 0.7, 2.5, 1.0]),
    "LPI": np.diag([-0.8, -0.7, -2.5, 1.0]),  # flipped on every axis by the reader
    "LPS": np.diag([-0.8, -0.7, 2.5, 1.0]),  # DICOM's patient axes, as dcm2niix-like tools write
    "LAS": np.diag([-0.8, 0.7, 2.5, 1.0]),  # radiological: only x flipped
    # sagittal storage: file axes (A, S, R), reordered by the reader
    "sagittal": np.array([[0, 0, 2.5, 0], [0.8, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1.0]]),
}
ROUTES = ["isal", "zlib"]  # cbirlib inflates: streamed, or whole where streaming does not fit


def nibabel_zyx(path: Path) -> npt.NDArray[np.float32]:
    """The reference: nibabel's canonical float32 data, in the ``(Z, Y, X)`` layout."""
    img = nib.as_closest_canonical(nib.load(path))
    return np.ascontiguousarray(img.get_fdata(dtype=np.float32).transpose(2, 1, 0))


def write(path: Path, stored: str, affine: npt.NDArray[np.float64], scaled: bool) -> Path:
    rng = np.random.default_rng(7)
    info = np.iinfo(stored) if np.dtype(stored).kind in "iu" else None
    if info is None:
        data = rng.normal(0, 300, (9, 8, 6)).astype(stored)
    else:  # the whole range, so that scaling and rounding are exercised
        data = rng.integers(info.min, info.max, (9, 8, 6), endpoint=True).astype(stored)
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(stored)
    if scaled:
        img.header.set_slope_inter(0.37, -1024.5)
    nib.save(img, path)
    return path


def same_geometry(got: Volume, want: Volume) -> None:
    assert got.affine is not None and want.affine is not None
    assert got.affine.tobytes() == want.affine.tobytes()
    assert got.spacing == want.spacing
    assert got.z_positions.tobytes() == want.z_positions.tobytes()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "scaled"])
@pytest.mark.parametrize("orientation", list(AFFINES))
@pytest.mark.parametrize("stored", STORED)
def test_voxels_are_nibabels_float32_for_every_stored_type(
    tmp_path: Path,
    stored: str,
    orientation: str,
    scaled: bool,
    route: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(tmp_path / "v.nii.gz", stored, AFFINES[orientation], scaled)
    proxy = nib.load(path).dataobj
    want_scaling = (0.37, -1024.5) if scaled else (1.0, 0.0)
    assert (proxy.slope, proxy.inter) == pytest.approx(want_scaling)
    monkeypatch.setenv("CBIRLIB_GZIP", "nibabel")
    by_nibabel = load_volume(path, modality="CT")
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    monkeypatch.setattr(_gzipped, "PIECE_BYTES", 300)  # 2 of the 9 x 8 slices per piece
    got = load_volume(path, modality="CT")
    want = nibabel_zyx(path)
    assert got.array.dtype == np.float32 and got.array.flags.c_contiguous
    assert got.array.tobytes() == want.tobytes() == by_nibabel.array.tobytes()
    same_geometry(got, by_nibabel)


@pytest.mark.parametrize("route", ROUTES)
def test_an_oblique_scan_has_nibabels_voxels_and_geometry(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    angle = np.radians(12)  # tilted about the left-right axis, stored LPS
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, -0.7, 2.5])
    affine[:3, 3] = [120.5, -80.25, -300.0]
    path = write(tmp_path / "oblique.nii.gz", "int16", affine, scaled=False)
    monkeypatch.setenv("CBIRLIB_GZIP", "nibabel")
    with pytest.warns(UserWarning, match="oblique"):
        by_nibabel = load_volume(path, modality="CT")
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    monkeypatch.setattr(_gzipped.GzippedNifti, "whole_image", refuse("whole_image"))
    with pytest.warns(UserWarning, match="oblique"):
        got = load_volume(path, modality="CT")
    assert got.array.tobytes() == by_nibabel.array.tobytes() == nibabel_zyx(path).tobytes()
    same_geometry(got, by_nibabel)


def refuse(what: str) -> object:
    def refused(*args: object, **kwargs: object) -> None:
        pytest.fail(f"{what} was used")

    return refused


@pytest.mark.parametrize("orientation", ["RAS", "LPI", "LPS", "LAS"])
@pytest.mark.parametrize("stored", ["uint8", "int16", "uint16", "float32"])
def test_axial_exact_voxels_are_streamed_never_inflated_whole(
    tmp_path: Path, stored: str, orientation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "v.nii.gz", stored, AFFINES[orientation], scaled=False)
    monkeypatch.setattr(_gzipped.GzippedNifti, "whole_image", refuse("whole_image"))
    assert load_volume(path, modality="CT").array.tobytes() == nibabel_zyx(path).tobytes()


@pytest.mark.parametrize(
    ("stored", "orientation", "scaled"),
    [("int16", "sagittal", False), ("int16", "RAS", True), ("int32", "RAS", False)],
)
def test_other_files_are_inflated_whole_and_decoded_by_nibabel(
    tmp_path: Path, stored: str, orientation: str, scaled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "v.nii.gz", stored, AFFINES[orientation], scaled)
    monkeypatch.setattr(_gzipped.GzippedNifti, "cast_voxels_into", refuse("cast_voxels_into"))
    assert load_volume(path, modality="CT").array.tobytes() == nibabel_zyx(path).tobytes()


@pytest.mark.parametrize("route", ROUTES)
def test_the_shape_is_read_from_the_header_alone(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cbirlib.io import nifti_shape

    monkeypatch.setenv("CBIRLIB_GZIP", route)
    path = write(tmp_path / "v.nii.gz", "int16", AFFINES["sagittal"], scaled=False)
    shape = load_volume(path, modality="CT").array.shape
    monkeypatch.setattr(_gzipped.GzippedNifti, "whole_image", refuse("whole_image"))
    monkeypatch.setattr(_gzipped.GzippedNifti, "cast_voxels_into", refuse("cast_voxels_into"))
    assert nifti_shape(path) == shape == (8, 9, 6)


def nifti_bytes(shape: tuple[int, ...] = (40, 30, 12)) -> bytes:
    rng = np.random.default_rng(5)
    img = nib.Nifti1Image(rng.integers(-1024, 3000, shape).astype(np.int16), AFFINES["LPS"])
    img.set_qform(AFFINES["LPS"], code=1)
    return bytes(img.to_bytes())


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "damage",
    ["CRC", "stream cut in the voxels", "content short of the voxels", "garbage after"],
)
def test_a_damaged_stream_is_a_read_error_naming_the_file(
    tmp_path: Path, route: str, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    monkeypatch.setattr(_gzipped, "PIECE_BYTES", 4096)
    raw = nifti_bytes()
    packed = gzip.compress(raw)
    if damage == "CRC":  # the trailer: CRC32 then the length
        packed = packed[:-8] + bytes([packed[-8] ^ 0xFF]) + packed[-7:]
    elif damage == "stream cut in the voxels":
        packed = packed[: len(packed) * 2 // 3]
    elif damage == "content short of the voxels":
        packed = gzip.compress(raw[: len(raw) - 1000])
    else:
        packed += b"not gzip"
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(packed)
    with pytest.raises(VolumeReadError, match=r"bad\.nii\.gz") as info:
        load_volume(path, modality="CT")
    assert info.value.__cause__ is None


@pytest.mark.parametrize("route", ROUTES)
def test_multi_member_and_zero_padded_gzip_read_as_gzip_reads_them(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    monkeypatch.setattr(_gzipped, "PIECE_BYTES", 4096)
    raw = nifti_bytes()
    cut = 352 + 5000  # a member ends inside a slice, as bgzip's 64 KiB blocks do
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]) + b"\0" * 16)
    assert gzip.decompress(path.read_bytes()) == raw
    monkeypatch.setattr(_gzipped.GzippedNifti, "whole_image", refuse("whole_image"))
    assert load_volume(path, modality="CT").array.tobytes() == nibabel_zyx(path).tobytes()


@pytest.mark.parametrize("route", ROUTES)
def test_a_volume_smaller_than_the_header_read_is_decoded(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    path = tmp_path / "tiny.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes((2, 3, 4))))  # 48 bytes of voxels
    assert load_volume(path, modality="CT").array.tobytes() == nibabel_zyx(path).tobytes()


def variant(path: Path, kind: str) -> Path:
    """A file of one of the header layouts real scans come in."""
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 3000, (9, 8, 6)).astype(np.int16)
    affine = AFFINES["LPI"]
    if kind == "big-endian int16":
        img = nib.Nifti1Image(data.astype(">i2"), affine, nib.Nifti1Header(endianness=">"))
    elif kind == "big-endian float32":
        f32 = data.astype(">f4") / 3
        img = nib.Nifti1Image(f32, affine, nib.Nifti1Header(endianness=">"))
    elif kind == "NIfTI-2":
        img = nib.Nifti2Image(data, affine)
    elif kind == "4D, trailing 1":
        img = nib.Nifti1Image(data[..., None], affine)
    elif kind == "with an extension":
        img = nib.Nifti1Image(data, affine)
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 100))
    else:  # "scl_slope 0" (no scaling, by the standard; nibabel itself writes NaN)
        img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    raw = bytearray(img.to_bytes())
    if kind == "scl_slope 0":
        raw[112:120] = np.array([0.0, 0.0], "<f4").tobytes()  # scl_slope, scl_inter
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


LAYOUTS = [
    "big-endian int16",
    "big-endian float32",
    "NIfTI-2",
    "4D, trailing 1",
    "with an extension",
    "scl_slope 0",
]


@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
@pytest.mark.parametrize("kind", LAYOUTS)
def test_header_layouts_decode_to_nibabels_values(
    tmp_path: Path, kind: str, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = variant(tmp_path / "v.nii.gz", kind)
    monkeypatch.setenv("CBIRLIB_GZIP", "nibabel")
    by_nibabel = load_volume(path, modality="CT")
    monkeypatch.setenv("CBIRLIB_GZIP", route)  # isal, zlib: inflated here, streamed
    monkeypatch.setattr(_gzipped.GzippedNifti, "whole_image", refuse("whole_image"))
    got = load_volume(path, modality="CT")
    want = nibabel_zyx(path) if kind != "4D, trailing 1" else nibabel_zyx_squeezed(path)
    assert got.array.tobytes() == want.tobytes() == by_nibabel.array.tobytes()
    same_geometry(got, by_nibabel)


def nibabel_zyx_squeezed(path: Path) -> npt.NDArray[np.float32]:
    img = nib.as_closest_canonical(nib.funcs.squeeze_image(nib.load(path)))
    return np.ascontiguousarray(img.get_fdata(dtype=np.float32).transpose(2, 1, 0))


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"])
def test_nibabels_shipped_scans_decode_to_nibabels_values(name: str) -> None:
    path = NIFTI_DIR / name
    assert load_volume(path, modality="MR").array.tobytes() == nibabel_zyx(path).tobytes()


@pytest.mark.parametrize("padded", [False, True], ids=["as scanned", "blank slices added"])
@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii"])
@pytest.mark.parametrize("route", ROUTES)
def test_real_mr_scans_gzipped_are_streamed_to_nibabels_values(
    tmp_path: Path, name: str, padded: bool, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nibabel's real MR volumes (big-endian int16 LAS, float32 RAS), as .nii.gz, and with
    # blank padding slices at both ends as scanners and converters write them
    img = nib.load(NIFTI_DIR / name)
    data = np.asanyarray(img.dataobj)
    if padded:
        blank = np.zeros((*data.shape[:2], 5), data.dtype)
        data = np.concatenate([blank, data, blank], axis=2)
    path = tmp_path / name.replace(".nii", ".nii.gz")
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    monkeypatch.setenv("CBIRLIB_GZIP", "nibabel")
    by_nibabel = load_volume(path, modality="MR")
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    monkeypatch.setattr(_gzipped.GzippedNifti, "whole_image", refuse("whole_image"))
    got = load_volume(path, modality="MR")
    assert got.array.tobytes() == by_nibabel.array.tobytes() == nibabel_zyx(path).tobytes()
    same_geometry(got, by_nibabel)


@pytest.mark.parametrize("scaled", [False, True], ids=["decoded into it", "copied into it"])
def test_an_allocator_receives_the_image_voxels(tmp_path: Path, scaled: bool) -> None:
    path = write(tmp_path / "v.nii.gz", "int16", AFFINES["LPI"], scaled)
    given: list[npt.NDArray[np.float32]] = []

    def allocate(shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
        given.append(np.full(shape, np.nan, np.float32))
        return given[-1]

    with images_allocated_by(allocate):
        volume = load_volume(path, modality="CT")
    assert len(given) == 1 and volume.array is given[0]
    assert volume.array.tobytes() == nibabel_zyx(path).tobytes()
    assert load_volume(path, modality="CT").array is not given[0]  # outside: numpy's


def test_masks_are_not_given_to_the_allocator(tmp_path: Path) -> None:
    from cbirlib.io import load_mask

    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), np.eye(4)), path)
    with images_allocated_by(lambda shape: pytest.fail("a mask went to the allocator")):
        assert load_mask(path).all()


def region_of(path: str) -> RegionVolume:
    volume = load_volume(path, modality="CT")
    cut = volume.slab(2, 6)
    return RegionVolume(
        "r", cut.array, spacing=cut.spacing, z_positions=cut.z_positions,
        modality="CT", origin=RegionOrigin(volume.id, "liver", first_slice=2),
    )  # fmt: skip


def second_of(first: str, second: str) -> object:
    load_volume(first, modality="CT")  # decoded first: into the worker's block
    return load_volume(second, modality="CT")


def one_by_one(stream: Iterator[Volume], want: list[Volume]) -> None:
    """Each volume equal to its reference, dropped before the next (blocks get reused)."""
    for w in want:
        g = next(stream)
        assert type(g) is type(w)  # a RegionVolume stays one
        assert g.array.tobytes() == w.array.tobytes() and g.id == w.id and g.origin == w.origin
        assert g.z_positions.tobytes() == w.z_positions.tobytes()
        del g
    assert next(stream, None) is None


def shm_blocks() -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith("cbirlib-")}


def test_loaders_that_cut_or_read_several_images_get_their_own_voxels(tmp_path: Path) -> None:
    small = str(write(tmp_path / "small.nii.gz", "int16", AFFINES["RAS"], False))
    big = tmp_path / "big.nii.gz"
    voxels = np.arange(40 * 30 * 20, dtype=np.int16).reshape(40, 30, 20)
    nib.save(nib.Nifti1Image(voxels, AFFINES["RAS"]), big)
    blocks = shm_blocks()
    loaders = [
        partial(region_of, small),  # a slab: a view of the image
        partial(second_of, small, str(big)),  # a bigger second image than the first
        partial(second_of, str(big), small),
        partial(region_of, small),
        small,  # a path between loaders: decoded into a pooled block
        partial(second_of, small, str(big)),
    ]
    want = [load_volume(x, modality="CT") if isinstance(x, str) else x() for x in loaders]
    one_by_one(read_volumes(loaders, workers=1, ahead=1), want)
    assert shm_blocks() == blocks


@functools.lru_cache
def cached(path: str) -> Volume:
    """A loader that keeps what it read (a worker-side cache)."""
    return load_volume(path, modality="CT")


def test_a_loader_that_keeps_its_volumes_is_not_overwritten_by_later_reads(
    tmp_path: Path,
) -> None:
    a = str(write(tmp_path / "a.nii.gz", "int16", AFFINES["RAS"], False))
    b = tmp_path / "b.nii.gz"  # the same shape, other voxels: fits a's block exactly
    nib.save(nib.Nifti1Image(np.full((9, 8, 6), 7, np.int16), AFFINES["RAS"]), b)
    sources: list[object] = [partial(cached, a), b, partial(cached, a), b, partial(cached, a)]
    want = [load_volume(a if i % 2 == 0 else b, modality="CT") for i in range(len(sources))]
    one_by_one(read_volumes(sources, workers=1, ahead=1), want)  # type: ignore[arg-type]


def unsendable(path: str) -> Volume:
    volume = load_volume(path, modality="CT")
    object.__setattr__(volume, "note", lambda: "cannot be pickled")
    return volume


def test_a_volume_that_cannot_be_sent_back_is_named_and_leaves_no_block(
    tmp_path: Path,
) -> None:
    path = str(write(tmp_path / "v.nii.gz", "int16", AFFINES["RAS"], False))
    blocks = shm_blocks()
    with pytest.raises(VolumeSourceError, match="cannot be sent back from a worker"):
        list(read_volumes([partial(unsendable, path)], workers=1))
    assert shm_blocks() == blocks


def test_an_image_refused_after_decoding_leaves_no_shared_block(tmp_path: Path) -> None:
    voxels = np.zeros((8, 8, 4), np.float32)
    voxels[2, 3, 1] = np.nan  # decoded into the worker's block, then refused by Volume
    nib.save(nib.Nifti1Image(voxels, AFFINES["RAS"]), tmp_path / "nan.nii.gz")
    blocks = shm_blocks()
    with pytest.raises(InvalidVolumeError, match="NaN"):
        list(read_volumes([tmp_path / "nan.nii.gz"], workers=1))
    assert shm_blocks() == blocks


@pytest.mark.parametrize("route", ["zlib", "nibabel"])
def test_a_4d_file_short_of_its_data_is_a_read_error(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip

    from cbirlib.errors import VolumeReadError

    monkeypatch.setenv("CBIRLIB_GZIP", route)
    img = nib.Nifti1Image(np.ones((9, 8, 6, 1), np.int16), AFFINES["RAS"])
    img.set_qform(AFFINES["RAS"], code=1)
    nib.save(img, tmp_path / "whole.nii")
    whole = (tmp_path / "whole.nii").read_bytes()
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(whole[:-100]))  # a valid gzip
    with pytest.raises(VolumeReadError, match=r"short\.nii\.gz"):
        load_volume(tmp_path / "short.nii.gz", modality="CT")


def odd_header_file(path: Path, *, scaled: bool) -> Path:
    """An extension whose size is not a multiple of 16: nibabel warns."""
    img = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), AFFINES["RAS"])
    img.set_qform(AFFINES["RAS"], code=1)
    if scaled:
        img.header.set_slope_inter(2.0, 0.0)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * 24))
    raw = bytearray(img.to_bytes())
    raw[352:356] = np.array([24], "<i4").tobytes()  # the extension's esize: 24, not 32
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


@pytest.mark.parametrize("scaled", [False, True], ids=["streamed", "inflated whole"])
@pytest.mark.parametrize("route", ROUTES)
def test_nibabels_header_warnings_and_messages_come_once_as_before(
    tmp_path: Path,
    route: str,
    scaled: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import warnings

    path = odd_header_file(tmp_path / "odd.nii.gz", scaled=scaled)

    def messages() -> tuple[list[str], list[str]]:
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_volume(path, modality="CT")
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("nibabel")]
        return sorted(str(w.message) for w in caught), logged

    monkeypatch.setenv("CBIRLIB_GZIP", "nibabel")
    want = messages()
    assert any("multiple of 16" in m for m in want[0])  # the file does make nibabel warn
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    assert messages() == want


@pytest.mark.parametrize("route", ROUTES)
def test_a_negative_dimension_is_a_read_error(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    raw = bytearray(nifti_bytes((4, 5, 6)))
    raw[46:48] = np.array([-6], "<i2").tobytes()  # dim[3]
    path = tmp_path / "negative.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(VolumeReadError, match=r"negative\.nii\.gz.*negative dimensions"):
        load_volume(path, modality="CT")


@pytest.mark.parametrize("route", ROUTES)
def test_extensions_longer_than_a_piece_are_read(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    monkeypatch.setattr(_gzipped, "PIECE_BYTES", 4096)  # the header read in pieces
    img = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), AFFINES["LPS"])
    img.set_qform(AFFINES["LPS"], code=1)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * 100_000))
    path = tmp_path / "long-extension.nii.gz"
    path.write_bytes(gzip.compress(bytes(img.to_bytes())))
    monkeypatch.setattr(_gzipped.GzippedNifti, "whole_image", refuse("whole_image"))
    assert load_volume(path, modality="CT").array.tobytes() == nibabel_zyx(path).tobytes()


def malformed(path: Path, kind: str) -> Path:
    """Files with damaged headers, as the fuzzing of the readers produced them."""
    if kind in ("vox_offset 0, extension flag set", "extension running past vox_offset"):
        nifti2 = kind.startswith("vox_offset 0")
        header = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
        data = np.zeros((4, 4, 4), np.int16) if nifti2 else np.full((4, 4, 4), 16, np.int32)
        header.set_data_dtype(data.dtype)
        header.set_data_shape(data.shape)
        header.set_sform(np.eye(4), code=1)
        header.extensions.append(nib.nifti1.Nifti1Extension(0, b"x" * (24 if nifti2 else 200)))
        out = io.BytesIO()
        header.write_to(out)
        raw = bytearray(out.getvalue() + data.tobytes("F"))
        n = header.sizeof_hdr
        patched = type(header)(bytes(raw[:n]), check=False)
        patched["vox_offset"] = 0 if nifti2 else 400
        raw[:n] = patched.binaryblock
    else:
        img = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), np.eye(4))
        if kind == "NaN in the affine, 4D int32":
            img = nib.Nifti1Image(np.ones((4, 4, 4, 2), np.int32), np.eye(4), dtype=np.int32)
        if kind == "NaN in the affine, 4D trailing 1":
            img = nib.Nifti1Image(np.ones((4, 5, 6, 1), np.int16), np.eye(4))
        if kind == "scaled, a zero dimension":
            img.header.set_slope_inter(2.0, 0.0)
        raw = bytearray(img.to_bytes())
        if kind == "scaled, a zero dimension":
            raw[46:48] = np.array([0], "<i2").tobytes()  # dim[3]
        else:  # "NaN in the affine" (3D, 4D int32, 4D with a trailing 1)
            header = nib.Nifti1Header(bytes(raw[:348]), check=False)
            header["srow_x"][2] = np.nan
            header["sform_code"] = 1
            header["qform_code"] = 0
            raw[:348] = header.binaryblock
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def outcome(path: Path) -> tuple[object, ...]:
    """What reading gives: the error class, or the voxels and affine; and the warnings."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            volume = load_volume(path, modality="CT")
            result: tuple[object, ...] = (volume.array.tobytes(), volume.affine.tobytes())
        except Exception as exc:
            assert isinstance(exc, CbirError), f"{type(exc).__name__} escaped: {exc}"
            result = (type(exc).__name__,)
    return (*result, sorted(f"{w.category.__name__}: {w.message}" for w in caught))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "kind",
    [
        "vox_offset 0, extension flag set",
        "extension running past vox_offset",
        "scaled, a zero dimension",
        "NaN in the affine",
        "NaN in the affine, 4D int32",
        "NaN in the affine, 4D trailing 1",
    ],
)
def test_damaged_headers_read_as_nibabel_reads_them(
    tmp_path: Path, kind: str, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = malformed(tmp_path / "damaged.nii.gz", kind)
    monkeypatch.setenv("CBIRLIB_GZIP", "nibabel")
    want = outcome(path)
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    assert outcome(path) == want


@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
def test_the_shape_of_a_file_with_an_unusable_affine_is_a_read_error(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cbirlib.io import nifti_shape

    monkeypatch.setenv("CBIRLIB_GZIP", route)
    raw = bytearray(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)).to_bytes())
    header = nib.Nifti1Header(bytes(raw[:348]), check=False)
    for row in ("srow_x", "srow_y", "srow_z"):
        header[row][0] = 0  # the first voxel axis points nowhere
    header["sform_code"], header["qform_code"] = 1, 0
    raw[:348] = header.binaryblock
    path = tmp_path / "flat.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(VolumeReadError, match=r"flat\.nii\.gz: unusable affine"):
        nifti_shape(path)
    with pytest.raises(VolumeReadError, match=r"flat\.nii\.gz"):
        load_volume(path, modality="CT")


@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
@pytest.mark.parametrize(("dim", "error"), [(-6, VolumeReadError), (0, InvalidVolumeError)])
def test_the_shape_of_a_header_with_a_bad_dimension_is_refused_as_reading_it_is(
    tmp_path: Path, route: str, dim: int, error: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cbirlib.io import nifti_shape

    monkeypatch.setenv("CBIRLIB_GZIP", route)
    raw = bytearray(nifti_bytes((4, 5, 6)))
    raw[46:48] = np.array([dim], "<i2").tobytes()  # dim[3]
    path = tmp_path / "bad-dim.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(error, match=r"bad-dim\.nii\.gz"):
        nifti_shape(path)
    with pytest.raises(error, match=r"bad-dim\.nii\.gz"):
        load_volume(path, modality="CT")


def _refuse_checks(*_: object) -> bool:
    raise AssertionError("integer voxels were checked for NaN again")


@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
@pytest.mark.parametrize("orientation", ["RAS", "LPS", "sagittal"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("stored", ["uint8", "int16", "uint16", "int32"])
def test_integer_voxels_are_not_checked_for_nan_again(
    tmp_path: Path,
    route: str,
    orientation: str,
    suffix: str,
    stored: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    path = write(tmp_path / f"v{suffix}", stored, AFFINES[orientation], False)
    want = nibabel_zyx(path)
    monkeypatch.setattr("cbirlib.volume._all_finite", _refuse_checks)
    vol = load_volume(path, modality="CT")
    assert np.array_equal(vol.array, want)
    with pytest.raises(AssertionError, match="checked for NaN"):  # the check is still there
        Volume("other", np.zeros((2, 3, 4), np.float32))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_scaled_integers_and_floats_are_still_checked_for_nan_and_infinity(
    tmp_path: Path, route: str, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    overflow = nib.Nifti1Image(np.full((8, 8, 4), 30000, np.int16), AFFINES["RAS"])
    overflow.header.set_slope_inter(1e36, 0.0)  # 3e40 is infinite in float32
    nib.save(overflow, tmp_path / f"inf{suffix}")
    floats = np.zeros((8, 8, 4), np.float32)
    floats[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(floats, AFFINES["LPS"]), tmp_path / f"nan{suffix}")
    with pytest.raises(InvalidVolumeError, match=r"inf\.nii.*beyond float32's range"):
        load_volume(tmp_path / f"inf{suffix}", modality="CT")
    with pytest.raises(InvalidVolumeError, match=r"\d+ voxels are NaN or infinite"):
        load_volume(tmp_path / f"nan{suffix}", modality="CT")


def test_only_the_readers_array_skips_the_check() -> None:
    from cbirlib.volume import _finite_by_construction

    made = np.zeros((2, 3, 4), np.float32)
    other = made.copy()
    other[0, 0, 0] = np.inf
    with _finite_by_construction(made):
        Volume("made", made)
        with pytest.raises(InvalidVolumeError, match="1 voxels are NaN or infinite"):
            Volume("other", other)
    made[0, 0, 0] = np.nan
    with pytest.raises(InvalidVolumeError, match="NaN or infinite"):  # outside the block
        Volume("made", made)


@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("orientation", ["LPS", "sagittal"])
@pytest.mark.parametrize(("unit", "mm"), [("meter", 1000.0), ("micron", 0.001), ("mm", 1.0)])
def test_lengths_in_meters_or_microns_are_read_in_mm(
    tmp_path: Path,
    route: str,
    suffix: str,
    orientation: str,
    unit: str,
    mm: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A header's ``xyzt_units`` (meter, micron) was ignored: spacing 0.0025 'mm'."""
    monkeypatch.setenv("CBIRLIB_GZIP", route)
    affine = AFFINES[orientation].copy()
    affine[:3, 3] = [12.0, -30.0, 41.5]
    for stored in ("int16", "float32"):  # streamed and whole-file routes
        in_mm = load_volume(write(tmp_path / f"mm{suffix}", stored, affine, False), modality="MR")
        img = nib.load(tmp_path / f"mm{suffix}")
        scaled = affine.copy()
        scaled[:3] /= mm
        other = nib.Nifti1Image(np.asanyarray(img.dataobj), scaled)
        other.header.set_xyzt_units(unit)
        nib.save(other, tmp_path / f"in-{unit}{suffix}")
        vol = load_volume(tmp_path / f"in-{unit}{suffix}", modality="MR")
        assert np.array_equal(vol.array, in_mm.array)
        np.testing.assert_allclose(vol.spacing, in_mm.spacing, rtol=1e-6)
        np.testing.assert_allclose(vol.z_positions, in_mm.z_positions, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(vol.affine, in_mm.affine, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("time_code", [0x08, 0x10, 0x38, 0x30])  # sec, msec, undefined ones
def test_the_space_unit_is_read_whatever_the_time_bits(tmp_path: Path, time_code: int) -> None:
    """nibabel's get_xyzt_units fails on an undefined time code: meters were read as mm."""
    img = nib.Nifti1Image(np.ones((4, 4, 3), np.int16), np.diag([0.002, 0.003, 0.004, 1.0]))
    img.header["xyzt_units"] = 1 | time_code  # meter
    nib.save(img, tmp_path / "m.nii.gz")
    assert load_volume(tmp_path / "m.nii.gz", modality="MR").spacing == pytest.approx(
        (4.0, 3.0, 2.0)
    )


def test_a_thick_sagittal_stack_is_named_when_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Resliced axially, 5 mm sagittal slices are 0.9 x 5 mm strips: said, not silent."""
    sagittal = np.array([[0, 0, 5.0, 0], [0.9, 0, 0, 0], [0, 0.9, 0, 0], [0, 0, 0, 1.0]])
    for name, affine in (("sag", sagittal), ("ax", AFFINES["RAS"])):
        nib.save(nib.Nifti1Image(np.ones((8, 8, 6), np.int16), affine), tmp_path / f"{name}.nii")
    with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
        spacing = load_volume(tmp_path / "sag.nii", modality="MR").spacing
        assert spacing == pytest.approx((0.9, 0.9, 5.0))
        load_volume(tmp_path / "ax.nii", modality="MR")
    said = [r.getMessage() for r in caplog.records if "sagittal or coronal" in r.getMessage()]
    assert len(said) == 1 and "sag.nii" in said[0] and "0.9 x 5 mm" in said[0]


def test_an_undefined_unit_code_is_read_as_mm(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.ones((4, 4, 3), np.int16), AFFINES["RAS"])
    img.header["xyzt_units"] = 7  # no such unit
    nib.save(img, tmp_path / "odd.nii.gz")
    assert load_volume(tmp_path / "odd.nii.gz", modality="MR").spacing == pytest.approx(
        (2.5, 0.7, 0.8)
    )


@pytest.mark.parametrize("stored", ["float32", "int16"])
def test_a_volume_does_not_change_when_its_file_is_overwritten(tmp_path: Path, stored: str) -> None:
    """An uncompressed float32 ``.nii`` was read as a view of nibabel's memory map."""
    path = write(tmp_path / "v.nii", stored, AFFINES["RAS"], False)
    vol = load_volume(path, modality="MR")
    before = vol.array.copy()
    nib.save(nib.Nifti1Image(np.zeros((9, 8, 6), stored), AFFINES["RAS"]), path)
    assert np.array_equal(vol.array, before)
    path.write_bytes(b"")  # cut short: a mapped volume would fault (SIGBUS) when read
    assert float(vol.array.sum()) == float(before.sum())


@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("extra", [(1,), (1, 1), (1, 1, 1)])
def test_dimensions_of_1_beyond_the_third_are_a_3d_image(
    tmp_path: Path, route: str, suffix: str, extra: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5D (x, y, z, 1, 1) file, as some converters write, was refused."""
    from cbirlib.io import nifti_shape

    monkeypatch.setenv("CBIRLIB_GZIP", route)
    data = np.arange(9 * 8 * 6, dtype=np.int16).reshape(9, 8, 6)
    nib.save(nib.Nifti1Image(data, AFFINES["LPS"]), tmp_path / f"3d{suffix}")
    nib.save(
        nib.Nifti1Image(data.reshape(9, 8, 6, *extra), AFFINES["LPS"]), tmp_path / f"nd{suffix}"
    )
    want = load_volume(tmp_path / f"3d{suffix}", modality="CT")
    got = load_volume(tmp_path / f"nd{suffix}", modality="CT")
    assert np.array_equal(got.array, want.array) and got.spacing == want.spacing
    assert np.array_equal(got.affine, want.affine)
    assert nifti_shape(tmp_path / f"nd{suffix}") == want.shape
    nib.save(nib.Nifti1Image(data.reshape(9, 8, 3, 1, 2), AFFINES["LPS"]), tmp_path / f"5d{suffix}")
    with pytest.raises(InvalidVolumeError, match="beyond the third are all 1"):
        load_volume(tmp_path / f"5d{suffix}", modality="CT")


@pytest.mark.parametrize("route", [*ROUTES, "nibabel"])
@pytest.mark.parametrize("stored", ["int16", "float32"])
def test_a_gzipped_nii_and_an_uncompressed_nii_gz_are_read_as_what_they_are(
    tmp_path: Path,
    route: str,
    stored: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both were refused as "truncated or corrupt"."""
    import logging

    from cbirlib.io import nifti_shape

    monkeypatch.setenv("CBIRLIB_GZIP", route)
    plain = write(tmp_path / "v.nii", stored, AFFINES["LPS"], False)
    packed = write(tmp_path / "v.nii.gz", stored, AFFINES["LPS"], False)
    want = load_volume(plain, modality="CT")
    (tmp_path / "gzipped.nii").write_bytes(packed.read_bytes())
    (tmp_path / "plain.nii.gz").write_bytes(plain.read_bytes())
    for name, said in (("gzipped.nii", "not named .gz"), ("plain.nii.gz", "not gzip-compressed")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cbirlib.io"):
            got = load_volume(tmp_path / name, modality="CT")
        assert np.array_equal(got.array, want.array) and got.spacing == want.spacing
        assert np.array_equal(got.affine, want.affine)
        assert [r.getMessage().count(said) for r in caplog.records] == [1]
        assert nifti_shape(tmp_path / name) == want.shape
    (tmp_path / "cut.nii").write_bytes(packed.read_bytes()[:-30])  # still a damaged stream
    with pytest.raises(VolumeReadError):
        load_volume(tmp_path / "cut.nii", modality="CT")
