"""Transport benchmark: one-way throughput and request round trip, two processes, loopback.

    python benchmarks/bench_transport.py [--quick]

Measures `mesh.transport.Transport` (CURVE on, framing, priority queues, asyncio) and,
in the same run, plain pyzmq DEALER -> ROUTER (blocking sockets, one frame, no asyncio)
without and with CURVE, so the cost of each layer is visible. Throughput is counted at
the receiver (first to last of N 100-byte frames); latency is per sequential request.
Shared CI machines are noisy, so each side also reports its process CPU time per frame
(including libzmq's I/O thread, where CURVE runs): that figure depends far less on load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from vsmcp.mesh._transport_keys import curve_identity
from vsmcp.mesh.transport import Priority, Transport

PAYLOAD = b"p" * 100
ONEWAY = b"o" * 100
REPORT_TIMEOUT_S = 60.0
QUEUE_SOFT_LIMIT = 512
RAW_SERVER_SEED = bytes(32)


class Counter:
    """Receiver-side counts for the one-way phase, shared by both servers."""

    def __init__(self) -> None:
        self.mark()

    def mark(self) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.cpu_mark = time.process_time()

    def hit(self) -> None:
        self.last = time.perf_counter()
        if self.count == 0:
            self.first = self.last
        self.count += 1

    def report(self) -> bytes:
        cpu_s = time.process_time() - self.cpu_mark
        seconds = self.last - self.first
        return json.dumps({"count": self.count, "seconds": seconds, "cpu_s": cpu_s}).encode()


# -- servers (run in a child process) ----------------------------------------------------


async def serve_transport(seed: bytes) -> None:
    counter = Counter()

    def on_oneway(peer: bytes, payload: bytes) -> None:
        counter.hit()

    async def on_request(peer: bytes, payload: bytes) -> bytes:
        if payload == b"mark":
            counter.mark()
            return b"ok"
        if payload.startswith(b"report:"):
            want = int(payload[7:])
            deadline = time.monotonic() + REPORT_TIMEOUT_S
            while counter.count < want and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            return counter.report()
        return payload

    async with Transport(seed) as t:
        t.on_oneway(on_oneway)
        t.on_request(on_request)
        print(t.port, flush=True)
        await asyncio.Event().wait()


def serve_raw(curve: bool) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    if curve:
        server = curve_identity(RAW_SERVER_SEED)
        router.curve_server = True
        router.curve_secretkey = server.curve_secret_z85
        router.curve_publickey = server.curve_public_z85
    port = router.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    counter = Counter()
    while True:
        routing_id, payload = router.recv_multipart()
        if payload == ONEWAY:
            counter.hit()
        elif payload == b"mark":
            counter.mark()
            router.send_multipart([routing_id, b"ok"])
        elif payload == b"report":
            router.send_multipart([routing_id, counter.report()])
        else:
            router.send_multipart([routing_id, payload])


# -- clients -------------------------------------------------------------------------------


def spawn(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return cuts[49] / 1000, cuts[98] / 1000


def result(
    report: dict[str, float], sender_cpu_s: float, dropped: int, p50: float, p99: float
) -> dict[str, float]:
    count = report["count"]
    return {
        "msgs_per_s": count / report["seconds"],
        "sender_cpu_us": sender_cpu_s / count * 1e6,
        "receiver_cpu_us": report["cpu_s"] / count * 1e6,
        "received": count,
        "dropped": dropped,
        "rtt_p50_us": p50,
        "rtt_p99_us": p99,
    }


async def bench_transport(oneways: int, requests: int) -> dict[str, float]:
    seed = os.urandom(32)
    peer = curve_identity(seed).ed25519_public
    proc, port = spawn("transport", seed.hex())
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        async with Transport(os.urandom(32)) as t:
            for _ in range(200):
                await t.request(peer, endpoint, PAYLOAD, timeout_s=10)
            samples: list[int] = []
            for _ in range(requests):
                start = time.perf_counter_ns()
                await t.request(peer, endpoint, PAYLOAD, timeout_s=10)
                samples.append(time.perf_counter_ns() - start)
            p50, p99 = percentiles(samples)
            await t.request(peer, endpoint, b"mark", timeout_s=10)
            cpu_start = time.process_time()
            sent = 0
            for _ in range(oneways):
                # Back-pressure for a bulk sender: stay below the queue bound (no drops).
                if t.queued(peer) >= QUEUE_SOFT_LIMIT:
                    await t.flush(peer, max_queued=QUEUE_SOFT_LIMIT // 2)
                if t.send(peer, endpoint, ONEWAY, priority=Priority.BULK):
                    sent += 1
            reply = await t.request(peer, endpoint, b"report:%d" % sent, timeout_s=REPORT_TIMEOUT_S)
            sender_cpu_s = time.process_time() - cpu_start
            dropped = sum(t.stats.dropped.values())
    finally:
        proc.kill()
        proc.wait()
    return result(json.loads(reply), sender_cpu_s, dropped, p50, p99)


def bench_raw(oneways: int, requests: int, curve: bool) -> dict[str, float]:
    proc, port = spawn("raw-curve" if curve else "raw")
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    if curve:
        me = curve_identity(os.urandom(32))
        dealer.curve_serverkey = curve_identity(RAW_SERVER_SEED).curve_public_z85
        dealer.curve_publickey = me.curve_public_z85
        dealer.curve_secretkey = me.curve_secret_z85
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        for _ in range(200):
            dealer.send(PAYLOAD)
            dealer.recv()
        samples: list[int] = []
        for _ in range(requests):
            start = time.perf_counter_ns()
            dealer.send(PAYLOAD)
            dealer.recv()
            samples.append(time.perf_counter_ns() - start)
        p50, p99 = percentiles(samples)
        dealer.send(b"mark")
        dealer.recv()
        cpu_start = time.process_time()
        for _ in range(oneways):
            dealer.send(ONEWAY)
        dealer.send(b"report")
        reply = dealer.recv()
        sender_cpu_s = time.process_time() - cpu_start
    finally:
        dealer.close(linger=0)
        ctx.term()
        proc.kill()
        proc.wait()
    return result(json.loads(reply), sender_cpu_s, 0, p50, p99)


def zmq_machine() -> str:
    return machine(f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind = args.serve[0]
        if kind == "transport":
            asyncio.run(serve_transport(bytes.fromhex(args.serve[1])))
        else:
            serve_raw(curve=kind == "raw-curve")
        return
    oneways, requests = (20_000, 2_000) if args.quick else (200_000, 20_000)
    runs: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("pyzmq DEALER->ROUTER, no CURVE", lambda: bench_raw(oneways, requests, False)),
        ("pyzmq DEALER->ROUTER, CURVE", lambda: bench_raw(oneways, requests, True)),
        ("mesh.transport, CURVE", lambda: asyncio.run(bench_transport(oneways, requests))),
    ]
    print(f"machine: {zmq_machine()}")
    print(f"{oneways} one-way 100-byte frames, {requests} sequential 100-byte requests")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(
        "| what | one-way msg/s | sender CPU µs/msg | receiver CPU µs/msg "
        "| RTT p50 µs | RTT p99 µs | received | dropped |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs:
        r = run()
        print(
            f"| {name} | {r['msgs_per_s']:,.0f} | {r['sender_cpu_us']:.1f} | "
            f"{r['receiver_cpu_us']:.1f} | {r['rtt_p50_us']:.0f} | {r['rtt_p99_us']:.0f} | "
            f"{r['received']:,.0f} | {r['dropped']:,.0f} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
