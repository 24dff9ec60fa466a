"""One real `MeshService` in its own process, for tests that need a node where `vsmcpd`
cannot run: listening on a namespace's veth address in dev mode (the daemon refuses
that), or a hostile peer that lies about its address.

    python -m tests.integration.mesh_peer STATUS_FILE --host H [--seed S] [--hostile]

Every 50 ms the process writes its state to STATUS_FILE (JSON, replaced atomically):
node id, mesh port, admitted peers with their zones, refusal counters. It runs until
stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vsmcp.mesh.certs import (
    Certificate,
    ZoneOrder,
    decode_certificate,
    encode_certificate,
    fingerprint,
    self_certify,
    verify_certificate,
)
from vsmcp.mesh.envelope import Opener, Sealer
from vsmcp.mesh.identity import NodeKey
from vsmcp.mesh.replay import ReplayGuard
from vsmcp.node.peers.service import Hello, MeshService, PeerMeta, signed_issuer

STATUS_INTERVAL_S = 0.05
DEV_CERT_LIFETIME_S = 3600
ZONES = ZoneOrder(("public", "ops", "restricted"))


def _accept_any_self_certified(hello: Hello, *_peer_address: str) -> Certificate:
    signed = decode_certificate(hello.certificate)
    return verify_certificate(signed, signed_issuer(signed), ZONES)


def build(args: argparse.Namespace) -> MeshService:
    service = dev_peer(args.host, args.seed, mesh_name="mesh-peer-test", zone="restricted")
    if args.hostile:
        # The attacker's own node: it admits anyone, so its answers reach the victim.
        service._verify_peer_certificate = _accept_any_self_certified  # type: ignore[method-assign]
    return service


def dev_peer(host: str, seeds: list[str], *, mesh_name: str, zone: str) -> MeshService:
    """A self-certified (dev) member, without roles, joining through `seeds`."""
    key = NodeKey.generate()
    signed = self_certify(key, zone, DEV_CERT_LIFETIME_S, zones=ZONES)
    return MeshService(
        key=key,
        certificate=encode_certificate(signed),
        authority_public_key=key.public_key,
        zones=ZONES,
        dev=True,
        sealer=Sealer(key),
        opener=Opener(ReplayGuard(), local_public_key=key.public_key),
        host=host,
        port=0,
        http_port=None,
        fingerprint=fingerprint(signed),
        seeds=seeds,
        mdns=False,
        mesh_name=mesh_name,
        preset="local",
    )


@contextlib.asynccontextmanager
async def dev_pair(mesh_name: str) -> AsyncIterator[tuple[MeshService, MeshService]]:
    """Two running dev members on loopback in this process, the second seeded by the first."""
    a = dev_peer("127.0.0.1", [], mesh_name=mesh_name, zone="public")
    async with a:
        b = dev_peer("127.0.0.1", [f"127.0.0.1:{a.port}"], mesh_name=mesh_name, zone="public")
        async with b:
            yield a, b


def status(service: MeshService) -> dict[str, Any]:
    return {
        "node_id": service.node_id,
        "port": service.port,
        "peers": {node_id: p.certificate.zone for node_id, p in service.peers.items()},
        "refused": dict(service.stats.refused),
        "hellos_sent": service.stats.hellos_sent,
        "hellos_answered": service.stats.hellos_answered,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("status_file", type=Path)
    parser.add_argument("--host", required=True)
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--hostile", action="store_true", help="claim 127.0.0.1, admit anyone")
    args = parser.parse_args()
    service = build(args)
    async with service:
        if args.hostile:
            # The lie under test: a peer elsewhere on the network says it is on loopback.
            meta = service._meta
            assert meta is not None
            service._meta = PeerMeta("127.0.0.1", meta.mesh_port, None, meta.fingerprint)
        stdin_closed = asyncio.ensure_future(
            asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        )
        tmp = args.status_file.with_suffix(".tmp")
        while not stdin_closed.done():
            tmp.write_text(json.dumps(status(service)))
            tmp.replace(args.status_file)
            await asyncio.wait({stdin_closed}, timeout=STATUS_INTERVAL_S)


if __name__ == "__main__":
    asyncio.run(main())
