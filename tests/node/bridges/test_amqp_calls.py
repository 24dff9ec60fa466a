"""The AMQP call server (node/bridges/amqp_calls.py) on a real store: a duplicate of a
call is answered once its answer is committed, and one caller's answer is never handed
to another."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.polling import async_wait_until
from vsmcp.node.bridges.amqp_calls import CallMessage, CallServer, ZoneMap
from vsmcp.node.store.database import Store

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def _call(message_id: str, user_id: str | None = None, body: bytes = PING) -> CallMessage:
    return CallMessage(body, "reply", message_id, user_id, None)


async def _rows(store: Store) -> int:
    async with store.conn.execute("SELECT count(*) FROM amqp_answers") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_duplicate_is_answered_only_after_the_answer_is_committed(
    tmp_path: Path,
) -> None:
    async with Store.open(tmp_path) as store:
        server = CallServer(None, ZoneMap("public"), 1 << 20)
        await server.open(store)
        async with store.transaction():  # the store busy (an audit batch, an fsync)
            first = asyncio.create_task(server.serve(_call("m1"), "q"))
            # Its answer is in memory, its commit waits for the store.
            await async_wait_until(lambda: len(server.answers) == 1, what="the answer in memory")
            duplicate = asyncio.create_task(server.serve(_call("m1"), "q"))
            await asyncio.sleep(0)  # one turn of the loop: the duplicate's first step
            assert not duplicate.done() and not first.done()
            assert await _rows(store) == 0
        answer = await duplicate
        assert await _rows(store) == 1  # answered once committed
        assert answer == await first
        assert server.counters.duplicates == 1
        await server.close()


async def test_an_id_holding_the_separator_is_not_another_callers_call(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        server = CallServer(None, ZoneMap("public", users={"c": "restricted"}), 1 << 20)
        await server.open(store)
        # Same body and queue; joined by the separator both were "a", "b", "c" (the
        # second got the first's answer, computed in the other's zone).
        await server.serve(_call("a\0b", user_id="c"), "q")
        await server.serve(_call("a", user_id="b\0c"), "q")
        assert server.counters.duplicates == 0 and len(server.answers) == 2
        await server.serve(_call("a", user_id="b\0c"), "q")  # a true redelivery
        assert server.counters.duplicates == 1
        await server.close()
