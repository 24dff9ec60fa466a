"""VerifiedDoc's remote path (apply_updates -> settle): cached verification, ranks and
expiry boundaries to the millisecond."""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.crdt.harness import Clock
from vsmcp.crdt.registry import CapabilityRegistry, entry_key
from vsmcp.crdt.replica import EXPIRY_GRACE_MS, MAP_NAME, Checked, Held
from vsmcp.crdt.signing import Ed25519Signer

OWNER = Ed25519Signer(b"\x0b" * 32)
TTL_MS = 1_000


def hostile_update(target: CapabilityRegistry, writes: dict[str, Any]) -> bytes:
    """A Yjs update from a replica that knows `target`'s doc and writes raw values."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    ymap: pycrdt.Map[Any] = doc.get(MAP_NAME, type=pycrdt.Map)
    doc.apply_update(target.full_state())
    before = doc.get_state()
    with doc.transaction():
        for key, value in writes.items():
            ymap[key] = value
    return doc.get_update(before)


def announced(clock: Clock) -> tuple[CapabilityRegistry, str, bytes]:
    """A source registry holding one announcement; its key and blob."""
    source = CapabilityRegistry(replica_id=b"source", clock=clock, announce_ttl_ms=TTL_MS)
    source.announce(OWNER, "echo", zone="public")
    key = entry_key(OWNER.public_key, "echo")
    held = source.held(key)
    assert held is not None
    return source, key, held.blob


def test_cached_blob_under_another_key_is_refused_and_repaired() -> None:
    clock = Clock()
    source, key, blob = announced(clock)
    sink = CapabilityRegistry(replica_id=b"sink", clock=clock)
    sink.load_state(source.epoch, source.full_state())  # blob verified and cached
    assert [e.name for e in sink.view()] == ["echo"]
    other = entry_key(OWNER.public_key, "other")
    sink.apply_updates([hostile_update(sink, {other: blob, key: b"junk"})])
    assert sink.held(other) is None
    assert [e.name for e in sink.view()] == ["echo"]
    assert dict(sink.raw_items())[key] == blob  # the junk was repaired


@pytest.mark.parametrize(
    ("offset_ms", "admitted", "visible"),
    [
        (TTL_MS - 1, True, True),
        (TTL_MS, True, False),  # expired: kept in `best`, not in the view
        (TTL_MS + EXPIRY_GRACE_MS - 1, True, False),
        (TTL_MS + EXPIRY_GRACE_MS, False, False),  # expired past the grace: refused
    ],
)
def test_remote_record_expiry_boundaries(offset_ms: int, admitted: bool, visible: bool) -> None:
    clock = Clock()
    source, key, _ = announced(clock)
    sink = CapabilityRegistry(replica_id=b"sink", clock=clock)
    changes: list[int] = []
    sink.on_change(lambda change: changes.append(len(change.added)))
    clock.now_ms += offset_ms
    sink.apply_updates([source.full_state()])
    assert (sink.held(key) is not None) is admitted
    assert (len(sink.view()) == 1) is visible
    assert changes == ([1] if visible else [])


def test_remote_delete_of_a_held_record_is_repaired() -> None:
    clock = Clock()
    source, key, blob = announced(clock)
    sink = CapabilityRegistry(replica_id=b"sink", clock=clock)
    sink.apply_updates([source.full_state()])
    attacker: pycrdt.Doc[Any] = pycrdt.Doc()
    ymap: pycrdt.Map[Any] = attacker.get(MAP_NAME, type=pycrdt.Map)
    attacker.apply_update(sink.full_state())
    before = attacker.get_state()
    del ymap[key]
    sink.apply_updates([attacker.get_update(before)])
    assert dict(sink.raw_items())[key] == blob
    assert [e.name for e in sink.view()] == ["echo"]


def _held(version: int, kind: int, blob: bytes) -> Held[None]:
    return Held(blob, Checked("k", b"s", None, (version, kind), 0, kind == 0))


@given(
    st.tuples(st.integers(0, 2**53 - 1), st.integers(0, 1), st.binary(max_size=3)),
    st.tuples(st.integers(0, 2**53 - 1), st.integers(0, 1), st.binary(max_size=3)),
)
def test_held_order_agrees_with_rank(a: tuple[int, int, bytes], b: tuple[int, int, bytes]) -> None:
    first, second = _held(*a), _held(*b)
    assert first.outranks(second) is (((a[0], a[1]), a[2]) > ((b[0], b[1]), b[2]))


def test_held_refuses_a_rank_kind_other_than_record_or_tombstone() -> None:
    with pytest.raises(ValueError):
        _held(1, 2, b"x")


def test_a_repair_noted_before_a_newer_local_write_does_not_undo_it() -> None:
    clock = Clock()
    registry = CapabilityRegistry(replica_id=b"r", clock=clock)
    registry.announce(OWNER, "echo", zone="public", version=1)
    key = entry_key(OWNER.public_key, "echo")
    with registry._doc.transaction():  # junk in our own doc: a repair is noted
        registry._map[key] = b"junk"
    newer = registry.announce(OWNER, "echo", zone="ops", version=2)
    registry.apply_updates([])  # writes whatever repairs are pending
    held = registry.held(key)
    assert held is not None and dict(registry.raw_items())[key] == held.blob
    assert [e.zone for e in registry.view()] == [newer.zone]
