"""`PeerMeta`, what a member publishes about itself: its appended `name` field stays
readable by older nodes, and older nodes' records stay readable by this one."""

from __future__ import annotations

import msgspec

from vsmcp.mesh._membership_wire import MAX_META_BYTES
from vsmcp.node.app.config import MAX_NODE_NAME_BYTES
from vsmcp.node.peers.service import PeerMeta, decode_meta, peer_name


class OldPeerMeta(msgspec.Struct, array_like=True, frozen=True):
    """PeerMeta before `name` was appended."""

    host: str
    mesh_port: int
    http_port: int | None
    fingerprint: str


def test_a_record_of_an_older_node_decodes_without_a_name() -> None:
    old = msgspec.msgpack.encode(OldPeerMeta("127.0.0.1", 7000, None, "ab" * 16))
    meta = decode_meta(old)
    assert meta == PeerMeta("127.0.0.1", 7000, None, "ab" * 16, "")
    assert peer_name("n" * 24 + "12345678", meta) == "12345678"


def test_an_older_node_reads_a_record_with_a_name() -> None:
    new = msgspec.msgpack.encode(PeerMeta("::1", 7001, 8080, "cd" * 16, "alpha"))
    old = msgspec.msgpack.decode(new, type=OldPeerMeta)
    assert old == OldPeerMeta("::1", 7001, 8080, "cd" * 16)
    meta = decode_meta(new)
    assert meta is not None and meta.name == "alpha"
    assert peer_name("n" * 32, meta) == "alpha"


def test_the_largest_record_fits_in_a_membership_message() -> None:
    """Host names up to 253 characters, the longest node.name config allows: the record
    must fit the membership wire's metadata cap, or peers could not read our Alive."""
    largest = PeerMeta("h" * 253, 65535, 65535, "f" * 64, "\u00fc" * (MAX_NODE_NAME_BYTES // 2))
    assert len(msgspec.msgpack.encode(largest)) <= MAX_META_BYTES


def test_a_name_no_node_could_be_configured_with_is_dropped_on_receipt() -> None:
    for bad in ("x" * (MAX_NODE_NAME_BYTES + 1), "evil\x1b]0;pwned\x07", "a\nb"):
        meta = decode_meta(msgspec.msgpack.encode(PeerMeta("h", 1, None, "f", bad)))
        assert meta is not None and meta.name == ""
        assert peer_name("n" * 24 + "12345678", meta) == "12345678"
    fine = decode_meta(msgspec.msgpack.encode(PeerMeta("h", 1, None, "f", "edge-ü")))
    assert fine is not None and fine.name == "edge-ü"
