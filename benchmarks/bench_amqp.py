"""AMQP bridge benchmark: tool calls through RabbitMQ, and events published with confirms.

    python benchmarks/bench_amqp.py [--quick] [--baseline DIR]

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest). Starts real `vsmcpd` processes on
loopback; the other side is plain aio-pika/aiormq (not our code).

- calls: `tools/call` of the built-in `echo` sent to the node's calls queue, answered to
  the reply queue. Throughput: `--clients` client processes (each its own connection,
  reply queue and pipelined callers; `--in-flight` calls outstanding in all) for
  `--seconds`; node and broker CPU per answered call from /proc. Latency of sequential
  calls (p50/p99) beside the same call at the node's `/mcp` (stateless 2026-07-28 POST,
  aiohttp, keep-alive): the difference is what the broker path adds. For scale, the same
  clients against a bare aio-pika RPC server (no vsmcp).
- events: a node whose broker is unreachable fills its outbox with `--events`
  `tool_call` events (calls at /mcp); it is stopped, then started with the broker
  reachable, and a consumer bound to `<node>.#` times the drain: first to last event
  received, every one published persistent and confirmed by the broker before the node
  deletes it from its SQLite outbox.
- `--baseline DIR`: a checkout of an earlier commit (`git archive REV | tar -x -C DIR`);
  every measurement runs for it and for this checkout, alternating, in the same run (the
  machine's load changes by the minute), the events drain from copies of one outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import shutil
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
import aiormq
import uvloop
from _http_load import drive_processes
from _machine import machine
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import NodeProcess
from tests.polling import async_wait_until, wait_for

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
CURRENT = "this checkout"
BASELINE = "baseline"


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


class CheckoutNode(NodeProcess):
    """A node run from another checkout's code (`--baseline`): its path goes first, so
    the harness's working directory does not shadow it."""

    def __init__(self, code: Path, data_dir: Path, *args: str) -> None:
        super().__init__(data_dir, *args)
        self.code = code

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("-m")
        run = (
            f"import sys, runpy; sys.path.insert(0, {str(self.code)!r}); "
            "runpy.run_module('vsmcp.node', run_name='__main__', alter_sys=True)"
        )
        return [cmd[0], "-c", run, *cmd[at + 2 :]]


def start(data: Path, text: str, code: Path | None = None) -> NodeProcess:
    path = data.parent / f"{data.name}.toml"
    path.write_text(text)
    args = ("--config", str(path), "--no-mdns")
    node = NodeProcess(data, *args) if code is None else CheckoutNode(code, data, *args)
    return node.start()


def bridge(node: NodeProcess) -> dict[str, Any]:
    status: dict[str, Any] = node.get_json("/api/vsm")["bridges"]["amqp"]
    return status


def connected(node: NodeProcess) -> bool:
    return bool(bridge(node)["connected"])


def call_body(i: int, meta: bool) -> bytes:
    params: dict[str, Any] = {"name": "echo", "arguments": {"text": f"{i} {PAD}"}}
    if meta:
        params["_meta"] = META
    return json.dumps(
        {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
    ).encode()


class RpcClient:
    """aio-pika's RPC pattern, one call at a time (the latency measurement)."""

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


async def _load(
    queue: str, in_flight: int, seconds: float, batched: bool = True
) -> tuple[int, float, float]:
    """One client process: its own connection and reply queue, `in_flight` callers each
    with one call outstanding. The client must not be what is measured: the calls ready
    in one iteration of its event loop leave in one write (pamqp's frames for each, one
    `ChannelFrame` on aiormq's write queue), not one `basic_publish` and one system call
    each (`batched=False`, `--unbatched-client`: ≈40 % more client CPU per call)."""
    connection = await aiormq.connect(URL)
    try:
        channel = await connection.channel(publisher_confirms=False)
        assert isinstance(channel, aiormq.Channel)
        reply_to = (await channel.queue_declare(exclusive=True)).queue
        assert reply_to is not None
        waiting: dict[str, asyncio.Future[bytes]] = {}
        loop = asyncio.get_running_loop()

        async def on_reply(message: aiormq.abc.DeliveredMessage) -> None:
            future = waiting.pop(str(message.header.properties.correlation_id), None)
            if future is not None and not future.done():
                future.set_result(message.body)

        await channel.basic_consume(reply_to, on_reply, no_ack=True)
        pending: list[Any] = []  # frames of the calls not written yet
        writes: set[asyncio.Task[None]] = set()

        def flush() -> None:
            payload = ChannelFrame.marshall(channel.number, pending)
            pending.clear()
            task = asyncio.create_task(channel.write_queue.put(payload))
            writes.add(task)
            task.add_done_callback(writes.discard)

        done = 0
        # Ids unique across processes and runs: the node answers a repeated message id
        # (with the same body) from memory, which is not what is measured.
        prefix = uuid.uuid4().hex[:12]
        t0, cpu0 = time.perf_counter(), time.process_time()
        stop_at = t0 + seconds

        async def caller(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop_at:
                correlation_id = f"{prefix}.{i}"
                future = loop.create_future()
                waiting[correlation_id] = future
                body = call_body(i, meta=False)
                properties = spec.Basic.Properties(
                    correlation_id=correlation_id, reply_to=reply_to, message_id=correlation_id
                )
                if not batched:
                    await channel.basic_publish(
                        body, routing_key=queue, properties=properties, wait=False
                    )
                else:
                    if not pending:
                        loop.call_soon(flush)
                    pending.append(spec.Basic.Publish(routing_key=queue))
                    pending.append(ContentHeader(properties=properties, body_size=len(body)))
                    pending.append(ContentBody(body))
                answer = await future
                if b'"result"' not in answer:
                    raise RuntimeError(f"call failed: {answer[:300]!r}")
                done += 1
                i += in_flight

        await asyncio.wait_for(asyncio.gather(*(caller(k) for k in range(in_flight))), seconds + 30)
        return done, time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await connection.close()


def _load_process(queue: str, in_flight: int, seconds: float, batched: bool, out: Any) -> None:
    out.put(uvloop.run(_load(queue, in_flight, seconds, batched)))


def offer_load(queue: str, args: argparse.Namespace) -> tuple[float, int, float]:
    """Calls answered per second by `--clients` client processes (each timed from its
    connection on), how many in all, and the clients' CPU seconds (a client slower than
    the node would measure itself)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    per_client = max(1, args.in_flight // args.clients)
    procs = [
        context.Process(
            target=_load_process,
            args=(queue, per_client, args.seconds, not args.unbatched_client, results),
        )
        for _ in range(args.clients)
    ]
    for proc in procs:
        proc.start()
    counts = [results.get(timeout=args.seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    rate = sum(done / elapsed for done, elapsed, _ in counts)
    return rate, sum(done for done, _, _ in counts), sum(cpu for _, _, cpu in counts)


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


def broker_pid() -> int | None:
    """RabbitMQ's Erlang VM on this machine, to count the broker's CPU too."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "beam.smp":
                    return int(proc.name)
            except OSError:
                continue
    return None


class Cpu:
    """CPU seconds of the node and the broker over a measurement."""

    def __init__(self, node_pid: int) -> None:
        self.pids = {"node": node_pid, "broker": broker_pid()}
        self.start = self.read()

    def read(self) -> dict[str, float]:
        return {k: cpu_s(pid) if pid else 0.0 for k, pid in self.pids.items()}

    def per(self, count: int) -> dict[str, float]:
        """µs of CPU per unit (call, event) since the start."""
        now = self.read()
        return {k: (now[k] - self.start[k]) / max(1, count) * 1e6 for k in now}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def variants(args: argparse.Namespace) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    if args.baseline:
        out[BASELINE] = Path(args.baseline).resolve()
    out[CURRENT] = None
    return out


async def bench_calls(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    nodes: dict[str, tuple[NodeProcess, str]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, code in variants(args).items():
            queue = f"vsmcp.bench.calls.{uuid.uuid4().hex[:8]}"
            data = base / f"calls-{len(nodes)}"
            nodes[name] = (start(data, config(URL, queue, ""), code), queue)
            results[name] = {
                "rates": [], "node_cpu_us": [], "broker_cpu_us": [], "client_cpu_us": [],
                "mcp_rates": [], "mcp_cpu_us": [],
            }  # fmt: skip
        for node, _ in nodes.values():
            wait_for(functools.partial(connected, node), timeout_s=30, what="bridge connected")
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=False)
            for name, (node, queue) in nodes.items():
                client = await RpcClient(channel, queue).open()
                results[name]["latency"] = await latencies(client, node, args.latency_calls)
            for _ in range(args.runs):
                for name, (node, queue) in nodes.items():
                    before = bridge(node)["counters"]
                    cpu = Cpu(node.pid)
                    rate, done, client_s = await asyncio.to_thread(offer_load, queue, args)
                    per = cpu.per(done)
                    results[name]["client_cpu_us"].append(client_s / max(1, done) * 1e6)
                    after = bridge(node)["counters"]
                    if after["calls_duplicates"] != before["calls_duplicates"]:
                        status = bridge(node)
                        raise RuntimeError(
                            f"[{name}] calls answered from memory: ids were repeated "
                            f"(connects {before['connects']} -> {after['connects']}, last "
                            f"error {status['last_error']!r})"
                        )
                    results[name]["rates"].append(rate)
                    results[name]["node_cpu_us"].append(per["node"])
                    results[name]["broker_cpu_us"].append(per["broker"])
                    # The same call at /mcp on the same node: the node's own call path.
                    host, port = node.url.removeprefix("http://").split(":")
                    params = {"name": "echo", "arguments": {"text": PAD}, "_meta": META}
                    cpu = Cpu(node.pid)
                    rate, _ = await asyncio.to_thread(
                        drive_processes, host, int(port), "/mcp", HEADERS, params,
                        processes=args.clients, callers_per_process=args.in_flight // 8,
                        seconds=args.seconds,
                    )  # fmt: skip
                    results[name]["mcp_rates"].append(rate)
                    results[name]["mcp_cpu_us"].append(cpu.per(int(rate * args.seconds))["node"])
            for node, queue in nodes.values():
                await channel.queue_delete(queue)
                await channel.queue_delete(f"{queue}.{node.node_id}")
        for name, (node, _) in nodes.items():
            counters = bridge(node)["counters"]
            answered = counters["calls_answered"]
            results[name]["acks_per_frame"] = answered / max(1, counters["ack_frames"])
            writes = counters.get("reply_writes")
            results[name]["replies_per_write"] = answered / writes if writes else 1.0
    finally:
        for node, _ in nodes.values():
            node.stop()
    return results


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
    server = multiprocessing.get_context("spawn").Process(target=bare_server, args=(queue,))
    server.start()
    try:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=False)
            await channel.declare_queue(queue, auto_delete=True, passive=False)
            rates, cpu = [], []
            for _ in range(args.runs):
                assert server.pid is not None
                cpu0 = cpu_s(server.pid)
                rate, done, _ = await asyncio.to_thread(offer_load, queue, args)
                rates.append(rate)
                cpu.append((cpu_s(server.pid) - cpu0) / done * 1e6)
    finally:
        server.terminate()
        server.join()
    return {"rates": rates, "cpu_us": cpu}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill_outbox(data: Path, queue: str, count: int) -> tuple[int, str]:
    """A node with its broker unreachable, `count` tool_call events in its outbox."""
    down = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    node = start(data, config(down, queue, '"tool_call"'))
    try:
        host, port = node.url.removeprefix("http://").split(":")
        params = {"name": "echo", "arguments": {"text": PAD}, "_meta": META}
        while bridge(node)["outbox_depth"] < count:
            drive_processes(
                host, int(port), "/mcp", HEADERS, params,
                processes=2, callers_per_process=8, seconds=2.0,
            )  # fmt: skip
        return int(bridge(node)["outbox_depth"]), node.node_id
    finally:
        node.stop()


async def drain(
    data: Path, queue: str, node_id: str, code: Path | None, poll_s: float
) -> dict[str, Any]:
    """Restart the node of `data` with the broker reachable; time its outbox drain at the
    node (first entry confirmed to the outbox empty, polled), then check that a plain
    consumer got every one."""
    connection = await aiormq.connect(URL)
    try:
        channel = await connection.channel()
        await channel.exchange_declare("vsmcp.events", exchange_type="topic", durable=True)
        events = (await channel.queue_declare(exclusive=True)).queue
        assert events is not None
        await channel.queue_bind(events, "vsmcp.events", routing_key=f"{node_id}.#")
        received = 0

        async def on_event(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal received
            received += 1

        await channel.basic_consume(events, on_event, no_ack=True)
        again = start(data, config(URL, queue, '"tool_call"'), code)
        try:
            status = bridge(again)
            meter, t0 = Cpu(again.pid), time.perf_counter()
            while status["counters"]["published"] == 0 or status["outbox_depth"]:
                if status["counters"]["published"] == 0:
                    meter, t0 = Cpu(again.pid), time.perf_counter()
                await asyncio.sleep(poll_s)
                status = bridge(again)
            drain_s = time.perf_counter() - t0
            published = status["counters"]["published"]
            per = meter.per(published)
            await async_wait_until(
                lambda: received >= published, timeout_s=300, what="every event consumed"
            )
        finally:
            again.stop()
        await channel.queue_delete(queue)
        await channel.queue_delete(f"{queue}.{node_id}")
    finally:
        await connection.close()
    return {
        "events": published,
        "received": received,
        "drain_s": drain_s,
        "rate": published / drain_s,
        "node_cpu_us": per["node"],
        "broker_cpu_us": per["broker"],
    }


async def bench_events(base: Path, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    queue = f"vsmcp.bench.calls.{uuid.uuid4().hex[:8]}"
    filled = base / "events"
    _, node_id = await fill_outbox(filled, queue, args.events)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants(args)}
    for run in range(args.runs):
        for name, code in variants(args).items():
            data = base / f"events-{run}-{len(results[name])}-{name.replace(' ', '-')}"
            shutil.copytree(filled, data)
            results[name].append(await drain(data, queue, node_id, code, args.poll))
    return results


def _runs(values: list[float], unit: str = "") -> str:
    return ", ".join(f"{v:,.0f}{unit}" for v in values)


def report(args: argparse.Namespace, calls: dict[str, Any], bare: dict[str, Any]) -> None:
    print(f"machine: {machine('RabbitMQ on loopback')}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for name, result in calls.items():
        lat = result["latency"]
        print(
            f"[{name}] AMQP calls: {statistics.median(result['rates']):,.0f} calls/s "
            f"(runs {_runs(result['rates'])}; {args.clients} clients, {args.in_flight} in "
            f"flight); CPU per call: node {_runs(result['node_cpu_us'], ' us')}, broker "
            f"{_runs(result['broker_cpu_us'], ' us')}, clients "
            f"{_runs(result['client_cpu_us'], ' us')}; {result['acks_per_frame']:.1f} calls "
            f"per ack frame, {result['replies_per_write']:.1f} replies per write"
        )
        print(
            f"[{name}] the same call at /mcp ({args.clients} processes, "
            f"{args.in_flight // 8} callers each): {statistics.median(result['mcp_rates']):,.0f} "
            f"calls/s (runs {_runs(result['mcp_rates'])}); node CPU per call "
            f"{_runs(result['mcp_cpu_us'], ' us')}"
        )
        for path in ("amqp", "mcp"):
            print(
                f"[{name}] latency {path}: p50 {pct(lat[path], 0.5):.2f} ms, "
                f"p99 {pct(lat[path], 0.99):.2f} ms"
            )
        added = pct(lat["amqp"], 0.5) - pct(lat["mcp"], 0.5)
        print(f"[{name}] added by the broker path: p50 +{added:.2f} ms")
    print(
        f"bare aio-pika RPC server (no vsmcp), same clients: "
        f"{statistics.median(bare['rates']):,.0f} calls/s (runs {_runs(bare['rates'])}); "
        f"server CPU per call {_runs(bare['cpu_us'], ' us')}"
    )


def report_events(events: dict[str, list[dict[str, Any]]]) -> None:
    for name, runs in events.items():
        for e in runs:
            print(
                f"[{name}] events: {e['events']:,} confirmed from the outbox in "
                f"{e['drain_s']:.2f} s = {e['rate']:,.0f} events/s ({e['received']:,} received "
                f"by the consumer); CPU per event: node {e['node_cpu_us']:.0f} us, broker "
                f"{e['broker_cpu_us']:.0f} us"
            )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls-only", action="store_true")
    parser.add_argument("--events-only", action="store_true")
    parser.add_argument("--baseline", help="a checkout of an earlier commit to compare")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=128)
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--poll", type=float, default=0.05, help="s between drain polls")
    parser.add_argument(
        "--unbatched-client",
        action="store_true",
        help="the load clients publish each call with its own basic_publish (one write each)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs, args.latency_calls, args.events = 3.0, 1, 200, 5_000
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        if not args.events_only:
            calls = await bench_calls(base, args)
            bare = await bench_bare_calls(args)
            report(args, calls, bare)
        if not args.calls_only:
            report_events(await bench_events(base, args))


if __name__ == "__main__":
    asyncio.run(main())
