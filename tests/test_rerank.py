"""MaxSim re-ranking against a straightforward per-candidate reference, and its torch path.

The reference below scores each candidate on its own, one query slice at a time, in
float64, leaving blank slices out as the method says; the blocked, vectorised stage and
:func:`~cbirlib.rerank.maxsim_match` must give the same scores, ranking, matched slices,
similarities and localized spans, however the candidates fall into blocks.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from cbirlib import rerank
from cbirlib.errors import SettingError, SliceIndexError
from cbirlib.hits import Hits
from cbirlib.index import ExactIndex
from cbirlib.localize import Localize
from cbirlib.pipeline import SearchContext
from cbirlib.rerank import DTYPES, TOLERANCE, MaxSimRerank, maxsim_match
from cbirlib.search import SliceSearch
from tests.fakes import PositionExtractor, body_volume, build

F32 = npt.NDArray[np.float32]
DIM = 32
LENGTHS = (23, 1, 40, 17, 31, 8, 40, 12, 26, 5, 33, 19)


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> F32:
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def usable(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    return flags if flags.any() else np.ones_like(flags)


def reference(
    q: F32, q_flags: npt.NDArray[np.bool_], index: ExactIndex, vids: list[str], keep_blank: bool
) -> dict[str, tuple[float, npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
    """Per candidate, per query slice: the best kept slice, in float64."""
    queries = q if keep_blank else q[usable(q_flags)]
    out = {}
    for vid in vids:
        meta = index.slice_meta(vid)
        rows = np.ones(len(meta["slice_index"]), bool)
        if not keep_blank:
            rows = usable(meta["informative"])
        vectors = index.vectors(vid)[rows].astype(np.float64)
        ids = meta["slice_index"][rows]
        matched, sims = [], []
        for qt in queries.astype(np.float64):
            dots = vectors @ qt
            best = int(np.argmax(dots))
            matched.append(int(ids[best]))
            sims.append(float(dots[best]))
        out[vid] = (float(np.mean(sims)), np.array(matched), np.array(sims))
    return out


def candidates_index(seed: int = 0) -> tuple[ExactIndex, F32, npt.NDArray[np.bool_]]:
    """Volumes of uneven lengths with blank slices at their ends (one all blank),
    strided slice numbers, and a query with blank slices; vectors near the query's."""
    rng = np.random.default_rng(seed)
    q = unit(rng, 15)
    q_flags = np.ones(15, bool)
    q_flags[[0, 1, 14]] = False
    index = ExactIndex(DIM)
    for i, n in enumerate(LENGTHS):
        vectors = unit(rng, n) + (0.05 * i) * q[rng.integers(0, 15, n)]
        informative = np.ones(n, bool)
        informative[: n // 5] = False
        informative[n - n // 6 :] = False
        if i == 4:
            informative[:] = False  # no informative slice: scored on all of them
        index.add(
            f"v{i:02d}",
            vectors,
            slice_meta={"informative": informative, "slice_index": 3 + 2 * np.arange(n)},
        )
    return index, q, q_flags


def vote_hits(vids: list[str]) -> Hits:
    return Hits(
        query_id=["q"] * len(vids),
        volume_id=vids,
        score=np.arange(len(vids), 0, -1, dtype=np.float64),
        level="volume",
    )


def context(index: ExactIndex, q: F32, q_flags: npt.NDArray[np.bool_], **kw: Any) -> SearchContext:
    return SearchContext(index=index, embeddings={"q": q}, informative={"q": q_flags}, **kw)


@pytest.mark.parametrize("keep_blank", [False, True])
@pytest.mark.parametrize("block_bytes", [None, 1, 4 * 12 * 60])
def test_stage_matches_per_candidate_reference(
    keep_blank: bool, block_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block_bytes is not None:  # one candidate per product, or a few of them
        monkeypatch.setattr(rerank, "_BLOCK_BYTES", block_bytes)
    index, q, q_flags = candidates_index()
    vids = [f"v{i:02d}" for i in range(len(LENGTHS))]
    ctx = context(index, q, q_flags)
    out = MaxSimRerank(top=10, keep_blank=keep_blank).transform(vote_hits(vids), ctx)

    ref = reference(q, q_flags, index, vids[:10], keep_blank)
    ref_scores = np.array([ref[v][0] for v in vids[:10]])
    order = np.argsort(-ref_scores, kind="stable")
    assert out.volume_id.tolist() == [vids[i] for i in order]
    np.testing.assert_allclose(out.score, ref_scores[order], rtol=0, atol=1e-6)
    assert out["prior_rank"].tolist() == (order + 1).tolist()
    for vid in vids[:10]:
        assert ctx.evidence["maxsim"][("q", vid)].tolist() == ref[vid][1].tolist()
        sims = ctx.evidence["maxsim_similarity"][("q", vid)]
        assert sims.dtype == np.float64
        np.testing.assert_allclose(sims, ref[vid][2], rtol=0, atol=1e-6)
    if not keep_blank:  # blank slices never matched, except where a volume has only blank
        for vid in vids[:10]:
            meta = index.slice_meta(vid)
            flags = dict(zip(meta["slice_index"].tolist(), meta["informative"], strict=True))
            matched = ctx.evidence["maxsim"][("q", vid)]
            assert all(flags[s] for s in matched.tolist()) or not meta["informative"].any()

    # the same localized spans as from the reference's evidence, robust or not
    ref_ctx = context(index, q, q_flags)
    ref_ctx.evidence["maxsim"] = {("q", v): ref[v][1] for v in ref}
    ref_ctx.evidence["maxsim_similarity"] = {("q", v): ref[v][2] for v in ref}
    for robust in (None, "none"):
        got = Localize(robust=robust).transform(out, ctx)
        want = Localize(robust=robust).transform(out, ref_ctx)
        for col in ("loc_first", "loc_last"):
            assert got[col].tolist() == want[col].tolist()
        assert (got["loc_first"] >= 0).all()


def test_blank_candidate_slices_change_the_result() -> None:
    # the reference sees the difference, so the comparison above can fail
    index, q, q_flags = candidates_index()
    vids = [f"v{i:02d}" for i in range(len(LENGTHS))]
    with_blank = reference(q, q_flags, index, vids, keep_blank=True)
    without = reference(q, q_flags, index, vids, keep_blank=False)
    assert any(abs(with_blank[v][0] - without[v][0]) > 1e-3 for v in vids)


def random_candidates(seed: int, n_cand: int = 24, dim: int = 384) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    q = unit(rng, 40, dim)
    lengths = rng.integers(20, 70, n_cand)
    vectors = np.concatenate(
        [unit(rng, n, dim) + (0.04 * j) * q[rng.integers(0, 40, n)] for j, n in enumerate(lengths)]
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    keep = rng.random(len(vectors)) > 0.15
    keep[offsets[:-1]] = True  # every candidate keeps a row
    return {"queries": q, "vectors": vectors, "offsets": offsets, "keep": keep}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_bytes", [None, 2 * 40 * 100])
def test_torch_path_within_stated_tolerance(
    dtype: str, block_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block_bytes is not None:
        monkeypatch.setattr(rerank, "_BLOCK_BYTES", block_bytes)
    case = random_candidates(1)
    exact = maxsim_match(**case)
    got = maxsim_match(**case, device="cpu", dtype=dtype)
    tol = TOLERANCE[dtype]
    assert got.argmax.shape == exact.argmax.shape == (40, 24)
    np.testing.assert_allclose(got.scores, exact.scores, rtol=0, atol=tol)
    np.testing.assert_allclose(got.similarity, exact.similarity, rtol=0, atol=tol)
    # each match is a kept row whose float32 similarity is within 2 tol of the best
    off, keep = case["offsets"], case["keep"]
    sims = case["queries"] @ case["vectors"].T
    for j in range(24):
        rows = off[j] + got.argmax[:, j]
        assert (got.argmax[:, j] < off[j + 1] - off[j]).all() and keep[rows].all()
        chosen = sims[np.arange(40), rows]
        assert (chosen >= exact.similarity[:, j] - 2 * tol).all()
    # the same order wherever the float32 scores are more than 2 tol apart
    gap = exact.scores[:, None] - exact.scores[None, :]
    apart = gap > 2 * tol
    assert apart.sum() > 100
    assert (got.scores[:, None] > got.scores[None, :])[apart].all()
    if dtype == "float32":
        assert (got.argmax == exact.argmax).all()


def test_stage_on_torch_ranks_like_numpy() -> None:
    index, q, q_flags = candidates_index(seed=2)
    vids = [f"v{i:02d}" for i in range(len(LENGTHS))]
    base_ctx = context(index, q, q_flags)
    base = MaxSimRerank(top=12).transform(vote_hits(vids), base_ctx)
    for dtype in DTYPES:
        ctx = context(index, q, q_flags)
        out = MaxSimRerank(top=12, dtype=dtype).transform(vote_hits(vids), ctx)
        tol = TOLERANCE[dtype]
        exact = dict(zip(base.volume_id, base.score, strict=True))
        got = dict(zip(out.volume_id, out.score, strict=True))
        assert all(abs(got[v] - exact[v]) <= tol for v in vids)
        ranked = [v for v in out.volume_id if v in exact]
        for a, b in itertools.pairwise(ranked):  # a swap only among near-ties
            assert exact[a] >= exact[b] - 2 * tol
        for v in vids:
            np.testing.assert_allclose(
                ctx.evidence["maxsim_similarity"][("q", v)],
                base_ctx.evidence["maxsim_similarity"][("q", v)],
                rtol=0,
                atol=tol,
            )


def test_backend_follows_the_extractor_device() -> None:
    assert MaxSimRerank().backend(SearchContext()) == (None, "float32")
    assert MaxSimRerank().backend(SearchContext(device="cpu")) == (None, "float32")
    assert MaxSimRerank().backend(SearchContext(device="cuda:0")) == ("cuda:0", "float16")
    on_gpu = SearchContext(device="cuda")
    assert MaxSimRerank(dtype="bfloat16").backend(on_gpu) == ("cuda", "bfloat16")
    assert MaxSimRerank(dtype="bfloat16").backend(SearchContext()) == ("cpu", "bfloat16")
    assert MaxSimRerank(device="cpu").backend(on_gpu) == ("cpu", "float32")
    assert repr(MaxSimRerank(device="cpu", dtype="float16")) == (
        "MaxSimRerank(top=20, device='cpu', dtype='float16')"
    )


def test_slice_search_records_the_extractor_device() -> None:
    class OnCpu(PositionExtractor):
        device = torch.device("cpu")

    index = build(ExactIndex, [body_volume("a", 0.2, 0.6, 12)])
    for extractor, expected in ((PositionExtractor(), None), (OnCpu(), "cpu")):
        ctx = SearchContext.for_queries(body_volume("q", 0.3, 0.5, 5))
        SliceSearch(extractor, index, k=3).transform(Hits.empty("slice"), ctx)
        assert ctx.device == expected


def test_bad_settings_and_inputs_raise_named_errors() -> None:
    with pytest.raises(SettingError, match="dtype"):
        MaxSimRerank(dtype="float8")
    with pytest.raises(SettingError, match="device"):
        MaxSimRerank(device="tpu")
    case = random_candidates(3, n_cand=3, dim=8)
    with pytest.raises(SettingError, match="torch device"):
        maxsim_match(**case, dtype="float16")
    keep = case.pop("keep").copy()
    keep[case["offsets"][1] : case["offsets"][2]] = False
    with pytest.raises(SliceIndexError, match=r"candidates \[1\] have no kept rows"):
        maxsim_match(**case, keep=keep)
    with pytest.raises(SliceIndexError, match="offsets"):
        maxsim_match(case["queries"], case["vectors"], case["offsets"][:-1])
    with pytest.raises(SliceIndexError, match="no stored vectors"):
        maxsim_match(case["queries"], case["vectors"][:0], np.array([0, 0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_within_stated_tolerance() -> None:
    index, q, q_flags = candidates_index(seed=4)
    vids = [f"v{i:02d}" for i in range(len(LENGTHS))]
    base = MaxSimRerank(top=12).transform(vote_hits(vids), context(index, q, q_flags))
    ctx = context(index, q, q_flags, device="cuda")
    out = MaxSimRerank(top=12).transform(vote_hits(vids), ctx)
    exact = dict(zip(base.volume_id, base.score, strict=True))
    got = dict(zip(out.volume_id, out.score, strict=True))
    assert all(abs(got[v] - exact[v]) <= TOLERANCE["float16"] for v in vids)
