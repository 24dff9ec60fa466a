"""LocalCatalog over real providers: built-ins, plugins, zones, validation, rate limits."""

from __future__ import annotations

import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import PluginToolConfig, RateLimitConfig, RateLimitsConfig, ToolsConfig
from vsmcp.node.tools.errors import (
    InvalidArguments,
    RateLimited,
    UnknownTool,
    ZoneDenied,
)
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.policy import zone_allows
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog

PUBLIC = CallContext(caller_id="t", caller_zone="public", origin="test:public")
OPS = CallContext(caller_id="t", caller_zone="ops", origin="test:ops")


def tools_config(**kw: object) -> ToolsConfig:
    plugins = [
        PluginToolConfig(name="add", target="tests.node.tools.sample_plugins:add"),
        PluginToolConfig(
            name="secret",
            target="tests.node.tools.sample_plugins:add",
            zone="ops",
        ),
    ]
    return ToolsConfig(plugins=plugins, entry_points=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def catalog() -> AsyncIterator[LocalCatalog]:
    limits = RateLimitsConfig(tools={"add": RateLimitConfig(rate_per_s=0.001, burst=2)})
    async with build_local_catalog(
        tools_config(), limits, status=lambda: {"node": "n1"}, peers=lambda: []
    ) as cat:
        await cat.supervisor.wait_running()
        yield cat


async def test_lists_only_tools_the_caller_may_use(catalog: LocalCatalog) -> None:
    public = [t.name for t in catalog.list_tools(PUBLIC)]
    assert public == ["add", "echo", "vsm.peers", "vsm.status"]
    assert "secret" in [t.name for t in catalog.list_tools(OPS)]


async def test_echo_and_introspection(catalog: LocalCatalog) -> None:
    result = await catalog.call_tool("echo", {"text": "hi"}, PUBLIC)
    assert result == {"content": [{"type": "text", "text": "hi"}], "isError": False}
    status = await catalog.call_tool("vsm.status", {}, PUBLIC)
    assert status["structuredContent"] == {"node": "n1"}
    peers = await catalog.call_tool("vsm.peers", {}, PUBLIC)
    assert peers["structuredContent"] == {"peers": []}


async def test_plugin_tool_from_config(catalog: LocalCatalog) -> None:
    result = await catalog.call_tool("add", {"a": 2, "b": 3}, PUBLIC)
    assert result["structuredContent"] == {"sum": 5}


async def test_errors_name_the_problem(catalog: LocalCatalog) -> None:
    with pytest.raises(UnknownTool, match="nope"):
        await catalog.call_tool("nope", {}, PUBLIC)
    with pytest.raises(InvalidArguments) as bad:
        await catalog.call_tool("echo", {"text": 5}, PUBLIC)
    assert bad.value.data["path"] == "arguments.text"
    with pytest.raises(InvalidArguments, match="'text' is a required property"):
        await catalog.call_tool("echo", {}, PUBLIC)
    with pytest.raises(ZoneDenied) as denied:
        await catalog.call_tool("secret", {"a": 1, "b": 1}, PUBLIC)
    assert denied.value.data == {
        "reason": "zone_denied",
        "policy": "zone-order",
        "tool": "secret",
        "zone": "public",
        "tool_zone": "ops",
    }


async def test_rate_limit_gives_retry_after(catalog: LocalCatalog) -> None:
    await catalog.call_tool("add", {"a": 1, "b": 1}, PUBLIC)
    await catalog.call_tool("add", {"a": 1, "b": 1}, PUBLIC)
    with pytest.raises(RateLimited) as limited:
        await catalog.call_tool("add", {"a": 1, "b": 1}, PUBLIC)
    assert limited.value.data["limit"] == "per-tool"
    assert limited.value.data["retry_after_s"] > 0


def test_bad_plugin_target_is_a_config_error() -> None:
    cfg = ToolsConfig(
        plugins=[PluginToolConfig(name="x", target="tests.node.tools.nonexistent:fn")],
        entry_points=False,
    )
    with pytest.raises(ConfigError, match="cannot import") as refused:
        build_local_catalog(cfg)
    assert refused.value.key == "tools.plugins[0].target"


def test_a_plugin_whose_signature_does_not_match_its_schema_is_a_config_error() -> None:
    schema = {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"]}
    cfg = ToolsConfig(
        plugins=[
            PluginToolConfig(name="fine", target="tests.integration.plugin_tools:add_numbers"),
            PluginToolConfig(
                name="bad", target="tests.integration.plugin_tools:mismatched", input_schema=schema
            ),
        ],
        entry_points=False,
    )
    with pytest.raises(ConfigError, match="parameter 'c' of bad\\(a, c\\)") as refused:
        build_local_catalog(cfg)
    assert refused.value.key == "tools.plugins[1].target"


def test_unknown_zone_fails_closed() -> None:
    allows = zone_allows(["public", "ops"])
    assert allows("ops", "public")
    assert not allows("public", "ops")
    assert not allows("mystery", "public")
    assert not allows("ops", "mystery")


def test_a_plugin_module_that_raises_while_importing_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('no\\nconfig')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = ToolsConfig(
        plugins=[PluginToolConfig(name="x", target="raising_plugin:fn")], entry_points=False
    )
    with pytest.raises(ConfigError) as refused:
        build_local_catalog(cfg)
    assert refused.value.key == "tools.plugins[0].target"
    # One line: the module, the exception, its message (newlines folded) and where.
    assert "importing 'raising_plugin' failed: RuntimeError: no config (at " in str(refused.value)
    assert "raising_plugin.py:1)" in str(refused.value)


def test_a_failing_plugin_installed_under_the_stdlib_directory_is_still_located(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyenv / python.org builds: site-packages lives inside the stdlib directory.
    stdlib = tmp_path / "lib" / "python3"
    site = stdlib / "site-packages"
    site.mkdir(parents=True)
    (site / "installed_plugin.py").write_text("x = 1\nraise RuntimeError('broken')\n")
    # A sibling directory whose name only starts like the stdlib's is not the stdlib.
    sibling = tmp_path / "lib" / "python3-plugins"
    sibling.mkdir()
    (sibling / "sibling_plugin.py").write_text("raise RuntimeError('broken too')\n")
    paths = {**sysconfig.get_paths(), "stdlib": str(stdlib), "purelib": str(site)}
    paths["platlib"] = str(site)
    monkeypatch.setattr(sysconfig, "get_paths", lambda *_, **__: paths)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(sibling))
    for module, line in (("installed_plugin", 2), ("sibling_plugin", 1)):
        cfg = ToolsConfig(
            plugins=[PluginToolConfig(name="x", target=f"{module}:fn")], entry_points=False
        )
        with pytest.raises(ConfigError) as refused:
            build_local_catalog(cfg)
        assert f"{module}.py:{line})" in str(refused.value), refused.value
