"""cbirlib: content-based retrieval of 3D medical images.

Every axial slice of a CT or MR volume is embedded by a pretrained 2D model, slice
embeddings go into an HNSW index, and retrieval chains compose slice search, volume
aggregation, late-interaction re-ranking and localization.

``import cbirlib`` is cheap: the public names below are loaded on first use, and no
torch import or plugin loading happens at import time.

Examples
--------
>>> import cbirlib
>>> cbirlib.Volume.__name__
'Volume'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "Volume": "cbirlib.volume",
    "Source": "cbirlib.provenance",
    "SliceLabels": "cbirlib.labels",
    "load_volume": "cbirlib.io",
    "load_mask": "cbirlib.io",
    "guess_modality": "cbirlib.modality",
    "CbirError": "cbirlib.errors",
    "CustomStructureWarning": "cbirlib.errors",
    "ModalityMismatchWarning": "cbirlib.errors",
    "Extractor": "cbirlib.extractor",
    "SliceExtractor": "cbirlib.extractor",
    "TimmExtractor": "cbirlib.extractors.timm",
    "InputConfig": "cbirlib.preprocess",
    "hookimpl": "cbirlib.hookspecs",
    "create_extractor": "cbirlib.plugins",
    "list_extractors": "cbirlib.plugins",
    "load_plugins": "cbirlib.plugins",
    "ExtractorInfo": "cbirlib.plugins",
    "HnswConfig": "cbirlib.index",
    "SliceIndex": "cbirlib.index",
    "ExactIndex": "cbirlib.index",
    "MilvusIndex": "cbirlib.index",
    "SliceMatches": "cbirlib.index",
    "ExtractorMismatchWarning": "cbirlib.index",
    "build_index": "cbirlib.index",
    "build_index_ray": "cbirlib.distributed",
    "Hits": "cbirlib.hits",
    "Retriever": "cbirlib.pipeline",
    "Pipeline": "cbirlib.pipeline",
    "stage": "cbirlib.pipeline",
    "Cutoff": "cbirlib.pipeline",
    "Fuse": "cbirlib.fusion",
    "SliceSearch": "cbirlib.search",
    "region_query": "cbirlib.search",
    "informative_slices": "cbirlib.informative",
    "TopSlice": "cbirlib.aggregate",
    "CountVotes": "cbirlib.aggregate",
    "MaxSimRerank": "cbirlib.rerank",
    "Localize": "cbirlib.localize",
    "evaluate": "cbirlib.evaluation",
    "benchmark": "cbirlib.benchmarking",
    "annotate": "cbirlib.annotation",
    "Annotation": "cbirlib.annotation",
    "find": "cbirlib.finder",
}

# submodules reachable as attributes (``cbirlib.datasets.make_phantoms``) without an import
_SUBMODULES = ("datasets", "distributed", "errors", "evaluation", "metrics", "structures", "viz")

__all__ = [
    "Annotation",
    "CbirError",
    "CountVotes",
    "CustomStructureWarning",
    "Cutoff",
    "ExactIndex",
    "Extractor",
    "ExtractorMismatchWarning",
    "ExtractorInfo",
    "Fuse",
    "Hits",
    "HnswConfig",
    "InputConfig",
    "Localize",
    "MaxSimRerank",
    "MilvusIndex",
    "ModalityMismatchWarning",
    "Pipeline",
    "Retriever",
    "SliceExtractor",
    "SliceIndex",
    "SliceLabels",
    "SliceMatches",
    "SliceSearch",
    "Source",
    "TimmExtractor",
    "TopSlice",
    "Volume",
    "__version__",
    "annotate",
    "benchmark",
    "build_index",
    "build_index_ray",
    "create_extractor",
    "evaluate",
    "find",
    "guess_modality",
    "hookimpl",
    "informative_slices",
    "list_extractors",
    "load_mask",
    "load_plugins",
    "load_volume",
    "region_query",
    "stage",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"cbirlib.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cbirlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cbirlib.aggregate import CountVotes, TopSlice
    from cbirlib.annotation import Annotation, annotate
    from cbirlib.benchmarking import benchmark
    from cbirlib.distributed import build_index_ray
    from cbirlib.errors import CbirError, CustomStructureWarning, ModalityMismatchWarning
    from cbirlib.evaluation import evaluate
    from cbirlib.extractor import Extractor, SliceExtractor
    from cbirlib.extractors.timm import TimmExtractor
    from cbirlib.finder import find
    from cbirlib.fusion import Fuse
    from cbirlib.hits import Hits
    from cbirlib.hookspecs import hookimpl
    from cbirlib.index import (
        ExactIndex,
        ExtractorMismatchWarning,
        HnswConfig,
        MilvusIndex,
        SliceIndex,
        SliceMatches,
        build_index,
    )
    from cbirlib.informative import informative_slices
    from cbirlib.io import load_mask, load_volume
    from cbirlib.labels import SliceLabels
    from cbirlib.localize import Localize
    from cbirlib.modality import guess_modality
    from cbirlib.pipeline import Cutoff, Pipeline, Retriever, stage
    from cbirlib.plugins import ExtractorInfo, create_extractor, list_extractors, load_plugins
    from cbirlib.preprocess import InputConfig
    from cbirlib.provenance import Source
    from cbirlib.rerank import MaxSimRerank
    from cbirlib.search import SliceSearch, region_query
    from cbirlib.volume import Volume
