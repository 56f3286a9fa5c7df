"""Test-wide settings and fixtures: offline model hubs, no GUI backend, isolated plugins.

Shared fakes and builders are in ``tests/fakes.py``; shared fixtures are here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Model hubs are unreachable in tests: fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def _plugin_state() -> tuple[bool, frozenset[tuple[str | None, int]]]:
    from cbirlib import plugins

    registered = frozenset((name, id(plugin)) for name, plugin in plugins.pm.list_name_plugin())
    return plugins._loaded, registered


@pytest.fixture(autouse=True)
def isolated_plugins() -> Iterator[None]:
    """No test leaks plugins into the next: what it registers or loads is undone after it.

    Hook objects the test registered directly are unregistered and the entry points are
    forgotten (:func:`cbirlib.plugins.reset_plugins`), so the next lookup reloads the
    installed plugins (baseline, timm, ...). Only when the test changed the plugin
    state: the entry points of an unchanged state are kept loaded, at no cost.
    """
    from cbirlib import plugins

    before = _plugin_state()
    yield
    if _plugin_state() == before:
        return
    kept = {plugin_id for _, plugin_id in before[1]}
    for plugin in list(plugins.pm.get_plugins()):
        if id(plugin) not in kept and plugins.pm.is_registered(plugin):
            plugins.pm.unregister(plugin)
    plugins.reset_plugins()


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugins reloaded at the test's first lookup, from the entry points it sets up.

    For tests that patch ``importlib.metadata.entry_points`` or ``CBIRLIB_PLUGINS``;
    a broken plugin warns (``CBIRLIB_STRICT_PLUGINS`` unset) unless the test sets it.
    """
    from cbirlib import plugins

    monkeypatch.delenv("CBIRLIB_STRICT_PLUGINS", raising=False)
    plugins.reset_plugins()
