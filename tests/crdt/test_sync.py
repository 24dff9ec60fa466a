"""Sync protocol: size caps, garbage, state-vector sync, epochs and compaction."""

from __future__ import annotations

import msgspec
import pytest

from tests.crdt.harness import Network
from vsmcp.crdt.errors import InvalidUpdate, MalformedMessage, MessageTooLarge, UnknownDocument
from vsmcp.crdt.replica import Epoch
from vsmcp.crdt.sync import (
    MAX_UPDATES_PER_MESSAGE,
    SyncStep1,
    SyncUpdate,
    decode_message,
    encode_message,
)


def test_oversized_message_rejected_before_decoding() -> None:
    net = Network.create(2)
    endpoint = net.replicas[0].endpoint
    big = encode_message(SyncUpdate("registry", Epoch(0, b""), [b"x" * 1000]))
    with pytest.raises(MessageTooLarge):
        decode_message(big, max_bytes=500)
    assert MessageTooLarge.reason == "message_too_large"
    huge = b"\x93" + b"\x00" * (17 * 1024 * 1024)
    with pytest.raises(MessageTooLarge):
        endpoint.handle(huge)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xff\xff\xff",
        msgspec.msgpack.encode([9, "registry", [0, b""], b""]),  # unknown tag
        msgspec.msgpack.encode([1, "registry", [-1, b""], b""]),  # negative epoch
        msgspec.msgpack.encode([1, "registry", [2**60, b""], b""]),  # epoch beyond 2**53
        msgspec.msgpack.encode([3, "registry", [0, b""], [b""] * (MAX_UPDATES_PER_MESSAGE + 1)]),
        msgspec.msgpack.encode([1, "x" * 100, [0, b""], b""]),
        b"\x94\x01\xa3\xff\xfe\xfd",  # invalid utf-8
    ],
)
def test_garbage_rejected_with_crdt_error(garbage: bytes) -> None:
    net = Network.create(1)
    with pytest.raises(MalformedMessage):
        net.replicas[0].endpoint.handle(garbage)


def test_unknown_document_and_garbage_update() -> None:
    net = Network.create(1)
    endpoint = net.replicas[0].endpoint
    with pytest.raises(UnknownDocument):
        endpoint.handle(encode_message(SyncStep1("nope", Epoch(0, b""), b"")))
    with pytest.raises(InvalidUpdate):
        endpoint.handle(encode_message(SyncUpdate("registry", Epoch(0, b""), [b"\x01\x02\x03"])))
    with pytest.raises(InvalidUpdate):
        endpoint.handle(encode_message(SyncStep1("registry", Epoch(0, b""), b"\xff\xff")))


def test_state_vector_sync_brings_late_replica_up_to_date() -> None:
    net = Network.create(3)
    a = net.replicas[0]
    for tool in ("one", "two", "three"):
        a.registry.announce(a.signer, tool, zone="public")
    net.pool.clear()  # the pushes are lost
    assert net.views()[1] == []
    net.anti_entropy()
    assert net.views()[0] == net.views()[1] == net.views()[2]
    assert len(net.views()[2]) == 3


def test_compaction_switches_peers_and_keeps_content_and_retirements() -> None:
    net = Network.create(3)
    a, b, c = net.replicas
    for version in range(1, 50):
        a.registry.announce(a.signer, "echo", zone="public", version=version)
    b.registry.announce(b.signer, "time", zone="ops")
    b.registry.announce(b.signer, "gone", zone="ops")
    b.registry.retire(b.signer.public_key, by=b.signer, names=["gone"])
    net.drain()
    before = net.views()
    size_before = a.registry.encoded_size()
    epoch = a.registry.compact()
    assert epoch == Epoch(1, a.signer.public_key)
    assert a.registry.encoded_size() < size_before
    # c misses the compaction push and writes in the old epoch meanwhile
    net.pool = [m for m in net.pool if m[1] != 2]
    c.registry.announce(c.signer, "late", zone="public")
    net.drain()
    net.anti_entropy()
    net.anti_entropy()
    assert {r.registry.epoch for r in net.replicas} == {epoch}
    views = net.views()
    assert views[0] == views[1] == views[2]
    assert {view[1] for view in views[0]} == {"echo", "time", "late"}
    assert [v for v in before[0] if v[1] != "late"] == [v for v in views[0] if v[1] != "late"]
    assert b.registry.held(f"{b.signer.public_key.hex()}/gone").checked.live is False


def test_concurrent_compactions_converge_on_highest_epoch() -> None:
    net = Network.create(3)
    a, b, c = net.replicas
    a.registry.announce(a.signer, "x", zone="public")
    b.registry.announce(b.signer, "y", zone="public")
    net.drain()
    net.pool.clear()
    a.registry.compact()
    b.registry.compact()
    c.registry.announce(c.signer, "z", zone="public")
    net.drain()
    net.anti_entropy()
    net.anti_entropy()
    epochs = {r.registry.epoch for r in net.replicas}
    assert epochs == {max(Epoch(1, a.signer.public_key), Epoch(1, b.signer.public_key))}
    views = net.views()
    assert views[0] == views[1] == views[2] and len(views[0]) == 3


def test_outgoing_batches_local_updates_when_no_push_hook() -> None:
    from vsmcp.crdt.registry import CapabilityRegistry
    from vsmcp.crdt.signing import Ed25519Signer
    from vsmcp.crdt.sync import SyncEndpoint

    signer = Ed25519Signer()
    source = CapabilityRegistry(replica_id=b"a")
    sink = CapabilityRegistry(replica_id=b"b")
    source_endpoint, sink_endpoint = SyncEndpoint([source]), SyncEndpoint([sink])
    for tool in ("a", "b", "c"):
        source.announce(signer, tool, zone="public")
    messages = source_endpoint.outgoing()
    assert len(messages) == 1
    assert source_endpoint.outgoing() == []
    for message in messages:
        assert sink_endpoint.handle(message) == []
    assert [e.name for e in sink.view()] == ["a", "b", "c"]
