"""node/audit_anchor.py between two in-process nodes on loopback: what a peer's AUDIT_HEAD
message may and may not make a node do."""

from __future__ import annotations

import asyncio
import logging
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

    # `received` counts the peer's own periodic announcements too: wait for the refusals.
    async def both_rejected() -> bool:
        return anchor.rejected >= 2

    await async_wait_for(both_rejected, timeout_s=20, what="both messages rejected")
    metrics = pair.target.render_metrics().decode()
    assert f'vsmcp_audit_anchor_messages_total{{event="rejected"}} {anchor.rejected}.0' in metrics
    assert anchor.seen_head(pair.peer.identity.node_id) != forged


async def test_a_claim_about_our_log_signed_by_someone_else_changes_nothing(pair: Pair) -> None:
    # The peer says "you had entry 1,000,000" and signs it itself: not our statement.
    claim = _signed(pair.peer.identity.key.sign_detached, 0, 10**6, bytes(32))
    anchor = pair.target.audit_anchor
    before = anchor.received
    _send(pair, msgspec.msgpack.encode(AuditHeadMessage(head=_peer_head(pair), seen=claim)))
    await _taken(pair.target, before + 1)
    # (Not asserted: that nothing was compared. The peer's periodic announcements carry
    # our real head and are compared at any time; the claim must simply change nothing.)
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


def _our_current_head(node: Node) -> AnchoredHead:
    """A head of `node`'s own that its log continues: checking it finds nothing."""
    audit = node.audit
    return _signed(node.identity.key.sign_detached, 0, audit.head_seq, audit.head_hash)


async def test_a_head_that_arrives_while_another_is_checked_is_checked_after(
    pair: Pair,
) -> None:
    # Each check reads the database; heads arriving meanwhile were dropped, so the one
    # that says the log went backwards, sent right behind a harmless one, went unseen.
    anchor = pair.target.audit_anchor
    compared = anchor.compared
    harmless = AuditHeadMessage(head=_peer_head(pair), seen=_our_current_head(pair.target))
    seen = _our_head_ahead(pair.target)
    ahead = AuditHeadMessage(head=_peer_head(pair), seen=seen)
    for message in (harmless, harmless, harmless, ahead):
        _send(pair, msgspec.msgpack.encode(message))

    async def stopped() -> bool:
        return pair.target.fatal.is_set()

    await async_wait_for(stopped, timeout_s=20, what="the node giving up")
    assert anchor.compared >= compared + 2
    assert f"the mesh saw entry {seen.seq} " in (pair.target.fatal_error or "")


async def test_a_comparison_that_fails_is_logged_with_its_cause(
    accepting_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="vsmcp.node.store.audit_anchor")
    pair = accepting_pair
    db = pair.target.config.data_dir / "vsmcp.db"
    # Storing the new epoch fails, as a write to a damaged or full disk would.
    await _sql(
        db,
        f"CREATE TRIGGER refuse_epoch BEFORE INSERT ON kv WHEN NEW.key = '{KV_AUDIT_EPOCH}' "
        "BEGIN SELECT RAISE(ABORT, 'epoch refused by the test'); END",
    )
    try:
        anchor = pair.target.audit_anchor
        compared = anchor.compared
        seen = _our_head_ahead(pair.target)
        _send(pair, msgspec.msgpack.encode(AuditHeadMessage(head=_peer_head(pair), seen=seen)))

        # Wait for the failure itself: a periodic compare of a harmless head can finish
        # first and would end a wait on the counter before the ahead head is checked.
        async def failed_and_logged() -> bool:
            return anchor.compared > compared and any(
                "with the audit log failed" in r.getMessage() for r in caplog.records
            )

        await async_wait_for(failed_and_logged, timeout_s=20, what="the failed comparison")
    finally:
        await _sql(db, "DROP TRIGGER refuse_epoch")
    failed = [r for r in caplog.records if "with the audit log failed" in r.getMessage()]
    assert failed, [r.getMessage() for r in caplog.records]
    assert failed[0].exc_info is not None
    assert "epoch refused by the test" in str(failed[0].exc_info[1])
    assert anchor.epoch == 0  # not moved without its stored epoch


async def _sql(db: Path, statement: str) -> None:
    """Run a write as another process would: off the event loop, whose node may hold
    the write lock until the loop runs again (a blocking wait here would deadlock)."""
    await asyncio.to_thread(_sql_blocking, db, statement)


def _sql_blocking(db: Path, statement: str) -> None:
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


async def test_the_announce_loop_is_supervised(pair: Pair) -> None:
    loops = pair.target.loops
    assert "audit-anchor" in loops.running()
    assert loops.inject_fault("audit-anchor")

    async def restarted() -> bool:
        return loops.restart_counts().get("audit-anchor", 0) == 1 and (
            "audit-anchor" in loops.running()
        )

    await async_wait_for(restarted, timeout_s=20, what="the announce loop restarted")
    # And it announces again: the peer takes a newer head of the target.
    peer_anchor = pair.peer.audit_anchor
    received = peer_anchor.received

    async def announced() -> bool:
        return peer_anchor.received > received

    await async_wait_for(announced, timeout_s=30, what="an announcement after the restart")
