"""Python plugin tools: from config (`module:function`) and from the `vsmcp.tools` entry points.

An entry point loads one of: a `PluginTool`, an iterable of them, or a zero-argument
callable returning either. Each config plugin and each entry point is one unit, so a
broken plugin is restarted and quarantined on its own.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sysconfig
import traceback
from collections.abc import Iterable
from typing import Any

from vsmcp.node.client_tls import load_deferred_cas
from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import PluginToolConfig
from vsmcp.node.tools.errors import ToolConfigError
from vsmcp.node.tools.functions import FunctionProvider, PluginTool

ENTRY_POINT_GROUP = "vsmcp.tools"


def _failure(exc: Exception) -> str:
    """One line for an exception raised by plugin code: its type, its message and the
    deepest line of the plugin's own code (not the standard library's) that raised it."""
    message = " ".join(str(exc).split()) or "(no message)"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<")
        and not _in_stdlib(frame.filename)
        and frame.filename != __file__
    ]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {message}{where}"


def _in_stdlib(filename: str) -> bool:
    """A file of the standard library: under its directory, but not under site-packages
    (pyenv and python.org builds install packages, plugins too, inside it)."""
    paths = sysconfig.get_paths()

    def under(root: str) -> bool:
        return filename.startswith(os.path.join(root, ""))

    return under(paths["stdlib"]) and not (under(paths["purelib"]) or under(paths["platlib"]))


def load_target(target: str) -> Any:
    """Import `package.module:attr.attr`."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ToolConfigError(f"plugin target {target!r} is not of the form 'module:function'")
    load_deferred_cas()  # plugin code may use aiohttp's default HTTPS client
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ToolConfigError(
            f"plugin target {target!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    except Exception as exc:  # the module's own code failed while importing
        raise ToolConfigError(
            f"plugin target {target!r}: importing {module_name!r} failed: {_failure(exc)}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ToolConfigError(f"plugin target {target!r}: no attribute {part!r}") from exc
    return obj


def _configured_tool(cfg: PluginToolConfig) -> PluginTool:
    obj = load_target(cfg.target)
    if isinstance(obj, PluginTool):
        return PluginTool(
            name=cfg.name,
            fn=obj.fn,
            description=cfg.description or obj.description,
            input_schema=cfg.input_schema if cfg.input_schema is not None else obj.input_schema,
            zone=cfg.zone or obj.zone,
            annotations=obj.annotations,
        )
    if not callable(obj):
        raise ToolConfigError(f"plugin target {cfg.target!r} is neither a PluginTool nor callable")
    return PluginTool(
        name=cfg.name,
        fn=obj,
        description=cfg.description,
        input_schema=cfg.input_schema,
        zone=cfg.zone or "public",
    )


def plugin_provider(cfg: PluginToolConfig, key: str = "tools.plugins") -> FunctionProvider:
    """One unit `plugin:<name>` serving the configured callable; restarts re-resolve it.

    A target that does not load, or whose signature does not match its schema, is
    refused at start as a config error naming `key` (the entry: exit 2)."""
    try:
        return FunctionProvider(f"plugin:{cfg.name}", lambda: [_configured_tool(cfg)])
    except ToolConfigError as exc:
        raise ConfigError(f"{key}.target", str(exc)) from exc


def _as_tools(obj: Any, source: str) -> list[PluginTool]:
    if isinstance(obj, PluginTool):
        return [obj]
    if callable(obj):
        try:
            made = obj()
        except Exception as exc:  # the plugin's factory failed
            raise ToolConfigError(f"{source} failed to make its tools: {_failure(exc)}") from exc
        return _as_tools(made, source)
    if isinstance(obj, Iterable):
        tools = list(obj)
        if all(isinstance(t, PluginTool) for t in tools):
            return tools
    raise ToolConfigError(f"{source} does not provide PluginTool objects")


def entry_point_providers(group: str = ENTRY_POINT_GROUP) -> list[FunctionProvider]:
    """One unit `entry:<entry point name>` per entry point in `group`."""
    providers = []
    for ep in importlib.metadata.entry_points(group=group):
        source = f"entry point {ep.name!r} ({ep.value})"

        def load(ep: importlib.metadata.EntryPoint = ep, source: str = source) -> list[PluginTool]:
            load_deferred_cas()  # plugin code may use aiohttp's default HTTPS client
            try:
                obj = ep.load()
            except Exception as exc:  # the package's code failed while importing
                raise ToolConfigError(f"cannot load: {_failure(exc)}") from exc
            return _as_tools(obj, source)

        try:
            providers.append(FunctionProvider(f"entry:{ep.name}", load))
        except ToolConfigError as exc:
            # A broken installed package stops the start like a bad config entry: the
            # operator turns `tools.entry_points` off or fixes the package.
            raise ConfigError("tools.entry_points", f"{source}: {exc}") from exc
    return providers
