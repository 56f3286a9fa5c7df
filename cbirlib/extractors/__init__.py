"""Built-in extractors, registered through cbirlib's own ``cbirlib`` entry points.

``baseline``
    :class:`cbirlib.extractors.baseline.BaselineExtractor`, a classical descriptor that
    needs no weights (the offline default).
``timm``
    ``timm:<model>``: any timm model (:mod:`cbirlib.extractors.timm`), through
    :class:`TimmExtractor`, the public base class of timm-backed plugins.
``study``
    The study's pretrained models, ``dinov1``, ``dinov2``, ``radimagenet-resnet50``,
    ``radimagenet-swin`` and ``fractaldb-resnet50`` (:mod:`cbirlib.extractors.study`).

Create them with :func:`cbirlib.create_extractor`. ``from cbirlib.extractors import
TimmExtractor`` loads its module on first use; nothing else is imported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_LAZY: dict[str, str] = {"TimmExtractor": "cbirlib.extractors.timm"}

__all__ = ["TimmExtractor"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cbirlib.extractors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cbirlib.extractors.timm import TimmExtractor
