"""Tests of the baseline extractor on hand-made synthetic 'anatomies'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbirlib.errors import ExtractorError, ExtractorMismatchError
from cbirlib.extractors.baseline import FEATURE_VERSION, BaselineExtractor
from cbirlib.index import load_index
from cbirlib.index.build import build_index
from cbirlib.plugins import create_extractor
from cbirlib.search import SliceSearch
from cbirlib.volume import Volume
from tests.fakes import write_meta

REGIONS = ("pelvis", "abdomen", "thorax")


def synthetic_subject(
    vid: str, seed: int, *, n: int = 30, shape: tuple[int, int] = (64, 64), modality: str = "CT"
) -> tuple[Volume, np.ndarray]:
    """A body with three regions along z; each subject has its own size, position, noise.

    pelvis: wide body, a bone ring; abdomen: a bright liver on one side, the spine;
    thorax: two dark lungs, the heart between them, the spine.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    scale = rng.uniform(0.8, 1.1)
    cy, cx = ny / 2 + rng.uniform(-4, 4), nx / 2 + rng.uniform(-4, 4)
    region = np.repeat(np.arange(3), -(-n // 3))[:n]
    vol = np.full((n, ny, nx), -1000.0, np.float32)
    for z in range(n):
        r = region[z]
        ry, rx = scale * ny * 0.3, scale * nx * (0.42 if r == 0 else 0.4)

        def ellipse(
            dy: float, dx: float, ay: float, ax: float, ry: float = ry, rx: float = rx
        ) -> np.ndarray:
            return ((yy - cy - dy * ry) / (ay * ry)) ** 2 + (
                (xx - cx - dx * rx) / (ax * rx)
            ) ** 2 <= 1

        sl = vol[z]
        sl[ellipse(0, 0, 1, 1)] = -90.0  # fat
        sl[ellipse(0, 0, 0.85, 0.85)] = 45.0  # muscle / organs
        if r == 0:
            sl[ellipse(0, 0, 0.7, 0.75) & ~ellipse(0, 0, 0.55, 0.6)] = 700.0  # pelvic ring
            sl[ellipse(-0.2, 0, 0.25, 0.2)] = 5.0  # bladder
        elif r == 1:
            sl[ellipse(-0.1, -0.35, 0.5, 0.4)] = 65.0  # liver
            sl[ellipse(0.6, 0, 0.15, 0.1)] = 900.0  # vertebra
        else:
            sl[ellipse(0, -0.45, 0.65, 0.35)] = -850.0  # lungs
            sl[ellipse(0, 0.45, 0.65, 0.35)] = -850.0
            sl[ellipse(-0.2, 0.05, 0.3, 0.2)] = 40.0  # heart
            sl[ellipse(0.6, 0, 0.15, 0.1)] = 900.0
    vol += rng.normal(0, 15, size=vol.shape).astype(np.float32)
    if modality == "MR":
        vol = (vol + 1000.0) * 0.7  # arbitrary units, air at 0
    spacing = (3.0, 400.0 / nx * scale, 400.0 / nx * scale)
    return Volume(vid, vol, spacing=spacing, modality=modality), region


def test_dim_and_unit_float32_rows() -> None:
    ex = BaselineExtractor()
    vol, _ = synthetic_subject("a", 0)
    emb = ex.extract(vol)
    assert ex.dim == 3 * 16 + 3 * 64 + 18 == 258
    assert emb.shape == (30, ex.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert BaselineExtractor(bins=8, grid=4).extract(vol).shape == (30, 3 * 8 + 3 * 16 + 18)


def test_deterministic_and_batch_independent() -> None:
    vol, _ = synthetic_subject("a", 1)
    a = BaselineExtractor(batch_size=7).extract(vol)
    b = BaselineExtractor(batch_size=256).extract(vol)
    np.testing.assert_array_equal(a, BaselineExtractor(batch_size=7).extract(vol))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_slices_selects_rows() -> None:
    ex = BaselineExtractor()
    vol, _ = synthetic_subject("a", 2)
    full = ex.extract(vol)
    np.testing.assert_allclose(
        ex.extract(vol, slices=np.array([29, 0, 5])), full[[29, 0, 5]], atol=1e-6
    )
    np.testing.assert_allclose(ex.extract(vol, slices=np.arange(3, 9)), full[3:9], atol=1e-6)
    with pytest.raises(ExtractorError, match="'baseline'"):
        ex.extract(vol, slices=np.array([30]))


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_anatomy_in_other_subjects_is_nearest(modality: str) -> None:
    ex = BaselineExtractor()
    subjects = [
        synthetic_subject(f"s{i}", seed=10 + i, shape=shape, modality=modality)
        for i, shape in enumerate([(64, 64), (80, 72), (56, 64), (96, 96)])
    ]
    embs = [ex.extract(v) for v, _ in subjects]
    for i, (_, regions_q) in enumerate(subjects):
        for j, (_, regions_db) in enumerate(subjects):
            if i == j:
                continue
            nearest = (embs[i] @ embs[j].T).argmax(axis=1)
            np.testing.assert_array_equal(regions_db[nearest], regions_q, err_msg=f"{i}->{j}")


def test_blank_and_constant_slices_give_valid_vectors() -> None:
    ex = BaselineExtractor()
    arr = np.full((3, 40, 40), -1000.0, np.float32)
    arr[1] = 40.0  # body fills the whole field of view
    arr[2, 10:20, 10:30] = 2000.0
    emb = ex.extract(Volume("blank", arr))
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] < 0.99


def test_to_config_and_invalid_arguments() -> None:
    ex = BaselineExtractor(bins=12, grid=5, size=48)
    assert ex.to_config() == {
        "name": "baseline",
        "bins": 12,
        "grid": 5,
        "size": 48,
        "feature_version": FEATURE_VERSION,
    }
    cfg = {k: v for k, v in ex.to_config().items() if k != "name"}
    vol, _ = synthetic_subject("a", 3)
    np.testing.assert_array_equal(BaselineExtractor(**cfg).extract(vol), ex.extract(vol))
    assert ex.input_config.size == (48, 48)
    with pytest.raises(ExtractorError, match="bins"):
        BaselineExtractor(bins=1)
    with pytest.raises(ExtractorError, match="grid"):
        BaselineExtractor(grid=40, size=64)
    with pytest.raises(ExtractorError, match="batch_size"):
        BaselineExtractor(batch_size=0)


def test_padded_copy_keeps_its_shape_features_and_embeds_alike() -> None:
    """The baseline stretches slices to a square grid; its shape features are in mm."""
    from cbirlib.extractors.baseline import SHAPE_DIM

    vol, _ = synthetic_subject("a", 2)  # 64 x 64
    wide = np.full((vol.n_slices, 64, 96), -1000.0, np.float32)  # padded with air
    wide[:, :, 16:80] = vol.array
    copy = Volume("wide", wide, spacing=vol.spacing)
    ex = BaselineExtractor()
    a, b = ex.extract(vol), ex.extract(copy)
    shape_a, shape_b = a[:, -SHAPE_DIM:], b[:, -SHAPE_DIM:]
    cos = (
        (shape_a * shape_b).sum(1)
        / np.linalg.norm(shape_a, axis=1)
        / np.linalg.norm(shape_b, axis=1)
    )
    assert cos.min() > 0.99  # (0.89 before) the body's aspect ratio in mm, not in stretched pixels
    assert np.median((a * b).sum(1)) > 0.98  # the rest: histograms of resampled pixels


@pytest.mark.parametrize("old", ["missing", 1])
def test_an_index_of_the_old_features_is_refused_on_query_and_add(
    tmp_path: Path, old: object
) -> None:
    """cbirlib 0.1.0 wrote baseline configs without a feature version (its aspect feature
    was in grid pixels): such an index must not mix with the embeddings of today."""
    ex = BaselineExtractor(bins=8, grid=4, size=32)
    vols = [synthetic_subject(f"s{i}", i, n=6, shape=(48, 64))[0] for i in range(2)]
    path = tmp_path / "idx"
    build_index(vols[:1], ex, path, exact=True, verbose=False)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["extractor_config"]["feature_version"] == FEATURE_VERSION == 2
    if old == "missing":
        del meta["extractor_config"]["feature_version"]
    else:
        meta["extractor_config"]["feature_version"] = old
    write_meta(path, meta)
    index = load_index(path)
    refused = r"version 1, vectors come from version 2.*rebuild the index"
    with pytest.raises(ExtractorMismatchError, match=refused):  # query, not strict
        SliceSearch(ex, index, k=2).retrieve(vols[1])
    with pytest.raises(ExtractorMismatchError, match=refused):  # add to it directly
        index.check_extractor(ex.to_config(), dim=ex.dim, strict=False)
    with pytest.raises(ExtractorMismatchError, match=refused):  # add by a resumed build
        build_index(vols, ex, path, exact=True, verbose=False)
    assert load_index(path).volume_ids == ["s0"]  # left as it was
    # an old config without the key makes today's extractor; one that names version 1
    # cannot be made. A rebuilt index is accepted.
    if old == "missing":
        assert create_extractor(**index.extractor_config).to_config() == ex.to_config()
    else:
        with pytest.raises(ExtractorError, match="rebuild"):
            create_extractor(**index.extractor_config)
    rebuilt = build_index(vols, ex, path, exact=True, verbose=False, resume=False)
    assert rebuilt.volume_ids == ["s0", "s1"]
    hits = SliceSearch(ex, rebuilt, k=2).retrieve(vols[1])
    assert "s1" in set(hits.volume_id)


def test_another_feature_version_cannot_be_built() -> None:
    with pytest.raises(ExtractorError, match=r"feature_version 1 .*version 2.*rebuild"):
        BaselineExtractor(feature_version=1)
