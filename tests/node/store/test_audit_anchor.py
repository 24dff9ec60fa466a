"""node/audit_anchor.py between two in-process nodes on loopback: what a peer's AUDIT_HEAD
message may and may not make a node do."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nacl.signing import SigningKey

from tests.polling import async_wait_for
from vsmcp.mesh.envelope import MsgType
from vsmcp.mesh.identity import NodeKey
from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.store.audit_anchor import (
    KV_AUDIT_EPOCH,
    AnchoredHead,
    AuditHeadMessage,
    anchor_message,
)


def _config(data_dir: Path, **extra: Any) -> Any:
    return load_config(
        overrides={
            "node.data_dir": str(data_dir),
            "node.dev": True,
            "http.port": 0,
            "mesh.port": 0,
            "mesh.preset": "local",
            "mesh.mdns": False,
            "tools.entry_points": False,
            **extra,
        }
    )


@dataclass
class Pair:
    target: Node  # the node told about its own head
    peer: Node  # the node that tells it


async def _pair(tmp_path: Path, *, accept_rollback: bool) -> AsyncIterator[Pair]:
    async with Node(_config(tmp_path / "t"), accept_audit_rollback=accept_rollback) as target:
        seed = f"{target.identity.node_id}@127.0.0.1:{target.mesh_port}"
        async with Node(_config(tmp_path / "p", **{"mesh.seeds": [seed]})) as peer:
            await async_wait_for(
                _admitted_both_ways(target, peer), timeout_s=30, what="the two nodes admitted"
            )
            yield Pair(target, peer)


def _admitted_both_ways(a: Node, b: Node) -> Any:
    async def probe() -> bool:
        return b.identity.node_id in a.mesh.peers and a.identity.node_id in b.mesh.peers

    return probe


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async for made in _pair(tmp_path, accept_rollback=False):
        yield made


@pytest.fixture
async def accepting_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async for made in _pair(tmp_path, accept_rollback=True):
        yield made


def _signed(sign: Any, epoch: int, seq: int, hash_: bytes) -> AnchoredHead:
    sig = sign(anchor_message(epoch, seq, hash_))
    return AnchoredHead(epoch=epoch, seq=seq, hash=hash_, sig=sig)


def _send(pair: Pair, payload: bytes) -> None:
    assert pair.peer.mesh.send(pair.target.identity.node_id, MsgType.AUDIT_HEAD, payload)


async def _taken(node: Node, count: int) -> None:
    async def probe() -> bool:
        return node.audit_anchor.received >= count

    await async_wait_for(probe, timeout_s=20, what=f"{count} AUDIT_HEAD messages taken")


def _peer_head(pair: Pair) -> AnchoredHead:
    audit = pair.peer.audit
    return _signed(pair.peer.identity.key.sign_detached, 0, audit.head_seq, audit.head_hash)


async def test_garbage_and_heads_not_signed_by_the_sender_are_refused(pair: Pair) -> None:
    anchor = pair.target.audit_anchor
    before = anchor.received
    _send(pair, b"\x93garbage")
    stranger = SigningKey.generate()
    forged = _signed(lambda m: stranger.sign(m).signature, 0, 10**6, bytes(32))
    _send(pair, msgspec.msgpack.encode(AuditHeadMessage(head=forged)))
    await _taken(pair.target, before + 2)
    assert anchor.rejected >= 2
    metrics = pair.target.render_metrics().decode()
    assert f'vsmcp_audit_anchor_messages_total{{event="rejected"}} {anchor.rejected}.0' in metrics
    assert anchor.seen_head(pair.peer.identity.node_id) != forged


async def test_a_claim_about_our_log_signed_by_someone_else_changes_nothing(pair: Pair) -> None:
    # The peer says "you had entry 1,000,000" and signs it itself: not our statement.
    claim = _signed(pair.peer.identity.key.sign_detached, 0, 10**6, bytes(32))
    anchor = pair.target.audit_anchor
    before, compared = anchor.received, anchor.compared
    _send(pair, msgspec.msgpack.encode(AuditHeadMessage(head=_peer_head(pair), seen=claim)))
    await _taken(pair.target, before + 1)
    assert anchor.compared == compared  # not even looked at
    assert pair.target.audit_anchor.seen_head(pair.peer.identity.node_id) is not None
    assert not pair.target.fatal.is_set() and pair.target.healthy()


def _our_head_ahead(node: Node) -> AnchoredHead:
    """A head of `node`'s own, signed by its key, past the end of its log: what a peer
    repeats after the node's database was rolled back."""
    key: NodeKey = node.identity.key
    return _signed(key.sign_detached, 0, node.audit.head_seq + 1000, bytes(32))


async def test_a_node_told_its_own_longer_head_stops_naming_both(pair: Pair) -> None:
    seen = _our_head_ahead(pair.target)
    _send(pair, msgspec.msgpack.encode(AuditHeadMessage(head=_peer_head(pair), seen=seen)))

    async def stopped() -> bool:
        return pair.target.fatal.is_set()

    await async_wait_for(stopped, timeout_s=20, what="the node giving up")
    reason = pair.target.fatal_error or ""
    assert f"the mesh saw entry {seen.seq} (epoch 0" in reason
    # The log may have grown since the comparison (the node keeps writing entries).
    at_entry = re.search(r"this node's log is at entry (\d+)", reason)
    assert at_entry is not None, reason
    assert int(at_entry.group(1)) <= pair.target.audit.head_seq < seen.seq
    assert "--accept-audit-rollback" in reason
    assert not pair.target.healthy()


async def test_an_accepted_rollback_is_recorded_and_moves_to_a_new_epoch(
    accepting_pair: Pair,
) -> None:
    pair = accepting_pair
    seen = _our_head_ahead(pair.target)
    _send(pair, msgspec.msgpack.encode(AuditHeadMessage(head=_peer_head(pair), seen=seen)))

    async def moved() -> bool:
        return pair.target.audit_anchor.epoch == 1

    await async_wait_for(moved, timeout_s=20, what="the new epoch")
    # Once the epoch is announced, its record and the stored epoch are committed: read
    # the database as another process would, with no flush first.
    conn = sqlite3.connect(pair.target.config.data_dir / "vsmcp.db")
    try:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM audit_entries")]
        stored = conn.execute("SELECT value FROM kv WHERE key = ?", (KV_AUDIT_EPOCH,))
        stored_epoch = int.from_bytes(stored.fetchone()[0], "big")
    finally:
        conn.close()
    assert "audit.rollback_accepted" in kinds
    assert stored_epoch == 1
    assert not pair.target.fatal.is_set()
    # The same old head again counts for nothing now: it is from the epoch before.
    anchor = pair.target.audit_anchor
    compared = anchor.compared
    _send(pair, msgspec.msgpack.encode(AuditHeadMessage(head=_peer_head(pair), seen=seen)))

    async def looked_at() -> bool:
        return anchor.compared > compared

    await async_wait_for(looked_at, timeout_s=20, what="the old head compared")
    assert anchor.epoch == 1 and not pair.target.fatal.is_set()
