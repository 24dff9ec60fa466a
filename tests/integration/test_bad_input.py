"""Hostile bytes at a real node's mesh port: counted by reason, never a crash."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.integration.harness import NodeProcess
from tests.polling import async_wait_for
from vsmcp.mesh.envelope import WIRE_VERSION, MsgType, Sealer
from vsmcp.mesh.identity import NodeKey, public_key_from_node_id
from vsmcp.mesh.transport import Priority, Transport

pytestmark = pytest.mark.integration


def _rejected(node: NodeProcess) -> dict[str, int]:
    text = node.get("/metrics")[1].decode()
    pattern = r'vsmcp_envelopes_rejected_total\{reason="(\w+)"\} ([0-9.]+)'
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(pattern, text)}


async def test_garbage_bad_versions_flipped_bits_and_replays_are_counted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "n", "--no-mdns")
    nodes.append(node)
    node.start()
    target = public_key_from_node_id(node.node_id)
    endpoint = f"tcp://127.0.0.1:{node.mesh_port}"
    attacker = NodeKey.generate()
    sealer = Sealer(attacker)
    valid = sealer.seal(MsgType.MEMBERSHIP, b"hello", recipient=target)
    flipped = bytearray(valid)
    flipped[-1] ^= 0x01
    wrong_version = bytearray(valid)
    wrong_version[64] = (WIRE_VERSION + 1) % 256
    async with Transport(attacker.seed) as client:
        for payload in (
            os.urandom(300),  # random bytes (nearly always a bad version byte)
            b"\x00" * 10,  # shorter than any header
            bytes(wrong_version),
            bytes(flipped),
            valid,
            valid,  # the same envelope again: a replay
        ):
            assert client.send(target, endpoint, payload, priority=Priority.MEMBERSHIP)

        async def counted() -> dict[str, int] | None:
            seen = _rejected(node)
            wanted = ("malformed", "bad_version", "bad_signature", "replay")
            return seen if all(seen.get(r, 0) >= 1 for r in wanted) else None

        await async_wait_for(counted, timeout_s=15, what="rejections counted")
    assert node.get_json("/healthz")["status"] == "ok"
    # The signed but uncertified sender was not admitted, and is counted as such.
    text = node.get("/metrics")[1].decode()
    assert re.search(r'vsmcp_mesh_refused_total\{reason="unadmitted"\} [1-9]', text)
    assert attacker.node_id not in node.peer_states()
