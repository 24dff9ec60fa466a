"""An idle node (`vsmcpd --dev`, no mounts, no WASM tools) does not import what only a
mount, a tool call or a WASM tool needs: the MCP client SDK, pydantic, httpx2,
jsonschema, wasmtime (together ≈40 MiB of resident memory; docs/benchmarks.md), nor
our WASM runtime (`vsmcp.edge`), nor the API's OpenAPI document, nor our own modules
that only a configured feature runs (mounts, limits, children: `LAZY_MODULES`); a node started
without mDNS does not import python-zeroconf (≈3.4 MiB); and no CA certificate is read
for aiohttp's default client contexts (≈2 MiB); and zeroconf runs its Python sources,
not its compiled extensions (≈2.8 MiB), unless `mesh.mdns_compiled` asks for them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import NodeProcess
from tests.skips import require_module, skip_or_fail
from vsmcp.mesh._zeroconf_sources import installed_extensions

pytestmark = pytest.mark.integration

WRAPPER = Path(__file__).with_name("idle_modules.py")
# Our own modules an idle node does not need: the API document, built at its first request.
# System 4's matcher and LLM planner: at the first request.
LAZY_MODULES = (
    "vsmcp.node.http.openapi",
    "vsmcp.node.http.api_schema",
    "vsmcp.node.vsm.s4.matcher",
    "vsmcp.node.vsm.s4.arguments",
    "vsmcp.node.vsm.s4.llm",
    # The Prometheus registry: at the first scrape or tool call.
    "vsmcp.node.metrics_collectors",
    # The WASM runtime and its tool provider: with the first WASM tool (configured or
    # distributed).
    "vsmcp.edge",
    "vsmcp.node.tools.wasm",
    # System 3's scaler: with the first `scale` tool.
    "vsmcp.node.children.scale",
    # A mount's client side (transport, SDK session, offers): with the first [[tools.mounts]].
    "vsmcp.node.tools.mounted",
    "vsmcp.node.tools.mount_client",
    "vsmcp.node.tools.mounted_offers",
    "vsmcp.node.tools.stdio",
    # The fast argument check: compiled at a tool's first call with arguments.
    "vsmcp.node.tools.schema_fast",
    # Rate limiting: with the first configured limit (tools.limits).
    "vsmcp.node.vsm.limits",
    # Adaptive concurrency limits and their gates: with [vsm.concurrency].
    "vsmcp.node.vsm.concurrency",
    "vsmcp.node.tools.admission",
    # System 3's bound governor: with [vsm.concurrency] and s3_lag_high_ms > 0.
    "vsmcp.node.vsm.bounds",
    # Resource subscriptions: with the first MCP session or listen stream.
    "vsmcp.node.mcp.subscriptions",
    # The MQTT bridge's TLS files: when a [bridges.mqtt] section is read.
    "vsmcp.node.bridges.mqtt_tls",
    # The bridges' SQLite outbox: with the AMQP bridge.
    "vsmcp.node.bridges.outbox",
    # A child VSM's process and spawn guard: at the first spawn.
    "vsmcp.node.children.process",
    "vsmcp.node.children.guard",
    # The policy agent's module and signed policy set: at their first request.
    "vsmcp.node.policyagent.agent",
    "vsmcp.node.policyagent.policy_set",
    # The certificate reloader: a node with a certificate file (not --dev).
    "vsmcp.node.app.cert_reload",
    # System 5's Telegram alert relay: with vsm.alert_telegram_chat.
    "vsmcp.node.app.alert_relay",
    # The patterns directory's loader: with vsm.patterns_dir.
    "vsmcp.node.vsm.patterns.loader",
    # vsm.find_tools: with mcp.max_listed_tools.
    "vsmcp.node.mcp.find_tools",
)
LAZY_PACKAGES = (
    "mcp",
    "mcp_types",
    "pydantic",
    "pydantic_core",
    "httpx2",
    "jsonschema",
    "wasmtime",
    "anthropic",
    "prometheus_client",
)


class _ModuleListingNode(NodeProcess):
    """A real `vsmcpd` that writes its imported modules to `out` when it exits."""

    def __init__(self, data_dir: Path, out: Path, *args: str) -> None:
        super().__init__(data_dir, *args, env={"VSMCP_MODULES_OUT": str(out)})

    def command(self) -> list[str]:
        cmd = super().command()
        assert cmd[1:3] == ["-m", "vsmcp.node"], cmd
        return [sys.executable, str(WRAPPER), *cmd[3:]]


def _idle_node_at_exit(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "modules.json"
    node = _ModuleListingNode(tmp_path / "node", out, *args).start()
    assert node.get_json("/api/status")["node_id"]
    node.stop()
    at_exit: dict[str, Any] = json.loads(out.read_text())
    return at_exit


def _modules_of_idle_node(tmp_path: Path, *args: str) -> set[str]:
    return set(_idle_node_at_exit(tmp_path, *args)["modules"])


def test_an_idle_node_has_not_imported_the_mcp_client_schema_validation_or_wasmtime(
    tmp_path: Path,
) -> None:
    modules = _modules_of_idle_node(tmp_path)
    assert "vsmcp.node.tools.registry" in modules  # the lazy modules' importers did load
    assert "vsmcp.node.children.manager" in modules
    imported = sorted({m.split(".")[0] for m in modules} & set(LAZY_PACKAGES))
    assert imported == []
    assert sorted(set(LAZY_MODULES) & set(modules)) == []


@pytest.mark.parametrize("mdns", [True, False], ids=["mdns-on", "no-mdns"])
def test_zeroconf_is_imported_only_by_a_node_with_mdns_on(tmp_path: Path, mdns: bool) -> None:
    modules = _modules_of_idle_node(tmp_path, *([] if mdns else ["--no-mdns"]))
    assert "vsmcp.mesh.discovery" in modules
    mdns_modules = {"zeroconf", "ifaddr", "vsmcp.mesh._discovery_mdns"} & modules
    assert mdns_modules == ({"zeroconf", "ifaddr", "vsmcp.mesh._discovery_mdns"} if mdns else set())
    # ctypes (≈0.4 MiB): ifaddr's (zeroconf's) alone; ours is for a child VSM's parent watch.
    assert ("ctypes" in modules) == mdns


@pytest.mark.parametrize("compiled", [False, True], ids=["default", "mdns_compiled"])
def test_zeroconf_runs_its_python_sources_unless_mdns_compiled_is_set(
    tmp_path: Path, compiled: bool
) -> None:
    # Its compiled extensions map ≈2.8 MiB (mesh/_zeroconf_sources.py); a busy LAN's
    # operator may want their speed.
    if not installed_extensions():  # looked up without importing zeroconf here
        skip_or_fail("the installed zeroconf has no compiled extensions (built without Cython)")
    config = tmp_path / "vsmcp.toml"
    config.write_text(f"[mesh]\nmdns_compiled = {str(compiled).lower()}\n")
    dns_file = _idle_node_at_exit(tmp_path, "--config", str(config))["zeroconf_dns_file"]
    assert dns_file is not None
    assert dns_file.endswith(".py") is not compiled


def test_an_idle_node_has_not_read_the_ca_bundle_for_aiohttp_client_contexts(
    tmp_path: Path,
) -> None:
    # ≈2 MiB: read when a plugin or a bridge may use aiohttp's client (node/client_tls.py;
    # tests/integration/test_client_tls.py shows verification still works then).
    at_exit = _idle_node_at_exit(tmp_path)
    assert "vsmcp.node.http.server" in at_exit["modules"]
    assert at_exit["aiohttp_default_ca_certs"] == 0


def test_an_idle_node_on_uvloop_starts_no_libuv_resolver_threads(tmp_path: Path) -> None:
    # uvloop resolves a listening host, even "127.0.0.1", in libuv's pool of four threads,
    # which then stay (≈0.25 MiB); the node binds IP literals itself (mesh/addrinfo.py).
    require_module("uvloop")
    node = NodeProcess(tmp_path / "node").start()
    try:
        assert node.get_json("/api/status")["node_id"]
        tasks = Path(f"/proc/{node.pid}/task")
        names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
    finally:
        node.stop()
    assert "ZMQbg/IO/0" in names  # the thread listing is the node's own
    assert "libuv-worker" not in names
