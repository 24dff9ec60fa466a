"""The mesh catalog tells its listeners (tools/list_changed) when what a tools/list shows
changes, a remote tool's metadata alone included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.node.routing.test_catalog import MODERN, _post, seeded_pair
from tests.polling import async_wait_for, async_wait_until

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


async def _titles(url: str) -> dict[str, str]:
    _, body = await _post(
        url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN}}
    )
    return {t["name"]: t.get("title", "") for t in body["result"]["tools"]}


async def test_a_remote_tools_metadata_changing_alone_is_a_tool_set_change(
    tmp_path: Path,
) -> None:
    async with seeded_pair(tmp_path, {}, {}) as pair:
        registry = pair.provider._replication.state.registry  # type: ignore[union-attr]
        key = pair.provider.identity.key

        def announce(title: str) -> None:
            registry.announce(
                key, "titled", zone="public", input_schema=SCHEMA, metadata={"title": title}
            )

        announce("One")

        async def listed(title: str) -> bool:
            return (await _titles(pair.url)).get("titled") == title

        await async_wait_for(lambda: listed("One"), timeout_s=20, what="the tool at the entry")
        changes: list[Any] = []
        pair.entry._tools.on_change(lambda: changes.append(1))  # type: ignore[union-attr]
        announce("Two")  # zone, description and schema as before: only the title differs
        await async_wait_until(lambda: changes, timeout_s=20, what="a tool set change")
        assert await listed("Two")
