"""MQTT telemetry into the pattern engine: messages per second a real `vsmcpd` takes from
the real Mosquitto (127.0.0.1:1883) into its pattern engine.

    python benchmarks/bench_mqtt.py [--messages 200000] [--rounds 3] [--quick]
        [--variants own,shared] [--paced RATE] [--qos1 K] [--port 1883] [--tls]

One `vsmcpd --dev` per variant of `telemetry_connection` ("own": the node's MQTT 3.1.1
subscriber on a second connection; "shared": aiomqtt on the main MQTT 5 connection),
both up at once, their rounds interleaved (own, shared, own, ...) so that the load of
the shared machine falls on both alike. Each node has `[bridges.mqtt]` and the Show's
patterns ("temp > 90 and cpu > 80 on the same device within 10 s", both orders, grouped
by device). Each round,
`mosquitto_pub -l` (C, not our code) publishes N JSON objects
`{"device": "pump-<k>", "temp": t, "cpu": c}` (1,000 devices, random readings, two
events per message) as fast as it can; the clock runs from its start until the node's
pattern engine has processed all 2N events (`GET /api/patterns` `events`, polled every
20 ms). Reported: messages/s and events/s, the engine's matches, and the bridge's
dropped and bad counts (both must be 0).

QoS 0 on the publishing side: `mosquitto_pub -l` at QoS 1 (2.0.11) loses lines itself
(34,480 of 100,000 reached even a QoS 0 subscriber). The node reads no faster than its
pattern engine takes events (the telemetry connection pauses), so a burst waits in the
broker, whose default queue per subscriber (`max_queued_messages`, 1,000) drops the rest:
bursts of 100,000 need a broker sized for them, `--port 18833` with
`mosquitto -c benchmarks/mosquitto-bench.conf -d`. A second measurement, `--paced`,
publishes at QoS 1 at a fixed rate with a paho client and checks that nothing is lost;
`--qos1 K` runs K `mosquitto_pub --repeat 10000` at QoS 1 at once (each waits for the
broker's PUBACK, so loses nothing itself) and checks that every message arrives.

`--tls` (variants `own,own+tls` unless given): the benchmark starts a Mosquitto of its own
(tests/integration/tls_mosquitto.py, sized as mosquitto-bench.conf) with a plain listener,
which the publishers use, and a TLS one under a throwaway CA, which a `+tls` variant's node
uses (`mqtts://`, `ca_file`, `server_hostname`): what TLS costs the node's intake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from tests.integration.harness import NodeProcess
from tests.integration.overheat import overheat_patterns
from tests.integration.tls_mosquitto import BROKER_NAME, TlsBroker, tls_mosquitto
from tests.skips import MOSQUITTO_BINARY

BROKER = ("127.0.0.1", 1883)
DEVICES = 1_000
POLL_S = 0.02
STALL_S = 20.0


def _start_node(root: Path, prefix: str, variant: str, tls: TlsBroker | None) -> NodeProcess:
    root.mkdir()
    connection, _, over = variant.partition("+")
    url = f'url = "mqtt://{BROKER[0]}:{BROKER[1]}"'
    if over == "tls":
        assert tls is not None, "a +tls variant needs --tls"
        url = (
            f'url = "mqtts://127.0.0.1:{tls.port}"\nca_file = "{tls.ca.cert}"\n'
            f'server_hostname = "{BROKER_NAME}"'
        )
    patterns = root / "patterns"
    patterns.mkdir()
    # No action: a match emitting an event would count as an event processed.
    rules = overheat_patterns([])
    (patterns / "edge.json").write_text(json.dumps({"patterns": rules}))
    config = root / "node.toml"
    config.write_text(
        f"""
[node]
log_level = "warning"
[tools]
entry_points = false
[vsm]
patterns_dir = "{patterns}"
[bridges.mqtt]
{url}
prefix = "{prefix}"
telemetry_topics = ["{prefix}/telemetry/#"]
telemetry_connection = "{connection}"
alert_kinds = []
"""
    )
    return NodeProcess(root / "data", "--config", str(config)).start()


def _engine_events(node: NodeProcess) -> int:
    return int(node.get_json("/api/patterns")["events"])


def _bridge(node: NodeProcess) -> dict[str, Any]:
    view: dict[str, Any] = node.get_json("/api/vsm")["bridges"]["mqtt"]
    return view


def _payloads(n: int, rng: random.Random) -> bytes:
    lines = [
        json.dumps(
            {
                "device": f"pump-{rng.randrange(DEVICES)}",
                "temp": round(rng.uniform(60, 100), 1),
                "cpu": rng.randrange(20, 100),
            },
            separators=(",", ":"),
        )
        for _ in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def _wait_events(node: NodeProcess, target: int, messages: int) -> float:
    """Poll until the bridge has taken `messages` and the engine processed `target`
    events; the time it got there."""
    last, last_change = -1, time.monotonic()
    while True:
        seen = _engine_events(node)
        now = time.monotonic()
        taken = _bridge(node)["counters"].get("telemetry_messages", 0)
        if seen >= target and taken >= messages:
            return now
        if seen != last:
            last, last_change = seen, now
        elif now - last_change > STALL_S:
            raise SystemExit(f"stalled at {seen} of {target} events: {_bridge(node)}")
        time.sleep(POLL_S)


def burst_round(node: NodeProcess, prefix: str, payloads: bytes, n: int) -> dict[str, float]:
    base = _engine_events(node)
    taken = _bridge(node)["counters"].get("telemetry_messages", 0)
    topic = f"{prefix}/telemetry/fleet"
    command = ["mosquitto_pub", "-h", BROKER[0], "-p", str(BROKER[1]), "-q", "0", "-l"]
    started = time.monotonic()
    subprocess.run([*command, "-t", topic], input=payloads, check=True)
    published = time.monotonic()
    done = _wait_events(node, base + 2 * n, taken + n)
    return {
        "msgs_per_s": n / (done - started),
        "publish_s": published - started,
        "total_s": done - started,
    }


QOS1_PER_PRODUCER = 10_000


def qos1_round(node: NodeProcess, prefix: str, producers: int) -> float:
    """QoS 1 end to end: `producers` `mosquitto_pub --repeat` (each waits for the broker's
    PUBACK of one message before the next, so none is lost on its side) at once, each
    10,000 messages of one device; messages/s until the engine has every event."""
    base = _engine_events(node)
    taken = _bridge(node)["counters"].get("telemetry_messages", 0)
    host, port = BROKER
    started = time.monotonic()
    command = ["mosquitto_pub", "-h", host, "-p", str(port), "-q", "1"]
    command += ["--repeat", str(QOS1_PER_PRODUCER)]
    running = [
        subprocess.Popen(
            [*command, "-t", f"{prefix}/telemetry/qos1-{k}", "-m", f'{{"temp":{95 + k},"cpu":85}}']
        )
        for k in range(producers)
    ]
    for process in running:
        if process.wait() != 0:
            raise SystemExit(f"mosquitto_pub failed: {process.returncode}")
    n = producers * QOS1_PER_PRODUCER
    done = _wait_events(node, base + 2 * n, taken + n)
    return n / (done - started)


async def _paced(prefix: str, n: int, rate: float, rng: random.Random) -> float:
    import aiomqtt

    lines = _payloads(n, rng).splitlines()
    topic = f"{prefix}/telemetry/fleet"
    async with aiomqtt.Client(BROKER[0], BROKER[1], max_inflight_messages=1000) as client:
        started = time.monotonic()
        pending: list[asyncio.Task[None]] = []
        for i, line in enumerate(lines):
            pending.append(asyncio.create_task(client.publish(topic, line, qos=1)))
            ahead = started + (i + 1) / rate - time.monotonic()
            if ahead > 0 or len(pending) >= 2_000:
                await asyncio.gather(*pending)
                pending.clear()
                await asyncio.sleep(max(ahead, 0))
        await asyncio.gather(*pending)
        return n / (time.monotonic() - started)


def decode_and_match(payloads: bytes) -> float:
    """The node's own share, without MQTT: messages/s through TelemetryDecoder and
    PatternEngine.process_batch (same payloads and patterns, one process, batches of
    1,024 as the bridge hands them on)."""
    from vsmcp.node.bridges.mqtt_telemetry import TelemetryDecoder
    from vsmcp.node.vsm.events import NODE_CATALOG, Event
    from vsmcp.node.vsm.patterns import PatternEngine, parse_patterns

    engine = PatternEngine(
        lambda match: None, NODE_CATALOG, parse_patterns(overheat_patterns([]), "b", NODE_CATALOG)
    )
    decoder = TelemetryDecoder(["b/telemetry/#"], 16 * 1024)
    lines = payloads.splitlines()
    started = time.perf_counter()
    batch: list[Event] = []
    for i, line in enumerate(lines):
        batch.extend(decoder.decode("b/telemetry/fleet", line, i * 1e-4))
        if len(batch) >= 2048:
            engine.process_batch(batch)
            batch = []
    engine.process_batch(batch)
    return len(lines) / (time.perf_counter() - started)


def _connected(node: NodeProcess) -> None:
    deadline = time.monotonic() + 30
    while _bridge(node)["state"] != "connected":
        if time.monotonic() > deadline:
            raise SystemExit(f"bridge not connected: {_bridge(node)}")
        time.sleep(POLL_S)


def _paced_round(node: NodeProcess, prefix: str, rate: float, rng: random.Random) -> float:
    base = _engine_events(node)
    taken = _bridge(node)["counters"].get("telemetry_messages", 0)
    n = int(rate * 5)
    achieved = asyncio.run(_paced(prefix, n, rate, rng))
    _wait_events(node, base + 2 * n, taken + n)
    return achieved


def main() -> int:
    global BROKER
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=1883, help="the broker's (loopback)")
    parser.add_argument("--variants", default="own,shared", help="telemetry_connection values")
    parser.add_argument("--paced", type=float, default=0.0, help="also: QoS 1 at this rate/s")
    parser.add_argument(
        "--qos1", type=int, default=0, help="also: QoS 1 from this many mosquitto_pub at once"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 1 round")
    parser.add_argument(
        "--tls", action="store_true", help="own broker with a TLS listener; variants own,own+tls"
    )
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 20_000, 1
    if shutil.which("mosquitto_pub") is None:
        print("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
        return 1
    BROKER = (BROKER[0], args.port)
    if args.tls and "--variants" not in sys.argv:
        args.variants = "own,own+tls"
    variants = args.variants.split(",")
    rng = random.Random(14)
    payloads = _payloads(args.messages, rng)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    paced: dict[str, float] = {}
    qos1: dict[str, float] = {}
    views: dict[str, dict[str, Any]] = {}
    matches: dict[str, dict[str, int]] = {}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-mqtt-"))
        tls: TlsBroker | None = None
        if args.tls:
            binary = shutil.which("mosquitto") or shutil.which(MOSQUITTO_BINARY)
            if binary is None:
                print("mosquitto is not installed (apt-get install mosquitto)")
                return 1
            settings = "max_inflight_messages 1000\nmax_queued_messages 200000"
            tls = stack.enter_context(tls_mosquitto(binary, Path(tmp), settings))
            BROKER = ("127.0.0.1", tls.plain_port)
        prefixes = {v: f"bench{secrets.token_hex(4)}" for v in variants}
        nodes: dict[str, NodeProcess] = {}
        try:
            for v in variants:
                nodes[v] = _start_node(Path(tmp) / v, prefixes[v], v, tls)
            for node in nodes.values():
                _connected(node)
            for _ in range(args.rounds):
                for v in variants:
                    results[v].append(burst_round(nodes[v], prefixes[v], payloads, args.messages))
            for v in variants:
                if args.qos1:
                    qos1[v] = qos1_round(nodes[v], prefixes[v], args.qos1)
                if args.paced:
                    paced[v] = _paced_round(nodes[v], prefixes[v], args.paced, rng)
                views[v] = _bridge(nodes[v])
                patterns = nodes[v].get_json("/api/patterns")["patterns"]
                matches[v] = {p["name"]: p["matches"] for p in patterns}
        finally:
            for node in nodes.values():
                node.stop()
    print(f"machine: {machine()}")
    print(f"{args.messages:,} messages × {args.rounds} rounds (2 events each, {DEVICES} devices)")
    best: dict[str, float] = {}
    for v in variants:
        print(f"telemetry_connection = {v!r}:")
        for r in results[v]:
            print(
                f"  round: {r['msgs_per_s']:,.0f} msgs/s ({2 * r['msgs_per_s']:,.0f} events/s); "
                f"mosquitto_pub done after {r['publish_s']:.2f} s, "
                f"engine after {r['total_s']:.2f} s"
            )
        rates = [r["msgs_per_s"] for r in results[v]]
        best[v] = max(rates)
        print(
            f"  best {max(rates):,.0f} msgs/s, median {statistics.median(rates):,.0f} msgs/s "
            f"(target ≥ 20,000)"
        )
        if v in qos1:
            print(
                f"  QoS 1 from {args.qos1} × mosquitto_pub --repeat "
                f"{QOS1_PER_PRODUCER:,}: {qos1[v]:,.0f} msgs/s, every event reached the engine"
            )
        if v in paced:
            print(f"  paced QoS 1: {paced[v]:,.0f} msgs/s for 5 s, every event reached the engine")
        counters = views[v]["counters"]
        print(f"  matches: {matches[v]}")
        print(
            f"  bridge: telemetry_messages={counters.get('telemetry_messages', 0)} "
            f"telemetry_bad={counters.get('telemetry_bad', 0)} "
            f"inbox_dropped={counters.get('inbox_dropped', 0)} "
            f"telemetry_pauses={counters.get('telemetry_pauses', 0)}"
        )
    if "own" in best and "shared" in best:
        print(f"own / shared (best rounds): {best['own'] / best['shared']:.1f}×")
    print(f"decode + match alone (no MQTT): {decode_and_match(payloads):,.0f} msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
