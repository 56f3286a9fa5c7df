# The public names of ``cbirlib``, written once: type checkers read this stub, and
# ``cbirlib/__init__.py`` builds ``__all__``, ``__getattr__`` and ``__dir__`` from it
# (lazy_loader.attach_stub), so each name is imported on first use. A new public name is
# one line here and one in docs/api.rst (tests/test_core.py and tests/test_docs_build.py
# check both).

from . import datasets as datasets
from . import distributed as distributed
from . import errors as errors
from . import evaluation as evaluation
from . import metrics as metrics
from . import significance as significance
from . import structures as structures
from . import viz as viz
from ._version import __version__ as __version__
from .aggregate import CountVotes as CountVotes
from .aggregate import TopSlice as TopSlice
from .annotation import Annotation as Annotation
from .annotation import annotate as annotate
from .benchmarking import benchmark as benchmark
from .distributed import build_index_ray as build_index_ray
from .errors import CbirError as CbirError
from .errors import CustomStructureWarning as CustomStructureWarning
from .errors import ModalityMismatchWarning as ModalityMismatchWarning
from .evaluation import evaluate as evaluate
from .extractor import Extractor as Extractor
from .extractor import SliceExtractor as SliceExtractor
from .extractors.timm import TimmExtractor as TimmExtractor
from .finder import find as find
from .fusion import Fuse as Fuse
from .hits import Hits as Hits
from .hookspecs import hookimpl as hookimpl
from .index import ExactIndex as ExactIndex
from .index import ExtractorMismatchWarning as ExtractorMismatchWarning
from .index import HnswConfig as HnswConfig
from .index import MilvusIndex as MilvusIndex
from .index import SliceIndex as SliceIndex
from .index import SliceMatches as SliceMatches
from .index import build_index as build_index
from .informative import informative_slices as informative_slices
from .io import load_mask as load_mask
from .io import load_seg_masks as load_seg_masks
from .io import load_volume as load_volume
from .labels import SliceLabels as SliceLabels
from .localize import Localize as Localize
from .modality import guess_modality as guess_modality
from .pipeline import Cutoff as Cutoff
from .pipeline import Pipeline as Pipeline
from .pipeline import Retriever as Retriever
from .pipeline import stage as stage
from .plugins import ExtractorInfo as ExtractorInfo
from .plugins import create_extractor as create_extractor
from .plugins import list_extractors as list_extractors
from .plugins import load_plugins as load_plugins
from .preprocess import InputConfig as InputConfig
from .provenance import Source as Source
from .queries import EmbeddedQuery as EmbeddedQuery
from .rerank import MaxSimRerank as MaxSimRerank
from .search import SliceSearch as SliceSearch
from .search import region_query as region_query
from .volume import RegionOrigin as RegionOrigin
from .volume import Volume as Volume
