"""Data sets: the TotalSegmentator layout, synthetic phantoms written in it, volumes in folders.

And copies of a volume at another slice thickness (:func:`reslice_z`).

Examples
--------
>>> from cbirlib.datasets import TotalSegmentator, make_phantoms
>>> TotalSegmentator.__name__, make_phantoms.__name__
('TotalSegmentator', 'make_phantoms')
"""

from __future__ import annotations

from cbirlib.datasets.folders import check_split_root, discover_volumes, open_volume
from cbirlib.datasets.phantom import (
    FIELDS_OF_VIEW,
    REALISM_PRESETS,
    PhantomFacts,
    PhantomRealism,
    make_phantoms,
    phantom_facts,
)
from cbirlib.datasets.reslice import reslice_z
from cbirlib.datasets.totalsegmentator import SPLITS, TotalSegmentator

__all__ = [
    "FIELDS_OF_VIEW",
    "REALISM_PRESETS",
    "SPLITS",
    "PhantomFacts",
    "PhantomRealism",
    "TotalSegmentator",
    "check_split_root",
    "discover_volumes",
    "make_phantoms",
    "open_volume",
    "phantom_facts",
    "reslice_z",
]
