"""Build a slice index on a Ray cluster: read in CPU tasks, embed in an actor pool, merge.

:func:`build_index_ray` is :func:`cbirlib.index.build_index` spread over a Ray cluster
(the optional extra ``cbirlib[ray]``):

1. every volume is read and decoded by a Ray CPU task, at most ``read_ahead`` of them
   at a time (a bounded queue ahead of the extractor);
2. a pool of ``num_actors`` actors embeds them; each actor creates its own extractor
   once, by name and options through the plugin registry
   (:func:`cbirlib.plugins.create_extractor`), on ``num_gpus`` GPUs, so no model is
   pickled or shipped;
3. the driver writes each volume's embeddings, slice numbers and z positions as one
   shard (:class:`~cbirlib.distributed.shards.ShardStore`, atomic ``.npz`` files) as
   soon as they arrive;
4. when every volume has its shard, the shards are merged, in input order, into a
   :class:`~cbirlib.index.SliceIndex` (or :class:`~cbirlib.index.ExactIndex`) saved
   atomically at ``path``, the same folder that :func:`~cbirlib.index.build_index` writes
   and :func:`~cbirlib.index.load_index` reads.

A build that is stopped (an error, Ctrl-C, a killed driver or a lost cluster) and run
again skips the volumes whose shard is written and the volumes already in the index at
``path``: every volume ends in the index exactly once.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._progress import progress
from cbirlib.distributed.shards import ShardStore, default_shard_dir
from cbirlib.errors import (
    ExtractorError,
    OptionalDependencyError,
    SettingError,
    VolumeSourceError,
)
from cbirlib.index.base import BaseIndex
from cbirlib.index.build import (
    IndexableExtractor,
    SubjectSource,
    VolumeSource,
    _data_root,
    _embed,
    _lazy_items,
    _source,
    _v1_labels,
    check_resumable,
)
from cbirlib.index.config import HnswConfig
from cbirlib.index.exact import ExactIndex
from cbirlib.index.files import check_target
from cbirlib.index.hnsw import SliceIndex
from cbirlib.informative import slice_flags
from cbirlib.labels import SliceLabels
from cbirlib.modality import effective_modality
from cbirlib.provenance import Source
from cbirlib.volume import Volume

logger = logging.getLogger(__name__)

__all__ = ["RaySource", "build_index_ray", "ray_sources"]

#: One element of ``volumes`` for :func:`build_index_ray`: what ``build_index`` takes
#: (with a known id), or a path to a NIfTI file or a DICOM series folder.
RaySource = VolumeSource | str | os.PathLike[str]

_PER_ACTOR = 2  # embed calls queued on one actor: the next volume is there when one ends


def _ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise OptionalDependencyError(
            "distributed indexing needs Ray: pip install 'cbirlib[ray]'"
        ) from None
    return ray


def _path_source(path: str | os.PathLike[str]) -> tuple[str, Callable[[], Volume]]:
    from cbirlib.io import load_volume, nifti_stem  # lazy: nibabel and pydicom, only for paths

    p = Path(path)
    vid = nifti_stem(p.name) or p.name
    return vid, partial(load_volume, p, id=vid)


def ray_sources(
    volumes: Iterable[RaySource] | Mapping[str, Callable[[], Volume]] | SubjectSource,
    *,
    labels: bool = True,
) -> list[tuple[str, Callable[[], Volume]]]:
    """The ``(volume_id, loader)`` pairs that :func:`build_index_ray` ships to Ray tasks.

    Parameters
    ----------
    volumes
        What :func:`~cbirlib.index.build_index` takes, except bare loaders (their id is
        only known after reading), or paths of NIfTI files and DICOM series folders
        (id: the file name without its suffix, or the folder name).
    labels
        For a data set: load each subject with its labels (where it has them), as
        :func:`~cbirlib.index.build_index` does.

    Raises
    ------
    VolumeSourceError
        A bare loader, an object that is no volume source, or an id given twice.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.volume import Volume
    >>> [vid for vid, _ in ray_sources([Volume("a", np.zeros((2, 4, 4))), "/data/b.nii.gz"])]
    ['a', 'b']
    """
    if isinstance(volumes, SubjectSource | Mapping):
        items: list[tuple[str | None, Callable[[], Volume]]] = list(
            _lazy_items(volumes, labels=labels)
        )
    else:
        items = []
        for item in volumes:
            if isinstance(item, str | os.PathLike):
                items.append(_path_source(item))
            else:
                items.extend(_lazy_items([item]))
    pairs: list[tuple[str, Callable[[], Volume]]] = []
    seen: set[str] = set()
    for vid, loader in items:
        if vid is None:
            raise VolumeSourceError(
                "build_index_ray needs every volume's id before reading it: give "
                "(volume_id, loader) pairs, a {volume_id: loader} mapping, paths or a data "
                "set, not bare loaders"
            )
        if vid in seen:
            raise VolumeSourceError(f"volume id {vid!r} is given more than once")
        seen.add(vid)
        pairs.append((vid, loader))
    return pairs


@dataclass(frozen=True)
class _Described:
    """What an actor's extractor says about itself (stands in for it on the driver)."""

    name: str
    dim: int
    config: dict[str, Any]

    def to_config(self) -> dict[str, Any]:
        return dict(self.config)

    def extract(self, volume: Volume) -> npt.NDArray[np.float32]:  # pragma: no cover
        raise ExtractorError("the driver does not embed; the Ray actors do")


@dataclass(frozen=True)
class _Embedded:
    """What an actor returns for one volume: what :meth:`BaseIndex.add` stores."""

    volume_id: str
    embeddings: npt.NDArray[np.float32]
    z_mm: npt.NDArray[np.float64]
    informative: npt.NDArray[np.bool_]
    modality: str
    source: Source | None = None
    labels: SliceLabels | None = None


class _Embedder:
    """A Ray actor: one extractor, created in the actor from its name and options."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        from cbirlib.plugins import create_extractor  # lazy: torch, in the Ray actor only

        # a failing __init__ would kill the actor and hide the error: keep it for the calls
        self._error: Exception | None = None
        try:
            self._extractor = create_extractor(name, **options)
        except Exception as exc:
            self._error = exc

    def _ready(self) -> IndexableExtractor:
        if self._error is not None:
            raise self._error
        return self._extractor

    def describe(self) -> tuple[str, int, dict[str, Any]]:
        ex = self._ready()
        return ex.name, int(ex.dim), ex.to_config()

    def embed(self, volume: Volume, volume_id: str) -> _Embedded:

        if not volume.array.flags.writeable:  # read-only view of Ray's object store
            volume = replace(volume, array=volume.array.copy())
        extractor = self._ready()
        emb = _embed(extractor, volume)
        return _Embedded(
            volume_id,
            np.ascontiguousarray(emb, dtype=np.float32),
            volume.z_positions,
            slice_flags(extractor, volume),
            effective_modality(volume.modality, volume.array),
            volume.source,
            _v1_labels(volume),
        )


def _read(loader: Callable[[], Volume], volume_id: str) -> Volume:
    """A Ray task: read and decode one volume."""
    volume = loader()
    if not isinstance(volume, Volume):
        raise VolumeSourceError(
            f"the loader of volume {volume_id!r} returned a {type(volume).__name__!r}, not a Volume"
        )
    if volume.id != volume_id:
        raise VolumeSourceError(
            f"the loader of volume {volume_id!r} returned volume {volume.id!r}; a loader "
            "must return the volume of its id"
        )
    return volume


def _extractor_spec(
    extractor: str | Mapping[str, Any], options: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    if isinstance(extractor, str):
        name, base = extractor, {}
    elif isinstance(extractor, Mapping) and isinstance(extractor.get("name"), str):
        base = {k: v for k, v in extractor.items() if k != "name"}
        name = str(extractor["name"])
    else:
        raise ExtractorError(
            f"extractor must be a registered name or a config dict with 'name' (as from "
            f"Extractor.to_config()), got {extractor!r}"
        )
    return name, {**base, **dict(options or {})}


def _check_settings(num_actors: int, num_gpus: float, read_ahead: int | None) -> int:
    if isinstance(num_actors, bool) or int(num_actors) < 1:
        raise SettingError(f"num_actors must be >= 1, got {num_actors!r}")
    if float(num_gpus) < 0:
        raise SettingError(f"num_gpus must be >= 0, got {num_gpus!r}")
    ahead = 2 * int(num_actors) if read_ahead is None else int(read_ahead)
    if ahead < 1:
        raise SettingError(f"read_ahead must be >= 1, got {read_ahead!r}")
    return ahead


def _open_index(
    path: Path, described: _Described, *, config: HnswConfig, exact: bool, resume: bool
) -> tuple[BaseIndex, bool]:
    """The index to merge into, and whether it was loaded from ``path``."""
    cls: type[BaseIndex] = ExactIndex if exact else SliceIndex
    if resume and check_resumable(path, described) is not None:
        return cls.load(path, dim=described.dim), True
    return cls(described.dim, config=config, extractor_config=described.to_config()), False


def build_index_ray(
    volumes: Iterable[RaySource] | Mapping[str, Callable[[], Volume]] | SubjectSource,
    extractor: str | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    extractor_options: Mapping[str, Any] | None = None,
    address: str | None = None,
    num_actors: int = 1,
    num_gpus: float = 0.0,
    num_cpus_per_actor: float = 1.0,
    read_cpus: float = 1.0,
    read_ahead: int | None = None,
    shard_dir: str | os.PathLike[str] | None = None,
    keep_shards: bool = False,
    config: HnswConfig = HnswConfig(),  # noqa: B008 - frozen dataclass
    exact: bool = False,
    resume: bool = True,
    verbose: bool | None = None,
    init_options: Mapping[str, Any] | None = None,
    root: str | os.PathLike[str] | None = None,
    labels: bool = True,
) -> BaseIndex:
    """Embed and index ``volumes`` on a Ray cluster; resumable after any interruption.

    Parameters
    ----------
    volumes
        Volume sources with known ids (see :func:`ray_sources`): ``(volume_id, loader)``
        pairs, a ``{volume_id: loader}`` mapping, a data set with ``.subjects`` and
        ``.load()``, :class:`~cbirlib.volume.Volume` objects, or paths. Loaders run in
        Ray worker processes: they must be picklable (functions, ``functools.partial``,
        lambdas; cloudpickle ships them) and the files they read must be reachable
        from every node.
    extractor
        Registered extractor name (``"baseline"``, ``"timm:resnet18"``) or a config
        dict with ``"name"`` as from ``Extractor.to_config()``. Each actor creates its
        own extractor with :func:`cbirlib.plugins.create_extractor`.
    path
        Index directory, written atomically by the merge.
    extractor_options
        Keyword arguments for the extractor's factory (``device``, ``batch_size``...),
        merged over the config dict's entries.
    address
        Ray cluster to join when this process is not connected yet: ``None`` starts a
        new local cluster, ``"auto"`` joins the one that ``RAY_ADDRESS`` names or that
        ``ray start`` runs on this machine, ``"ray://head:10001"`` or ``"head:6379"`` a
        remote one. Ignored when
        ``ray.init`` was called already (the current connection is used and kept).
    num_actors
        Size of the embedding actor pool; each actor loads the model once.
    num_gpus
        GPUs per actor (``1`` on a GPU cluster; fractions share a GPU; ``0``: CPU).
    num_cpus_per_actor
        CPUs reserved by each actor.
    read_cpus
        CPUs reserved by each read task.
    read_ahead
        At most this many volumes are read (or being read) and not yet handed to an
        actor; bounds the memory of the object store (default ``2 * num_actors``).
    shard_dir
        Folder of the per-volume shards (default: the index folder's sibling
        ``<name>.shards``); on the driver's file system.
    keep_shards
        Keep the shard folder after the merge (default: delete it once the index is
        saved).
    config
        HNSW settings for a new index (a resumed index keeps its saved settings).
    exact
        Build an :class:`~cbirlib.index.ExactIndex` instead.
    resume
        Skip the volumes already in the index at ``path`` or in the shard folder
        (their extractor config must match: :class:`~cbirlib.errors.ExtractorMismatchError`
        otherwise). ``False`` deletes the shards and replaces the index. Volumes are
        matched by id, as in :func:`~cbirlib.index.build_index`.
    verbose
        Progress bar: on a terminal only (``None``), always (``True``) or never (``False``).
    init_options
        Extra keyword arguments for ``ray.init`` (``runtime_env``, ``num_cpus``...)
        when this call connects.
    root, labels
        As in :func:`~cbirlib.index.build_index`: each volume's source is recorded
        relative to ``root`` (default: a data set's own root), and a data set's
        subjects are indexed with their slice labels (``labels=True``).

    Returns
    -------
    SliceIndex or ExactIndex
        The index, as saved at ``path``.

    Raises
    ------
    OptionalDependencyError
        Ray is not installed.
    VolumeSourceError
        A volume source without an id, an id given twice, or a loader that returns
        something else than the volume of its id.
    ExtractorMismatchError, DimensionMismatchError
        Resuming shards or an index made with another extractor config.
    Exception
        A loader's or the extractor's own exception (e.g.
        :class:`~cbirlib.errors.VolumeReadError`), raised on the driver; the shards
        written so far are kept for the next run.
    """
    ray = _ray()
    ahead = _check_settings(num_actors, num_gpus, read_ahead)
    name, options = _extractor_spec(extractor, extractor_options)
    path = Path(path)
    check_target(path)  # before any work: a foreign folder is refused, not overwritten
    sources = ray_sources(volumes, labels=labels)
    root = _data_root(volumes, root)
    store = ShardStore(shard_dir if shard_dir is not None else default_shard_dir(path))
    started = False
    if not ray.is_initialized():
        # "local": a new cluster, even where RAY_ADDRESS or a `ray start` cluster exists
        ray.init(address=address or "local", **dict(init_options or {}))
        started = True
    actors: list[Any] = []
    try:
        actor_cls = ray.remote(
            num_cpus=num_cpus_per_actor, num_gpus=num_gpus, max_restarts=1, max_task_retries=1
        )(_Embedder)
        actors = [actor_cls.remote(name, options) for _ in range(int(num_actors))]
        described = _Described(*_unwrap(ray, lambda: ray.get(actors[0].describe.remote())))
        index, loaded = _open_index(path, described, config=config, exact=exact, resume=resume)
        store.open(described.to_config(), described.dim, resume=resume)
        todo = [(v, load) for v, load in sources if v not in index and not store.has(v)]
        done_before = len(sources) - len(todo)
        if done_before:
            logger.warning(
                "resuming: %d of %d volumes already in %s or its shards %s are skipped "
                "(matched by volume id)",
                done_before,
                len(sources),
                path,
                store.directory,
            )
        read = ray.remote(num_cpus=read_cpus)(_read)
        bar = progress(
            total=len(sources),
            initial=done_before,
            verbose=verbose,
            desc="indexing (ray)",
            unit="vol",
        )
        try:
            _unwrap(ray, lambda: _run(ray, read, actors, todo, ahead, store, bar))
        except BaseException as exc:
            bar.close()
            written = sum(store.has(v) for v, _ in sources)
            logger.warning(
                "ray build stopped (%s: %s): %d of %d volumes have their shard in %s; run "
                "the same call to resume",
                type(exc).__name__,
                exc,
                written,
                len(sources),
                store.directory,
            )
            raise
        finally:
            bar.close()
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    return _merge(index, loaded, sources, store, path, keep_shards=keep_shards, root=root)


def _unwrap(ray: ModuleType, call: Callable[[], Any]) -> Any:
    """Run ``call``; a remote exception is re-raised as the original exception."""
    try:
        return call()
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        logger.debug("remote error: %s", exc)
        if isinstance(cause, Exception):
            raise cause from None
        raise


def _run(
    ray: ModuleType,
    read: Any,
    actors: list[Any],
    todo: list[tuple[str, Callable[[], Volume]]],
    ahead: int,
    store: ShardStore,
    bar: Any,
) -> None:
    """Read, embed and write the shards of ``todo``, each as soon as it is embedded."""
    queue = deque(todo)
    reading: dict[Any, str] = {}  # read task -> volume id
    ready: deque[tuple[str, Any]] = deque()  # read, not yet handed to an actor
    embedding: dict[Any, int] = {}  # embed call -> actor number
    load = [0] * len(actors)
    try:
        while queue or reading or ready or embedding:
            while queue and len(reading) + len(ready) < ahead:
                vid, loader = queue.popleft()
                reading[read.remote(loader, vid)] = vid
            while ready:
                i = min(range(len(actors)), key=load.__getitem__)
                if load[i] >= _PER_ACTOR:
                    break
                vid, ref = ready.popleft()
                embedding[actors[i].embed.remote(ref, vid)] = i
                load[i] += 1
            done, _ = ray.wait([*reading, *embedding], num_returns=1)
            for ref in done:
                if ref in reading:
                    ready.append((reading.pop(ref), ref))
                    continue
                load[embedding.pop(ref)] -= 1
                done_volume: _Embedded = ray.get(ref)
                store.write(
                    done_volume.volume_id,
                    done_volume.embeddings,
                    z_mm=done_volume.z_mm,
                    informative=done_volume.informative,
                    modality=done_volume.modality,
                    source=done_volume.source,
                    labels=done_volume.labels,
                )
                bar.update()
    finally:
        for ref in reading:  # the actors (and their calls) are killed by the caller
            ray.cancel(ref)


def _merge(
    index: BaseIndex,
    loaded: bool,
    sources: list[tuple[str, Callable[[], Volume]]],
    store: ShardStore,
    path: Path,
    *,
    keep_shards: bool,
    root: str | os.PathLike[str] | None,
) -> BaseIndex:
    """Add every shard not in ``index`` yet, in input order; save; drop the shards."""
    added = 0
    for vid, _ in sources:
        if vid in index:
            continue
        shard = store.read(vid)
        index.add(
            vid,
            shard.embeddings,
            slice_meta={
                "z_mm": shard.z_mm,
                "slice_index": shard.slice_index,
                "informative": shard.informative,
            },
            modality=shard.modality,
            source=_source(shard.source, root),
            labels=shard.labels,
        )
        added += 1
    if added or not loaded:
        index.save(path)
    if not keep_shards:
        store.clear()
    logger.info("merged %d new volumes into %s (%d in all)", added, path, index.n_volumes)
    return index
