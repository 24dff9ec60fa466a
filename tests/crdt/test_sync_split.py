"""Sync answers and pushes larger than the message cap: split into pieces that each fit
(SyncPart slices of the answer, or SyncRecords beyond what slices carry), and that
converge in any order, with duplicates, across an epoch switch, without letting a forged
or retired record in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.crdt.harness import Clock, Network, Replica
from vsmcp.crdt import sync as crdt_sync
from vsmcp.crdt.errors import MalformedMessage, MessageTooLarge
from vsmcp.crdt.registry import CapabilityRegistry, entry_key
from vsmcp.crdt.replica import Epoch
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.crdt.sync import (
    MAX_OPEN_TRANSFERS,
    MAX_OPEN_TRANSFERS_PER_PEER,
    SyncEndpoint,
    SyncPart,
    SyncRecords,
    SyncStep2,
    decode_message,
    encode_message,
)

CAP_BYTES = 8 * 1024
TOOLS = 60
# ~400 B of schema per tool: 60 tools are about three caps' worth.
PADDING = {"type": "object", "description": "x" * 400}


def capped_network(count: int, cap: int = CAP_BYTES, seed: int = 0) -> Network:
    clock = Clock()
    authority = Ed25519Signer(bytes([255]) * 31 + bytes([seed]))
    net = Network([], clock, authority)
    for index in range(count):
        signer = Ed25519Signer(bytes([index + 1]) * 31 + bytes([seed]))
        rng = random.Random(seed * 1000 + index)
        registry = CapabilityRegistry(
            replica_id=signer.public_key,
            authority_keys=[authority.public_key],
            clock=clock,
            client_ids=lambda rng=rng: rng.getrandbits(32),
        )
        endpoint = SyncEndpoint([registry], max_message_bytes=cap)
        endpoint.on_update(net._broadcaster(index))
        net.replicas.append(Replica(index, signer, registry, endpoint))
    return net


def announce_many(replica: Replica, count: int = TOOLS, prefix: str = "tool") -> None:
    for i in range(count):
        replica.registry.announce(
            replica.signer, f"{prefix}-{i:03d}", zone="public", input_schema=PADDING
        )


def answer(net: Network, asker: int, answerer: int) -> list[bytes]:
    """What `answerer` sends back to `asker`'s sync request."""
    replies: list[bytes] = []
    for request in net.replicas[asker].endpoint.make_sync_request():
        replies.extend(net.replicas[answerer].endpoint.handle(request))
    return replies


def drain_capped(net: Network, cap: int = CAP_BYTES) -> None:
    """Deliver everything, checking that every message on the wire fits the cap."""
    steps = 0
    while net.pool:
        steps += 1
        assert steps < 100_000, "sync did not quiesce"
        assert len(net.pool[0][2]) <= cap
        net.deliver(0)


def names(replica: Replica) -> set[str]:
    return {e.name for e in replica.registry.view()}


def join_larger_than_the_cap(kind: type) -> Network:
    """b joins a, whose state is about three caps: the answer comes in pieces of
    `kind`, each within the cap, and b ends with a's view."""
    net = capped_network(2)
    a, b = net.replicas
    announce_many(a)
    net.pool.clear()  # b was not there for the pushes
    assert a.registry.encoded_size() > 2 * CAP_BYTES
    pieces = answer(net, asker=1, answerer=0)
    assert len(pieces) >= 3
    assert all(len(piece) <= CAP_BYTES for piece in pieces)
    assert all(isinstance(decode_message(piece), kind) for piece in pieces)
    for piece in pieces:
        assert b.endpoint.handle(piece) == []
    assert net.views()[0] == net.views()[1]
    assert len(names(b)) == TOOLS
    return net


def test_joiner_gets_a_state_larger_than_the_cap_in_slices_and_then_nothing_more() -> None:
    net = join_larger_than_the_cap(SyncPart)
    a, b = net.replicas
    assert a.endpoint.stats["split_answers"] == 1
    assert b.endpoint.stats["transfers_completed"] == 1
    # b holds a's Yjs structs now: the next rounds, either way, carry a small diff only.
    for asker, answerer in ((1, 0), (0, 1)):
        replies = answer(net, asker=asker, answerer=answerer)
        assert [type(decode_message(r)) for r in replies] == [SyncStep2]
        assert all(len(r) < 200 for r in replies)
    assert a.endpoint.stats["split_answers"] == 1


def test_an_answer_too_large_for_slices_goes_as_record_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(crdt_sync, "MAX_ASSEMBLED_BYTES", 2 * CAP_BYTES)
    net = join_larger_than_the_cap(SyncRecords)
    a = net.replicas[0]
    assert a.endpoint.stats["record_answers"] == 1
    # b's rewrites of what it took reach a within the cap and change nothing there.
    drain_capped(net)
    net.anti_entropy()
    assert net.views()[0] == net.views()[1]
    assert a.endpoint.stats["update_too_large"] == 0


@settings(max_examples=20, deadline=None)
@given(order=st.randoms(use_true_random=False), repeats=st.integers(1, 3))
def test_pieces_converge_in_any_order_with_duplicates(order: random.Random, repeats: int) -> None:
    net = capped_network(2)
    a, b = net.replicas
    announce_many(a)
    net.pool.clear()
    pieces = answer(net, asker=1, answerer=0) * repeats
    order.shuffle(pieces)
    for piece in pieces:
        b.endpoint.handle(piece)
    assert net.views()[0] == net.views()[1]
    assert len(names(b)) == TOOLS


def test_a_lost_piece_is_healed_by_the_next_round() -> None:
    net = capped_network(2)
    a, b = net.replicas
    announce_many(a)
    net.pool.clear()
    for piece in answer(net, asker=1, answerer=0)[1:]:
        b.endpoint.handle(piece)
    assert names(b) == set()  # an incomplete transfer applies nothing
    net.pool.clear()
    net.anti_entropy()
    assert net.views()[0] == net.views()[1]


def test_slices_are_checked_and_reassembly_is_bounded() -> None:
    net = capped_network(2)
    a, b = net.replicas
    announce_many(a)
    net.pool.clear()
    pieces = [decode_message(p) for p in answer(net, asker=1, answerer=0)]
    first = pieces[0]
    assert isinstance(first, SyncPart)
    with pytest.raises(MalformedMessage):  # index beyond count
        b.endpoint.handle(encode_message(SyncPart("registry", first.epoch, 9, 3, 3, b"x")))
    b.endpoint.handle(encode_message(first))
    with pytest.raises(MalformedMessage):  # disagrees with the transfer it joins
        b.endpoint.handle(
            encode_message(SyncPart("registry", first.epoch, first.transfer, 1, 99, b"x"))
        )
    with pytest.raises(MalformedMessage):  # slices of something that is not a SyncStep2
        b.endpoint.handle(encode_message(SyncPart("registry", first.epoch, 7, 0, 1, b"\x90")))
    big = b"x" * (CAP_BYTES - 200)
    with pytest.raises(MessageTooLarge):  # more than MAX_ASSEMBLED_BYTES in slices
        for index in range(crdt_sync.MAX_ASSEMBLED_BYTES // len(big) + 1):
            part = SyncPart("registry", first.epoch, 8, index, 4096, big)
            b.endpoint.handle(encode_message(part))

    # Many incomplete transfers: at most MAX_OPEN_TRANSFERS_PER_PEER from one peer, and
    # MAX_OPEN_TRANSFERS in all.
    def stub(transfer: int, index: int = 0) -> bytes:
        return encode_message(SyncPart("registry", first.epoch, transfer, index, 2, b"x"))

    for transfer in range(100, 110):
        b.endpoint.handle(stub(transfer), b"one")
    assert sum(k[0] == b"one" for k in b.endpoint._assemblies) == MAX_OPEN_TRANSFERS_PER_PEER
    for peer in range(2 * MAX_OPEN_TRANSFERS):
        b.endpoint.handle(stub(200), bytes([peer]))
    assert len(b.endpoint._assemblies) == MAX_OPEN_TRANSFERS
    # A late slice of a dropped transfer opens nothing again.
    dropped = b.endpoint.stats["transfers_dropped"]
    b.endpoint.handle(stub(100, index=1), b"one")
    assert (b"one", "registry", 100) not in b.endpoint._assemblies
    assert b.endpoint.stats["transfers_dropped"] == dropped
    assert names(b) == set()


def test_a_peer_flooding_slices_cannot_stop_another_peers_transfer() -> None:
    net = capped_network(2)
    a, b = net.replicas
    announce_many(a)
    net.pool.clear()
    pieces = answer(net, asker=1, answerer=0)
    epoch = decode_message(pieces[0]).epoch
    for index, piece in enumerate(pieces):
        b.endpoint.handle(piece, b"honest")
        for transfer in range(4 * MAX_OPEN_TRANSFERS):  # new transfers, never completed
            junk = SyncPart("registry", epoch, 1000 * index + transfer, 0, 2, b"x")
            b.endpoint.handle(encode_message(junk), b"flooder")
    assert b.endpoint.stats["transfers_completed"] == 1
    assert net.views()[0] == net.views()[1]


def test_epoch_switch_in_pieces_keeps_content_and_retirements() -> None:
    net = capped_network(3)
    a, b, c = net.replicas
    announce_many(a)
    a.registry.retire(a.signer.public_key, by=a.signer, names=["tool-000"])
    drain_capped(net)
    assert net.views()[0] == net.views()[1] == net.views()[2]
    # b is cut off while a compacts and c announces; b writes on its own meanwhile.
    net.cut = frozenset({1})
    epoch = a.registry.compact()
    assert epoch == Epoch(1, a.signer.public_key)
    # The compacted state is one Yjs update larger than the cap: not pushed, counted.
    assert a.registry.encoded_size() > CAP_BYTES
    assert a.endpoint.stats["update_too_large"] >= 1
    drain_capped(net)
    net.anti_entropy()
    assert c.registry.epoch == epoch
    c.registry.announce(c.signer, "late", zone="ops")
    b.registry.announce(b.signer, "b-only", zone="ops")
    drain_capped(net)
    net.cut = None
    # b asks at the old epoch; a answers with its full state at the new one, in pieces.
    pieces = answer(net, asker=1, answerer=0)
    assert len(pieces) > 1 and all(len(piece) <= CAP_BYTES for piece in pieces)
    random.Random(7).shuffle(pieces)
    for piece in pieces:
        b.endpoint.handle(piece)
    assert b.registry.epoch == epoch
    assert b.endpoint.stats["epoch_switches"] == 1
    drain_capped(net)
    net.anti_entropy()
    net.anti_entropy()
    views = net.views()
    assert views[0] == views[1] == views[2]
    assert {r.registry.epoch for r in net.replicas} == {epoch}
    assert {"late", "b-only", "tool-001"} <= names(a)
    assert "tool-000" not in names(b)
    held = b.registry.held(entry_key(a.signer.public_key, "tool-000"))
    assert held is not None and held.checked.live is False


def test_outgoing_batches_split_by_bytes() -> None:
    signer = Ed25519Signer(b"\x05" * 32)
    source = CapabilityRegistry(replica_id=b"a")
    sink = CapabilityRegistry(replica_id=b"b")
    source_endpoint = SyncEndpoint([source], max_message_bytes=CAP_BYTES)
    sink_endpoint = SyncEndpoint([sink], max_message_bytes=CAP_BYTES)
    for i in range(TOOLS):
        source.announce(signer, f"tool-{i:03d}", zone="public", input_schema=PADDING)
    messages = source_endpoint.outgoing()
    assert len(messages) >= 3
    assert all(len(message) <= CAP_BYTES for message in messages)
    for message in reversed(messages):
        sink_endpoint.handle(message)
    assert [e.name for e in sink.view()] == [e.name for e in source.view()]
    assert len(sink.view()) == TOOLS


def answer_with_a_record_larger_than_the_cap() -> tuple[Network, list[bytes]]:
    """a holds 20 tools and one whose record alone exceeds the cap; b asks for all."""
    net = capped_network(2)
    a = net.replicas[0]
    announce_many(a, count=20)
    huge = {"type": "object", "description": "y" * (2 * CAP_BYTES)}
    a.registry.announce(a.signer, "huge", zone="public", input_schema=huge)
    assert a.endpoint.stats["update_too_large"] == 1  # its push could not be sent
    net.pool.clear()
    pieces = answer(net, asker=1, answerer=0)
    assert all(len(piece) <= CAP_BYTES for piece in pieces)
    return net, pieces


def test_a_record_larger_than_the_cap_travels_in_slices() -> None:
    net, pieces = answer_with_a_record_larger_than_the_cap()
    a, b = net.replicas
    for piece in pieces:
        b.endpoint.handle(piece)
    assert names(b) == names(a)


def test_a_record_larger_than_the_cap_is_skipped_by_record_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(crdt_sync, "MAX_ASSEMBLED_BYTES", 2 * CAP_BYTES)
    net, pieces = answer_with_a_record_larger_than_the_cap()
    a, b = net.replicas
    assert a.endpoint.stats["record_too_large"] == 1
    for piece in pieces:
        b.endpoint.handle(piece)
    assert names(b) == names(a) - {"huge"}


def test_pieces_cannot_forge_or_resurrect() -> None:
    net = capped_network(2)
    a, b = net.replicas
    a.registry.announce(a.signer, "kept", zone="public")
    a.registry.announce(a.signer, "gone", zone="public")
    announcement = dict(a.registry.raw_items())[entry_key(a.signer.public_key, "gone")]
    a.registry.retire(a.signer.public_key, by=a.signer, names=["gone"])
    drain_capped(net)
    assert names(b) == {"kept"}
    kept_key = entry_key(a.signer.public_key, "kept")
    kept_blob = bytes(dict(a.registry.raw_items())[kept_key])
    tampered = kept_blob[:-70] + bytes([kept_blob[-70] ^ 1]) + kept_blob[-69:]
    forged = [
        (kept_key, tampered),  # altered payload: the signature fails
        (entry_key(a.signer.public_key, "other"), kept_blob),  # a valid blob, wrong key
        (entry_key(a.signer.public_key, "gone"), bytes(announcement)),  # retired before
        ("junk", b"\x00" * 100),
    ]
    for epoch in (b.registry.epoch, Epoch(5, b"z")):
        b.endpoint.handle(encode_message(SyncRecords("registry", epoch, forged)))
        assert names(b) == {"kept"}
        assert b.registry.held(entry_key(a.signer.public_key, "other")) is None
    assert b.registry.epoch == Epoch(5, b"z")  # switched, kept what it held


def test_garbage_records_message_is_malformed() -> None:
    net = capped_network(1)
    endpoint = net.replicas[0].endpoint
    bad = encode_message(SyncStep2("registry", Epoch(0, b""), b"", False))
    bad = b"\x94\x04" + bad[2:]  # tag 4 with a SyncStep2 body
    with pytest.raises(MalformedMessage):
        endpoint.handle(bad)


@pytest.mark.parametrize("cap", [1024, 4096, 16_384, 60_000])
def test_every_slice_fits_the_cap_whatever_its_index(cap: int) -> None:
    registry = CapabilityRegistry(replica_id=b"a")
    endpoint = SyncEndpoint([registry], max_message_bytes=cap)
    message = b"x" * min(crdt_sync.MAX_ASSEMBLED_BYTES, 200 * cap)
    slices = endpoint._part_messages(registry, message)
    assert len(slices) > 128  # indexes that take more bytes than index 0
    assert max(len(s) for s in slices) <= cap
    parts = [decode_message(s) for s in slices]
    assert b"".join(p.data for p in parts if isinstance(p, SyncPart)) == message
