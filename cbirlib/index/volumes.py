"""What every index knows per volume: its id, slice count, modality and source.

:class:`VolumeRecords` holds the accessors that :class:`~cbirlib.index.BaseIndex`
(SliceIndex, ExactIndex) and :class:`~cbirlib.index.MilvusIndex` share; each index fills
the dictionaries and defines ``_span``.
"""

from __future__ import annotations

import threading

from cbirlib.modality import UNKNOWN
from cbirlib.provenance import Source

__all__ = ["VolumeRecords"]


class VolumeRecords:
    """Volume ids, counts, modalities and sources of an index (a mixin).

    ``len(index)`` counts indexed **slices**; ``volume_id in index`` and
    :attr:`n_volumes` are about **volumes**.
    """

    _spans: dict[str, tuple[int, int]]  # id -> (first label, number of slices)
    _modality: dict[str, str]  # id -> modality code (absent: "unknown")
    _source: dict[str, Source]  # id -> provenance (absent: unknown)
    _n_entries: int  # indexed slices
    _lock: threading.RLock

    def _span(self, volume_id: str) -> tuple[int, int]:
        """``(first label, n)`` of a volume; :class:`VolumeNotInIndexError` otherwise."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self._n_entries

    def __contains__(self, volume_id: object) -> bool:
        return volume_id in self._spans

    @property
    def volume_ids(self) -> list[str]:
        """Ids of the indexed volumes, in insertion order."""
        return list(self._spans)

    @property
    def n_volumes(self) -> int:
        """Number of indexed volumes."""
        return len(self._spans)

    @property
    def modalities(self) -> dict[str, str]:
        """Volume id -> modality (``"CT"``, ``"MR"``, ...; ``"unknown"``: not recorded).

        Indexes saved before modalities were recorded load with ``"unknown"`` for every
        volume.
        """
        with self._lock:
            return {vid: self._modality.get(vid, UNKNOWN) for vid in self._spans}

    def modality(self, volume_id: str) -> str:
        """The modality recorded for one volume (``"unknown"`` when none was).

        Raises
        ------
        VolumeNotInIndexError
            ``volume_id`` is not in the index.
        """
        self._span(volume_id)
        return self._modality.get(volume_id, UNKNOWN)

    @property
    def sources(self) -> dict[str, Source | None]:
        """Volume id -> where it was read from (:class:`~cbirlib.provenance.Source`).

        ``None`` for a volume added without a source, and for every volume of an index
        saved before sources were recorded.
        """
        with self._lock:
            return {vid: self._source.get(vid) for vid in self._spans}

    def source(self, volume_id: str) -> Source | None:
        """The source recorded for one volume (``None``: unknown).

        Raises
        ------
        VolumeNotInIndexError
            ``volume_id`` is not in the index.
        """
        self._span(volume_id)
        return self._source.get(volume_id)
