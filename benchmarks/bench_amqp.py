"""AMQP bridge benchmark: tool calls through RabbitMQ, and events published with confirms.

    python benchmarks/bench_amqp.py [--quick]

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest). Starts real `vsmcpd` processes on
loopback; the client side is plain aio-pika (one connection, one exclusive reply queue).

- calls: `tools/call` of the built-in `echo` sent to the node's calls queue, answered to
  the reply queue. Throughput with `--in-flight` calls outstanding at once for
  `--seconds`; latency of sequential calls (p50/p99), beside the same call at the node's
  `/mcp` (stateless 2026-07-28 POST, aiohttp, keep-alive): the difference is what the
  broker path adds.
- events: a node whose broker is unreachable fills its outbox with `--events`
  `tool_call` events (calls at /mcp); it is stopped, then started with the broker
  reachable, and a consumer bound to `<node>.#` times the drain: first to last event
  received, every one published persistent and confirmed by the broker before the node
  deletes it from its SQLite outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import uvloop
from _http_load import drive_processes
from _machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import NodeProcess
from tests.polling import wait_for

URL = "amqp://guest:guest@127.0.0.1:5672/"
TOKEN = "bench-token-0123456789abcdef"
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "echo",
    "Authorization": f"Bearer {TOKEN}",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
PAD = "x" * 64


def config(url: str, queue: str, events: str) -> str:
    return f"""
[node]
log_level = "warning"
[tools]
entry_points = false
[[mcp.tokens]]
name = "bench"
token = "{TOKEN}"
zone = "public"
[bridges.amqp]
url = "{url}"
calls_queue = "{queue}"
events = [{events}]
prefetch = 256
outbox_capacity = 1000000
"""


def start(data: Path, text: str) -> NodeProcess:
    path = data.parent / f"{data.name}.toml"
    path.write_text(text)
    return NodeProcess(data, "--config", str(path), "--no-mdns").start()


def bridge(node: NodeProcess) -> dict[str, Any]:
    status: dict[str, Any] = node.get_json("/api/vsm")["bridges"]["amqp"]
    return status


def call_body(i: int, meta: bool) -> bytes:
    params: dict[str, Any] = {"name": "echo", "arguments": {"text": f"{i} {PAD}"}}
    if meta:
        params["_meta"] = META
    return json.dumps(
        {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
    ).encode()


class RpcClient:
    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
        self.channel = channel
        self.queue = queue
        self.waiting: dict[str, asyncio.Future[bytes]] = {}
        self.reply_to = ""

    async def open(self) -> RpcClient:
        replies = await self.channel.declare_queue(exclusive=True)
        self.reply_to = replies.name

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = self.waiting.pop(str(message.correlation_id), None)
            if future is not None and not future.done():
                future.set_result(message.body)

        await replies.consume(on_reply, no_ack=True)
        return self

    async def call(self, i: int) -> None:
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.waiting[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                call_body(i, meta=False), correlation_id=correlation_id, reply_to=self.reply_to
            ),
            routing_key=self.queue,
        )
        body = await asyncio.wait_for(future, 30)
        if b'"result"' not in body:
            raise RuntimeError(f"call failed: {body[:300]!r}")


async def amqp_throughput(client: RpcClient, in_flight: int, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop_at:
            await client.call(i)
            done += 1
            i += in_flight

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    return done / (time.perf_counter() - t0)


async def latencies(client: RpcClient, node: NodeProcess, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"amqp": [], "mcp": []}
    async with aiohttp.ClientSession() as session:

        async def over_http(i: int) -> None:
            async with session.post(
                node.url + "/mcp", data=call_body(i, meta=True), headers=HEADERS
            ) as r:
                reply = await r.json()
            if "result" not in reply:
                raise RuntimeError(f"call failed: {reply}")

        for i in range(n // 10):  # warm both paths
            await client.call(i)
            await over_http(i)
        for i in range(n):
            t0 = time.perf_counter()
            await client.call(i)
            out["amqp"].append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            await over_http(i)
            out["mcp"].append((time.perf_counter() - t0) * 1e3)
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_calls(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    queue = f"vsmcp.bench.calls.{uuid.uuid4().hex[:8]}"
    node = start(base / "calls", config(URL, queue, ""))
    try:
        wait_for(lambda: bridge(node)["connected"], timeout_s=30, what="bridge connected")
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=False)
            client = await RpcClient(channel, queue).open()
            lat = await latencies(client, node, args.latency_calls)
            rates, node_cpu = [], []
            for _ in range(args.runs):
                cpu0, answered0 = cpu_s(node.pid), bridge(node)["counters"]["calls_answered"]
                rates.append(await amqp_throughput(client, args.in_flight, args.seconds))
                answered = bridge(node)["counters"]["calls_answered"] - answered0
                node_cpu.append((cpu_s(node.pid) - cpu0) / answered * 1e6)
            await channel.queue_delete(queue)
            await channel.queue_delete(f"{queue}.{node.node_id}")
        counters = bridge(node)["counters"]
    finally:
        node.stop()
    per_frame = counters["calls_answered"] / max(1, counters["ack_frames"])
    return {"latency": lat, "rates": rates, "node_cpu_us": node_cpu, "acks_per_frame": per_frame}


def bare_server(queue: str) -> None:
    """A bare aio-pika RPC server (no vsmcp): echo's answer to `reply_to`, confirmed,
    then ack — the library's own cost on this machine, for comparison."""

    async def serve() -> None:
        connection = await aio_pika.connect(URL)
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=256)
        calls = await channel.declare_queue(queue, auto_delete=True)

        async def on_call(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            request = json.loads(message.body)
            text = request["params"]["arguments"]["text"]
            result = {"content": [{"type": "text", "text": text}], "isError": False}
            answer = {"jsonrpc": "2.0", "id": request["id"], "result": result}
            body = json.dumps(answer).encode()
            await channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id=message.correlation_id),
                routing_key=str(message.reply_to),
                mandatory=False,
            )
            await message.ack()

        await calls.consume(on_call)
        await asyncio.Event().wait()

    uvloop.run(serve())  # the node's event loop too


async def bench_bare_calls(args: argparse.Namespace) -> dict[str, Any]:
    queue = f"vsmcp.bench.bare.{uuid.uuid4().hex[:8]}"
    server = multiprocessing.get_context("fork").Process(target=bare_server, args=(queue,))
    server.start()
    try:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=False)
            client = await RpcClient(channel, queue).open()
            await channel.declare_queue(queue, auto_delete=True)
            rates, cpu = [], []
            for _ in range(args.runs):
                assert server.pid is not None
                cpu0 = cpu_s(server.pid)
                rate = await amqp_throughput(client, args.in_flight, args.seconds)
                rates.append(rate)
                cpu.append((cpu_s(server.pid) - cpu0) / (rate * args.seconds) * 1e6)
    finally:
        server.terminate()
        server.join()
    return {"rates": rates, "cpu_us": cpu}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench_events(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    queue = f"vsmcp.bench.calls.{uuid.uuid4().hex[:8]}"
    data = base / "events"
    down = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    node = start(data, config(down, queue, '"tool_call"'))
    try:
        host, port = node.url.removeprefix("http://").split(":")
        params = {"name": "echo", "arguments": {"text": PAD}, "_meta": META}
        while bridge(node)["outbox_depth"] < args.events:
            drive_processes(
                host, int(port), "/mcp", HEADERS, params,
                processes=2, callers_per_process=8, seconds=2.0,
            )  # fmt: skip
        depth = bridge(node)["outbox_depth"]
        node_id = node.node_id
    finally:
        node.stop()
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "vsmcp.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        events = await channel.declare_queue(exclusive=True)
        await events.bind(exchange, f"{node_id}.#")
        times: list[float] = []
        cpu: list[float] = []
        finished = asyncio.Event()

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            times.append(time.perf_counter())
            if len(times) == 1 or len(times) == depth:
                cpu.append(cpu_s(again.pid))
            if len(times) >= depth:
                finished.set()

        await events.consume(on_event, no_ack=True)
        t0 = time.perf_counter()
        again = start(data, config(URL, queue, '"tool_call"'))
        try:
            await asyncio.wait_for(finished.wait(), 600)
            ready_to_last = time.perf_counter() - t0
            left = bridge(again)["outbox_depth"]
        finally:
            again.stop()
        await channel.queue_delete(queue)
        await channel.queue_delete(f"{queue}.{node_id}")
    drain_s = times[-1] - times[0]
    return {
        "events": depth,
        "received": len(times),
        "drain_s": drain_s,
        "rate": (len(times) - 1) / drain_s,
        "restart_to_last_s": ready_to_last,
        "left": left,
        "node_cpu_us": (cpu[-1] - cpu[0]) / (depth - 1) * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls-only", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs, args.latency_calls, args.events = 3.0, 1, 200, 5_000
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        calls = await bench_calls(base, args)
        bare = await bench_bare_calls(args)
        events = await bench_events(base, args) if not args.calls_only else None
    lat = calls["latency"]
    print(f"machine: {machine('RabbitMQ on loopback')}")
    print(
        f"AMQP calls: {statistics.median(calls['rates']):,.0f} calls/s "
        f"(runs {', '.join(f'{r:,.0f}' for r in calls['rates'])}; {args.in_flight} in flight); "
        f"node CPU per call {', '.join(f'{c:.0f}' for c in calls['node_cpu_us'])} us; "
        f"{calls['acks_per_frame']:.1f} calls acked per ack frame"
    )
    print(
        f"bare aio-pika RPC server (no vsmcp), same client: "
        f"{statistics.median(bare['rates']):,.0f} calls/s "
        f"(runs {', '.join(f'{r:,.0f}' for r in bare['rates'])}); "
        f"server CPU per call {', '.join(f'{c:.0f}' for c in bare['cpu_us'])} us"
    )
    for name in ("amqp", "mcp"):
        print(
            f"latency {name}: p50 {pct(lat[name], 0.5):.2f} ms, p99 {pct(lat[name], 0.99):.2f} ms"
        )
    added = pct(lat["amqp"], 0.5) - pct(lat["mcp"], 0.5)
    print(f"added by the broker path: p50 +{added:.2f} ms")
    if events is None:
        return
    print(
        f"events: {events['events']:,} from the outbox, {events['received']:,} received in "
        f"{events['drain_s']:.2f} s = {events['rate']:,.0f} events/s confirmed "
        f"(restart to last event {events['restart_to_last_s']:.2f} s; left {events['left']}); "
        f"node CPU per event {events['node_cpu_us']:.0f} us"
    )


if __name__ == "__main__":
    asyncio.run(main())
