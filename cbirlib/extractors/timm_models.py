"""Deprecated: the old home of the timm-backed extractors (kept for cbirlib 0.2 only).

``TimmExtractor``, ``RANDOM`` and ``CHANNELS_LAST_CPU_FAMILIES`` moved to
:mod:`cbirlib.extractors.timm` (``TimmExtractor`` is also ``cbirlib.TimmExtractor``), the
study's five models to :mod:`cbirlib.extractors.study`. Each old name still works here
and raises a :class:`DeprecationWarning` naming its new home when it is imported
(``from cbirlib.extractors.timm_models import TimmExtractor``).

The module also stays a valid ``cbirlib`` plugin registering both, for an installation
whose entry-point metadata predates the split (``timm = cbirlib.extractors.timm_models``,
until ``pip install`` runs again); loading it that way does not warn.
"""

from __future__ import annotations

import warnings
from typing import Any

from cbirlib.extractors import study as _study
from cbirlib.extractors import timm as _timm
from cbirlib.hookspecs import Register, hookimpl

_MOVED: dict[str, str] = {
    **{name: "cbirlib.extractors.timm" for name in _timm.__all__ if name != "register_extractors"},
    **{
        name: "cbirlib.extractors.study" for name in _study.__all__ if name != "register_extractors"
    },
}


def __getattr__(name: str) -> Any:
    target = _MOVED.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"cbirlib.extractors.timm_models is deprecated and goes in the next release; "
        f"import {name} from {target}",
        DeprecationWarning,
        stacklevel=2,
    )
    module = _timm if target == _timm.__name__ else _study
    return getattr(module, name)


@hookimpl
def register_extractors(register: Register) -> None:
    """Register the ``timm:`` family and the study's models (the pre-split plugin)."""
    _timm.register_extractors(register)
    _study.register_extractors(register)


__all__ = ["register_extractors"]
