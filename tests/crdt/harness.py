"""A simulated network of replicas for the crdt tests: real ReplicatedState-style docs
and SyncEndpoints, messages held in a pool and delivered in any order the test picks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from vsmcp.crdt.registry import CapabilityRegistry
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.crdt.sync import SyncEndpoint


@dataclass
class Clock:
    now_ms: int = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Replica:
    index: int
    signer: Ed25519Signer
    registry: CapabilityRegistry
    endpoint: SyncEndpoint


@dataclass
class Network:
    replicas: list[Replica]
    clock: Clock
    authority: Ed25519Signer
    pool: list[tuple[int, int, bytes]] = field(default_factory=list)  # (src, dst, message)
    cut: frozenset[int] | None = None  # one side of a partition

    @classmethod
    def create(cls, count: int, seed: int = 0) -> Network:
        clock = Clock()
        authority = Ed25519Signer(bytes([255]) * 31 + bytes([seed % 256]))
        net = cls([], clock, authority)
        for index in range(count):
            signer = Ed25519Signer(bytes([index + 1]) * 31 + bytes([seed % 256]))
            registry = CapabilityRegistry(
                replica_id=signer.public_key,
                authority_keys=[authority.public_key],
                clock=clock,
                client_ids=_seeded_ids(seed * 1000 + index),
            )
            endpoint = SyncEndpoint(registry.documents())
            endpoint.on_update(net._broadcaster(index))
            net.replicas.append(Replica(index, signer, registry, endpoint))
        return net

    def _broadcaster(self, src: int):  # type: ignore[no-untyped-def]
        def push(message: bytes) -> None:
            for dst in range(len(self.replicas)):
                if dst != src:
                    self.pool.append((src, dst, message))

        return push

    def separated(self, a: int, b: int) -> bool:
        return self.cut is not None and ((a in self.cut) != (b in self.cut))

    def deliver(self, position: int, *, keep: bool = False) -> None:
        src, dst, message = self.pool[position] if keep else self.pool.pop(position)
        if self.separated(src, dst):
            return  # lost on the cut link
        for reply in self.replicas[dst].endpoint.handle(message):
            self.pool.append((dst, src, reply))

    def drain(self, order: list[int] | None = None, limit: int = 100_000) -> None:
        steps = 0
        while self.pool:
            steps += 1
            assert steps < limit, "sync did not quiesce"
            self.deliver(0)

    def anti_entropy(self) -> None:
        for a in self.replicas:
            for b in self.replicas:
                if a is not b and not self.separated(a.index, b.index):
                    for request in a.endpoint.make_sync_request():
                        self.pool.append((a.index, b.index, request))
        self.drain()

    def views(self) -> list[list[tuple[bytes, str, str, int, str]]]:
        """Each replica's entries: provider, name, zone, version and metadata title."""
        return [
            [
                (e.provider, e.name, e.zone, e.version, e.metadata.get("title", ""))
                for e in r.registry.view()
            ]
            for r in self.replicas
        ]


def _seeded_ids(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return lambda: rng.getrandbits(32)
