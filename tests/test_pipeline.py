"""Tests of chaining: levels checked at chain time, flat pipelines, function stages."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cbirlib.aggregate import CountVotes, TopSlice
from cbirlib.errors import PipelineError
from cbirlib.hits import Hits
from cbirlib.index import ExactIndex
from cbirlib.localize import Localize
from cbirlib.pipeline import Cutoff, Pipeline, SearchContext, stage
from cbirlib.rerank import MaxSimRerank
from cbirlib.search import SliceSearch
from cbirlib.volume import Volume


class RowExtractor:
    """Fake extractor: slice z of a volume embeds as the unit vector along axis z % 4."""

    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        idx = np.arange(volume.n_slices) if slices is None else np.asarray(slices)
        return np.eye(4, dtype=np.float32)[idx % 4]

    def to_config(self) -> dict[str, Any]:
        return {"name": "rows"}


@pytest.fixture
def search() -> SliceSearch:
    index = ExactIndex(4, extractor_config={"name": "rows"})
    index.add("a", np.eye(4, dtype=np.float32))
    index.add("b", np.eye(4, dtype=np.float32)[[0, 0, 1]])
    return SliceSearch(RowExtractor(), index, k=3)


def vol(vid: str, n: int = 4) -> Volume:
    """A query of ``n`` slices of noisy soft tissue (not blank, so every slice searches)."""
    rng = np.random.default_rng(len(vid))
    return Volume(vid, rng.normal(0.0, 200.0, (n, 4, 4)).astype(np.float32))


def test_typical_chain_repr_is_flat(search: SliceSearch) -> None:
    chain = search >> CountVotes() >> MaxSimRerank(top=20) >> Localize() >> Cutoff(10)
    assert isinstance(chain, Pipeline) and len(chain.stages) == 5
    assert all(not isinstance(s, Pipeline) for s in chain.stages)
    assert repr(chain) == (
        "SliceSearch(k=3) >> CountVotes() >> MaxSimRerank(top=20) >> Localize() >> Cutoff(10)"
    )
    nested = search.then(CountVotes() >> (MaxSimRerank(top=20) >> Localize())).then(Cutoff(10))
    assert repr(nested) == repr(chain)
    assert chain.output_level == "volume" and chain.input_level == "any"
    assert repr(SliceSearch(RowExtractor(), search.index, query_stride=2)) == (
        "SliceSearch(k=100, query_stride=2)"
    )
    assert repr(CountVotes(weighted=True) >> Localize(method="votes", trim=0.1)) == (
        "CountVotes(weighted=True) >> Localize(method='votes', trim=0.1)"
    )


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda s: TopSlice() >> MaxSimRerank(top=5), ("TopSlice()", "MaxSimRerank(top=5)")),
        (lambda s: CountVotes() >> CountVotes(), ("CountVotes()", "CountVotes()")),
        (lambda s: s >> MaxSimRerank(), ("SliceSearch(k=3)", "MaxSimRerank(top=20)")),
        (lambda s: s >> CountVotes() >> Cutoff(3) >> TopSlice(), ("Cutoff(3)", "TopSlice()")),
    ],
)
def test_level_mismatch_raises_at_chain_time(
    search: SliceSearch, make: Any, names: tuple[str, str]
) -> None:
    with pytest.raises(PipelineError) as info:
        make(search)
    message = str(info.value)
    assert all(n in message for n in names), message
    assert "slice-level" in message and "volume-level" in message


def test_source_must_come_first(search: SliceSearch) -> None:
    with pytest.raises(PipelineError, match="must come first"):
        CountVotes() >> search  # type: ignore[operator]


def test_localize_needs_its_evidence_at_chain_time(search: SliceSearch) -> None:
    with pytest.raises(PipelineError, match="maxsim"):
        search >> CountVotes() >> Localize()
    chain = search >> CountVotes() >> Localize(method="votes")
    assert repr(chain).endswith("Localize(method='votes')")
    # without a source the requirement is left open for a later chain
    tail = CountVotes() >> Localize()
    assert tail.requires() == frozenset({"maxsim"})


def test_chaining_non_stage_fails(search: SliceSearch) -> None:
    with pytest.raises(TypeError):
        search >> 3  # type: ignore[operator]
    with pytest.raises(PipelineError):
        Pipeline(())


def test_retrieve_needs_a_source_and_unique_queries(search: SliceSearch) -> None:
    with pytest.raises(PipelineError, match="source"):
        (CountVotes() >> Cutoff(1)).retrieve(vol("q"))
    with pytest.raises(PipelineError, match="duplicate query id 'q'"):
        search.retrieve([vol("q"), vol("q")])
    with pytest.raises(PipelineError, match="Volume"):
        search.retrieve(["not a volume"])  # type: ignore[list-item]
    with pytest.raises(PipelineError, match="no queries"):
        search.retrieve([])


def test_function_stage_runs_and_checks_output(search: SliceSearch) -> None:
    def keep_b(hits: Hits, context: SearchContext) -> Hits:
        return hits.take(hits.volume_id == "b")

    chain = search >> CountVotes() >> stage(keep_b, input_level="volume", output_level="volume")
    assert repr(chain).endswith("keep_b()")
    out = chain.retrieve(vol("q"))
    assert set(out.volume_id) == {"b"}

    bad = stage(lambda h, c: 3, input_level="any", output_level="any", name="Bad")  # type: ignore[arg-type,return-value]
    with pytest.raises(PipelineError, match="Bad\\(\\) returned int"):
        (search >> bad).retrieve(vol("q"))
    liar = stage(lambda h, c: h, input_level="slice", output_level="volume", name="Liar")
    with pytest.raises(PipelineError, match="declared volume-level"):
        (search >> liar).retrieve(vol("q"))
    with pytest.raises(PipelineError, match="unknown stage level"):
        stage(keep_b, input_level="patient", output_level="any")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="cannot chain"):
        search >> stage(keep_b, input_level="volume", output_level="volume")


def test_cutoff_per_query_and_validation(search: SliceSearch) -> None:
    out = (search >> CountVotes() >> Cutoff(1)).retrieve([vol("q1"), vol("q2", 2)])
    assert out.query_ids() == ["q1", "q2"] and (out.rank == 1).all() and len(out) == 2
    sliced = (search >> Cutoff(1)).retrieve(vol("q1"))
    assert len(sliced) == 4  # one per query slice at slice level
    for bad in (0, -1, 2.5, True):
        with pytest.raises(PipelineError, match="Cutoff"):
            Cutoff(bad)  # type: ignore[arg-type]


def test_search_stage_validation(search: SliceSearch) -> None:
    with pytest.raises(PipelineError, match="k"):
        SliceSearch(RowExtractor(), search.index, k=0)
    with pytest.raises(PipelineError, match="query_stride"):
        SliceSearch(RowExtractor(), search.index, query_stride=0)


def test_verbose_shows_progress_and_gives_same_hits(
    search: SliceSearch, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = search >> CountVotes() >> MaxSimRerank(top=2) >> Localize()
    quiet = chain.retrieve([vol("q1"), vol("q2")])
    loud = chain.retrieve([vol("q1"), vol("q2")], verbose=True)
    assert "MaxSim" in capsys.readouterr().err
    for name, col in quiet.columns.items():
        np.testing.assert_array_equal(loud[name], col)
