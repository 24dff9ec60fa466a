"""Advertise many fake `_vsmcp._tcp.local.` services, as anyone on a segment can.

    python -m tests.integration.mdns_flood COUNT INTERFACE

Each fake has a valid node id and TXT record and points at a port of INTERFACE where
nothing listens. Prints "registered COUNT" once all are announced, keeps them until
stdin closes, then withdraws them (goodbye packets) and prints "withdrawn". Run it only
on loopback or inside a network namespace of the test's own.
"""

from __future__ import annotations

import asyncio
import secrets
import sys

from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from vsmcp.mesh.discovery import SERVICE_TYPE
from vsmcp.mesh.identity import NodeKey

REGISTER_BATCH = 100
FAKE_PORT_BASE = 40000


def fake_service(index: int, interface: str) -> AsyncServiceInfo:
    node_id = NodeKey.generate().node_id
    port = FAKE_PORT_BASE + index
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"fake-{index}-{secrets.token_hex(4)}.{SERVICE_TYPE}",
        port=port,
        properties={"id": node_id, "fp": secrets.token_hex(32), "mp": str(port), "pv": "1"},
        server="fake-vsmcp.local.",
        parsed_addresses=[interface],
    )


async def main(count: int, interface: str) -> None:
    aiozc = AsyncZeroconf(interfaces=[interface])
    try:
        infos = [fake_service(i, interface) for i in range(count)]
        for start in range(0, count, REGISTER_BATCH):
            batch = infos[start : start + REGISTER_BATCH]
            # Cooperating responders: no probing for conflicts, as a flooder would not.
            announced = await asyncio.gather(
                *(aiozc.async_register_service(i, cooperating_responders=True) for i in batch)
            )
            await asyncio.gather(*announced)
        print(f"registered {count}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await aiozc.async_close()  # unregisters every service: goodbye packets
    print("withdrawn", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
