"""CPU per mDNS packet: python-zeroconf's Python sources (the default) against its
compiled extensions (`mesh.mdns_compiled = true`).

    python benchmarks/bench_mdns_cpu.py [--packets 3000] [--rounds 3]

What a node pays for mDNS traffic on its segment: each mode runs in a fresh interpreter
(the kind of module is decided at zeroconf's first import, mesh/_zeroconf_sources.py)
with an `AsyncZeroconf` on 127.0.0.1 browsing `_vsmcp._tcp.local.` as the node does, and
hands its listener announcements of distinct services (PTR, SRV, TXT and A records, as a
responder sends them) the way the socket would: parse, cache, browser callbacks. The
figure is the process's CPU time per packet (user + system), best and median of
`--rounds`, modes alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

REPO_ROOT = Path(__file__).resolve().parent.parent


def announcement(index: int) -> bytes:
    """One fake service's announcement, as a responder sends it."""
    from zeroconf import DNSAddress, DNSOutgoing, DNSPointer, DNSService, DNSText, const

    from vsmcp.mesh.discovery import SERVICE_TYPE

    name = f"fake-{index}-{secrets.token_hex(4)}.{SERVICE_TYPE}"
    unique = const._CLASS_IN | const._CLASS_UNIQUE
    txt = b"".join(
        bytes([len(p)]) + p for p in (b"id=" + secrets.token_hex(26).encode(), b"mp=40000", b"pv=1")
    )
    records = [
        DNSPointer(SERVICE_TYPE, const._TYPE_PTR, const._CLASS_IN, 4500, name),
        DNSService(name, const._TYPE_SRV, unique, 120, 0, 0, 40000 + index, "fake.local."),
        DNSText(name, const._TYPE_TXT, unique, 4500, txt),
        DNSAddress("fake.local.", const._TYPE_A, unique, 120, socket.inet_aton("127.0.0.2")),
    ]
    out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
    for record in records:
        out.add_answer_at_time(record, 0)
    packet: bytes = out.packets()[0]
    return packet


async def one_mode(count: int) -> dict[str, Any]:
    """In this process: CPU per announcement handed to a browsing zeroconf's listener."""
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

    from vsmcp.mesh import _zeroconf_sources
    from vsmcp.mesh.discovery import SERVICE_TYPE

    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"])
    await aiozc.zeroconf.async_wait_for_start()
    seen = 0

    def changed(**_: object) -> None:
        nonlocal seen
        seen += 1

    browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[changed])
    packets = [announcement(i) for i in range(count)]
    listener = aiozc.zeroconf.engine.protocols[0]
    await asyncio.sleep(0.2)
    started = time.process_time()
    for packet in packets:
        listener.datagram_received(packet, ("127.0.0.2", 5353))
    await asyncio.sleep(0)  # the browser's callbacks for the last ones
    used = time.process_time() - started
    await browser.async_cancel()
    await aiozc.async_close()
    return {
        "us_per_packet": used / count * 1e6,
        "compiled": _zeroconf_sources.compiled(),
        "callbacks": seen,
    }


def one(mode: str, packets: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", mode, "--packets", str(packets)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=("sources", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one mode, decided before zeroconf is imported
        if args.one == "sources":
            from vsmcp.mesh._zeroconf_sources import prefer_sources

            assert prefer_sources()
        print(json.dumps(asyncio.run(one_mode(args.packets))))
        return
    runs: dict[str, list[dict[str, float]]] = {"sources": [], "compiled": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(one(mode, args.packets))
    print(f"machine: {machine()}; {args.packets} announcements per run, {args.rounds} rounds")
    for mode, results in runs.items():
        per = [r["us_per_packet"] for r in results]
        kinds = {r["compiled"] for r in results}
        print(
            f"{mode:9s} (compiled={kinds}): CPU per packet best {min(per):.1f} us, "
            f"median {statistics.median(per):.1f} us; browser callbacks per run "
            f"{[int(r['callbacks']) for r in results]}"
        )


if __name__ == "__main__":
    main()
