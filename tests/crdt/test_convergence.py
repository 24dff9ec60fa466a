"""Property: replicas under random delivery, duplication, partitions, compaction and a
forging replica converge to the same view, equal to a plain reference model."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.crdt.harness import Network
from vsmcp.crdt.errors import StaleRecord
from vsmcp.crdt.registry import (
    Announcement,
    CapabilityEntry,
    entry_key,
)
from vsmcp.crdt.replica import VerifiedDoc
from vsmcp.crdt.signing import SIGNATURE_BYTES, Ed25519Signer

TOOLS = ["echo", "time", "search"]
ZONES = ["public", "ops"]
TITLES = ["", "Echo", "Other"]  # "": announced without metadata


class Model:
    """Reference: per key the highest (rank, blob) any honest write produced."""

    def __init__(self) -> None:
        self.best: dict[str, tuple[tuple[int, int], bytes, Any]] = {}
        self.history: list[tuple[str, str, bytes]] = []  # (doc, key, blob)

    def record(self, doc: VerifiedDoc[Any, Any], key: str) -> None:
        held = doc.held(key)
        assert held is not None
        self.history.append((doc.name, key, held.blob))
        slot = f"{doc.name}:{key}"  # the metadata doc's keys are the registry's
        current = self.best.get(slot)
        candidate = (held.checked.rank, held.blob, held.checked.record)
        if current is None or candidate[:2] > current[:2]:
            self.best[slot] = candidate

    def view(self) -> list[tuple[bytes, str, str, int, str]]:
        """Live entries, each with the title of the metadata record of its version."""
        records = [rec for rank, _, rec in self.best.values() if rank[1] == 0]
        titles = {
            (r.provider, r.name, r.version): r.metadata["title"]
            for r in records
            if not isinstance(r, CapabilityEntry)
        }
        return sorted(
            (e.provider, e.name, e.zone, e.version, titles.get((e.provider, e.name, e.version), ""))
            for e in records
            if isinstance(e, CapabilityEntry)
        )


def forge(net: Network, model: Model, forger: int, data: st.DataObject) -> None:
    """The forger writes raw values into its own doc; they replicate like any update."""
    registry = net.replicas[forger].registry
    doc: VerifiedDoc[Any, Any] = registry
    kind = data.draw(st.sampled_from(["wrong_key", "altered", "replay", "junk"]))
    victim = net.replicas[data.draw(st.integers(0, forger - 1))].signer  # never itself
    tool = data.draw(st.sampled_from(TOOLS))
    key = entry_key(victim.public_key, tool)
    value: Any
    if kind == "wrong_key":
        record = Announcement(
            provider=victim.public_key,
            name=tool,
            zone="restricted",
            description="forged",
            input_schema="{}",
            version=2**52,
            announced_at_ms=net.clock.now_ms,
            expires_at_ms=net.clock.now_ms + 10**9,
        )
        payload = msgspec.msgpack.encode(record)
        value = payload + net.replicas[forger].signer.sign_detached(registry.domain + payload)
    elif kind in ("altered", "replay") and model.history:
        name, key, blob = data.draw(st.sampled_from(model.history))
        doc = registry.metadata if name == registry.metadata.name else registry
        if kind == "altered":
            position = data.draw(st.integers(0, len(blob) - SIGNATURE_BYTES - 1))
            value = blob[:position] + bytes([blob[position] ^ 0x01]) + blob[position + 1 :]
        else:
            value = blob
    else:
        value = data.draw(st.sampled_from([b"junk", "text", 12345, 1.5]))
    with doc._doc.transaction():
        doc._map[key] = value


@settings(max_examples=60)
@given(data=st.data(), count=st.integers(3, 5))
def test_replicas_converge_to_reference_model(data: st.DataObject, count: int) -> None:
    net = Network.create(count)
    model = Model()
    forger = count - 1  # the last replica also forges
    for _ in range(data.draw(st.integers(5, 60), label="steps")):
        op = data.draw(
            st.sampled_from(
                [
                    "announce",
                    "announce",
                    "leave",
                    "evict",
                    "deliver",
                    "deliver",
                    "deliver",
                    "duplicate",
                    "partition",
                    "heal",
                    "compact",
                    "forge",
                    "anti_entropy",
                ]
            )
        )
        index = data.draw(st.integers(0, count - 1))
        replica = net.replicas[index]
        if op == "announce":
            tool = data.draw(st.sampled_from(TOOLS))
            zone = data.draw(st.sampled_from(ZONES))
            title = data.draw(st.sampled_from(TITLES))
            metadata = {"title": title} if title else None
            registry, owner = replica.registry, replica.signer.public_key
            registry.announce(
                replica.signer, tool, zone=zone, input_schema={"n": 1}, metadata=metadata
            )
            model.record(registry, entry_key(owner, tool))
            if metadata:
                model.record(registry.metadata, entry_key(owner, tool))
        elif op in ("leave", "evict"):
            owner = net.replicas[data.draw(st.integers(0, count - 1))].signer
            by = net.authority if op == "evict" else replica.signer
            if op == "leave":
                owner = replica.signer
            try:
                names = replica.registry.retire(owner.public_key, by=by)
            except StaleRecord:  # pragma: no cover - retire skips what it cannot beat
                raise
            for name in names:
                model.record(replica.registry, entry_key(owner.public_key, name))
        elif op == "deliver" and net.pool:
            net.deliver(data.draw(st.integers(0, len(net.pool) - 1)))
        elif op == "duplicate" and net.pool:
            net.deliver(data.draw(st.integers(0, len(net.pool) - 1)), keep=True)
        elif op == "partition":
            net.cut = frozenset(data.draw(st.sets(st.integers(0, count - 1), min_size=1)))
        elif op == "heal":
            net.cut = None
        elif op == "compact":
            replica.registry.compact()
        elif op == "forge":
            forge(net, model, forger, data)
        elif op == "anti_entropy":
            net.anti_entropy()
    net.cut = None
    net.drain()
    for _ in range(3):
        net.anti_entropy()
    expected = model.view()
    for view in net.views():
        assert view == expected


def test_forged_entries_never_surface_even_alone() -> None:
    net = Network.create(3)
    honest, forger = net.replicas[0], net.replicas[2]
    honest.registry.announce(honest.signer, "echo", zone="public", version=5)
    net.drain()
    good = honest.registry.held(entry_key(honest.signer.public_key, "echo"))
    assert good is not None
    honest.registry.announce(honest.signer, "echo", zone="ops", version=6)
    net.drain()
    key = entry_key(honest.signer.public_key, "echo")
    with forger.registry._doc.transaction():
        forger.registry._map[key] = good.blob  # replay of version 5 after version 6
    net.drain()
    for replica in net.replicas[:2]:
        assert [(e.zone, e.version) for e in replica.registry.view()] == [("ops", 6)]
    honest.registry.retire(honest.signer.public_key, by=honest.signer)
    net.drain()
    with forger.registry._doc.transaction():
        forger.registry._map[key] = good.blob  # replay after retirement
    net.drain()
    net.anti_entropy()
    assert net.views() == [[], [], []]


def test_only_owner_or_authority_may_retire() -> None:
    net = Network.create(2)
    owner, other = net.replicas
    owner.registry.announce(owner.signer, "echo", zone="public")
    net.drain()
    import pytest

    from vsmcp.crdt.errors import NotAuthorized

    with pytest.raises(NotAuthorized):
        other.registry.retire(owner.signer.public_key, by=other.signer)
    stranger = Ed25519Signer()
    with pytest.raises(NotAuthorized):
        other.registry.retire(owner.signer.public_key, by=stranger)
    assert other.registry.retire(owner.signer.public_key, by=net.authority) == ["echo"]
    net.drain()
    assert net.views() == [[], []]
