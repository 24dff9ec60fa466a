"""Context graph: ancestors query, count and age bounds, forged events."""

from __future__ import annotations

from tests.crdt.harness import Clock
from vsmcp.crdt.context_graph import ContextGraph
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.crdt.sync import SyncEndpoint

NODE = Ed25519Signer(b"\x05" * 32)


def test_ancestors_breadth_first_bounded_by_depth() -> None:
    graph = ContextGraph(replica_id=b"a", clock=Clock())
    root = graph.record(NODE, "call", {"tool": "echo"}, ts_ms=1_700_000_000_000)
    denial = graph.record(NODE, "denial", parents=[root.id], ts_ms=1_700_000_000_001)
    pain = graph.record(NODE, "pain", parents=[denial.id], ts_ms=1_700_000_000_002)
    other = graph.record(NODE, "audit", ts_ms=1_700_000_000_003)
    block = graph.record(
        NODE, "block", {"n": 1}, parents=[pain.id, other.id], ts_ms=1_700_000_000_004
    )
    assert [e.kind for e in graph.ancestors(block.id, 1)] == ["pain", "audit"]
    assert [e.kind for e in graph.ancestors(block.id, 3)] == ["pain", "audit", "denial", "call"]
    assert [e.kind for e in graph.ancestors(block.id, 10)] == ["pain", "audit", "denial", "call"]
    assert graph.ancestors(root.id, 5) == []
    assert graph.ancestors("unknown", 5) == []
    assert block.data == {"n": 1}


def test_count_bound_keeps_newest_and_same_set_everywhere() -> None:
    clock = Clock()
    a = ContextGraph(replica_id=b"a", clock=clock, max_events=5)
    b = ContextGraph(replica_id=b"b", clock=clock, max_events=5)
    ea, eb = SyncEndpoint([a]), SyncEndpoint([b])
    ids = [a.record(NODE, "tick", {"i": i}, ts_ms=clock.now_ms - 100 + i).id for i in range(12)]
    assert len(a.events()) == 5
    assert [e.id for e in a.events()] == ids[-5:]
    for message in eb.make_sync_request():
        for reply in ea.handle(message):
            eb.handle(reply)
    assert [e.id for e in b.events()] == ids[-5:]
    # an old event re-sent by a stale replica does not come back
    stale = ContextGraph(replica_id=b"s", clock=clock, max_events=100)
    stale.record(NODE, "tick", {"i": 0}, ts_ms=clock.now_ms - 100)
    es = SyncEndpoint([stale])
    for message in ea.make_sync_request():
        for reply in es.handle(message):
            ea.handle(reply)
    assert [e.id for e in a.events()] == ids[-5:]


def test_age_bound() -> None:
    clock = Clock()
    graph = ContextGraph(replica_id=b"a", clock=clock, max_age_ms=1_000)
    old = graph.record(NODE, "old")
    clock.now_ms += 600
    new = graph.record(NODE, "new", parents=[old.id])
    assert [e.kind for e in graph.ancestors(new.id, 2)] == ["old"]
    clock.now_ms += 500
    assert [e.kind for e in graph.events()] == ["new"]
    assert graph.ancestors(new.id, 2) == []
    clock.now_ms += 120_000
    graph.prune()
    assert graph.events() == [] and graph.raw_items() == []


def test_forged_event_rejected() -> None:
    graph = ContextGraph(replica_id=b"a", clock=Clock())
    event = graph.record(NODE, "call")
    blob = graph.held(event.id).blob  # type: ignore[union-attr]
    victim = ContextGraph(replica_id=b"v", clock=Clock())
    altered = blob.replace(b"call", b"cell")
    assert victim.offer([(event.id, altered), ("f" * 32, blob), (event.id, b"junk")]) == 0
    assert victim.offer([(event.id, blob)]) == 1
    assert [e.id for e in victim.events()] == [event.id]
