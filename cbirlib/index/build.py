"""Build a slice index from volumes: embed, add, checkpoint; resumable after a crash.

:func:`build_index` embeds the volumes one by one with an extractor, adds their slices
to a :class:`~cbirlib.index.SliceIndex` (or :class:`~cbirlib.index.ExactIndex`) and
saves it atomically every ``checkpoint_every`` volumes and at the end. Started again
after being killed at any point, it loads the saved index, skips the volumes already
in it, and finishes with every volume exactly once.

Volumes can be given lazily so that skipping an indexed volume costs no read: as
``(volume_id, loader)`` pairs, as a mapping ``{volume_id: loader}``, or as a data set
with ``.subjects`` and ``.load(subject_id, labels=False)`` (see :class:`SubjectSource`).

Examples
--------
>>> import tempfile, numpy as np
>>> from cbirlib.volume import Volume
>>> class MeanExtractor:  # any object with name, dim, extract and to_config
...     name, dim = "mean", 4
...     def to_config(self): return {"name": "mean"}
...     def extract(self, v):
...         x = v.array.reshape(v.n_slices, 4, -1).mean(axis=2) + 1.0
...         return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
>>> vols = [Volume(f"v{i}", np.full((3, 4, 4), i, np.float32)) for i in range(2)]
>>> index = build_index(vols, MeanExtractor(), tempfile.mkdtemp() + "/idx", verbose=False)
>>> index.volume_ids, len(index)
(['v0', 'v1'], 6)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from cbirlib._progress import progress
from cbirlib.errors import (
    DatasetError,
    DimensionMismatchError,
    ExtractorError,
    ExtractorMismatchError,
    IndexFormatError,
    SettingError,
    VolumeSourceError,
)
from cbirlib.index.base import BaseIndex
from cbirlib.index.config import HnswConfig
from cbirlib.index.exact import ExactIndex
from cbirlib.index.files import META_NAME, check_target, resolve_dir
from cbirlib.index.hnsw import SliceIndex
from cbirlib.index.meta import IndexMeta, check_compatible, parse_meta
from cbirlib.index.milvus import MilvusIndex
from cbirlib.informative import slice_flags
from cbirlib.ingest import read_ahead
from cbirlib.labels import SliceLabels
from cbirlib.modality import effective_modality
from cbirlib.provenance import Source
from cbirlib.structures import TOTALSEG_V1_CLASSES
from cbirlib.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "IndexableExtractor",
    "SubjectSource",
    "VolumeSource",
    "WritableIndex",
    "build_index",
    "build_milvus_index",
    "check_resumable",
]


@runtime_checkable
class IndexableExtractor(Protocol):
    """What :func:`build_index` needs from an extractor (``cbirlib.Extractor`` fits)."""

    @property
    def name(self) -> str:
        """Registry name of the extractor."""
        ...

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        ...

    def extract(self, volume: Volume) -> npt.NDArray[np.float32]:
        """``(n_slices, dim)`` float32 L2-normalised slice embeddings."""
        ...

    def to_config(self) -> dict[str, Any]:
        """JSON-ready config that identifies the extractor and its preprocessing."""
        ...


@runtime_checkable
class SubjectSource(Protocol):
    """A data set that lists its subjects and loads one on demand (no read to list)."""

    @property
    def subjects(self) -> Sequence[str]:
        """Subject (volume) ids."""
        ...

    def load(self, subject_id: str, *, labels: bool = ...) -> Volume:
        """Read one subject's volume."""
        ...


#: One element of ``volumes``: a Volume, a ``(volume_id, loader)`` pair or a loader.
VolumeSource = Volume | tuple[str, Callable[[], Volume]] | Callable[[], Volume]

_Lazy = tuple[str | None, Callable[[], Volume]]


def _identity(volume: Volume) -> Volume:
    return volume


def _load_labeled(source: SubjectSource, subject_id: str) -> Volume:
    """A subject with its labels, or without them when the data set has none for it."""
    try:
        return source.load(subject_id, labels=True)
    except DatasetError as exc:  # e.g. no segmentations folder: index it unlabeled
        logger.info("%s: indexed without labels (%s)", subject_id, exc)
        return source.load(subject_id, labels=False)


def _lazy_items(
    volumes: Iterable[VolumeSource] | Mapping[str, Callable[[], Volume]] | SubjectSource,
    *,
    labels: bool = False,
) -> Iterator[_Lazy]:
    """``(id or None, loader)`` pairs; the id is None when only loading can tell it."""
    if isinstance(volumes, SubjectSource):  # checked first: a data set may also be a Mapping
        for sid in volumes.subjects:
            if labels:
                yield sid, partial(_load_labeled, volumes, sid)
            else:
                yield sid, partial(volumes.load, sid, labels=False)
        return
    if isinstance(volumes, Mapping):
        for vid, loader in volumes.items():
            yield str(vid), loader
        return
    for item in volumes:
        if isinstance(item, Volume):
            yield item.id, partial(_identity, item)
        elif isinstance(item, tuple) and len(item) == 2 and callable(item[1]):
            yield str(item[0]), item[1]
        elif callable(item):
            yield None, item
        else:
            raise VolumeSourceError(
                f"cannot index {type(item).__name__!r}: give Volume objects, "
                "(volume_id, loader) pairs, zero-argument loaders, or a data set with "
                ".subjects and .load()"
            )


def _count(volumes: object) -> int | None:
    if isinstance(volumes, SubjectSource):
        return len(volumes.subjects)
    return len(volumes) if hasattr(volumes, "__len__") else None


_V1 = frozenset(TOTALSEG_V1_CLASSES)
_ADVICE = "pass another index folder, or resume=False (CLI: --no-resume) to replace it"


def check_resumable(
    path: str | os.PathLike[str], extractor: IndexableExtractor
) -> IndexMeta | None:
    """What the saved index that a resumed build at ``path`` continues says, or None.

    Reads ``meta.json`` only (no vector), so callers can check before any work; the
    extractor must match the index's in name, dimension and config
    (:func:`cbirlib.index.check_compatible` in strict mode).

    Raises
    ------
    ExtractorMismatchError
        The index was built with another extractor or extractor config.
    DimensionMismatchError
        The index holds vectors of another dimension.
    IndexFormatError
        An index is there but its ``meta.json`` is unreadable or malformed.
    """
    try:
        directory = resolve_dir(Path(path))
    except IndexFormatError:
        return None  # nothing to resume
    meta = parse_meta(directory, verify=False)
    try:
        check_compatible(
            meta.extractor_config,
            meta.dim,
            extractor.to_config(),
            int(extractor.dim),
            strict=True,
            advice=_ADVICE,
        )
    except (ExtractorMismatchError, DimensionMismatchError) as exc:
        raise type(exc)(f"index {str(directory)!r}: {exc}") from None
    return meta


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _of(n: int, total: int | None) -> str:
    """``"2 of 12 volumes"``."""
    return f"{n} of {_plural(total, 'volume')}" if total is not None else _plural(n, "volume")


def _open_index(
    path: Path,
    extractor: IndexableExtractor,
    *,
    config: HnswConfig,
    exact: bool,
    resume: bool,
) -> BaseIndex:
    cls: type[BaseIndex] = ExactIndex if exact else SliceIndex
    saved = check_resumable(path, extractor) if resume else None
    if saved is not None:
        index = cls.load(path, dim=int(extractor.dim))
        if index.config != config:
            logger.warning(
                "resuming %s with its saved settings %s (given %s)", path, index.config, config
            )
        return index
    return cls(int(extractor.dim), config=config, extractor_config=extractor.to_config())


def _v1_labels(volume: Volume) -> SliceLabels | None:
    """The volume's labels restricted to the v1 classes (None: no labels, or none v1)."""
    if volume.labels is None:
        return None
    names = [n for n in volume.labels.names if n in _V1]
    if len(names) < len(volume.labels.names):
        logger.info(
            "volume %r: %d label column(s) are not TotalSegmentator v1 classes; not stored",
            volume.id,
            len(volume.labels.names) - len(names),
        )
    return volume.labels.select(names) if names else None


def _embed(extractor: IndexableExtractor, volume: Volume) -> npt.NDArray[np.float32]:
    emb = np.asarray(extractor.extract(volume))
    if emb.ndim != 2 or emb.shape[0] != volume.n_slices:
        raise ExtractorError(
            f"extractor {extractor.name!r} returned shape {emb.shape} for volume "
            f"{volume.id!r} with {volume.n_slices} slices; expected ({volume.n_slices}, dim)"
        )
    if emb.shape[1] != extractor.dim:
        raise DimensionMismatchError(
            f"extractor {extractor.name!r} returned {emb.shape[1]}-dim vectors for volume "
            f"{volume.id!r}, but its dim is {extractor.dim}"
        )
    return emb


def _source(source: object, root: str | os.PathLike[str] | None) -> Source | None:
    """A volume's source, its path relative to ``root`` when it lies under it."""
    if not isinstance(source, Source):
        return None
    return source.relative_to(root) if root is not None else source


def _data_root(
    volumes: object, root: str | os.PathLike[str] | None
) -> str | os.PathLike[str] | None:
    """``root``, or by default the ``root`` of a data set given as the volumes."""
    if root is None and isinstance(getattr(volumes, "root", None), str | os.PathLike):
        return volumes.root  # type: ignore[attr-defined,no-any-return]
    return root


def build_index(
    volumes: Iterable[VolumeSource] | Mapping[str, Callable[[], Volume]] | SubjectSource,
    extractor: IndexableExtractor,
    path: str | os.PathLike[str],
    *,
    config: HnswConfig = HnswConfig(),  # noqa: B008 - frozen dataclass
    exact: bool = False,
    verbose: bool | None = None,
    resume: bool = True,
    checkpoint_every: int = 10,
    workers: int = 2,
    processes: bool = False,
    root: str | os.PathLike[str] | None = None,
    labels: bool = True,
) -> BaseIndex:
    """Embed every slice of ``volumes`` and index them, with crash-safe checkpoints.

    Parameters
    ----------
    volumes
        Volumes, ``(volume_id, loader)`` pairs, a ``{volume_id: loader}`` mapping, bare
        zero-argument loaders (read even when the volume is indexed already, since only
        reading tells their id), or a data set with ``.subjects`` and
        ``.load(subject_id, labels=False)``. Each volume's modality is recorded in the
        index (an ``"unknown"`` one as :func:`cbirlib.modality.effective_modality`
        guesses it: the modality the extractor windowed it as).
    extractor
        Slice embedder: ``name``, ``dim``, ``extract(volume)`` and ``to_config()``.
        Each slice is also flagged informative or blank in the extractor's window
        (:func:`cbirlib.informative.slice_flags`), and the flags are stored with it.
    path
        Index directory, written atomically at every checkpoint.
    config
        HNSW settings for a new index (a resumed index keeps its saved settings).
    exact
        Build an :class:`~cbirlib.index.ExactIndex` instead of a
        :class:`~cbirlib.index.SliceIndex`.
    verbose
        Progress bar: on a terminal only (``None``), always (``True``) or never (``False``).
    resume
        Continue the index saved at ``path``: volumes already in it are skipped. Its
        extractor config must match ``extractor.to_config()``
        (:class:`~cbirlib.errors.ExtractorMismatchError` otherwise, checked before any
        vector is loaded or computed). With ``resume=False`` an index at ``path`` is
        replaced. **Volumes are matched by id only**: a file changed since it was
        indexed, under the same id, keeps its old embeddings without notice. After
        changing data, rebuild with ``resume=False`` (or drop the changed volumes with
        ``index.remove(volume_id)`` and save before resuming).
    checkpoint_every
        Save after this many newly added volumes (and always at the end, and when an
        error interrupts the build).
    workers
        Threads that read volumes ahead of the extractor (``0``: read in this thread).
    processes
        Read in ``workers`` worker processes instead of threads
        (:func:`cbirlib.ingest.read_volumes`): faster from ``.nii.gz`` where cores are
        free; the loaders must then be picklable (functions, ``functools.partial``).
    root
        The data root: each volume's :attr:`~cbirlib.Volume.source` (set by the
        readers) is recorded in the index with its path relative to ``root``
        (:attr:`BaseIndex.sources <cbirlib.index.SliceIndex.sources>`), so that results
        can be opened again after the data moves. Default: the ``root`` of a data set
        given as ``volumes`` (a :class:`~cbirlib.datasets.TotalSegmentator`), else the
        root each source already has (paths stay absolute when it has none).
    labels
        Store each volume's per-slice structure sets with it when it has them (default):
        a data set is loaded with ``labels=True`` (a subject without masks is indexed
        unlabeled), a :class:`~cbirlib.volume.Volume` keeps its ``labels``. Columns
        that are not TotalSegmentator v1 classes are left out (logged). ``False``:
        no labels are read or stored. See :meth:`~cbirlib.index.SliceIndex.labels`.

    Returns
    -------
    SliceIndex or ExactIndex
        The index, as saved at ``path``.

    Raises
    ------
    ExtractorMismatchError
        Resuming an index built with another extractor (name or config).
    DimensionMismatchError
        Resuming an index of another dimension, or an extractor that returns vectors
        of a dimension other than its ``dim``.

    Notes
    -----
    When the build stops (an error, or Ctrl-C), the volumes indexed so far are saved
    and a warning says how many, e.g. ``build interrupted: 2 of 12 volumes saved in
    idx; run the same command (or build_index call) to resume``. A resumed build that
    skipped volumes says so at WARNING level.
    """
    if checkpoint_every < 1:
        raise SettingError(f"checkpoint_every must be >= 1, got {checkpoint_every!r}")
    root = _data_root(volumes, root)
    path = Path(path)
    check_target(path)  # before any work: a foreign folder is refused, not overwritten
    index = _open_index(path, extractor, config=config, exact=exact, resume=resume)
    _fill(
        index,
        volumes,
        extractor,
        path,
        verbose=verbose,
        checkpoint_every=checkpoint_every,
        workers=workers,
        processes=processes,
        root=root,
        labels=labels,
    )
    return index


class WritableIndex(Protocol):
    """What :func:`build_index`'s loop writes into: a SliceIndex, ExactIndex or MilvusIndex."""

    @property
    def n_volumes(self) -> int:
        """Number of indexed volumes."""
        ...

    def __contains__(self, volume_id: object) -> bool:
        """Whether a volume id is indexed."""
        ...

    def add(
        self,
        volume_id: str,
        embeddings: npt.ArrayLike,
        *,
        slice_meta: dict[str, npt.ArrayLike] | None = None,
        modality: str = ...,
        source: Source | None = ...,
        labels: SliceLabels | None = ...,
    ) -> None:
        """Add one volume's slice embeddings."""
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save (or, for a server-side index, write its pointer) at ``path``."""
        ...


def _fill(
    index: WritableIndex,
    volumes: Iterable[VolumeSource] | Mapping[str, Callable[[], Volume]] | SubjectSource,
    extractor: IndexableExtractor,
    path: Path,
    *,
    verbose: bool | None,
    checkpoint_every: int,
    workers: int,
    processes: bool,
    root: str | os.PathLike[str] | None,
    labels: bool,
) -> None:
    """Embed the volumes not yet in ``index`` into it, saving at ``path`` as it goes."""
    fresh = not (path / "meta.json").is_file() or index.n_volumes == 0
    unsaved = 0
    added = skipped = blank = 0
    total = _count(volumes)
    if index.n_volumes:
        logger.info(
            "resuming %s: %s already indexed; volumes with these ids are skipped",
            path,
            _plural(index.n_volumes, "volume"),
        )
    bar = progress(total=total, verbose=verbose, desc="indexing", unit="vol")

    def pending() -> Iterator[Callable[[], Volume]]:
        # runs in this thread, as read-ahead asks for the next loader
        nonlocal skipped
        for vid, load in _lazy_items(volumes, labels=labels):
            if vid is not None and vid in index:
                skipped += 1
                bar.update()
                continue
            yield load

    current: str | None = None
    try:
        reader = read_ahead(pending(), workers=workers, processes=processes)
        with closing(reader) as loaded:
            for volume in loaded:
                current = volume.id
                if volume.id in index:
                    logger.warning("volume %r is already indexed; skipping it", volume.id)
                    skipped += 1
                    bar.update()
                    continue
                emb = _embed(extractor, volume)
                flags = slice_flags(extractor, volume)
                index.add(
                    volume.id,
                    emb,
                    slice_meta={"z_mm": volume.z_positions, "informative": flags},
                    modality=effective_modality(volume.modality, volume.array),
                    source=_source(getattr(volume, "source", None), root),
                    labels=_v1_labels(volume) if labels else None,
                )
                blank += int(np.count_nonzero(~flags))
                added += 1
                unsaved += 1
                bar.update()
                if unsaved >= checkpoint_every:
                    index.save(path)
                    unsaved = 0
                current = None
    except BaseException as exc:
        bar.close()  # so that the warning below is not written into the bar
        if unsaved and added:
            index.save(path)
        on_disk = index.n_volumes if (path / META_NAME).is_file() else 0
        if isinstance(exc, Exception):
            at = f" at volume {current!r}" if current is not None else ""
            cause = f"stopped by an error{at} ({type(exc).__name__}: {exc})"
            todo = "fix it and run the same command (or build_index call) to resume"
        else:
            cause = "interrupted"
            todo = "run the same command (or build_index call) to resume"
        logger.warning("build %s: %s saved in %s; %s", cause, _of(on_disk, total), path, todo)
        raise
    finally:
        bar.close()
    if unsaved or fresh:
        index.save(path)
    (logger.warning if skipped else logger.info)(
        "indexed %s into %s%s",
        _plural(added, "new volume"),
        path,
        f"; {skipped} already indexed, skipped (matched by volume id)" if skipped else "",
    )
    if blank:
        logger.info(
            "%s of the new volumes flagged uninformative (blank: constant or almost no "
            "body); queries leave them out by default",
            _plural(blank, "slice"),
        )


def build_milvus_index(
    volumes: Iterable[VolumeSource] | Mapping[str, Callable[[], Volume]] | SubjectSource,
    extractor: IndexableExtractor,
    path: str | os.PathLike[str],
    *,
    uri: str | os.PathLike[str] | None = None,
    collection: str = "cbirlib",
    token: str | None = None,
    config: HnswConfig = HnswConfig(),  # noqa: B008 - frozen dataclass
    verbose: bool | None = None,
    resume: bool = True,
    workers: int = 2,
    processes: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> MilvusIndex:
    """Embed ``volumes`` into a :class:`~cbirlib.index.milvus.MilvusIndex`, as :func:`build_index`.

    Every volume is stored in Milvus as it is added, so an interrupted build loses
    nothing and a rerun skips the volumes already there. ``path`` receives a pointer
    directory (``meta.json`` naming the URI and collection, never a token) that
    :func:`cbirlib.index.open_index` and ``cbirlib query`` open.

    Parameters
    ----------
    volumes, extractor, verbose, workers, processes, root
        As :func:`build_index`.
    path
        The pointer directory to write.
    uri
        A Milvus Lite file (default ``path/slices.db``) or a server address
        (``http://host:19530``).
    collection
        The collection holding the index.
    token
        A server's access token (default: ``$CBIRLIB_MILVUS_TOKEN``).
    config
        HNSW settings of a new collection (float32 storage only).
    resume
        Continue the collection (its extractor must match,
        :class:`~cbirlib.errors.ExtractorMismatchError` otherwise); ``False`` drops it
        first.

    Returns
    -------
    MilvusIndex
        The open index (call ``close()`` to free a Milvus Lite file).
    """
    root = _data_root(volumes, root)
    path = Path(path)
    check_target(path)
    target = os.fspath(uri) if uri is not None else os.fspath(path / "slices.db")
    if uri is None:
        path.mkdir(parents=True, exist_ok=True)
    token = token if token is not None else os.environ.get("CBIRLIB_MILVUS_TOKEN")
    options: dict[str, Any] = {"collection": collection, "token": token}
    if not resume:
        MilvusIndex(target, extractor.dim, config=config, **options).drop()
    index = MilvusIndex(
        target, extractor.dim, config=config, extractor_config=extractor.to_config(), **options
    )
    try:
        index.save(path)  # the pointer first: the folder is an index folder from now on
        _fill(
            index,
            volumes,
            extractor,
            path,
            verbose=verbose,
            checkpoint_every=1,
            workers=workers,
            processes=processes,
            root=root,
            labels=False,  # Milvus stores no slice labels
        )
    except BaseException:
        index.close()
        raise
    return index
