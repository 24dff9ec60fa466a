"""The MQTT bridge's inbox: bounded, a message beyond the bound counted and dropped (the
client would only log it), batches taken up to a limit in arrival order."""

from __future__ import annotations

from typing import Any

from tests.skips import require_module


def _message(n: int) -> Any:
    aiomqtt = require_module("aiomqtt")  # the bridge's extra (`vsmcp[mqtt]`)
    return aiomqtt.Message(f"t/{n}", str(n).encode(), qos=1, retain=False, mid=n, properties=None)


async def test_the_inbox_is_bounded_and_counts_what_it_drops() -> None:
    require_module("aiomqtt")
    from vsmcp.node.bridges.mqtt import Inbox

    inbox = Inbox(3)
    for n in range(5):
        inbox.put_nowait(_message(n))
    assert (inbox.qsize(), inbox.dropped) == (3, 2)
    batch = [await inbox.get()]
    inbox.take(batch, limit=2)
    assert [m.mid for m in batch] == [0, 1]
    inbox.take(batch, limit=10)
    assert [m.mid for m in batch] == [0, 1, 2]
    assert inbox.empty()
    inbox.put_nowait(_message(9))  # room again
    assert (inbox.qsize(), inbox.dropped) == (1, 2)
