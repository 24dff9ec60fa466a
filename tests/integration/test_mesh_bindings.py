"""What ties a mesh message to its sender, at a real certified node's mesh port:
the signer of an envelope must own the CURVE connection it arrives on, and a HELLO's
certificate must be for the key that signed the HELLO."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from tests.integration.harness import (
    NodeProcess,
    counters,
    mesh_name_for,
    run_cli,
    wait_mesh_states,
)
from tests.polling import async_wait_until
from vsmcp.mesh.certs import certificate_from_pem, encode_certificate, fingerprint
from vsmcp.mesh.envelope import MsgType, Sealer
from vsmcp.mesh.identity import NodeKey, load_key_file, public_key_from_node_id
from vsmcp.mesh.membership import GossipMessage, encode, sign_left
from vsmcp.mesh.transport import Priority, RemoteError, Transport
from vsmcp.node.peers.service import MESH_PROTOCOL_VERSION, Hello, PeerMeta

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_S = 10.0


@dataclass
class Certified:
    """Two certified nodes of one mesh: `node` under test and its admitted peer `peer`."""

    node: NodeProcess
    peer: NodeProcess

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.node.mesh_port}"

    @property
    def public_key(self) -> bytes:
        return public_key_from_node_id(self.node.node_id)

    def refused(self, reason: str) -> int:
        return counters(self.node, "vsmcp_mesh_refused").get(reason, 0)


def _certify(tmp_path: Path, name: str, authority: Path) -> Path:
    data = tmp_path / name
    out = run_cli("keys", "node", "--data-dir", str(data), "--json").stdout
    node_id = out.split('"node_id": "')[1].split('"')[0]
    issued = run_cli(
        "keys", "issue", "--authority-key", str(authority), "--node", node_id,
        "--zone", "ops", "--out", str(data / "node.cert"),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    return data


@pytest.fixture
def certified(tmp_path: Path, nodes: list[NodeProcess]) -> Certified:
    authority = tmp_path / "authority.key"
    out = run_cli("keys", "init-authority", "--out", str(authority))
    match = re.search(r"authority public key: ([0-9a-f]{64})", out.stdout)
    assert match, out.stdout + out.stderr
    config = tmp_path / "mesh.toml"
    config.write_text(
        f'[trust]\nauthority_public_key = "{match.group(1)}"\n[mesh]\npreset = "local"\n'
    )
    args = ("--config", str(config), "--no-mdns")
    node = NodeProcess(_certify(tmp_path, "node", authority), *args, dev=False)
    nodes.append(node)
    node.start()
    seed = f"{node.node_id}@127.0.0.1:{node.mesh_port}"
    peer = NodeProcess(_certify(tmp_path, "peer", authority), *args, "--seed", seed, dev=False)
    nodes.append(peer)
    peer.start()
    wait_mesh_states([node, peer], {n.node_id: "alive" for n in (node, peer)})
    return Certified(node, peer)


async def test_an_envelope_signed_by_one_node_on_another_nodes_connection_is_refused(
    certified: Certified,
) -> None:
    # The peer's own signed statement that it left: applied, it would evict the peer.
    peer_key = load_key_file(certified.peer.data_dir / "node.key")
    left = sign_left(peer_key.node_id, 1_000, peer_key.sign_detached)
    wire = Sealer(peer_key).seal(
        MsgType.MEMBERSHIP, encode(GossipMessage([left])), recipient=certified.public_key
    )
    before = certified.refused("sender_mismatch")
    # Carried by someone else: the CURVE key of this connection is not the signer's.
    async with Transport(NodeKey.generate().seed) as carrier:
        assert carrier.send(
            certified.public_key, certified.endpoint, wire, priority=Priority.MEMBERSHIP
        )

        def handled() -> bool:
            evicted = certified.node.peer_states().get(certified.peer.node_id) != "alive"
            return evicted or certified.refused("sender_mismatch") > before

        await async_wait_until(handled, what="the relayed envelope handled")
    # Refused before membership saw it: the peer is still alive there.
    assert certified.node.peer_states()[certified.peer.node_id] == "alive"
    assert certified.refused("sender_mismatch") == before + 1


async def test_a_hello_with_another_nodes_certificate_is_refused(certified: Certified) -> None:
    # Certificates are not secret (every HELLO carries one): anyone can present the
    # peer's. Without the peer's key the HELLO is signed by another key.
    signed = certificate_from_pem((certified.peer.data_dir / "node.cert").read_text())
    impostor = NodeKey.generate()
    hello = Hello(
        MESH_PROTOCOL_VERSION,
        encode_certificate(signed),
        PeerMeta("127.0.0.1", 1, None, fingerprint(signed)),
        mesh_name_for(certified.node.data_dir),
    )
    wire = Sealer(impostor).seal(
        MsgType.HELLO, msgspec.msgpack.encode(hello), recipient=certified.public_key
    )
    async with Transport(impostor.seed) as client:
        with pytest.raises(RemoteError) as refused:
            await client.request(
                certified.public_key, certified.endpoint, wire, timeout_s=REQUEST_TIMEOUT_S
            )
    assert refused.value.reason == "certificate_mismatch"
    assert certified.refused("certificate_mismatch") >= 1
    assert impostor.node_id not in certified.node.peer_states()
    peers = certified.node.get_json("/api/peers")["peers"]
    assert not any(p["id"] == impostor.node_id and p["admitted"] for p in peers)
