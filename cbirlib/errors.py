"""Exceptions raised by cbirlib.

Every error cbirlib raises on purpose derives from :class:`CbirError`; most also
derive from the natural builtin (``ValueError``, ``KeyError``, ``FileNotFoundError``)
so that existing ``except`` clauses keep working.

Examples
--------
>>> from cbirlib.errors import CbirError, UnknownStructureError
>>> issubclass(UnknownStructureError, KeyError)
True
>>> try:
...     raise UnknownStructureError("no structure 'livr'")
... except CbirError as exc:
...     print(type(exc).__name__)
UnknownStructureError
"""

from __future__ import annotations


class CbirError(Exception):
    """Base class of every error raised by cbirlib."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep messages readable for KeyError subclasses.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


# --- reading volumes -------------------------------------------------------------


class VolumeReadError(CbirError, ValueError):
    """A file or folder could not be read as a volume (corrupt, truncated, unsupported)."""


class VolumeNotFoundError(CbirError, FileNotFoundError):
    """A path that should hold a volume does not exist or is empty."""


class InvalidVolumeError(CbirError, ValueError):
    """Image data that was read but is not a usable 3D volume (2D/4D, NaN/Inf, bad spacing)."""


class DicomSeriesError(VolumeReadError):
    """A DICOM folder holds no series, several series, or an inconsistent series."""


class MissingSliceError(DicomSeriesError):
    """A DICOM series has a gap in its slice positions."""


class NotAnImageError(VolumeReadError):
    """DICOM objects that are no slices of a volume: a segmentation (SEG), an RT dose
    grid, a localizer (scout) image..."""


class MaskShapeError(InvalidVolumeError):
    """A segmentation mask does not match the shape of its image."""


class LabelsError(CbirError, ValueError):
    """Invalid per-slice labels: duplicate structure names, a bad presence threshold."""


class SliceOutOfRangeError(LabelsError, IndexError):
    """A slice index outside the slices that the labels (or a volume) cover."""


class UnknownStructureError(CbirError, KeyError):
    """A structure (anatomical class) name that is not known."""


class DatasetError(CbirError, ValueError):
    """A data-set folder does not follow the expected layout."""


class UnknownSubjectError(DatasetError, KeyError):
    """A subject id that is not in the data set."""


# --- extractors and plugins --------------------------------------------------------


class UnknownExtractorError(CbirError, KeyError):
    """No extractor is registered under the requested name."""


class InputConfigError(CbirError, ValueError):
    """An invalid preprocessing setting (window, size, channels, mean/std, interpolation)."""


class ExtractorError(CbirError, RuntimeError):
    """An extractor failed to build or to embed slices."""


class WeightsError(CbirError, RuntimeError):
    """Pretrained weights are missing, unreachable, corrupt or do not fit the model."""


class ChecksumError(WeightsError, ValueError):
    """A downloaded or local file does not match its expected sha256."""


class WeightsSpecError(WeightsError, ValueError):
    """A weights mapping or ``NAME=PATH`` option that is malformed or names no extractor."""


class SharedWeightsError(WeightsSpecError):
    """One weights file given to two extractors (a mislabelled comparison) without ``force``."""


class PluginError(CbirError, RuntimeError):
    """A plugin failed to load or registered something invalid."""


# --- settings and inputs ------------------------------------------------------------


class SettingError(CbirError, ValueError):
    """A setting (a count, a size, a number of workers...) outside its valid range."""


class VolumeSourceError(CbirError, TypeError):
    """Something given as volumes to index that is not a volume, loader or data set."""


# --- index -----------------------------------------------------------------------------


class SliceIndexError(CbirError, ValueError):
    """Base class of slice-index errors."""


class DimensionMismatchError(SliceIndexError):
    """Vectors whose dimension differs from the index's dimension."""


class DuplicateVolumeError(SliceIndexError, KeyError):
    """A volume id that is already in the index."""


class VolumeNotInIndexError(SliceIndexError, KeyError):
    """A volume id that is not in the index."""


class IndexFormatError(SliceIndexError):
    """An index directory that is missing, truncated, corrupt or of an unknown format."""


class IndexStorageError(SliceIndexError, OSError):
    """The operating system refused to write an index (permission, read-only or full disk).

    It is an :class:`OSError` too: ``errno`` and ``filename`` keep the original values.
    """

    def __init__(self, errno: int | None, message: str, filename: str) -> None:
        OSError.__init__(self, errno, message, filename)

    def __str__(self) -> str:
        return f"{self.strerror} ({self.filename!r}, errno {self.errno})"


class IndexInUseError(SliceIndexError, RuntimeError):
    """An index that another process holds open (a Milvus Lite file admits one process)."""


class BackendUnavailableError(CbirError, ImportError):
    """An optional index backend whose packages are not installed (``cbirlib[milvus]``)."""


class ExtractorMismatchError(SliceIndexError):
    """Vectors from an extractor whose config differs from the one the index was built with."""


# --- distributed builds -----------------------------------------------------------------


class OptionalDependencyError(CbirError, ImportError):
    """A feature needs an optional dependency that is not installed (names the extra)."""


class ShardError(SliceIndexError):
    """A shard folder of a distributed build that is not one, or an unreadable shard."""


# --- retrieval and evaluation ---------------------------------------------------------


class PipelineError(CbirError, TypeError):
    """Stages that cannot be chained (level mismatch) or a pipeline used wrongly."""


class FusionError(CbirError, ValueError):
    """Rankings that cannot be fused: no chains, an unknown method, different queries."""


class EvaluationError(CbirError, ValueError):
    """Queries, ground truth or metrics that do not fit together."""


class StructureNotPresentError(EvaluationError):
    """A volume that does not contain the requested structure."""


class HitsError(CbirError, ValueError):
    """Columns that do not make a valid Hits table."""


class UnknownColumnError(HitsError, KeyError):
    """A column name that the table does not have."""


# --- the command line --------------------------------------------------------------


class CliError(CbirError, ValueError):
    """A command-line request that cannot be carried out (missing input, bad combination)."""


class UsageError(CliError):
    """Command-line arguments that do not go together: the command exits with status 2."""


__all__ = [
    "CbirError",
    "VolumeReadError",
    "VolumeNotFoundError",
    "InvalidVolumeError",
    "DicomSeriesError",
    "MissingSliceError",
    "NotAnImageError",
    "MaskShapeError",
    "LabelsError",
    "SliceOutOfRangeError",
    "UnknownStructureError",
    "DatasetError",
    "UnknownSubjectError",
    "UnknownExtractorError",
    "InputConfigError",
    "ExtractorError",
    "WeightsError",
    "ChecksumError",
    "WeightsSpecError",
    "SharedWeightsError",
    "PluginError",
    "SettingError",
    "VolumeSourceError",
    "SliceIndexError",
    "DimensionMismatchError",
    "DuplicateVolumeError",
    "VolumeNotInIndexError",
    "IndexFormatError",
    "IndexStorageError",
    "IndexInUseError",
    "BackendUnavailableError",
    "ExtractorMismatchError",
    "OptionalDependencyError",
    "ShardError",
    "PipelineError",
    "EvaluationError",
    "StructureNotPresentError",
    "HitsError",
    "UnknownColumnError",
    "CliError",
    "UsageError",
    "ExtractorMismatchWarning",
    "ModalityMismatchWarning",
    "CustomStructureWarning",
    "HitsTypeError",
]


class ExtractorMismatchWarning(UserWarning):
    """Vectors come from an extractor whose config differs from the index's one."""


class ModalityMismatchWarning(UserWarning):
    """A query's modality (e.g. MR) is not among the modalities of the indexed volumes."""


class CustomStructureWarning(UserWarning):
    """A mask file whose name is not a TotalSegmentator class: a custom structure left out.

    Such a mask (a lesion or user mask, ``segmentations/lesion_1.nii.gz``) is usable in
    region queries as a custom structure named after its file stem (see
    :meth:`cbirlib.datasets.TotalSegmentator.load`'s ``custom=``).
    """


class HitsTypeError(EvaluationError, TypeError):
    """Results to evaluate that are not a :class:`~cbirlib.hits.Hits` table.

    A DataFrame (for instance from ``Hits.to_pandas()`` or a CSV file) becomes one with
    :meth:`Hits.from_pandas <cbirlib.hits.Hits.from_pandas>`.
    """
