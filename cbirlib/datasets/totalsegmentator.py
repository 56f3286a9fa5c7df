"""The TotalSegmentator on-disk layout as a lazy, read-only mapping of subjects.

Layout (as distributed on Zenodo)::

    root/
      meta.csv                      # optional; ';'- or ','-separated, columns
                                    # image_id;age;gender;institute;study_type;split;...
      s0000/
        ct.nii.gz                   # or mri.nii.gz (TotalSegmentator MRI)
        segmentations/
          spleen.nii.gz             # one binary mask per structure
          kidney_right.nii.gz
          ...

A :class:`TotalSegmentator` is a ``Mapping[str, Volume]``: iterating it yields the
subject ids (sorted) and reads no image; ``ds[subject_id]`` reads the image and its masks.
Only ``image_id`` and ``split`` are read from ``meta.csv``: demographic columns (age,
gender, ...) are never read into anything.

Labels have one column per requested v1 class (all 104 by default); a mask file that
is absent gives an all-False column and v2 names are mapped onto v1 classes through
:data:`cbirlib.structures.V2_TO_V1`. A mask file of any other name (a lesion or user
mask, ``segmentations/lesion_1.nii.gz``) is a *custom structure* named after its file
stem: ``load(subject, custom=["lesion_1"])`` (or ``custom=True``: all of them) adds its
column after the class columns, so that :func:`cbirlib.search.region_query` can use it.
Left out (the default), it is reported once per data set with a
:class:`~cbirlib.errors.CustomStructureWarning`. Custom structures are for queries only:
the default labels, which indexes and evaluations use, hold the class columns only.

The modality is the layout's, stated rather than assumed: ``"CT"`` for a subject's
``ct.nii.gz``, ``"MR"`` for its ``mri.nii.gz`` (the TotalSegmentator MRI layout);
``modality=`` sets it for every subject or per subject.

Examples
--------
>>> import tempfile
>>> from cbirlib.datasets import make_phantoms
>>> ds = make_phantoms(tempfile.mkdtemp(), 2, shape=(32, 32))
>>> list(ds), ds.split_of("s0000") in {"train", "val", "test"}
(['s0000', 's0001'], True)
>>> vol = ds["s0000"]
>>> vol.labels is not None and len(vol.labels.names)
104
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from cbirlib._files import TOTALSEG_IMAGE_FILES
from cbirlib._progress import progress
from cbirlib._text import did_you_mean
from cbirlib.datasets.label_cache import LabelCache
from cbirlib.errors import (
    CustomStructureWarning,
    DatasetError,
    MaskShapeError,
    SettingError,
    UnknownStructureError,
    UnknownSubjectError,
)
from cbirlib.labels import SliceLabels, slice_counts
from cbirlib.modality import normalize_modality
from cbirlib.provenance import Source
from cbirlib.structures import (
    TOTALSEG_V1_CLASSES,
    TOTALSEG_V2_CLASSES,
    V2_TO_V1,
    resolve_structure,
)
from cbirlib.volume import Volume

logger = logging.getLogger(__name__)

#: Valid values of the ``split`` column of ``meta.csv``.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Image file name -> the modality the layout states for it.
IMAGE_FILES: dict[str, str] = TOTALSEG_IMAGE_FILES
#: The image of a subject in the CT layout (``ct.nii.gz``) and in the MRI layout
#: (``mri.nii.gz``, read when ``ct.nii.gz`` is absent).
IMAGE_FILE, MRI_IMAGE_FILE = IMAGE_FILES
#: ``modality=`` of :class:`TotalSegmentator`: None (the layout's), one modality for
#: every subject, or a mapping subject id -> modality (key ``"*"``: the others).
#: ``"unknown"`` guesses from the intensities (with a logged warning).
DatasetModality: TypeAlias = str | Mapping[str, str] | None
#: ``custom=`` of :meth:`TotalSegmentator.load`: False (no custom structure), True (every
#: custom mask of the subject), or one or more custom mask names (file stems).
CustomMasks: TypeAlias = bool | str | Sequence[str]
MASK_FOLDER = "segmentations"
META_FILE = "meta.csv"
_MASK_SUFFIX = ".nii.gz"


def _read_meta(path: Path) -> dict[str, str | None]:
    """``image_id -> split`` from ``meta.csv`` (split None when the column is absent)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read meta file ({exc})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: empty meta file; expected a header with 'image_id'")
    delimiter = ";" if lines[0].count(";") >= lines[0].count(",") else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [h.strip() for h in rows[0]]
    if "image_id" not in header:
        raise DatasetError(
            f"{path}: no 'image_id' column in header {header}; expected columns such as "
            "image_id;age;gender;institute;study_type;split"
        )
    id_col = header.index("image_id")
    split_col = header.index("split") if "split" in header else None
    meta: dict[str, str | None] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}, line {line_no}: {len(row)} fields, the header has {len(header)}"
            )
        image_id = row[id_col].strip()
        if not image_id:
            raise DatasetError(f"{path}, line {line_no}: empty image_id")
        if image_id in meta:
            raise DatasetError(f"{path}, line {line_no}: duplicate image_id {image_id!r}")
        split = row[split_col].strip() if split_col is not None else None
        if split is not None and split not in SPLITS:
            raise DatasetError(
                f"{path}, line {line_no}: split {split!r} of {image_id!r} is not one of "
                f"{', '.join(SPLITS)}"
            )
        meta[image_id] = split
    return meta


def _check_modality(
    modality: DatasetModality, folders: Sequence[str], root: Path
) -> str | dict[str, str]:
    """``modality=`` normalised: a modality code, or subject id -> code."""
    if modality is None:
        return {}
    if isinstance(modality, str):
        return normalize_modality(modality)
    if not isinstance(modality, Mapping):
        raise SettingError(
            f"modality must be None, a string or a mapping subject id -> modality, "
            f"got {type(modality).__name__}"
        )
    out = {str(k): normalize_modality(v) for k, v in modality.items()}
    unknown = sorted(set(out) - set(folders) - {"*"})
    if unknown:
        hint = did_you_mean(unknown[0], folders)
        raise DatasetError(
            f"{root}: modality= names {len(unknown)} subject(s) that are not in the data "
            f"set: {', '.join(map(repr, unknown[:5]))}{hint}"
        )
    return out


def _resolve_classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return TOTALSEG_V1_CLASSES
    if isinstance(classes, str):
        classes = [classes]
    names: dict[str, None] = {}
    for name in classes:
        names.update(dict.fromkeys(resolve_structure(name)[1]))
    if not names:
        raise DatasetError("classes is empty; pass None for all 104 v1 classes")
    return tuple(names)


class TotalSegmentator(Mapping[str, Volume]):
    """A TotalSegmentator-style data set folder, read lazily.

    Parameters
    ----------
    root
        The data-set folder (one sub-folder per subject, optional ``meta.csv``).
    split
        Keep only the subjects of this split (``"train"``, ``"val"`` or ``"test"``);
        needs a ``meta.csv`` with a ``split`` column.
    min_pixels
        A structure is present in a slice when its mask has at least this many pixels.
    classes
        Label columns: v1 fine class names and/or coarse region names (expanded to their
        members); default all 104 v1 classes.
    modality
        The volumes' modality. None (default): the layout's, ``"CT"`` for
        ``ct.nii.gz`` (the TotalSegmentator CT layout) and ``"MR"`` for
        ``mri.nii.gz``. A string (``"CT"``, ``"MR"``, ...) for every subject, or a
        mapping subject id -> modality (the key ``"*"`` for the unlisted subjects, who
        otherwise keep the layout's). ``"unknown"`` guesses each volume's modality from
        its intensities (:func:`cbirlib.modality.guess_modality`, with a logged warning).
    labels_cache
        A folder that keeps the per-slice pixel counts read from each subject's masks
        (one ``.npy`` per subject, :class:`~cbirlib.datasets.label_cache.LabelCache`),
        so that later runs read no mask whose files are unchanged (same names, sizes
        and modification times). Default: no cache.
    nan_fill
        NaN and infinite voxels of the images: None (default) refuses such an image,
        ``"min"`` or a number sets them (as :func:`cbirlib.io.load_volume`).

    Raises
    ------
    DatasetError
        ``root`` is not a folder, holds no subject, a subject folder lacks ``ct.nii.gz``
        (or ``mri.nii.gz``), ``meta.csv`` is malformed, ``split`` is invalid, or
        ``modality`` names a subject that is not in the data set.
    SettingError
        A modality that is not a DICOM modality code, or a ``nan_fill`` that is neither
        None, ``"min"`` nor a number.
    UnknownStructureError
        A name in ``classes`` is not a v1 class or coarse region.

    Notes
    -----
    Construction lists folders and reads ``meta.csv`` only; no image is read until a
    subject is loaded.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str | None = None,
        min_pixels: int = 1,
        classes: Sequence[str] | None = None,
        modality: DatasetModality = None,
        labels_cache: str | os.PathLike[str] | None = None,
        nan_fill: float | str | None = None,
    ) -> None:
        # lazy: nibabel and pydicom, loaded here so that a bad nan_fill fails before a read
        from cbirlib.io import _check_nan_fill

        self.root = Path(root)
        self.nan_fill = _check_nan_fill(nan_fill)
        self.labels_cache = None if labels_cache is None else LabelCache(labels_cache)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder; expected a TotalSegmentator root")
        if min_pixels < 1:
            raise DatasetError(f"min_pixels must be >= 1, got {min_pixels}")
        if split is not None and split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.min_pixels = int(min_pixels)
        self.classes: tuple[str, ...] = _resolve_classes(classes)
        folders = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not folders:
            raise DatasetError(
                f"{self.root}: not a TotalSegmentator-layout root: no subject folders found "
                f"(expected <root>/<subject>/{IMAGE_FILE} or {MRI_IMAGE_FILE})"
            )
        self._image: dict[str, str] = {}
        for f in folders:
            name = next((n for n in IMAGE_FILES if (self.root / f / n).is_file()), None)
            if name is not None:
                self._image[f] = name
        missing = [f for f in folders if f not in self._image]
        if len(missing) == len(folders):
            loose = sorted(p.name for p in self.root.glob("*.nii*") if p.is_file())
            seen = f"; it holds image files itself ({', '.join(loose[:3])}...)" if loose else ""
            raise DatasetError(
                f"{self.root}: not a TotalSegmentator-layout root: none of its "
                f"{len(folders)} subfolder(s) ({', '.join(folders[:3])}"
                f"{', ...' if len(folders) > 3 else ''}) holds {IMAGE_FILE} or "
                f"{MRI_IMAGE_FILE}{seen}; expected "
                f"<root>/<subject>/{IMAGE_FILE} and <root>/<subject>/segmentations/*.nii.gz"
            )
        if missing:
            shown = ", ".join(str(self.root / f / IMAGE_FILE) for f in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DatasetError(
                f"{self.root}: TotalSegmentator root with subject folder(s) lacking "
                f"{IMAGE_FILE} or {MRI_IMAGE_FILE}: missing image file(s): {shown}{more}"
            )
        meta_path = self.root / META_FILE
        meta = _read_meta(meta_path) if meta_path.is_file() else {}
        unlisted = sorted(set(meta) - set(folders))
        if unlisted:
            logger.warning(
                "%s lists %d subject(s) without a folder (ignored), e.g. %s",
                meta_path,
                len(unlisted),
                unlisted[0],
            )
        self._split: dict[str, str | None] = {f: meta.get(f) for f in folders}
        if split is not None:
            if not any(self._split.values()):
                raise DatasetError(
                    f"split={split!r} needs {meta_path} with a 'split' column; none found"
                )
            self._split = {f: s for f, s in self._split.items() if s == split}
        self.split = split
        self._subjects = tuple(self._split)
        self._modality = _check_modality(modality, folders, self.root)
        self._warned: set[str] = set()

    # -- listing (no image is read) --------------------------------------------------------

    @property
    def subjects(self) -> tuple[str, ...]:
        """Subject ids (folder names), sorted."""
        return self._subjects

    def __len__(self) -> int:
        return len(self._subjects)

    def __iter__(self) -> Iterator[str]:
        return iter(self._subjects)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self._split

    def _check(self, subject_id: str) -> None:
        if subject_id not in self._split:
            hint = did_you_mean(str(subject_id), self._subjects)
            shown = ", ".join(self._subjects[:5]) + (" ..." if len(self) > 5 else "")
            raise UnknownSubjectError(
                f"unknown subject {subject_id!r} in {self.root}{hint} "
                f"({len(self)} subjects: {shown})"
            )

    def split_of(self, subject_id: str) -> str | None:
        """The split (``train``/``val``/``test``) of a subject, or None without meta.csv."""
        self._check(subject_id)
        return self._split[subject_id]

    def subjects_in(self, split: str) -> tuple[str, ...]:
        """The subjects of one split, sorted."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return tuple(s for s in self._subjects if self._split[s] == split)

    def image_path(self, subject_id: str) -> Path:
        """Path of a subject's ``ct.nii.gz`` (or ``mri.nii.gz``)."""
        self._check(subject_id)
        return self.root / subject_id / self._image[subject_id]

    def modality_of(self, subject_id: str) -> str:
        """The modality a subject's volume is read with (``"unknown"``: guessed when read).

        Examples
        --------
        >>> import tempfile
        >>> from cbirlib.datasets import make_phantoms
        >>> root = make_phantoms(tempfile.mkdtemp(), 2, shape=(32, 32)).root
        >>> TotalSegmentator(root).modality_of("s0000")
        'CT'
        >>> TotalSegmentator(root, modality={"s0001": "MR"}).modality_of("s0001")
        'MR'
        """
        self._check(subject_id)
        setting = self._modality
        if isinstance(setting, str):
            return setting
        chosen = setting.get(subject_id, setting.get("*"))
        return chosen if chosen is not None else IMAGE_FILES[self._image[subject_id]]

    # -- loading ---------------------------------------------------------------------------

    def __getitem__(self, subject_id: str) -> Volume:
        return self.load(subject_id)

    def load(self, subject_id: str, *, labels: bool = True, custom: CustomMasks = False) -> Volume:
        """Read a subject's image (and, by default, its per-slice labels).

        Parameters
        ----------
        subject_id
            A subject folder name.
        labels
            Attach :class:`~cbirlib.labels.SliceLabels` built from the masks.
        custom
            Custom structures (mask files whose name is not a TotalSegmentator class, see
            :meth:`custom_structures`) to add as label columns after the class columns,
            named after their file stem: a name, several names, or True for all of them.
            Default False: class columns only, and a
            :class:`~cbirlib.errors.CustomStructureWarning` (once per name and data set)
            for each custom mask left out.

        Raises
        ------
        UnknownSubjectError
            For an id that is not in the data set.
        UnknownStructureError
            A name in ``custom`` that is not a custom mask of the subject (close matches
            suggested).
        DatasetError
            The ``segmentations`` folder is missing (with ``labels=True``).
        VolumeReadError, MaskShapeError
            An unreadable image or mask, or a mask whose shape differs from the image.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np, nibabel as nib
        >>> from cbirlib.datasets import make_phantoms
        >>> ds = make_phantoms(tempfile.mkdtemp(), 1, shape=(32, 32))
        >>> mask = np.zeros(nib.load(ds.image_path("s0000")).shape, np.uint8)
        >>> mask[4:8, 4:8, 3:6] = 1  # x, y, z: slices 3..5
        >>> img = nib.Nifti1Image(mask, nib.load(ds.image_path("s0000")).affine)
        >>> nib.save(img, ds.root / "s0000" / "segmentations" / "lesion_1.nii.gz")
        >>> ds.custom_structures("s0000")
        ('lesion_1',)
        >>> ds.load("s0000", custom=["lesion_1"]).labels.span("lesion_1")
        (3, 5)
        """
        # lazy: nibabel and pydicom, loaded with the first volume
        from cbirlib.io import load_volume

        path = self.image_path(subject_id)
        volume = load_volume(
            path, id=subject_id, modality=self.modality_of(subject_id), nan_fill=self.nan_fill
        )
        # provenance: the image relative to the data root, and the subject id
        volume = replace(volume, source=Source.from_file(path, root=self.root, subject=subject_id))
        if not labels:
            return volume
        return volume.with_labels(self._labels(subject_id, like=volume, custom=custom))

    def labels(self, subject_id: str, *, custom: CustomMasks = False) -> SliceLabels:
        """Per-slice labels of a subject, reading its masks only (not the image).

        ``custom`` is as in :meth:`load`.
        """
        self._check(subject_id)
        return self._labels(subject_id, like=None, custom=custom)

    def custom_structures(self, subject_id: str) -> tuple[str, ...]:
        """Names (file stems) of a subject's custom masks, sorted.

        A custom mask is a ``segmentations/*.nii.gz`` file whose name is neither a
        TotalSegmentator v1 class nor a v2 name mapped onto one: a lesion or user mask,
        or a v2-only class without a v1 counterpart (``skull``, ``sternum``, ...; these
        are not warned about). Reads no image.

        Raises
        ------
        UnknownSubjectError
            For an id that is not in the data set.
        DatasetError
            The ``segmentations`` folder is missing.
        """
        self._check(subject_id)
        return tuple(self._scan(subject_id)[1])

    def volumes(self, *, labels: bool = True, verbose: bool | None = None) -> Iterator[Volume]:
        """Load every subject in order (a progress bar as ``verbose`` says, see build_index)."""
        for subject_id in progress(self._subjects, verbose=verbose, desc="loading"):
            yield self.load(subject_id, labels=labels)

    def _scan(self, subject_id: str) -> tuple[dict[str, list[Path]], dict[str, Path]]:
        """Requested v1 class -> the mask files that make it; custom name -> its file."""
        folder = self.root / subject_id / MASK_FOLDER
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing segmentations folder of {subject_id!r}")
        wanted = set(self.classes)
        sources: dict[str, list[Path]] = {}
        custom: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(_MASK_SUFFIX) or path.name.startswith("."):
                continue
            name = path.name[: -len(_MASK_SUFFIX)]
            targets = (name,) if name in TOTALSEG_V1_CLASSES else V2_TO_V1.get(name, ())
            if not targets and name:
                custom[name] = path
            for target in targets:
                if target in wanted:
                    sources.setdefault(target, []).append(path)
        return sources, custom

    def _custom_files(
        self, subject_id: str, found: Mapping[str, Path], custom: CustomMasks
    ) -> dict[str, Path]:
        """The custom masks ``custom`` asks for; warn (once) about the ones left out."""
        if custom is True:
            chosen = dict(found)
        elif custom is False:
            chosen = {}
        else:
            names = [custom] if isinstance(custom, str) else list(custom)
            chosen = {}
            for name in names:
                if name not in found:
                    listed = ", ".join(found) if found else "none"
                    raise UnknownStructureError(
                        f"subject {subject_id!r}: no custom mask {name!r} in "
                        f"{self.root / subject_id / MASK_FOLDER}"
                        f"{did_you_mean(str(name), tuple(found))}; its custom masks: {listed}"
                    )
                chosen[name] = found[name]
        for name, path in found.items():
            if name in chosen or name in self._warned:
                continue
            self._warned.add(name)
            if name in TOTALSEG_V2_CLASSES:  # a v2-only class: known, no v1 column
                logger.debug("%s: v2 class without a v1 counterpart; a custom structure", path)
            else:
                warnings.warn(
                    CustomStructureWarning(
                        f"{path}: {name!r} is not a TotalSegmentator class; it is left out "
                        f"of the labels but usable as a custom structure "
                        f"(load(..., custom=[{name!r}]), cbirlib query --structure {name})"
                    ),
                    stacklevel=4,
                )
        return chosen

    def _labels(
        self, subject_id: str, *, like: Volume | None, custom: CustomMasks = False
    ) -> SliceLabels:
        """Labels from the masks, each reduced to per-slice pixel counts once read.

        Only one full mask is in memory at a time, except for a v1 class that several
        mask files make up (v2 names merged onto one v1 class): those masks are OR-ed
        voxel-wise (a pixel in two files counts once) and then reduced. Custom masks
        asked for by ``custom`` follow the class columns.
        """
        # lazy: nibabel and pydicom, loaded with the first volume
        from cbirlib.io import load_mask

        shape: tuple[int, ...] | None = like.shape if like is not None else None

        def read(path: Path) -> npt.NDArray[np.bool_]:
            nonlocal shape
            mask = load_mask(path, like=like)
            if shape is None:
                shape = mask.shape
            elif mask.shape != shape:
                raise MaskShapeError(f"mask {str(path)!r} has shape {mask.shape}, others {shape}")
            return mask

        files, found = self._scan(subject_id)
        extra = self._custom_files(subject_id, found, custom)
        cache, key = self.labels_cache, ""
        if cache is not None:  # the cache holds the class columns only, never custom ones
            paths = [p for ps in files.values() for p in ps] + [self.image_path(subject_id)]
            key = cache.key(subject_id, self.classes, paths)
            cached = cache.get(subject_id, key, len(self.classes))
            if cached is not None and (like is None or cached.shape[1] == like.n_slices):
                logger.debug("labels of %s from the cache", subject_id)
                columns = dict(zip(self.classes, cached, strict=True))
                columns.update({name: slice_counts(read(path)) for name, path in extra.items()})
                return SliceLabels.from_counts(columns, min_pixels=self.min_pixels)

        single: dict[Path, npt.NDArray[np.int64]] = {}
        counts: dict[str, npt.NDArray[np.int64]] = {}
        for name, paths in files.items():
            if len(paths) == 1:
                if paths[0] not in single:
                    single[paths[0]] = slice_counts(read(paths[0]))
                counts[name] = single[paths[0]]
                continue
            merged = read(paths[0])
            for path in paths[1:]:
                merged |= read(path)
            counts[name] = slice_counts(merged)
            del merged
        custom_counts = {name: slice_counts(read(path)) for name, path in extra.items()}
        if shape is None:  # no mask at all and no image: the slice count is in the header
            shape = self._image_shape(subject_id)
        empty = np.zeros(shape[0], dtype=np.int64)
        per_class = {name: counts.get(name, empty) for name in self.classes}
        if cache is not None and self.classes:
            cache.put(subject_id, key, np.stack([per_class[n] for n in self.classes]))
        return SliceLabels.from_counts({**per_class, **custom_counts}, min_pixels=self.min_pixels)

    def _image_shape(self, subject_id: str) -> tuple[int, int, int]:
        # lazy: nibabel and pydicom, loaded with the first volume
        from cbirlib.io import nifti_shape

        return nifti_shape(self.image_path(subject_id))

    # Mapping would compare (and so load) every volume; a data set equals only itself.
    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"TotalSegmentator({str(self.root)!r}, {len(self)} subjects{split})"
