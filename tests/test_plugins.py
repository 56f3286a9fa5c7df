"""Tests of the plugin host: entry points, hook registration, create/list extractors."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cbirlib import plugins
from cbirlib.errors import ExtractorError, PluginError, UnknownExtractorError
from cbirlib.extractor import Extractor
from cbirlib.extractors.baseline import BaselineExtractor
from cbirlib.hookspecs import Register, hookimpl
from cbirlib.plugins import (
    PluginWarning,
    create_extractor,
    list_extractors,
    load_plugins,
    pm,
)
from tests.fakes import BASELINE_EP, TinyNet, ct_volume, fake_entry_points


@pytest.fixture(autouse=True)
def no_entry_points(fresh_plugins: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reloaded plugins (conftest.py), from no entry point unless a test asks."""
    monkeypatch.setenv("CBIRLIB_PLUGINS", "")


@pytest.fixture
def register_hooks() -> Iterator[Callable[..., object]]:
    """Register hook objects directly; unregister them afterwards."""
    registered: list[object] = []

    def add(fn: Callable[[Register], None], name: str) -> object:
        plugin = type(name, (), {"register_extractors": staticmethod(hookimpl(fn))})
        pm.register(plugin, name=name)
        registered.append(plugin)
        return plugin

    yield add
    for plugin in registered:
        if pm.is_registered(plugin):
            pm.unregister(plugin)


def tiny_plugin(register: Register) -> None:
    register("tiny", TinyNet, aliases=["tiny-net"], description="test fixture, random init")


class RaisingEntryPoint:
    """An entry point whose load() raises, like a plugin with a broken import."""

    name = "exploding"
    value = "cbirlib_exploding:plugin"
    group = "cbirlib"

    def load(self) -> object:
        raise ImportError("No module named 'missing_dependency'")


def test_hook_object_registered_directly_is_found(register_hooks: Any) -> None:
    plugin = register_hooks(tiny_plugin, "tiny-plugin")
    infos = list_extractors()
    assert [(i.name, i.aliases, i.plugin) for i in infos] == [
        ("tiny", ("tiny-net",), "tiny-plugin")
    ]
    assert infos[0].weights_available is True
    ex = create_extractor("tiny-net", device="cpu", seed=1)
    assert isinstance(ex, TinyNet) and ex.seed == 1
    pm.unregister(plugin)
    with pytest.raises(UnknownExtractorError):
        create_extractor("tiny")


def test_real_baseline_entry_point_is_found() -> None:
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="cbirlib")}
    assert eps["baseline"].value == "cbirlib.extractors.baseline"


def test_baseline_loads_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBIRLIB_PLUGINS", "baseline")
    (info,) = list_extractors("baseline")
    assert info.plugin == "baseline" and "baseline" in info.description.lower()
    assert pm.get_plugin("baseline") is importlib.import_module("cbirlib.extractors.baseline")
    assert pm.get_plugin("timm") is None  # not selected
    assert isinstance(create_extractor("baseline"), BaselineExtractor)
    assert isinstance(create_extractor("classical"), BaselineExtractor)  # alias


def test_empty_plugin_selection_loads_none(monkeypatch: pytest.MonkeyPatch) -> None:
    called = []
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **kw: called.append(kw) or [BASELINE_EP]
    )
    load_plugins()
    assert list_extractors() == []
    assert pm.get_plugin("baseline") is None
    with pytest.raises(UnknownExtractorError, match=r"\(none\)"):
        create_extractor("baseline")


def test_broken_entry_point_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CBIRLIB_PLUGINS")
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        fake_entry_points(RaisingEntryPoint(), BASELINE_EP),  # type: ignore[arg-type]
    )
    with pytest.warns(PluginWarning, match=r"'exploding'.*missing_dependency"):
        load_plugins()
    assert [i.name for i in list_extractors()] == ["baseline"]  # the good one still loads
    load_plugins()  # idempotent: no second warning (warnings are errors here)


def test_broken_entry_point_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CBIRLIB_PLUGINS")
    monkeypatch.setenv("CBIRLIB_STRICT_PLUGINS", "1")
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        fake_entry_points(BASELINE_EP, RaisingEntryPoint()),  # type: ignore[arg-type]
    )
    with pytest.raises(PluginError, match="'exploding'") as info:
        load_plugins()
    assert isinstance(info.value.__cause__, ImportError)


def test_plugin_selection_is_read_at_load_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(BASELINE_EP))
    import cbirlib.plugins  # noqa: F401  (already imported: the variable is read later)

    monkeypatch.setenv("CBIRLIB_PLUGINS", " baseline , ")
    assert [i.name for i in list_extractors()] == ["baseline"]
    monkeypatch.setenv("CBIRLIB_PLUGINS", "")
    assert [i.name for i in list_extractors()] == ["baseline"]  # loaded once
    plugins.reset_plugins()
    assert list_extractors() == []


def test_selecting_an_unknown_plugin_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(BASELINE_EP))
    monkeypatch.setenv("CBIRLIB_PLUGINS", "baseline,nosuch")
    with pytest.warns(PluginWarning, match=r"nosuch.*installed.*baseline"):
        load_plugins()


def test_unknown_name_lists_known_and_suggests(register_hooks: Any) -> None:
    register_hooks(tiny_plugin, "tiny-plugin")
    with pytest.raises(
        UnknownExtractorError, match=r"Did you mean 'tiny'.*Known: tiny, tiny-net"
    ) as info:
        create_extractor("tinny")
    assert isinstance(info.value, KeyError)


def test_to_config_round_trips_through_create_extractor(
    register_hooks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBIRLIB_PLUGINS", "baseline")
    register_hooks(tiny_plugin, "tiny-plugin")
    tiny = create_extractor("tiny", device="cpu", seed=5, input_config={"size": [8, 8]})
    cfg = tiny.to_config()
    again = create_extractor(**{**cfg, "device": "cpu"})
    assert again.to_config() == cfg and again.input_config == tiny.input_config
    vol = ct_volume()
    assert (again.extract(vol) == tiny.extract(vol)).all()
    base = create_extractor("baseline", bins=8, grid=4)
    cfg = base.to_config()
    assert (
        create_extractor(**cfg).to_config()
        == cfg
        == {"name": "baseline", "bins": 8, "grid": 4, "size": 64, "feature_version": 2}
    )


def test_family_names_dispatch_to_the_prefix_factory(register_hooks: Any) -> None:
    calls: list[dict[str, Any]] = []

    def factory(variant: str, *, device: str = "auto") -> Extractor:
        calls.append({"variant": variant, "device": device})
        return BaselineExtractor()

    def family_plugin(register: Register) -> None:
        register("toy:", factory, description="toy family")

    register_hooks(family_plugin, "toy-plugin")
    assert isinstance(create_extractor("toy:resnet18.a1_in1k", device="cpu"), BaselineExtractor)
    assert calls == [{"variant": "resnet18.a1_in1k", "device": "cpu"}]
    (info,) = list_extractors("toy")
    assert info.is_family and info.name == "toy:"
    for bad in ("toy:", "toy", "other:resnet18"):
        with pytest.raises(UnknownExtractorError, match="toy:<variant>"):
            create_extractor(bad)


def test_duplicate_names_keep_the_first_with_a_warning(
    register_hooks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def other(register: Register) -> None:
        register("tiny", BaselineExtractor, description="impostor")
        register("other", BaselineExtractor)

    register_hooks(tiny_plugin, "first")
    register_hooks(other, "second")
    with pytest.warns(PluginWarning, match=r"'tiny' from plugin 'second'.*plugin 'first'"):
        infos = {i.name: i for i in list_extractors()}
    assert infos["tiny"].plugin == "first" and infos["other"].plugin == "second"
    monkeypatch.setenv("CBIRLIB_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="'tiny'"):
        create_extractor("tiny")


def test_plugin_whose_hook_fails_is_skipped(register_hooks: Any) -> None:
    def failing(register: Register) -> None:
        register("half", BaselineExtractor)
        raise RuntimeError("boom")

    def invalid(register: Register) -> None:
        register("bad name!", BaselineExtractor)

    register_hooks(tiny_plugin, "good")
    register_hooks(failing, "failing")
    register_hooks(invalid, "invalid")
    with pytest.warns(PluginWarning) as record:
        names = [i.name for i in list_extractors()]
    assert names == ["tiny"]  # nothing of the failing plugins, not even "half"
    messages = " ".join(str(w.message) for w in record)
    assert "'failing'" in messages and "boom" in messages and "'bad name!'" in messages


def test_bad_arguments_and_bad_factories(register_hooks: Any) -> None:
    def odd(register: Register) -> None:
        register("notextractor", lambda: object())
        register("raises", lambda: 1 / 0)
        register("weights", BaselineExtractor, weights_available=lambda: 1 / 0 > 0)

    register_hooks(tiny_plugin, "tiny-plugin")
    register_hooks(odd, "odd")
    with pytest.raises(ExtractorError, match=r"colour.*parameters: bins, grid, size"):
        create_extractor("weights", colour="red")
    with pytest.raises(ExtractorError, match=r"'tiny'.*colour"):  # a **kwargs factory
        create_extractor("tiny", colour="red")
    with pytest.raises(PluginError, match=r"'notextractor'.*object"):
        create_extractor("notextractor")
    with pytest.raises(ExtractorError, match=r"'raises'.*ZeroDivisionError"):
        create_extractor("raises")
    assert list_extractors("weights")[0].weights_available is False  # a failing check is False
    assert [i.name for i in list_extractors("t*")] == ["tiny"]
    assert [i.name for i in list_extractors("NET")] == ["tiny"]  # substring of an alias
