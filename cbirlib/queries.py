"""Query volumes: region queries cut around a structure, and queries given by embeddings.

:func:`region_query` cuts the sub-volume around one structure out of a labelled volume
(a :class:`RegionVolume`, whose :attr:`~cbirlib.volume.Volume.origin` says where it came
from). An :class:`EmbeddedQuery` is a query known by its slice embeddings (and blank-slice
flags) instead of its voxels: :class:`~cbirlib.search.SliceSearch` searches its rows
without calling the extractor, and its region queries reuse rows of its embeddings.

Examples
--------
>>> import numpy as np
>>> from cbirlib.labels import SliceLabels
>>> from cbirlib.volume import Volume
>>> from cbirlib.queries import EmbeddedQuery, region_query
>>> liver = np.zeros((6, 4, 4), bool); liver[2:4] = True
>>> vol = Volume("s1", np.zeros((6, 4, 4), np.float32),
...              labels=SliceLabels.from_masks({"liver": liver}))
>>> q = region_query(vol, "liver")
>>> q.id, q.n_slices, q.source_slices.tolist()
('s1:liver', 2, [2, 3])
>>> emb = EmbeddedQuery.of(vol, np.eye(6, 3, dtype=np.float32))
>>> region = region_query(emb, "liver")
>>> region.embeddings.tolist(), region.origin.first_slice
([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], 2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from cbirlib._text import did_you_mean
from cbirlib.errors import (
    CbirError,
    EvaluationError,
    ExtractorError,
    InvalidVolumeError,
    StructureNotPresentError,
    UnknownStructureError,
)
from cbirlib.informative import slice_flags
from cbirlib.modality import effective_modality
from cbirlib.structures import (
    COARSE_GROUPS,
    coarse_hint,
    match_name,
    resolve_structure,
)
from cbirlib.volume import RegionOrigin, Volume

__all__ = ["EmbeddedQuery", "EmbeddedRegion", "RegionVolume", "region_query"]

_Q = TypeVar("_Q", bound="EmbeddedQuery")


@dataclass(frozen=True, eq=False, repr=False)
class RegionVolume(Volume):
    """A region query: the slab of ``source_id`` around ``structure``.

    A :class:`~cbirlib.volume.Volume` whose :attr:`~cbirlib.volume.Volume.origin` (a
    :class:`~cbirlib.volume.RegionOrigin`) is always set; the properties below read it.
    ``source_slices[i]`` is the index, in the source volume, of slice ``i`` of this one.

    Raises
    ------
    InvalidVolumeError
        Without an ``origin``.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.origin is None:
            raise InvalidVolumeError(
                f"RegionVolume {self.id!r} needs origin=RegionOrigin(source_id, structure, "
                "first_slice); region_query() sets it"
            )

    @property
    def region(self) -> RegionOrigin:
        """The :attr:`origin`, never ``None`` for a region query."""
        assert self.origin is not None  # checked in __post_init__
        return self.origin

    @property
    def source_id(self) -> str:
        """Id of the volume this slab was cut from."""
        return self.region.source_id

    @property
    def structure(self) -> str:
        """The structure the region query was made for."""
        return self.region.structure

    @property
    def first_slice(self) -> int:
        """Index, in the source volume, of this slab's first slice."""
        return self.region.first_slice

    @property
    def source_slices(self) -> npt.NDArray[np.int64]:
        """Indices of this volume's slices in the source volume."""
        return self.region.source_slices(self.n_slices)

    def __repr__(self) -> str:
        return (
            f"RegionVolume({self.id!r}, slices {self.first_slice}..."
            f"{self.first_slice + self.n_slices - 1} of {self.source_id!r})"
        )


def _structure_mask(
    volume: Volume, structure: str, groups: Mapping[str, str] | None = None
) -> npt.NDArray[np.bool_]:
    """Per-slice presence of a fine structure or a coarse region (any member)."""
    labels = volume.labels
    if labels is None:
        raise EvaluationError(
            f"volume {volume.id!r} has no labels; a region query for {structure!r} needs "
            "segmentation labels (Volume(..., labels=SliceLabels.from_masks(...)))"
        )

    region = match_name(structure, groups.values()) if groups is not None else None
    if groups is not None and region is not None:
        in_group = [name for name, group in groups.items() if group == region]
        cols = [labels.column(m) for m in in_group if m in labels.names]
        if cols:
            return np.asarray(labels.present[:, cols].any(axis=1), dtype=bool)
        if match_name(region, labels.names) is None:  # labels already grouped: the column
            raise UnknownStructureError(
                f"volume {volume.id!r}: none of the members of group {region!r} "
                f"({', '.join(in_group)}) is in its labels; they know "
                f"{', '.join(sorted(labels.names))}"
            )
    own = match_name(structure, labels.names)
    if own is not None:
        return labels.present[:, labels.column(own)].copy()
    try:
        _, members = resolve_structure(structure)
    except UnknownStructureError:
        members = ()
    cols = [labels.column(m) for m in members if m in labels.names]
    if not cols:
        grouping = COARSE_GROUPS if groups is None else groups
        candidates = (*labels.names, *grouping.values())
        listed = (
            f"its labels know {', '.join(sorted(labels.names))}"
            if len(labels.names) <= 12
            else f"its labels know {len(labels.names)} structures (labels.names)"
        )
        raise UnknownStructureError(
            f"volume {volume.id!r}: unknown structure {structure!r}"
            f"{did_you_mean(structure, candidates)}; {listed}; {coarse_hint(grouping)}"
            + (f" (members of {structure!r}: {', '.join(members)})" if members else "")
            + (
                ""
                if members
                else f"; a custom mask (segmentations/{structure}.nii.gz) is in the labels "
                f"only when loaded with TotalSegmentator.load(subject, custom=[{structure!r}])"
            )
        )
    return np.asarray(labels.present[:, cols].any(axis=1), dtype=bool)


def region_query(
    volume: Volume,
    structure: str,
    *,
    min_pixels: int | None = None,
    groups: Mapping[str, str] | None = None,
) -> RegionVolume:
    """The sub-volume of ``volume`` from the first to the last slice containing ``structure``.

    Parameters
    ----------
    volume
        A labelled query volume.
    structure
        A structure name of the volume's labels, or a coarse region name (present where
        any member is): a value of ``groups`` when given, else a region of the default
        grouping :data:`cbirlib.structures.COARSE_GROUPS`. A custom structure (a lesion
        or user mask of a subject's ``segmentations/`` folder) is a name of the labels
        when the volume was loaded with
        ``TotalSegmentator.load(subject, custom=[name])``.
    min_pixels
        Presence threshold. ``None`` uses the labels as built; the labels store presence
        only, so another threshold means rebuilding them with
        ``SliceLabels.from_masks(masks, min_pixels=...)``.
    groups
        Your fine -> coarse mapping (as given to :func:`cbirlib.evaluation.evaluate`);
        a ``structure`` that is one of its values is the union of its members.

    Returns
    -------
    RegionVolume
        A :class:`~cbirlib.volume.Volume` with id ``f"{volume.id}:{structure}"``, labels
        and z positions of the slab, and ``source_slices`` giving the original indices;
        for an :class:`EmbeddedQuery`, an :class:`EmbeddedRegion` holding the slab's rows
        of its embeddings and blank-slice flags.

    Raises
    ------
    UnknownStructureError
        If the name is not a known structure of the volume's labels.
    EvaluationError
        If the volume has no labels or does not contain the structure.
    """
    if min_pixels is not None and min_pixels != 1:
        raise EvaluationError(
            f"region_query(min_pixels={min_pixels}): labels of {volume.id!r} store presence "
            "only; rebuild them with SliceLabels.from_masks(masks, min_pixels=...) instead"
        )
    present = _structure_mask(volume, structure, groups)
    where = np.flatnonzero(present)
    if where.size == 0:
        assert volume.labels is not None
        found = sorted(volume.labels.volume_structures())
        raise StructureNotPresentError(
            f"volume {volume.id!r} does not contain {structure!r}; it contains "
            f"{', '.join(found) if found else 'no labelled structure'}"
        )
    first, last = int(where[0]), int(where[-1])
    origin = RegionOrigin(volume.id, structure, first)
    if isinstance(volume, EmbeddedQuery):  # rows of the source's embeddings
        part = volume.slab(first, last + 1, id=f"{volume.id}:{structure}")
        region = replace(part, origin=origin, source=None)  # as a RegionVolume has none
        flags = volume.informative
        return EmbeddedRegion.of(
            region,
            volume.embeddings[first : last + 1],
            informative=flags[first : last + 1] if flags is not None else None,
        )
    slab = volume.slab(first, last + 1)
    modality = effective_modality(volume.modality, volume.array)  # as its source: not the
    if modality != "CT":  # slab's own guess; windowed by its source's percentiles
        origin = replace(origin, window_percentiles=volume.percentile_bounds())
    return RegionVolume(
        id=f"{volume.id}:{structure}",
        array=slab.array,
        spacing=slab.spacing,
        z_positions=slab.z_positions,
        labels=slab.labels,
        modality=modality,
        affine=slab.affine,
        origin=origin,
    )


@dataclass(frozen=True, eq=False, repr=False)
class EmbeddedQuery(Volume):
    """A query given by its slice embeddings (one row per slice) instead of its voxels.

    :class:`~cbirlib.search.SliceSearch` takes the rows of the slices it searches from
    :attr:`embeddings` (L2-normalised there) and the blank-slice flags from
    :attr:`informative`, and calls no extractor; everything else (id, labels, z
    positions, :attr:`~cbirlib.volume.Volume.origin`) is read as from any volume.
    :func:`region_query` of an embedded query gives an :class:`EmbeddedRegion` whose
    embeddings are rows of these. That holds for extractors that embed every slice on
    its own (every 2D slice model), so that a slab's embeddings are its source's rows.

    Build one with :meth:`embed` (embeds a volume once and lets its voxels go) or
    :meth:`of` (embeddings computed elsewhere). The embeddings must come from the
    extractor the searched index was built with.

    Parameters
    ----------
    embeddings
        ``(n_slices, dim)`` slice embeddings.
    informative
        ``(n_slices,)`` bool, ``False`` for blank slices (see
        :mod:`cbirlib.informative`); ``None``: every slice is informative.

    Raises
    ------
    InvalidVolumeError
        Embeddings that are not one finite row per slice, or flags of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.volume import Volume
    >>> vol = Volume("q", np.ones((3, 8, 8), np.float32), modality="CT")
    >>> q = EmbeddedQuery.of(vol, np.ones((3, 4)), informative=[True, True, False])
    >>> q.n_slices, q.embeddings.shape, q.array.shape, q.modality
    (3, (3, 4), (3, 1, 1), 'CT')
    """

    embeddings: npt.NDArray[np.float32] = field(default=None)  # type: ignore[arg-type]
    informative: npt.NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embeddings is None:
            raise InvalidVolumeError(
                f"EmbeddedQuery {self.id!r} needs embeddings=(n_slices, dim) rows; build it "
                "with EmbeddedQuery.of(volume, embeddings) or EmbeddedQuery.embed(volume, "
                "extractor)"
            )
        emb = np.asarray(self.embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != self.n_slices or emb.shape[1] < 1:
            raise InvalidVolumeError(
                f"query {self.id!r}: embeddings of shape {emb.shape}; expected "
                f"({self.n_slices}, dim), one row per slice"
            )
        if not np.isfinite(emb).all():
            raise InvalidVolumeError(f"query {self.id!r}: embeddings hold NaN or infinite values")
        object.__setattr__(self, "embeddings", emb)
        if self.informative is not None:
            flags = np.asarray(self.informative)
            if flags.shape != (self.n_slices,) or flags.dtype != bool:
                raise InvalidVolumeError(
                    f"query {self.id!r}: informative must be ({self.n_slices},) bool, got "
                    f"{flags.dtype} of shape {flags.shape}"
                )
            object.__setattr__(self, "informative", flags)

    @classmethod
    def of(
        cls: type[_Q],
        volume: Volume,
        embeddings: npt.ArrayLike,
        *,
        informative: npt.ArrayLike | None = None,
    ) -> _Q:
        """``volume`` as an embedded query: its id, labels, geometry and origin, no voxels.

        The voxels are replaced by a ``(Z, 1, 1)`` zero view (no memory), and the
        modality by the one its window used (:func:`cbirlib.modality.effective_modality`:
        the guess, for an ``"unknown"`` one), since it cannot be guessed without voxels.

        Parameters
        ----------
        volume
            The query volume the embeddings belong to.
        embeddings
            ``(volume.n_slices, dim)``, one row per slice.
        informative
            ``(volume.n_slices,)`` bool blank-slice flags; ``None``: all informative.
        """
        placeholder = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (volume.n_slices, 1, 1))
        flags = None if informative is None else np.asarray(informative, dtype=bool)
        modality = (
            volume.modality  # no voxels left to guess from
            if isinstance(volume, EmbeddedQuery)
            else effective_modality(volume.modality, volume.array)
        )
        return cls(
            volume.id,
            placeholder,
            spacing=volume.spacing,
            z_positions=volume.z_positions,
            labels=volume.labels,
            modality=modality,
            affine=volume.affine,
            source=volume.source,
            origin=volume.origin,
            embeddings=np.asarray(embeddings, dtype=np.float32),
            informative=flags,
        )

    @classmethod
    def embed(cls: type[_Q], volume: Volume, extractor: Any) -> _Q:
        """Embed every slice of ``volume`` once, with its blank-slice flags, and drop the voxels.

        Parameters
        ----------
        volume
            The query volume.
        extractor
            The extractor the index was built with (``extract(volume)``; its
            ``informative_slices`` when it has one, else
            :func:`cbirlib.informative.slice_flags`' window).

        Raises
        ------
        ExtractorError
            The extractor failed or returned no ``(n_slices, dim)`` matrix.
        """
        try:
            emb = np.asarray(extractor.extract(volume), dtype=np.float32)
        except CbirError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise ExtractorError(f"embedding query {volume.id!r} failed: {exc}") from exc
        if emb.ndim != 2 or emb.shape[0] != volume.n_slices:
            raise ExtractorError(
                f"extractor returned shape {emb.shape} for {volume.n_slices} slices of "
                f"{volume.id!r}"
            )
        return cls.of(volume, emb, informative=slice_flags(extractor, volume))

    def _slab_fields(self, start: int, stop: int) -> dict[str, Any]:
        """The slab's rows of the embeddings and flags, with the other per-slice fields."""
        flags = self.informative
        return {
            **super()._slab_fields(start, stop),
            "embeddings": self.embeddings[start:stop],
            "informative": flags[start:stop] if flags is not None else None,
        }

    def __repr__(self) -> str:
        dim = self.embeddings.shape[1]
        return f"EmbeddedQuery({self.id!r}, {self.n_slices} slices of dim {dim}, {self.modality})"


@dataclass(frozen=True, eq=False, repr=False)
class EmbeddedRegion(EmbeddedQuery, RegionVolume):
    """A region query of an :class:`EmbeddedQuery`: rows of its source's embeddings.

    Both a :class:`RegionVolume` (``source_id``, ``structure``, ``first_slice``) and an
    :class:`EmbeddedQuery`; made by :func:`region_query`.
    """

    def __repr__(self) -> str:
        return (
            f"EmbeddedRegion({self.id!r}, slices {self.first_slice}..."
            f"{self.first_slice + self.n_slices - 1} of {self.source_id!r})"
        )
