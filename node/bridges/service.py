"""Starts the configured bridges and shows their state (`/api/vsm`, `/metrics`)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from typing import Any

import msgspec

from vsmcp.mesh.service import Service
from vsmcp.node.bridges.config import BridgesSection
from vsmcp.node.bridges.model import Bridge, BridgeContext, BridgeStatus
from vsmcp.node.bridges.registry import BRIDGE_MODULES
from vsmcp.node.client_tls import load_deferred_cas

log = logging.getLogger(__name__)


class BridgesService(Service):
    def __init__(self, config: BridgesSection, context: BridgeContext) -> None:
        self._config = config
        self._context = context
        self._bridges: dict[str, Bridge] = {}
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        if self._stack is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            for name, section in self._config.configured().items():
                # Off the event loop: a client library can take seconds to import
                # (aiogram builds ~300 pydantic models: 3-15 s on 2 busy cores), and
                # the node must keep answering health checks and its peers meanwhile.
                # A bridge's client library may use aiohttp's default HTTPS contexts.
                await asyncio.to_thread(load_deferred_cas)
                module = await asyncio.to_thread(importlib.import_module, BRIDGE_MODULES[name])
                bridge: Bridge = module.create(section, self._context)
                await stack.enter_async_context(bridge)
                self._bridges[name] = bridge
                log.info("bridge %s started", name)
        except BaseException:
            await stack.aclose()
            self._bridges.clear()
            raise
        self._stack = stack
        if self._bridges:
            self._register_metrics()

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def get(self, name: str) -> Bridge | None:
        return self._bridges.get(name)

    def statuses(self) -> dict[str, BridgeStatus]:
        return {name: bridge.status() for name, bridge in self._bridges.items()}

    def view(self) -> dict[str, Any]:
        """`bridges` in `/api/vsm`: every configured bridge's status."""
        return {name: _status_view(s) for name, s in self.statuses().items()}

    def _register_metrics(self) -> None:
        metrics = self._context.metrics

        def gauge(read: Any) -> Any:
            return lambda: {n: float(read(s)) for n, s in self.statuses().items()}

        metrics.add_gauges(
            "vsmcp_bridge_connected",
            "1 while a bridge is connected to its service",
            "bridge",
            gauge(lambda s: s.connected),
        )
        metrics.add_gauges(
            "vsmcp_bridge_outbox_depth",
            "Entries waiting to leave through a bridge (outbox, mirror backlog)",
            "bridge",
            gauge(lambda s: s.outbox_depth),
        )
        metrics.add_gauges(
            "vsmcp_bridge_lag",
            "Entries a bridge is behind its source",
            "bridge",
            gauge(lambda s: s.lag),
        )
        metrics.add_counters(
            "vsmcp_bridge_errors",
            "Errors of a bridge (lost connections, refused messages, failed writes)",
            "bridge",
            gauge(lambda s: s.errors),
        )


def _status_view(status: BridgeStatus) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.to_builtins(status)
    view["connected"] = status.connected
    return view
