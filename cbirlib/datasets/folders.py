"""Volumes in folders: what ``cbirlib index`` indexes, ``query`` reads and ``benchmark`` needs.

- :func:`discover_volumes` lists the volumes under a folder (NIfTI files, DICOM series,
  a TotalSegmentator root) as ``(volume_id, loader)`` pairs, read lazily;
- :func:`open_volume` reads one volume from a path (a file, a series folder, a subject
  folder with its labels);
- :func:`check_split_root` refuses early a folder that the study protocol cannot use.

Examples
--------
>>> import tempfile
>>> from cbirlib.datasets import make_phantoms
>>> root = tempfile.mkdtemp()
>>> _ = make_phantoms(root, 2, shape=(32, 32))
>>> [vid for vid, _ in discover_volumes(root)]
['s0000', 's0001']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from cbirlib._files import is_dicom_file
from cbirlib.datasets.totalsegmentator import (
    IMAGE_FILE,
    IMAGE_FILES,
    META_FILE,
    CustomMasks,
    TotalSegmentator,
)
from cbirlib.errors import CbirError, DatasetError, NotAnImageError, VolumeNotFoundError
from cbirlib.modality import ModalitySetting, modality_for, unmatched_keys

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.volume import Volume

__all__ = [
    "check_split_root",
    "discover_volumes",
    "is_dicom_file",
    "is_totalsegmentator_root",
    "open_volume",
]

logger = logging.getLogger(__name__)


def is_totalsegmentator_root(path: Path) -> bool:
    """Whether ``path`` is a folder with subject folders holding ``ct.nii.gz`` or ``mri.nii.gz``."""
    return path.is_dir() and any(_is_subject(p) for p in path.iterdir() if p.is_dir())


def _is_subject(path: Path) -> bool:
    """Whether ``path`` is a subject folder of the TotalSegmentator (CT or MRI) layout."""
    return any((path / name).is_file() for name in IMAGE_FILES)


def _with_labels(dataset: TotalSegmentator, subject: str) -> Volume:
    """A subject with its labels, or without them when it has no masks."""
    try:
        return dataset.load(subject, labels=True)
    except DatasetError:
        return dataset.load(subject, labels=False)


def discover_volumes(
    data_dir: str | os.PathLike[str],
    *,
    modality: ModalitySetting = None,
    labels: bool = False,
    nan_fill: float | str | None = None,
) -> list[tuple[str, Callable[[], Volume]]]:
    """The volumes under ``data_dir`` as ``(volume_id, loader)`` pairs, read lazily.

    ``data_dir`` is a TotalSegmentator-layout root (subject folders with ``ct.nii.gz``,
    or ``mri.nii.gz`` in the MRI layout; ids are the subject names), or any folder tree
    of NIfTI files (``.nii``, ``.nii.gz``) and NRRD files (``.nrrd``, ``.nhdr``; ids are
    their paths relative to ``data_dir`` without the suffix) and DICOM series folders
    (a folder holding one Enhanced multi-frame file is one too; ids are the folder
    paths), or a single NIfTI or NRRD file. A DICOM folder holding
    several series gives one volume per series, with ids ``<folder>/series-<i>``
    (``i`` = 1, 2, ... in the order of the series' SeriesNumber).

    ``modality`` is a :data:`~cbirlib.modality.ModalitySetting`: one modality for every
    volume (``"CT"``, ``"MR"``), a mapping from a folder (relative to ``data_dir``; for
    a TotalSegmentator root, a subject id) to a modality with ``"*"`` for the others, or
    None. Each volume's modality (:func:`~cbirlib.modality.modality_for` of its relative
    path) is passed to :func:`cbirlib.io.load_volume`; where the setting gives none,
    load_volume decides (a DICOM tag, a sidecar, or a guess with a warning), and a
    TotalSegmentator root's volumes have the layout's modality (``"CT"`` for
    ``ct.nii.gz``, ``"MR"`` for ``mri.nii.gz``). ``nan_fill`` is passed to
    :func:`cbirlib.io.load_volume` (NaN and infinite voxels: refused, or filled),
    except for a TotalSegmentator root.

    Raises
    ------
    VolumeNotFoundError
        ``data_dir`` does not exist.
    DatasetError
        No volume was found.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> discover_volumes(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cbirlib.errors.DatasetError: no volumes found in ...
    """
    # lazy: nibabel and pydicom, loaded with the first volume
    from cbirlib.io import dicom_series, load_volume, nifti_stem, nrrd_stem

    def image_stem(name: str) -> str | None:
        stem = nifti_stem(name)
        return stem if stem is not None else nrrd_stem(name)

    def loader(path: Path, vid: str, series_uid: str | None = None) -> Callable[[], Volume]:
        relative = path.name if path == root else path.relative_to(root).as_posix()
        names.append((relative, vid))
        code = modality_for((relative, vid), modality)
        return partial(
            load_volume, path, series_uid=series_uid, id=vid, modality=code, nan_fill=nan_fill
        )

    names: list[tuple[str, str]] = []  # each volume's relative path and id
    root = Path(data_dir)
    if not root.exists():
        raise VolumeNotFoundError(f"data folder {str(root)!r} does not exist")
    if root.is_file():
        stem = image_stem(root.name)
        if stem is None:
            raise DatasetError(f"{str(root)!r} is neither a folder nor a NIfTI or NRRD file")
        return [(stem, loader(root, stem))]
    if is_totalsegmentator_root(root):
        ds = TotalSegmentator(root, modality=modality, nan_fill=nan_fill)
        if labels:
            return [(s, partial(_with_labels, ds, s)) for s in ds.subjects]
        return [(s, partial(ds.load, s, labels=False)) for s in ds.subjects]
    found: list[tuple[str, Callable[[], Volume]]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        for name in sorted(files):
            stem = image_stem(name)
            if stem is not None:
                vid = (here / stem).relative_to(root).as_posix()
                found.append((vid, loader(here / name, vid)))
        dicom = [here / n for n in sorted(files) if image_stem(n) is None]
        dicom = [p for p in dicom if is_dicom_file(p)]
        if not dicom:
            continue
        vid = here.relative_to(root).as_posix() if here != root else root.name
        try:
            series = dicom_series(here)
        except NotAnImageError as exc:  # only segmentations, RT dose...: nothing to index
            logger.info("%s; not indexed", exc)
            continue
        except CbirError:  # no readable series: load_volume reports why, when it is read
            series = []
        if len(series) <= 1:
            found.append((vid, loader(here, vid)))
            continue
        logger.info("%s: %d DICOM series, indexed as separate volumes", here, len(series))
        for i, info in enumerate(series, start=1):
            sid = f"{vid}/series-{i}"
            logger.debug("%s: series %s (%d slices) -> %s", here, info.uid, info.n_slices, sid)
            found.append((sid, loader(here, sid, info.uid)))
    unused = unmatched_keys(names, modality)
    if unused and found:
        logger.warning(
            "modality setting for %s unused: no volume under %s is in that folder or has "
            "that id (ids are relative to it, such as %s)",
            ", ".join(repr(k) for k in unused),
            root,
            ", ".join(repr(vid) for vid, _ in found[:3]),
        )
    if not found:
        raise DatasetError(
            f"no volumes found in {str(root)!r}; expected NIfTI files (.nii, .nii.gz), "
            "NRRD files (.nrrd, .nhdr), DICOM series or Enhanced DICOM folders, or a "
            "TotalSegmentator root (<subject>/ct.nii.gz)"
        )
    return found


def open_volume(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    modality: str | None = None,
    custom: CustomMasks = False,
    nan_fill: float | str | None = None,
) -> Volume:
    """One volume from a path, as ``cbirlib query`` reads its query.

    ``path`` is a NIfTI file, a DICOM series folder (``series_uid`` picks one series of
    a folder holding several), or a subject folder of a TotalSegmentator-layout data set
    (read with its labels). A TotalSegmentator image file (``<subject>/ct.nii.gz`` or
    ``<subject>/mri.nii.gz``) is named after its subject, any other file after its name.
    ``modality`` and ``nan_fill`` are passed to :func:`cbirlib.io.load_volume`
    (``modality=None``: its default, or
    the layout's modality for a subject folder or image file). ``custom`` adds a subject
    folder's custom masks to its labels, as :meth:`TotalSegmentator.load` does.

    Raises
    ------
    DatasetError
        ``path`` is a folder of several volumes (a data folder), not one volume.
    VolumeNotFoundError, VolumeReadError
        As :func:`cbirlib.io.load_volume`.

    Examples
    --------
    >>> import tempfile
    >>> from cbirlib.datasets import make_phantoms
    >>> root = tempfile.mkdtemp()
    >>> _ = make_phantoms(root, 1, shape=(32, 32))
    >>> volume = open_volume(f"{root}/s0000")
    >>> volume.id, volume.labels is not None
    ('s0000', True)
    >>> open_volume(f"{root}/s0000/ct.nii.gz").id
    's0000'
    """
    from cbirlib.io import load_volume  # lazy: nibabel and pydicom, loaded with the first volume

    path = Path(path)

    if path.is_dir() and _is_subject(path):
        dataset = TotalSegmentator(path.parent, modality=modality, nan_fill=nan_fill)
        return dataset.load(path.name, custom=custom)
    entries = list(path.iterdir()) if path.is_dir() else []
    if entries and not any(p.is_file() and is_dicom_file(p) for p in entries):
        raise DatasetError(
            f"{str(path)!r} is a data folder (NIfTI files or sub-folders), not one volume; "
            "pass one volume: a NIfTI file, a DICOM series folder or a subject folder "
            "(<subject>/ct.nii.gz)"
        )
    if path.is_file() and path.name in IMAGE_FILES and path.parent.name:
        return load_volume(
            path,
            id=path.parent.name,
            modality=modality or IMAGE_FILES[path.name],
            nan_fill=nan_fill,
        )
    return load_volume(path, series_uid=series_uid, modality=modality, nan_fill=nan_fill)


def check_split_root(data_dir: str | os.PathLike[str]) -> None:
    """Refuse early a folder that :func:`~cbirlib.benchmarking.benchmark` cannot use.

    Raises
    ------
    VolumeNotFoundError
        ``data_dir`` does not exist.
    DatasetError
        ``data_dir`` is not a TotalSegmentator-layout root, or has no ``meta.csv`` with
        a ``split`` column.

    Examples
    --------
    >>> import tempfile
    >>> from cbirlib.datasets import make_phantoms
    >>> root = tempfile.mkdtemp()
    >>> _ = make_phantoms(root, 3, shape=(32, 32))
    >>> check_split_root(root)
    """
    data_dir = Path(data_dir)

    layout = (
        f"a TotalSegmentator-layout root: <subject>/{IMAGE_FILE} with "
        f"<subject>/segmentations/*.nii.gz, and {META_FILE} with columns image_id and split "
        "(train/val/test)"
    )
    if not data_dir.exists():
        raise VolumeNotFoundError(f"data folder {str(data_dir)!r} does not exist")
    if not is_totalsegmentator_root(data_dir):
        raise DatasetError(f"{str(data_dir)!r} is not {layout}")
    if not (data_dir / META_FILE).is_file():
        raise DatasetError(f"{str(data_dir)!r} has no {META_FILE}; benchmark needs {layout}")
    dataset = TotalSegmentator(data_dir)
    if all(dataset.split_of(s) is None for s in dataset.subjects):
        raise DatasetError(
            f"{str(data_dir / META_FILE)!r} has no split column; benchmark needs {layout}"
        )
