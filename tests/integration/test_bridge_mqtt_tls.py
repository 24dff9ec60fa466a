"""The MQTT bridge over TLS (`mqtts://`): a Mosquitto of the test's own, with two TLS
listeners (one requiring a client certificate) under a CA the test makes, whose
certificate names only `broker.test`; a real `vsmcpd` with the bridge pointed at it,
plain aiomqtt clients (not our code) on the other side.

- with ca_file, a client certificate and `server_hostname = "broker.test"`: telemetry in
  becomes the pattern's alert out, and a fresh subscriber sees the retained status and
  tool announcement, all over TLS;
- a broker whose certificate comes from another CA, or does not carry the name the node
  expects, is refused: the bridge is down with a clear error, pain, the node stays up;
- bad TLS config: exit 2 naming the key.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.integration.harness import NodeProcess, counters, run_daemon
from tests.integration.test_bridge_mqtt import (
    PATTERNS,
    WAIT_S,
    _bridge,
    _next,
    _node_topics,
    _wait_connected,
)
from tests.integration.tls_mosquitto import BROKER_NAME, TlsBroker, tls_mosquitto
from tests.polling import async_wait_until
from tests.skips import require_mosquitto_binary
from tests.tls_ca import TestCa

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    binary = require_mosquitto_binary()
    with tls_mosquitto(binary, tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(6)}"


@contextlib.asynccontextmanager
async def tls_client(broker: TlsBroker, port: int | None = None) -> AsyncIterator[aiomqtt.Client]:
    """A plain aiomqtt client over TLS: the broker's chain verified against the test's
    CA; not its name (the client connects to 127.0.0.1, the certificate says
    broker.test)."""
    context = ssl.create_default_context(cafile=str(broker.ca.cert))
    context.check_hostname = False
    async with aiomqtt.Client(
        "127.0.0.1",
        port or broker.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=10,
        tls_context=context,
    ) as c:
        yield c


def _node(tmp_path: Path, name: str, prefix: str, bridge: str) -> NodeProcess:
    patterns = tmp_path / "patterns"
    patterns.mkdir(exist_ok=True)
    (patterns / "edge.json").write_text(json.dumps({"patterns": PATTERNS}))
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f"""
[tools]
entry_points = false
[vsm]
patterns_dir = "{patterns}"
[bridges.mqtt]
prefix = "{prefix}"
telemetry_topics = ["{prefix}/telemetry/#"]
keepalive_s = 5
{bridge}
"""
    )
    return NodeProcess(tmp_path / name, "--config", str(config))


async def test_telemetry_in_and_alerts_and_announcements_out_over_tls(
    tmp_path: Path, prefix: str, tls_broker: TlsBroker
) -> None:
    identity = tls_broker.ca.issue(tmp_path, "node-client", client=True)
    # The listener the node uses wants a client certificate: without one, refused.
    with pytest.raises(aiomqtt.MqttError):
        async with tls_client(tls_broker, tls_broker.client_port):
            pass
    node = _node(
        tmp_path,
        "node",
        prefix,
        f"""url = "mqtts://127.0.0.1:{tls_broker.client_port}"
ca_file = "{tls_broker.ca.cert}"
cert_file = "{identity.cert}"
key_file = "{identity.key}"
server_hostname = "{BROKER_NAME}"
""",
    ).start()
    status_topic = f"{prefix}/nodes/{node.node_id}/status"
    tools_topic = f"{prefix}/nodes/{node.node_id}/tools"
    try:
        await _wait_connected(node)
        async with tls_client(tls_broker) as c:
            await c.subscribe(f"{prefix}/alerts", qos=1)
            await c.publish(f"{prefix}/telemetry/pump-1", b'{"temp": 95, "cpu": 40}', qos=1)
            await c.publish(f"{prefix}/telemetry/pump-7", b'{"temp": 95.5, "cpu": 85}', qos=1)
            alert = json.loads((await _next(c, f"{prefix}/alerts")).payload)
            assert alert["node"] == node.node_id
            assert alert["event"]["kind"] == "pattern_matched"
            assert alert["event"]["group"] == "pump-7"
        # A subscriber that comes later sees the retained status and announcement.
        async with tls_client(tls_broker) as fresh:
            seen = await _node_topics(fresh, prefix)
            assert seen[status_topic].retain and seen[status_topic].payload == b"online"
            announcement = json.loads(seen[tools_topic].payload)
            assert announcement["node"] == node.node_id
            assert "echo" in {tool["name"] for tool in announcement["tools"]}
        view = _bridge(node)
        assert view["connected"] is True
        assert view["counters"]["telemetry_events"] >= 4
        assert "disconnects" not in view["counters"]
        assert "telemetry_disconnects" not in view["counters"]
    finally:
        node.stop()
        async with tls_client(tls_broker) as c:  # clear what the node left retained
            for topic in (status_topic, tools_topic):
                await c.publish(topic, b"", qos=1, retain=True)


async def test_a_broker_failing_verification_is_refused_and_the_node_stays_up(
    tmp_path: Path, prefix: str, tls_broker: TlsBroker
) -> None:
    other = TestCa.create(tmp_path, "other")
    url = f'url = "mqtts://127.0.0.1:{tls_broker.port}"\n'
    nodes = {
        # The broker's certificate is not from the CA the node trusts.
        "CERTIFICATE_VERIFY_FAILED": _node(
            tmp_path,
            "other-ca",
            prefix,
            f'{url}ca_file = "{other.cert}"\nserver_hostname = "{BROKER_NAME}"\n',
        ),
        # The right CA, but the certificate does not name the address connected to.
        "IP address mismatch": _node(
            tmp_path, "by-address", prefix, f'{url}ca_file = "{tls_broker.ca.cert}"\n'
        ),
    }
    for node in nodes.values():
        node.start(wait=False)
    try:
        for why, node in nodes.items():
            node.wait_ready()
            await async_wait_until(
                lambda node=node: (  # type: ignore[misc]
                    _bridge(node)["counters"].get("disconnects", 0) >= 1
                    and _bridge(node)["counters"].get("telemetry_disconnects", 0) >= 1
                ),
                timeout_s=WAIT_S,
                what=f"both connections refused ({why})",
            )
            view = _bridge(node)
            assert view["state"] == "down" and view["connected"] is False
            assert why in view["last_error"], view["last_error"]
            assert f"127.0.0.1:{tls_broker.port}" in view["last_error"]
            assert counters(node, "vsmcp_events").get("algedonic", 0) >= 1  # pain
            assert node.get_json("/healthz")["status"] == "ok"
            assert node.proc is not None and node.proc.poll() is None
    finally:
        for node in nodes.values():
            node.stop()


def test_bad_tls_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    cases = {
        f'url = "mqtts://127.0.0.1"\nca_file = "{tmp_path / "missing.pem"}"': "ca_file",
        f'url = "mqtts://127.0.0.1"\nkey_file = "{tmp_path / "client.key"}"': "key_file",
        f'url = "mqtt://127.0.0.1"\nserver_hostname = "{BROKER_NAME}"': "server_hostname",
    }
    for lines, key in cases.items():
        config = tmp_path / "node.toml"
        config.write_text(f"[tools]\nentry_points = false\n[bridges.mqtt]\n{lines}\n")
        result = run_daemon(
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / f"data-{secrets.token_hex(3)}"),
            "--dev",
            "--http-port",
            "0",
            "--mesh-port",
            "0",
        )
        assert result.returncode == 2, (lines, result.stderr[-2000:])
        assert f"bridges.mqtt.{key}" in result.stderr, (lines, result.stderr[-2000:])
