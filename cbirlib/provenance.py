"""Where a volume came from: its :class:`Source`, recorded in the index per volume.

A source holds the file or DICOM folder a volume was read from, as a path relative to a
data root (and that root), the subject id of a data set, and for DICOM the series number
and the short form of its ``SeriesInstanceUID`` (its last digits, enough to tell the
series of one folder apart). **No patient data**: no DICOM tag other than the series
number and UID is read, so a source is only as anonymous as the paths themselves (a
folder named after a patient ends up in the source; choose the folder names, or pass
pseudonymous paths).

Examples
--------
>>> from cbirlib.provenance import Source
>>> s = Source.from_file("/data/ts/s0011/ct.nii.gz", root="/data/ts", subject="s0011")
>>> s.path, s.root, s.subject
('s0011/ct.nii.gz', '/data/ts', 's0011')
>>> s.resolve().as_posix(), s.resolve("/mnt/copy").as_posix()
('/data/ts/s0011/ct.nii.gz', '/mnt/copy/s0011/ct.nii.gz')
>>> Source.from_dict(s.to_dict()) == s
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["Source"]


@dataclass(frozen=True)
class Source:
    """The provenance of one volume (never a patient identifier).

    Parameters
    ----------
    path
        The image file or DICOM folder, POSIX-style: relative to ``root`` when a root is
        known, else absolute. ``None``: unknown.
    root
        The absolute data root that ``path`` is relative to (``None``: ``path`` is
        absolute, or unknown).
    subject
        The subject id within a data set (the TotalSegmentator folder name), if any.
    series_number
        DICOM ``SeriesNumber`` of the series read, if any.
    series_uid
        The short form of its ``SeriesInstanceUID`` (``"...12345678"``), if any.
    """

    path: str | None = None
    root: str | None = None
    subject: str | None = None
    series_number: int | None = None
    series_uid: str | None = None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        subject: str | None = None,
        series_number: int | None = None,
        series_uid: str | None = None,
    ) -> Source:
        """The source of a file or folder, relative to ``root`` when it lies under it."""
        return cls(
            path=Path(path).absolute().as_posix(),
            subject=subject,
            series_number=series_number,
            series_uid=series_uid,
        ).relative_to(root)

    def relative_to(self, root: str | os.PathLike[str] | None) -> Source:
        """This source with ``path`` relative to ``root`` (unchanged when not under it)."""
        if root is None or self.path is None:
            return self
        absolute = self.resolve()
        base = Path(root).absolute()
        if absolute is None:
            return self
        try:
            rel = absolute.relative_to(base)
        except ValueError:
            return replace(self, path=absolute.as_posix(), root=None)
        return replace(self, path=rel.as_posix(), root=base.as_posix())

    def resolve(self, root: str | os.PathLike[str] | None = None) -> Path | None:
        """The file or folder: ``path`` under ``root`` (default: the recorded root).

        An absolute ``path`` is returned as it is; ``None`` when the path is unknown.
        """
        if self.path is None:
            return None
        path = PurePosixPath(self.path)
        if path.is_absolute():
            return Path(path)
        base = root if root is not None else self.root
        return Path(base) / path if base is not None else Path(path)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready mapping."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Source:
        """The inverse of :meth:`to_dict` (unknown keys are ignored, types are checked).

        Raises
        ------
        TypeError
            A field of the wrong type.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            want: type = int if f.name == "series_number" else str
            if value is not None and (not isinstance(value, want) or isinstance(value, bool)):
                raise TypeError(f"source field {f.name!r} must be {want.__name__} or null")
            values[f.name] = value
        return cls(**values)
