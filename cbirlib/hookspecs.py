"""Plugin hook specifications (pluggy project ``"cbirlib"``).

A plugin is a module (or any object) with functions marked ``@hookimpl``, exposed through
an entry point in the ``cbirlib`` group of its distribution::

    [project.entry-points.cbirlib]
    myplugin = "cbirlib_myplugin"

and, in ``cbirlib_myplugin.py``::

    from cbirlib import hookimpl

    @hookimpl
    def register_extractors(register):
        register("myextractor", MyExtractor, aliases=["mine"],
                 description="what it is", weights_available=lambda: True)

cbirlib's own extractors are registered the same way.

Examples
--------
>>> from cbirlib.hookspecs import hookimpl
>>> @hookimpl
... def register_extractors(register):
...     pass
>>> hasattr(register_extractors, "cbirlib_impl")
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("cbirlib")
hookimpl = pluggy.HookimplMarker("cbirlib")


class Register(Protocol):
    """The ``register`` callable passed to :func:`register_extractors`."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        aliases: Sequence[str] = (),
        description: str = "",
        weights_available: Callable[[], bool] | None = None,
    ) -> None: ...


@hookspec
def register_extractors(register: Register) -> None:
    """Register extractors by calling ``register`` once per extractor.

    Parameters
    ----------
    register
        ``register(name, factory, *, aliases=(), description="", weights_available=None)``.

        ``name``
            Registry name (letters, digits, ``_ - .``), e.g. ``"dinov2"``. A name that
            ends with ``":"`` (e.g. ``"timm:"``) registers a *family*:
            ``create_extractor("timm:resnet18", **kw)`` then calls
            ``factory(variant="resnet18", **kw)``.
        ``factory``
            Callable returning a :class:`cbirlib.Extractor`; called with the keyword
            arguments given to ``create_extractor`` (the ``to_config()`` dict without
            ``"name"``). It must not load weights (extractors load lazily).
        ``aliases``
            Other names for the same extractor.
        ``description``
            One line for ``list_extractors``.
        ``weights_available``
            Cheap check (no download) whether the weights are present locally; an
            extractor that needs no weights passes ``lambda: True``. ``None`` (omitted)
            means unknown: the extractor is listed with weights ``unknown``, never as
            available.
    """


__all__ = ["Register", "hookimpl", "hookspec", "register_extractors"]
