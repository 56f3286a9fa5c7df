"""Per-slice label sets: which structures are present in each axial slice.

Labels serve evaluation only (ground truth), never search.

Examples
--------
>>> import numpy as np
>>> from cbirlib.labels import SliceLabels
>>> liver = np.zeros((4, 8, 8), dtype=bool); liver[1:3, 2:5, 2:5] = True
>>> labels = SliceLabels.from_masks({"liver": liver})
>>> labels.structures(1)
frozenset({'liver'})
>>> labels.span("liver")
(1, 2)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cbirlib._text import did_you_mean
from cbirlib.errors import (
    LabelsError,
    MaskShapeError,
    SliceOutOfRangeError,
    UnknownStructureError,
)
from cbirlib.structures import TOTALSEG_V1_CLASSES, coarse_hint, match_name


@dataclass(frozen=True, eq=False)
class SliceLabels:
    """Presence of named structures in each axial slice of one volume.

    Parameters
    ----------
    names
        Structure names, one per column of ``present``.
    present
        Boolean matrix of shape ``(n_slices, len(names))``; ``present[s, j]`` is True
        when structure ``names[j]`` appears in slice ``s``.
    """

    names: tuple[str, ...]
    present: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        present = np.asarray(self.present, dtype=bool)
        if present.ndim != 2 or present.shape[1] != len(self.names):
            raise MaskShapeError(
                f"label matrix of shape {present.shape} does not fit {len(self.names)} names"
            )
        if len(set(self.names)) != len(self.names):
            dupes = sorted(n for n, c in Counter(self.names).items() if c > 1)
            raise LabelsError(f"structure names must be unique; repeated: {', '.join(dupes)}")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "present", present)
        object.__setattr__(self, "_column", {n: i for i, n in enumerate(self.names)})

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_masks(cls, masks: Mapping[str, npt.ArrayLike], *, min_pixels: int = 1) -> SliceLabels:
        """Build labels from binary masks of shape ``(Z, Y, X)``.

        A structure is present in slice ``s`` when its mask has at least ``min_pixels``
        non-zero pixels in ``s``. All masks must share one shape.

        Raises
        ------
        LabelsError
            ``min_pixels < 1``.
        MaskShapeError
            A mask that is not 3D, or masks of different shapes.
        """
        _check_min_pixels(min_pixels)
        counts: dict[str, npt.NDArray[np.int64]] = {}
        shape: tuple[int, ...] | None = None
        for name in masks:
            mask = np.asarray(masks[name])
            if mask.ndim != 3:
                raise MaskShapeError(f"mask {name!r} has {mask.ndim} dimensions, expected 3")
            if shape is not None and mask.shape != shape:
                raise MaskShapeError(
                    f"mask {name!r} has shape {mask.shape}, other masks have {shape}"
                )
            shape = mask.shape
            counts[name] = slice_counts(mask)
        return cls.from_counts(counts, min_pixels=min_pixels)

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, npt.ArrayLike], *, min_pixels: int = 1
    ) -> SliceLabels:
        """Build labels from per-slice pixel counts (see :func:`slice_counts`).

        Lets a caller reduce each mask to ``(Z,)`` counts as soon as it is read
        instead of keeping every full mask in memory.

        Raises
        ------
        LabelsError
            ``min_pixels < 1``, or count vectors of different lengths.

        Examples
        --------
        >>> SliceLabels.from_counts({"liver": [0, 5, 2]}, min_pixels=3).present[:, 0].tolist()
        [False, True, False]
        """
        _check_min_pixels(min_pixels)
        names = tuple(counts)
        columns = [np.asarray(counts[n]).reshape(-1) >= min_pixels for n in names]
        lengths = {len(c) for c in columns}
        if len(lengths) > 1:
            raise LabelsError(
                f"per-slice counts of different lengths {sorted(lengths)} for {', '.join(names)}"
            )
        present = np.stack(columns, axis=1) if columns else np.zeros((0, 0), bool)
        return cls(names, present)

    # -- queries -----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def column(self, name: str) -> int:
        """Column of ``name``, matched case-insensitively when not exact.

        Raises :class:`UnknownStructureError` if it is not known; the message suggests
        close matches.

        Examples
        --------
        >>> labels = SliceLabels(("liver", "spleen"), np.zeros((2, 2), bool))
        >>> labels.column("Spleen")
        1
        """
        columns: dict[str, int] = self._column  # type: ignore[attr-defined]
        if name in columns:
            return int(columns[name])

        key = match_name(name, self.names)
        if key is not None:
            return int(columns[key])
        listed = (
            f"known: {', '.join(sorted(self.names))}"
            if len(self.names) <= 12
            else f"these labels know {len(self.names)} structures (SliceLabels.names)"
        )
        raise UnknownStructureError(
            f"unknown structure {name!r}{did_you_mean(name, self.names)}; {listed}; in "
            f"region_query and evaluate, {coarse_hint()}"
        )

    def structures(self, slice_index: int) -> frozenset[str]:
        """Names of the structures present in one slice.

        Raises
        ------
        SliceOutOfRangeError
            ``slice_index`` is not in ``0 .. len(self) - 1`` (also an ``IndexError``).
        """
        if not 0 <= slice_index < len(self):
            raise SliceOutOfRangeError(
                f"slice {slice_index!r} out of range; the labels cover slices 0..{len(self) - 1}"
            )
        row = np.flatnonzero(self.present[slice_index])
        return frozenset(self.names[i] for i in row)

    def volume_structures(self) -> frozenset[str]:
        """Names of the structures present anywhere in the volume."""
        anywhere = np.flatnonzero(self.present.any(axis=0))
        return frozenset(self.names[i] for i in anywhere)

    def contains(self, name: str) -> bool:
        """Whether ``name`` is present in at least one slice."""
        return bool(self.present[:, self.column(name)].any())

    def slices_with(self, name: str) -> npt.NDArray[np.int64]:
        """Indices of the slices where ``name`` is present (ascending)."""
        return np.flatnonzero(self.present[:, self.column(name)]).astype(np.int64)

    def span(self, name: str) -> tuple[int, int] | None:
        """First and last slice (inclusive) where ``name`` is present, or None."""
        idx = self.slices_with(name)
        return (int(idx[0]), int(idx[-1])) if idx.size else None

    # -- transformations ------------------------------------------------------------------

    def slab(self, start: int, stop: int) -> SliceLabels:
        """Labels of slices ``start:stop``."""
        return SliceLabels(self.names, self.present[start:stop])

    def select(self, names: Iterable[str]) -> SliceLabels:
        """Labels restricted to ``names`` (in that order)."""
        names = tuple(names)
        cols = [self.column(n) for n in names]
        return SliceLabels(names, self.present[:, cols])

    def grouped(self, mapping: Mapping[str, str]) -> SliceLabels:
        """Merge structures into groups: a group is present where any member is.

        Structures missing from ``mapping`` are dropped; mapping keys that are not in
        ``names`` are ignored, so one mapping serves volumes with different class sets.
        """
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            if name in mapping:
                groups.setdefault(mapping[name], []).append(i)
        group_names = tuple(sorted(groups))
        present = np.zeros((len(self), len(group_names)), dtype=bool)
        for j, group in enumerate(group_names):
            present[:, j] = self.present[:, groups[group]].any(axis=1)
        return SliceLabels(group_names, present)

    def __repr__(self) -> str:
        return f"SliceLabels(n_slices={len(self)}, n_structures={len(self.names)})"


def slice_counts(mask: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Number of non-zero pixels in each axial slice of a ``(Z, Y, X)`` mask.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((3, 2, 2), bool); m[1, :, 0] = True
    >>> slice_counts(m).tolist()
    [0, 2, 0]
    """
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise MaskShapeError(f"mask of shape {arr.shape} has {arr.ndim} dimensions, expected 3")
    counts = np.count_nonzero(arr.reshape(arr.shape[0], -1), axis=1)
    return np.asarray(counts, dtype=np.int64)


def _check_min_pixels(min_pixels: int) -> None:
    if (
        isinstance(min_pixels, bool)
        or not isinstance(min_pixels, int | np.integer)
        or min_pixels < 1
    ):
        raise LabelsError(f"min_pixels must be an integer >= 1, got {min_pixels!r}")


#: Bytes per slice of a packed structure set: one bit per TotalSegmentator v1 class.
PACKED_BYTES = 13


def pack_labels(
    labels: SliceLabels, *, strict: bool = True
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Pack per-slice structure sets as bits over the 104 TotalSegmentator v1 classes.

    Bit ``j`` (``np.packbits`` order) of a row is class
    :data:`cbirlib.structures.TOTALSEG_V1_CLASSES` ``[j]``.

    Parameters
    ----------
    labels
        Per-slice labels; their columns must be v1 fine class names.
    strict
        Raise on a column that is not a v1 class (default); with ``False`` such columns
        are left out.

    Returns
    -------
    bits, known
        ``(n_slices, 13)`` uint8 packed presence, and ``(13,)`` uint8 packed set of the
        classes the labels cover (a class not covered is unknown, not absent).

    Raises
    ------
    LabelsError
        A column that is not a v1 class name (with ``strict=True``).

    Examples
    --------
    >>> labels = SliceLabels(("liver", "spleen"), np.array([[True, False], [True, True]]))
    >>> bits, known = pack_labels(labels)
    >>> bits.shape, unpack_labels(bits, known).structures(1) == {"liver", "spleen"}
    ((2, 13), True)
    """

    position = {name: j for j, name in enumerate(TOTALSEG_V1_CLASSES)}
    unknown = [n for n in labels.names if n not in position]
    if unknown and strict:
        raise LabelsError(
            f"labels name {len(unknown)} structure(s) that are not TotalSegmentator v1 "
            f"classes ({', '.join(unknown[:5])}); an index stores the 104 v1 classes only"
        )
    full = np.zeros((len(labels), len(TOTALSEG_V1_CLASSES)), bool)
    covered = np.zeros(len(TOTALSEG_V1_CLASSES), bool)
    for i, name in enumerate(labels.names):
        if name in position:
            full[:, position[name]] = labels.present[:, i]
            covered[position[name]] = True
    return np.packbits(full, axis=1), np.packbits(covered)


def unpack_labels(bits: npt.ArrayLike, known: npt.ArrayLike | None = None) -> SliceLabels:
    """The :class:`SliceLabels` of packed bits (see :func:`pack_labels`).

    Columns are the classes set in ``known`` (all 104 v1 classes when None), in v1
    order.
    """

    n_classes = len(TOTALSEG_V1_CLASSES)
    packed = np.asarray(bits, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != PACKED_BYTES:
        raise LabelsError(f"packed labels must have shape (n, {PACKED_BYTES}), got {packed.shape}")
    present = np.unpackbits(packed, axis=1, count=n_classes).astype(bool)
    cols = (
        np.arange(n_classes)
        if known is None
        else np.flatnonzero(np.unpackbits(np.asarray(known, np.uint8), count=n_classes))
    )
    return SliceLabels(tuple(TOTALSEG_V1_CLASSES[j] for j in cols), present[:, cols])
