"""Distributed indexing: build a slice index on a Ray cluster (extra ``cbirlib[ray]``).

:func:`build_index_ray` reads volumes in Ray CPU tasks, embeds them in a pool of actors
that each load the extractor once, writes one atomic shard per volume
(:class:`ShardStore`) and merges the shards into the index folder that
:func:`cbirlib.index.build_index` writes. Importing this package does not import Ray;
calling :func:`build_index_ray` without Ray installed raises
:class:`~cbirlib.errors.OptionalDependencyError`.
"""

from __future__ import annotations

from cbirlib.distributed.ray_build import RaySource, build_index_ray, ray_sources
from cbirlib.distributed.shards import Shard, ShardStore, default_shard_dir

__all__ = [
    "RaySource",
    "Shard",
    "ShardStore",
    "build_index_ray",
    "default_shard_dir",
    "ray_sources",
]
