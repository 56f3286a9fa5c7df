"""Command-line options turned into library objects: numbers, extractors, structures, chains.

Examples
--------
>>> parse_extractor_opt("bins=8"), parse_extractor_opt("device=cuda")
(('bins', 8), ('device', 'cuda'))
>>> positive_int("3")
3
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbirlib._text import close_matches
from cbirlib.errors import CliError, SettingError, UsageError, VolumeNotFoundError
from cbirlib.modality import parse_modality_setting
from cbirlib.presets import default_chain
from cbirlib.search import SliceSearch
from cbirlib.structures import TOTALSEG_V1_CLASSES, coarse_regions

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.extractor import Extractor
    from cbirlib.index import BaseIndex
    from cbirlib.index.milvus import MilvusIndex
    from cbirlib.modality import ModalitySetting
    from cbirlib.pipeline import Pipeline

__all__ = [
    "add_extractor_options",
    "add_modality_option",
    "canonical_structure",
    "chain",
    "create_extractor",
    "extractor_options",
    "fraction",
    "int_at_least",
    "load_index",
    "open_search_index",
    "modality_setting",
    "non_negative_int",
    "parse_extractor_opt",
    "positive_int",
]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def _nan_fill(text: str) -> float | str:
    """``--nan-fill`` value: ``min`` or a number within float32's range."""
    from cbirlib.io import _check_nan_fill  # lazy: nibabel, only when the option is given

    if text.strip().lower() == "min":
        return "min"
    try:
        value = _check_nan_fill(float(text))
    except (ValueError, SettingError):
        raise argparse.ArgumentTypeError(
            f"expected 'min' or a number within float32's range, got {text!r}"
        ) from None
    assert isinstance(value, float)
    return value


def add_nan_fill_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--nan-fill min|VALUE``: NaN/infinite voxels set to the background or a value."""
    parser.add_argument(
        "--nan-fill",
        type=_nan_fill,
        default=None,
        metavar="min|VALUE",
        help="set NaN and infinite voxels (outside a resampled image's field of view) to "
        "the smallest finite voxel (min) or VALUE, with a warning (default: such images "
        "are refused)",
    )


def add_modality_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--modality MODALITY|FOLDER=MODALITY`` (repeatable): see :func:`modality_setting`."""
    parser.add_argument(
        "--modality",
        action="append",
        metavar="[FOLDER=]MODALITY",
        help="modality (CT, MR, ...) of the volumes read, or of those under FOLDER (or of "
        "the volume of that id); "
        "repeatable (default: the DICOM Modality tag, a NIfTI file's JSON sidecar, or a "
        "guess from the intensities, with a warning)",
    )


def modality_setting(args: argparse.Namespace) -> ModalitySetting:
    """``--modality`` values as a :data:`~cbirlib.modality.ModalitySetting` (None: none given).

    Raises
    ------
    UsageError
        A malformed value or an unknown modality code.

    Examples
    --------
    >>> modality_setting(argparse.Namespace(modality=["mr"]))
    'MR'
    >>> modality_setting(argparse.Namespace(modality=["CT", "brains=MR"]))
    {'*': 'CT', 'brains': 'MR'}
    """

    try:
        return parse_modality_setting(getattr(args, "modality", None))
    except SettingError as exc:
        message = str(exc)
        raise UsageError(message if "--modality" in message else f"--modality: {message}") from None


def parse_extractor_opt(text: str) -> tuple[str, Any]:
    """Parse one ``--extractor-opt KEY=VALUE``; the value is JSON when it parses as JSON.

    Examples
    --------
    >>> parse_extractor_opt("mean=[0.5, 0.5, 0.5]")
    ('mean', [0.5, 0.5, 0.5])
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with a Python identifier as KEY (e.g. batch_size=16), got {text!r}"
        )
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def add_extractor_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--weights PATH`` and ``--extractor-opt KEY=VALUE`` to ``parser``."""
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="local weights file (safetensors or PyTorch checkpoint) for the extractor",
    )
    parser.add_argument(
        "--extractor-opt",
        metavar="KEY=VALUE",
        type=parse_extractor_opt,
        action="append",
        help="extractor option, repeatable; VALUE is read as JSON when it parses "
        "(e.g. batch_size=16, device=cuda)",
    )


def extractor_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--extractor-opt`` and ``--weights`` as keyword arguments of ``create_extractor``."""
    options: dict[str, Any] = dict(getattr(args, "extractor_opt", None) or [])
    weights = getattr(args, "weights", None)
    if weights is not None:
        if "weights" in options:
            raise CliError("pass the weights once: --weights PATH or --extractor-opt weights=...")
        # an index records its extractor config: store an absolute path, so that
        # `cbirlib query` finds the file from any working directory
        options["weights"] = weights if "://" in weights else str(Path(weights).resolve())
    return options


def create_extractor(name: str, options: dict[str, Any]) -> Extractor:
    """The extractor ``name`` built with ``options`` (:func:`cbirlib.create_extractor`)."""
    # lazy: torch (keeps the CLI start cheap)
    from cbirlib.plugins import create_extractor as create

    return create(name, **options)


def chain(
    extractor: Extractor,
    index: BaseIndex | MilvusIndex,
    *,
    top: int,
    k: int = 100,
    rerank: bool = True,
    localize: bool = True,
    candidates: int | None = None,
    trim: float = 0.0,
) -> Pipeline:
    """The default retrieval chain (:func:`cbirlib.presets.default_chain`) on ``index``.

    ``k`` neighbours per query slice; the other arguments are those of
    :func:`~cbirlib.presets.default_chain`.
    """

    return default_chain(
        SliceSearch(extractor, index, k=k),
        top=top,
        rerank=rerank,
        localize=localize,
        candidates=candidates,
        trim=trim,
    )


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 0.5).

    Examples
    --------
    >>> fraction("0.1")
    0.1
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 0.5), got {text!r}") from None
    if not 0.0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 0.5), got {value}")
    return value


def load_index(path: Path) -> BaseIndex:
    """Load a :class:`SliceIndex` or :class:`ExactIndex`, whichever ``path`` holds."""
    from cbirlib.index import load_index as load  # lazy: hnswlib (keeps the CLI start cheap)

    if not path.exists():
        raise VolumeNotFoundError(f"index folder {str(path)!r} does not exist")
    return load(path)


def open_search_index(path: Path) -> BaseIndex | MilvusIndex:
    """:func:`load_index`, or the Milvus collection that a pointer folder names."""
    from cbirlib.index import open_index  # lazy: hnswlib (keeps the CLI start cheap)

    if not path.exists():
        raise VolumeNotFoundError(f"index folder {str(path)!r} does not exist")
    return open_index(path)


def canonical_structure(name: str, custom: Sequence[str] = ()) -> str:
    """A fine class, coarse region or custom mask name, matched case-insensitively.

    ``custom`` lists the custom structures the query holds (mask files of its
    ``segmentations/`` folder whose name is not a TotalSegmentator class). An unknown
    name raises :class:`~cbirlib.errors.CliError` with close matches among all of them.

    Examples
    --------
    >>> canonical_structure("Liver")
    'liver'
    >>> canonical_structure("lesion_1", custom=["lesion_1"])
    'lesion_1'
    """

    coarse = coarse_regions()
    known = {n.lower(): n for n in (*custom, *TOTALSEG_V1_CLASSES, *coarse)}
    if name in custom:
        return name
    key = name.strip().lower()
    if key in known:
        return known[key]
    close = close_matches(key, known.values())
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    masks = f", or a custom mask of the query ({', '.join(custom)})" if custom else ""
    raise CliError(
        f"unknown structure {name!r}; {hint}valid: a TotalSegmentator v1 class (liver, "
        f"kidney_left, ...), a coarse region ({', '.join(coarse[:8])}, ...; see "
        f"cbirlib.structures.coarse_regions()){masks}"
    )
