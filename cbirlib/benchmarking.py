"""The study's protocol in one call, on any folder in the TotalSegmentator layout.

:func:`benchmark` splits the subjects into queries (one split, default ``"test"``) and
database (every other subject; a query volume is never in the database), builds one
slice index per extractor (or reuses it from ``out_dir``), runs

* **slice**-wise retrieval (``SliceSearch >> TopSlice``; slice-wise recall),
* **volume** retrieval (``SliceSearch >> CountVotes >> Cutoff(top)``, and with
  re-ranking ``SliceSearch >> CountVotes >> MaxSimRerank(top)``; recall@1/3/5/10, AP,
  nDCG@10),
* **region** and **localized** retrieval: for each query volume and each structure it
  contains, :func:`~cbirlib.region_query` (the same two chains, ending in
  ``Localize(method="votes", trim=vote_trim)`` (default 0.1) or ``Localize()`` (MaxSim
  argmax slices); region recall, AP, nDCG@10, localized recall, localization ratio),

and writes one per-class table per (granularity, mode, metric) as CSV and Markdown.

The count-vote chain is cut at the same ``top`` candidates the re-ranker sees, so both
rank the same volumes and differ only in their order.

Memory: each query volume is embedded right after it is read and only its
:class:`~cbirlib.queries.EmbeddedQuery` (embeddings, blank-slice flags, labels, z
positions; no voxels) is kept, so at most one query volume is in memory at a time (at
the cost of reading each query CT once per extractor). The chain searches the embedded
queries as any other (:class:`~cbirlib.search.SliceSearch` takes their rows instead of
calling the extractor), and their region queries reuse rows of their embeddings.

Examples
--------
A run on synthetic phantoms (a few seconds on a CPU; skipped as a doctest because
``tests/test_benchmark.py`` runs it):

>>> import tempfile
>>> from cbirlib.datasets import make_phantoms
>>> from cbirlib.benchmarking import benchmark
>>> root = tempfile.mkdtemp()
>>> _ = make_phantoms(root, 6, shape=(32, 32), seed=3)  # doctest: +SKIP
>>> tables = benchmark(root, modes=("volume",), granularity="coarse")  # doctest: +SKIP
>>> tables["coarse/volume/volume_recall@1"].columns.tolist()  # doctest: +SKIP
['baseline', 'baseline + MaxSim']
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import pandas as pd

from cbirlib._progress import progress
from cbirlib.aggregate import TopSlice
from cbirlib.datasets import TotalSegmentator
from cbirlib.errors import CbirError, EvaluationError, SharedWeightsError, WeightsError
from cbirlib.evaluation import (
    GRANULARITIES,
    MEAN_ROW,
    Granularity,
    evaluate,
    per_class_table,
    to_csv,
    to_markdown,
)
from cbirlib.labels import SliceLabels
from cbirlib.metrics import Metric, default_metrics
from cbirlib.presets import default_chain
from cbirlib.queries import EmbeddedQuery, region_query
from cbirlib.search import SliceSearch
from cbirlib.structures import COARSE_GROUPS, TOTALSEG_V1_CLASSES, coarse_regions
from cbirlib.truth import Truth
from cbirlib.weights import check_weights, hub_offline

__all__ = ["MODES", "benchmark", "system_name"]

logger = logging.getLogger(__name__)

#: Retrieval modes of the study.
MODES = ("slice", "volume", "region", "localized")
#: Default ``trim`` of ``Localize(method="votes")`` in the count-vote chain.
VOTE_TRIM = 0.1


def system_name(extractor: str, rerank: bool) -> str:
    """Column label of one system: ``"dinov2"`` or ``"dinov2 + MaxSim"``.

    Examples
    --------
    >>> system_name("baseline", True)
    'baseline + MaxSim'
    """
    return f"{extractor} + MaxSim" if rerank else extractor


def _as_tuple(value: str | Sequence[str], what: str, valid: Sequence[str]) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in items if v not in valid]
    if bad or not items:
        raise EvaluationError(
            f"invalid {what} {bad[0] if bad else items!r}; valid: {', '.join(map(repr, valid))}"
        )
    return items


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _chain(
    search: Any,
    *,
    rerank: bool,
    top: int,
    localize: bool,
    trim: float = 0.0,
    normalize: str | None = None,
) -> Any:
    """The default chain (:func:`cbirlib.presets.default_chain`), re-ranking ``top``."""
    extra = {} if normalize is None else {"normalize": normalize}
    return default_chain(
        search, top=top, rerank=rerank, candidates=top, localize=localize, trim=trim, **extra
    )


def _embed_queries(
    dataset: Any,
    query_ids: Sequence[str],
    extractor: Any,
    labels: dict[str, SliceLabels | None],
    *,
    desc: str,
    verbose: bool | None,
) -> list[EmbeddedQuery]:
    """Load each query, embed it right away and keep only its embedded query.

    At most one query volume's voxels are in memory at a time
    (:meth:`EmbeddedQuery.embed <cbirlib.queries.EmbeddedQuery.embed>` keeps the
    embeddings, blank-slice flags, labels and geometry). Labels are read on the first
    pass only (``labels`` keeps them for the next extractors).
    """
    out = []
    for subject in progress(query_ids, verbose=verbose, desc=desc):
        volume = dataset.load(subject, labels=subject not in labels)
        labels.setdefault(subject, volume.labels)
        out.append(EmbeddedQuery.embed(volume.with_labels(labels[subject]), extractor))
        del volume
    return out


def _region_queries(
    volumes: Sequence[Any], granularity: Granularity, groups: Mapping[str, str]
) -> list[Any]:
    """One region query per (query volume, structure it contains) at ``granularity``."""
    out = []
    for volume in volumes:
        labels = volume.labels if granularity == "fine" else volume.labels.grouped(groups)
        for structure in sorted(labels.volume_structures()):
            out.append(
                region_query(volume, structure, groups=groups if granularity == "coarse" else None)
            )
    return out


def _deprecated_level(
    granularity: Granularity | Sequence[Granularity], level: Granularity | Sequence[Granularity]
) -> Granularity | Sequence[Granularity]:
    """``level`` (deprecated) in place of ``granularity``, with a DeprecationWarning."""
    warnings.warn(
        "benchmark(level=...) is now benchmark(granularity=...) (in Hits, 'level' means "
        "slice or volume); level= will be removed in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    given = _as_tuple(granularity, "granularity", GRANULARITIES)
    if given not in (GRANULARITIES, _as_tuple(level, "level", GRANULARITIES)):
        raise EvaluationError(
            f"benchmark() got granularity={granularity!r} and level={level!r}; "
            "pass granularity= only"
        )
    return level


def benchmark(
    root: str | os.PathLike[str],
    extractors: Sequence[str] = ("baseline",),
    modes: Sequence[str] = MODES,
    *,
    rerank: Sequence[bool] = (False, True),
    k: int = 100,
    top: int = 20,
    out_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    granularity: Granularity | Sequence[Granularity] = GRANULARITIES,
    exact: bool = False,
    groups: Mapping[str, str] | None = None,
    vote_trim: float = VOTE_TRIM,
    vote_normalize: str | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    modality: str | Mapping[str, str] | None = None,
    weights: Mapping[str, str | os.PathLike[str]] | None = None,
    sha256: Mapping[str, str] | None = None,
    force: bool = False,
    labels_cache: str | os.PathLike[str] | None = None,
    verbose: bool | None = None,
    level: Granularity | Sequence[Granularity] | None = None,
) -> dict[str, pd.DataFrame]:
    """Run the study's retrieval protocol and return its per-class tables.

    Parameters
    ----------
    root
        A data set in the TotalSegmentator layout (``meta.csv`` with a ``split`` column,
        e.g. written by :func:`~cbirlib.datasets.make_phantoms`).
    extractors
        Extractor names for :func:`cbirlib.create_extractor`.
    modes
        Any of ``"slice"``, ``"volume"``, ``"region"``, ``"localized"``.
    rerank
        Which volume chains to run: ``False`` count votes, ``True`` MaxSim re-ranking.
    k
        Neighbours per query slice.
    top
        Candidate volumes per query: re-ranked by MaxSim, and the cut of the count-vote
        ranking.
    out_dir
        Where indexes (``index-<extractor>``) and tables (``tables/``) go; an index
        found there is reused (and completed if a build was interrupted). ``None``: a
        temporary folder, and no tables are written.
    split
        The query split; the database is every subject of the other splits.
    granularity
        ``"coarse"`` (29 regions), ``"fine"`` (104 classes) or both.
    exact
        Use exact (brute-force) search instead of HNSW.
    groups
        Fine -> coarse mapping of the ``"coarse"`` granularity (its values are the table
        rows); default :data:`cbirlib.structures.COARSE_GROUPS`. Used for the labels and
        to build the coarse region queries.
    vote_trim
        ``trim`` of ``Localize(method="votes")`` in the count-vote chain: the fraction of
        voted slices ignored at each end of the predicted span (outlier votes far from
        the query's anatomy would otherwise stretch it); the MaxSim chain uses its
        argmax slices untrimmed.
    vote_normalize
        ``CountVotes(normalize=...)`` of both chains; ``None``: its default
        (``"once-per-query-slice"``); ``"none"``: the study's raw count.
    extractor_options
        Keyword arguments passed to every :func:`~cbirlib.create_extractor` call (for
        example ``{"batch_size": 64}``). Weights go in ``weights``: a ``"weights"`` entry
        here would give one file to every extractor, an error with several extractors
        unless ``force=True``.
    modality
        The modality of the data set's volumes: one for all, or subject id -> modality
        (``"*"``: the others); default the layout's, ``"CT"`` for ``ct.nii.gz``, ``"MR"``
        for ``mri.nii.gz`` (see :class:`~cbirlib.datasets.TotalSegmentator`).
    weights
        Extractor name -> weights file (or URL) of that extractor, e.g.
        ``{"radimagenet-resnet50": "rin-r50.pt", "fractaldb-resnet50": "fdb.pth"}``;
        extractors not named use their default weights. Checked for all extractors
        before any work starts (:func:`cbirlib.weights.check_weights`: each file exists,
        is readable and matches ``sha256``), as are extractors whose default weights are
        not on this machine and cannot be downloaded.
    sha256
        Extractor name -> expected sha256 of its ``weights`` file.
    force
        Allow one weights file for several extractors (normally a
        :class:`~cbirlib.errors.SharedWeightsError`: the comparison would report one
        model under two names).
    labels_cache
        A folder that keeps the per-slice labels read from the masks (one ``.npy`` per
        subject, keyed by the mask files' names, sizes and modification times; see
        :class:`~cbirlib.datasets.label_cache.LabelCache`), so that a second run reads
        no unchanged mask. Default: ``<out_dir>/labels-cache`` when ``out_dir`` is
        given, else none.
    verbose
        Progress bars: on a terminal only (``None``), always (``True``) or never (``False``).
    level
        Deprecated name of ``granularity`` (a DeprecationWarning; removed in the next
        release): in :class:`~cbirlib.hits.Hits`, ``level`` means slice or volume.

    Returns
    -------
    dict
        ``"<granularity>/<mode>/<metric>"`` -> :func:`~cbirlib.evaluation.per_class_table`
        (one row per structure of the granularity, one column per system), and
        ``"summary"``: one row per (granularity, mode, metric, system) with the mean and
        SD over classes (the granularity in its column ``level``, as before).

    Raises
    ------
    EvaluationError
        Unknown modes or granularities, or an empty query or database split.
    DatasetError
        ``root`` is not a TotalSegmentator folder.
    WeightsError
        Weights that are missing, unreadable or fail their sha256
        (:class:`~cbirlib.errors.ChecksumError`), a file shared by two extractors
        (:class:`~cbirlib.errors.SharedWeightsError`), or an extractor that takes no
        weights given some; raised before any volume is read.
    """
    modes = _as_tuple(modes, "mode", MODES)
    if level is not None:
        granularity = _deprecated_level(granularity, level)
    granularities = cast(
        "tuple[Granularity, ...]", _as_tuple(granularity, "granularity", GRANULARITIES)
    )
    reranks = tuple(dict.fromkeys(bool(r) for r in rerank))
    if not reranks:
        raise EvaluationError("rerank must list at least one of False, True")
    if labels_cache is None and out_dir is not None:
        labels_cache = Path(out_dir) / "labels-cache"
    dataset = TotalSegmentator(root, modality=modality, labels_cache=labels_cache)
    query_ids = tuple(dataset.subjects_in(split))
    database_ids = tuple(s for s in dataset.subjects if s not in set(query_ids))
    meta_path = Path(root) / "meta.csv"
    if not any(dataset.split_of(s) for s in dataset.subjects):
        found = "has no 'split' column" if meta_path.is_file() else "is missing"
        raise EvaluationError(
            f"benchmark needs {str(meta_path)!r} with an 'image_id' and a 'split' column "
            f"(values train/val/test; the {split!r} subjects are the queries, the others "
            f"the database), but it {found}"
        )
    if not query_ids or not database_ids:
        splits = sorted({str(dataset.split_of(s)) for s in dataset.subjects})
        raise EvaluationError(
            f"split {split!r} gives {len(query_ids)} query and {len(database_ids)} database "
            f"subjects in {str(root)!r}; both must be non-empty (the 'split' column of "
            f"{str(meta_path)!r} holds: {', '.join(splits)})"
        )
    models = _create_extractors(
        extractors, dict(extractor_options or {}), weights or {}, sha256 or {}, force=force
    )
    logger.info("benchmark: %d query / %d database subjects", len(query_ids), len(database_ids))

    with tempfile.TemporaryDirectory(prefix="cbirlib-bench-") as tmp:
        work = Path(out_dir) if out_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        database = {
            s: dataset.labels(s) for s in progress(database_ids, verbose=verbose, desc="labels")
        }
        truth = Truth(database=database)
        grouping = COARSE_GROUPS if groups is None else dict(groups)
        query_labels: dict[str, SliceLabels | None] = {}
        results = []
        # extractors build their models lazily; each one is let go once it has run, so
        # that at most one model is in memory at a time
        for name in list(models):
            model = models.pop(name)
            results += _run_extractor(
                name, model, dataset, database_ids, query_ids, query_labels, granularities, truth,
                modes, reranks, k=k, top=top, work=work, exact=exact, groups=grouping,
                vote_trim=vote_trim, vote_normalize=vote_normalize, verbose=verbose,
            )  # fmt: skip
            del model
        coarse_rows = coarse_regions() if groups is None else tuple(sorted(set(groups.values())))
        rows = {"coarse": coarse_rows, "fine": TOTALSEG_V1_CLASSES}
        tables: dict[str, pd.DataFrame] = {}
        summary = []
        all_results = pd.concat(results, ignore_index=True)
        for (lv, mode, metric), group in all_results.groupby(
            ["level", "mode", "metric"], sort=False
        ):
            table = per_class_table(group, str(metric), structures=rows[str(lv)])
            key = f"{lv}/{mode}/{metric}"
            tables[key] = table
            row = table.loc[MEAN_ROW].to_numpy(dtype=float)
            means = dict(zip(map(str, table.columns), row.tolist(), strict=True))
            for system in table.columns:
                summary.append(
                    {
                        "level": lv,
                        "mode": mode,
                        "metric": metric,
                        "system": system,
                        "mean": means[str(system)],
                        "sd": table.attrs["sd"][str(system)],
                        "n_classes": int(table.drop(index=MEAN_ROW)[system].notna().sum()),
                    }
                )
        tables["summary"] = pd.DataFrame(summary)
        if out_dir is not None:
            _write(tables, work / "tables")
    return tables


def _create_extractors(
    names: Sequence[str],
    options: dict[str, Any],
    weights: Mapping[str, str | os.PathLike[str]],
    sha256: Mapping[str, str],
    *,
    force: bool,
) -> dict[str, Any]:
    """Every requested extractor, its weights checked, before any volume is read."""
    from cbirlib.plugins import create_extractor  # lazy: torch

    names = list(dict.fromkeys(names))
    if "weights" in options:
        if len(names) > 1 and not force:
            raise SharedWeightsError(
                f"extractor_options gives one weights file ({options['weights']!r}) to every "
                f"extractor ({', '.join(map(repr, names))}); give each its own with "
                f"weights={{name: path}} (--weights NAME=PATH), or pass force=True"
            )
        weights = {**{n: options["weights"] for n in names}, **dict(weights)}
        options = {k: v for k, v in options.items() if k != "weights"}
    sums = {**({n: options["sha256"] for n in names} if "sha256" in options else {}), **sha256}
    options = {k: v for k, v in options.items() if k != "sha256"}
    checked = check_weights(weights, names, sha256=sums, force=force)
    models: dict[str, Any] = {}
    for name in names:
        kwargs = dict(options)
        if name in checked:
            kwargs["weights"] = checked[name]
            if name in sums:
                kwargs["sha256"] = sums[name]
        try:
            models[name] = create_extractor(name, **kwargs)
        except CbirError as exc:
            if name in checked and "weights" in str(exc):
                raise WeightsError(
                    f"weights were given for extractor {name!r}, which takes none ({exc})"
                ) from None
            raise
        available = getattr(models[name], "weights_available", None)
        hub = getattr(models[name], "hub_repo", None)
        missing = name not in checked and callable(available) and not available()
        if missing and (hub_offline() or not callable(hub) or hub() is None):
            raise WeightsError(
                f"extractor {name!r} has no weights on this machine"
                + (" and downloads are switched off" if hub_offline() else "")
                + f"; pass them with weights={{{name!r}: 'path/to/file'}} "
                f"(--weights {name}=PATH); see the docs on weights"
            )
    return models


def _run_extractor(
    name: str,
    extractor: Any,
    dataset: Any,
    database_ids: Sequence[str],
    query_ids: Sequence[str],
    query_labels: dict[str, SliceLabels | None],
    granularities: Sequence[Granularity],
    truth: Truth,
    modes: Sequence[str],
    reranks: Sequence[bool],
    *,
    k: int,
    top: int,
    work: Path,
    exact: bool,
    groups: Mapping[str, str],
    vote_trim: float,
    vote_normalize: str | None,
    verbose: bool | None,
) -> list[pd.DataFrame]:
    """Index the database with one extractor and evaluate every requested mode."""
    from cbirlib.index.build import build_index  # lazy: hnswlib

    path = work / f"index-{_slug(name)}"
    sources = [(s, partial(dataset.load, s, labels=False)) for s in database_ids]
    index = build_index(sources, extractor, path, exact=exact, verbose=verbose)
    extra = sorted(set(index.volume_ids) - set(database_ids))
    if extra:
        raise EvaluationError(
            f"the index at {str(path)!r} holds volumes outside the database split "
            f"({', '.join(extra[:5])}); use another out_dir"
        )
    queries = _embed_queries(
        dataset, query_ids, extractor, query_labels, desc=f"embedding queries ({name})",
        verbose=verbose,
    )  # fmt: skip
    regions = {lv: _region_queries(queries, lv, groups) for lv in granularities}
    search = SliceSearch(extractor, index, k=k)
    out: list[pd.DataFrame] = []

    def run(mode: str, system: str, chain: Any, qs: Sequence[Any], metrics: Sequence[Metric],
            levels: Sequence[Granularity]) -> None:  # fmt: skip
        logger.info("%s: %s retrieval with %r", system, mode, chain)
        hits = chain.retrieve(list(qs), verbose=verbose)
        for lv in levels:
            res = evaluate({system: hits}, qs, truth, metrics, granularity=lv, groups=groups)
            res.insert(0, "mode", mode)
            res.insert(0, "level", lv)
            out.append(res)

    all_levels = tuple(regions)
    if "slice" in modes:
        run("slice", name, search >> TopSlice(), queries, default_metrics("slice"), all_levels)
    for rr in reranks:
        system = system_name(name, rr)
        if "volume" in modes:
            chain = _chain(search, rerank=rr, top=top, localize=False, normalize=vote_normalize)
            run("volume", system, chain, queries, default_metrics("volume"), all_levels)
        region_modes = [m for m in ("region", "localized") if m in modes]
        for lv, region_queries in regions.items():
            if not region_modes or not region_queries:
                continue
            chain = _chain(
                search,
                rerank=rr,
                top=top,
                localize="localized" in region_modes,
                trim=vote_trim,
                normalize=vote_normalize,
            )
            hits = chain.retrieve(list(region_queries), verbose=verbose)
            for mode in region_modes:
                res = evaluate(
                    {system: hits}, region_queries, truth, default_metrics(mode), granularity=lv,
                    groups=groups,
                )  # fmt: skip
                res.insert(0, "mode", mode)
                res.insert(0, "level", lv)
                out.append(res)
    return out


def _write(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    """One CSV and one Markdown file per table, plus ``summary.csv`` and ``tables.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for key, table in tables.items():
        if key == "summary":
            table.to_csv(folder / "summary.csv", index=False)
            continue
        stem = _slug(key.replace("/", "_").replace("@", "_at_"))
        to_csv(table, folder / f"{stem}.csv")
        markdown = to_markdown(table)
        (folder / f"{stem}.md").write_text(markdown + "\n", encoding="utf-8")
        sections.append(f"## {key}\n\n{markdown}\n")
    (folder / "tables.md").write_text("\n".join(sections), encoding="utf-8")
    logger.info("wrote %d tables to %s", len(sections), folder)
