"""A peer the node refuses (`MeshService.refuses`, the immune system's node blocks) has
its links cut while the refusal lasts, and is admitted again when it ends.

Two real `MeshService`s on loopback (ZeroMQ, signed envelopes, SWIM), in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.mesh_peer import dev_pair
from tests.polling import async_wait_for
from vsmcp.mesh.envelope import MsgType
from vsmcp.mesh.transport import Priority, RemoteError
from vsmcp.node.peers.service import MeshService


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MeshService, MeshService]]:
    async with dev_pair("cut-test") as pair:
        yield pair


async def _hello(sender: MeshService, to: MeshService) -> None:
    hello = sender._sealer.seal(MsgType.HELLO, sender._hello_payload(), recipient=to.public_key)
    await sender.transport.request(
        to.public_key, f"tcp://127.0.0.1:{to.port}", hello, timeout_s=5,
        priority=Priority.REQUEST, candidate=True,
    )  # fmt: skip


async def test_a_refused_peer_is_cut_off_until_the_refusal_ends(
    pair: tuple[MeshService, MeshService],
) -> None:
    a, b = pair

    async def linked() -> bool:
        return (
            b.node_id in a.peers
            and a.node_id in b.peers
            and a.member_state(b.node_id) == "alive"
            and b.node_id in a.alive_peers()
        )

    await async_wait_for(linked, timeout_s=20, what="a and b admitted, alive")
    refused: set[str] = set()
    a.refuses = refused.__contains__
    refused.add(b.node_id)
    a.cut(b.node_id)
    assert b.node_id not in a.peers and b.node_id not in a.alive_peers()
    assert not a.send(b.node_id, MsgType.MEMBERSHIP, b"x")
    # b's HELLO is refused, and what b keeps sending (its pings) is dropped unread.
    with pytest.raises(RemoteError) as hello_refused:
        await _hello(b, a)
    assert hello_refused.value.reason == "blocked"
    assert a.stats.refused["blocked"] >= 1

    async def dropped() -> bool:
        return a.stats.dropped["blocked"] > 0 and b.node_id not in a.peers

    await async_wait_for(dropped, timeout_s=20, what="b's envelopes dropped, b not readmitted")

    async def unheard() -> bool:
        return a.member_state(b.node_id) in ("suspect", "dead")

    await async_wait_for(unheard, timeout_s=20, what="b suspect at a")
    assert b.node_id not in a.peers

    # The refusal ends: b is admitted again (a new HELLO), alive again.
    refused.clear()
    await async_wait_for(linked, timeout_s=30, what="b admitted again and alive")


async def test_a_hello_answer_arriving_as_the_block_lands_does_not_admit_the_peer(
    pair: tuple[MeshService, MeshService],
) -> None:
    a, b = pair

    async def linked() -> bool:
        return b.node_id in a.peers and a.node_id in b.peers

    await async_wait_for(linked, timeout_s=20, what="a and b admitted")
    refused = {b.node_id}
    a.refuses = refused.__contains__
    a.cut(b.node_id)
    # A HELLO of a's that was on its way when the block landed: b answers it, and its
    # answer must not admit b again.
    outcome = await a._hello_once(b.node_id, b.public_key, f"tcp://127.0.0.1:{b.port}")
    assert outcome == "refused"
    assert b.node_id not in a.peers and b.node_id not in a.alive_peers()
    assert a.stats.refused["blocked"] >= 1


async def test_an_admission_goes_through_when_the_on_admit_callback_fails(
    pair: tuple[MeshService, MeshService],
) -> None:
    a, b = pair

    async def admitted() -> bool:
        return b.node_id in a.peers

    await async_wait_for(admitted, timeout_s=20, what="b admitted at a")
    called: list[str] = []

    def broken(node_id: str) -> None:
        called.append(node_id)
        raise RuntimeError("callback bug")

    a.on_admit = broken
    a.cut(b.node_id)  # not refused: b's next HELLO admits it again
    assert b.node_id not in a.peers
    await _hello(b, a)  # answered, not failed by the callback
    assert b.node_id in a.peers and called == [b.node_id]
