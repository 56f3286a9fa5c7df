"""The plugin host: loading plugins, the extractor registry, ``create_extractor``.

Plugins are found through entry points in the ``cbirlib`` group (cbirlib's own built-in
extractors included) and loaded lazily, on the first call to :func:`create_extractor`
or :func:`list_extractors` (or an explicit :func:`load_plugins`).

Environment variables, read when plugins are loaded:

``CBIRLIB_PLUGINS``
    Comma-separated entry-point names to load; set but empty loads none; unset loads all.
``CBIRLIB_STRICT_PLUGINS=1``
    A plugin that fails to load, or a name registered twice, raises :class:`PluginError`
    instead of a :class:`PluginWarning`.

Name clashes: when two plugins register the same name (or alias), the first one loaded
keeps it and a :class:`PluginWarning` names both. cbirlib's own entry points load first.

Tests (or applications) can register a hook object directly with ``pm.register(obj)``
and remove it with ``pm.unregister(obj)``; the registry is rebuilt on every lookup, so
there is no cache to clear. :func:`reset_plugins` forgets the entry points loaded so far.

Examples
--------
>>> from cbirlib.plugins import create_extractor, list_extractors
>>> [info.name for info in list_extractors("baseline")]
['baseline']
>>> create_extractor("baseline").dim > 0
True
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import inspect
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

import cbirlib.hookspecs as hookspecs
from cbirlib._text import close_matches
from cbirlib.errors import CbirError, ExtractorError, PluginError, UnknownExtractorError
from cbirlib.extractor import Extractor

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cbirlib"
ENV_PLUGINS = "CBIRLIB_PLUGINS"
ENV_STRICT = "CBIRLIB_STRICT_PLUGINS"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*:?$")

pm = pluggy.PluginManager("cbirlib")
pm.add_hookspecs(hookspecs)

_lock = threading.RLock()
_loaded = False
_entry_point_plugins: list[str] = []


class PluginWarning(UserWarning):
    """A plugin was skipped or one of its registrations was ignored."""


@dataclass(frozen=True)
class ExtractorInfo:
    """One registered extractor, as listed by :func:`list_extractors`.

    Attributes
    ----------
    name
        Registry name; a family name ends with ``":"`` (``"timm:"``).
    aliases
        Other names that resolve to it.
    description
        One line.
    plugin
        Name of the plugin that registered it.
    weights_available
        Whether its weights are present locally: ``True`` (present, or none needed),
        ``False`` (missing, or the plugin's check failed) or ``None``: unknown, the
        plugin registered no ``weights_available`` check. Unknown is never taken as
        available (``cbirlib extractors`` shows it as ``unknown``, ``--json`` as
        ``null``).
    """

    name: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""
    weights_available: bool | None = None

    @property
    def is_family(self) -> bool:
        """True for a ``family:`` registration (created as ``family:variant``)."""
        return self.name.endswith(":")


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[..., Any]
    aliases: tuple[str, ...]
    description: str
    plugin: str
    weights_available: Callable[[], bool] | None = field(default=None)


def _strict() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes", "on")


def _problem(message: str, exc: BaseException | None = None) -> None:
    """Warn about a plugin problem, or raise PluginError in strict mode."""
    if _strict():
        raise PluginError(message) from exc
    warnings.warn(message, PluginWarning, stacklevel=3)


def _selected_names() -> set[str] | None:
    value = os.environ.get(ENV_PLUGINS)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def load_plugins() -> None:
    """Load the plugins advertised through ``cbirlib`` entry points (once).

    Each entry point is loaded on its own: one that fails is skipped with a
    :class:`PluginWarning` naming it and the error (a :class:`PluginError` under
    ``CBIRLIB_STRICT_PLUGINS=1``). ``CBIRLIB_PLUGINS`` selects which ones load.
    Calling it again does nothing until :func:`reset_plugins`.
    """
    global _loaded
    with _lock:
        if _loaded:
            return
        selected = _selected_names()
        eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        # cbirlib's own plugins first, so that built-in names win clashes
        eps.sort(key=lambda ep: not ep.value.startswith("cbirlib."))
        if selected is not None:
            missing = selected - {ep.name for ep in eps}
            if missing:
                _problem(
                    f"{ENV_PLUGINS} names unknown plugin(s) {sorted(missing)}; "
                    f"installed: {sorted({ep.name for ep in eps})}"
                )
        for ep in eps:
            if selected is not None and ep.name not in selected:
                continue
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                _problem(
                    f"cbirlib plugin {ep.name!r} ({ep.value}) failed to load and was "
                    f"skipped: {type(exc).__name__}: {exc}",
                    exc,
                )
                continue
            _entry_point_plugins.append(ep.name)
            logger.debug("loaded cbirlib plugin %r from %s", ep.name, ep.value)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            _problem(f"a cbirlib plugin implements an unknown hook: {exc}", exc)
        _loaded = True


def reset_plugins() -> None:
    """Unregister the plugins loaded from entry points; the next lookup reloads them.

    Hook objects registered directly with ``pm.register`` are left alone.
    """
    global _loaded
    with _lock:
        for name in _entry_point_plugins:
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
        _entry_point_plugins.clear()
        _loaded = False


def _check_registration(
    name: object,
    factory: object,
    aliases: object,
    description: object,
    weights_available: object,
) -> tuple[str, ...]:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PluginError(
            f"invalid extractor name {name!r}: use letters, digits, '_', '-', '.' "
            "(and a trailing ':' for a family)"
        )
    if not callable(factory):
        raise PluginError(f"extractor {name!r}: factory {factory!r} is not callable")
    if isinstance(aliases, str) or not isinstance(aliases, Sequence):
        raise PluginError(f"extractor {name!r}: aliases must be a list of names, got {aliases!r}")
    for alias in aliases:
        if not isinstance(alias, str) or not _NAME_RE.match(alias) or alias.endswith(":"):
            raise PluginError(f"extractor {name!r}: invalid alias {alias!r}")
    if not isinstance(description, str):
        raise PluginError(f"extractor {name!r}: description must be a string")
    if weights_available is not None and not callable(weights_available):
        raise PluginError(f"extractor {name!r}: weights_available must be callable or None")
    return tuple(aliases)


def _registry() -> dict[str, _Entry]:
    """Every registered name and alias -> its entry (built from the hooks, each time)."""
    load_plugins()
    table: dict[str, _Entry] = {}
    for impl in pm.hook.register_extractors.get_hookimpls():
        plugin_name = impl.plugin_name
        entries: list[_Entry] = []

        def register(
            name: str,
            factory: Callable[..., Any],
            *,
            aliases: Sequence[str] = (),
            description: str = "",
            weights_available: Callable[[], bool] | None = None,
            _entries: list[_Entry] = entries,
            _plugin: str = plugin_name,
        ) -> None:
            alias_tuple = _check_registration(
                name, factory, aliases, description, weights_available
            )
            _entries.append(
                _Entry(name, factory, alias_tuple, description, _plugin, weights_available)
            )

        try:
            impl.function(register=register)
            keys = [k for e in entries for k in (e.name, *e.aliases)]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise PluginError(f"names registered more than once: {dupes}")
        except Exception as exc:
            _problem(
                f"cbirlib plugin {plugin_name!r} failed to register its extractors and was "
                f"skipped: {type(exc).__name__}: {exc}",
                exc,
            )
            continue
        for entry in entries:
            for key in (entry.name, *entry.aliases):
                if key in table:
                    _problem(
                        f"extractor name {key!r} from plugin {entry.plugin!r} is already "
                        f"registered by plugin {table[key].plugin!r}; keeping the first"
                    )
                    continue
                table[key] = entry
    return table


def _weights_available(entry: _Entry) -> bool | None:
    """The entry's weights check: None (unknown) when the plugin registered none."""
    if entry.weights_available is None:
        return None
    try:
        return bool(entry.weights_available())
    except Exception as exc:
        logger.debug("weights_available() of %r failed: %s", entry.name, exc)
        return False


def list_extractors(pattern: str | None = None) -> list[ExtractorInfo]:
    """The registered extractors, sorted by name.

    Parameters
    ----------
    pattern
        Keep names (or aliases) that match: a glob when it has ``*?[``, else a
        case-insensitive substring.

    Examples
    --------
    >>> [info.name for info in list_extractors("base*")]
    ['baseline']
    """
    entries = {id(e): e for e in _registry().values()}.values()
    infos = []
    for entry in sorted(entries, key=lambda e: e.name):
        names = (entry.name, *entry.aliases)
        if pattern is not None:
            if any(ch in pattern for ch in "*?["):
                ok = any(fnmatch.fnmatchcase(n, pattern) for n in names)
            else:
                ok = any(pattern.lower() in n.lower() for n in names)
            if not ok:
                continue
        infos.append(
            ExtractorInfo(
                name=entry.name,
                aliases=entry.aliases,
                description=entry.description,
                plugin=entry.plugin,
                weights_available=_weights_available(entry),
            )
        )
    return infos


def _unknown(name: str, table: dict[str, _Entry]) -> UnknownExtractorError:
    known = sorted(k + "<variant>" if k.endswith(":") else k for k in table)
    close = close_matches(name, table)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownExtractorError(
        f"no extractor named {name!r}.{hint} Known: {', '.join(known) or '(none)'}"
    )


def create_extractor(name: str, **kwargs: Any) -> Extractor:
    """Create a registered extractor by name.

    Parameters
    ----------
    name
        A registered name or alias, or ``family:variant`` for a family registration
        (``"timm:resnet18"``).
    **kwargs
        Passed to the extractor's factory (e.g. ``device``, ``batch_size``).
        ``create_extractor(**extractor.to_config())`` rebuilds an extractor.

    Raises
    ------
    UnknownExtractorError
        No extractor has that name; the message lists the known ones.
    ExtractorError
        The factory rejected the arguments or failed.

    Examples
    --------
    >>> ex = create_extractor("baseline")
    >>> create_extractor(**ex.to_config()).to_config() == ex.to_config()
    True
    """
    if not isinstance(name, str):
        raise UnknownExtractorError(f"extractor name must be a string, got {name!r}")
    table = _registry()
    entry = table.get(name)
    call_kwargs = dict(kwargs)
    if entry is None or entry.name.endswith(":"):
        family, sep, variant = name.partition(":")
        entry = table.get(family + ":") if sep and variant else None
        if entry is None:
            raise _unknown(name, table)
        call_kwargs["variant"] = variant
    try:
        inspect.signature(entry.factory).bind(**call_kwargs)
    except TypeError as exc:
        try:
            params = ", ".join(inspect.signature(entry.factory).parameters)
        except (TypeError, ValueError):  # pragma: no cover - builtins without signature
            params = "?"
        raise ExtractorError(
            f"extractor {name!r} does not accept {sorted(kwargs)}: {exc}; parameters: {params}"
        ) from None
    except ValueError:  # pragma: no cover - no signature available; just call it
        pass
    try:
        extractor = entry.factory(**call_kwargs)
    except CbirError:
        raise
    except Exception as exc:
        raise ExtractorError(
            f"creating extractor {name!r} (plugin {entry.plugin!r}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(extractor, Extractor):
        raise PluginError(
            f"factory of extractor {name!r} (plugin {entry.plugin!r}) returned "
            f"{type(extractor).__name__}, not a cbirlib.Extractor"
        )
    return extractor


__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_PLUGINS",
    "ENV_STRICT",
    "ExtractorInfo",
    "PluginInfo",
    "PluginWarning",
    "create_extractor",
    "list_extractors",
    "list_plugins",
    "load_plugins",
    "pm",
    "reset_plugins",
]


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin, as listed by :func:`list_plugins`.

    Attributes
    ----------
    name
        Its name: the entry-point name, or the name it was registered with.
    version
        The version of the distribution that advertises it (None for a hook object
        registered directly, or a distribution without metadata).
    module
        The entry point's target (``package.module``), or the hook object's module.
    extractors
        The extractor names it registered (aliases left out), sorted.
    """

    name: str
    version: str | None
    module: str
    extractors: tuple[str, ...]


def list_plugins() -> list[PluginInfo]:
    """The loaded plugins with their versions and the extractors each registered.

    Examples
    --------
    >>> builtin = {p.name: p for p in list_plugins()}["baseline"]
    >>> builtin.module, builtin.extractors
    ('cbirlib.extractors.baseline', ('baseline',))
    """
    by_plugin: dict[str, set[str]] = {}
    for entry in _registry().values():
        by_plugin.setdefault(entry.plugin, set()).add(entry.name)
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if name is None:  # pragma: no cover - pluggy names every registered plugin
            continue
        ep = eps.get(name) if name in _entry_point_plugins else None
        dist = getattr(ep, "dist", None)
        version = str(dist.version) if dist is not None else None
        if ep is not None:
            module = str(ep.value)
        else:
            module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
        infos.append(PluginInfo(name, version, module, tuple(sorted(by_plugin.get(name, ())))))
    return sorted(infos, key=lambda info: info.name)
