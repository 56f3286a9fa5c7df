"""Small text helpers for error messages: close-match suggestions.

Examples
--------
>>> did_you_mean("livr", ["liver", "spleen", "lung"])
"; did you mean 'liver'?"
>>> did_you_mean("xyz", ["liver"])
''
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (case-insensitive), in their own spelling."""
    by_fold: dict[str, str] = {}
    for c in candidates:
        by_fold.setdefault(str(c).casefold(), str(c))
    close = difflib.get_close_matches(str(name).casefold(), list(by_fold), n=n, cutoff=0.6)
    return [by_fold[c] for c in close]


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'liver'?"`` for the close matches of ``name``, or ``""``."""
    close = close_matches(name, candidates, n)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
