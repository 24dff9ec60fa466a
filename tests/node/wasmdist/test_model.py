"""node/wasmdist without a network: the record a publication is (signed offline, checked
by a policies replica: issuer roles, body shape), the bytes on disk, the fetch codec."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vsmcp.crdt.errors import NotAuthorized
from vsmcp.crdt.policies import PolicyStore, sign_grant
from vsmcp.mesh.identity import NodeKey
from vsmcp.node.wasmdist.model import (
    PUBLISHER_ROLE,
    WASM_MODULE_KIND,
    ModuleBody,
    any_of,
    body_of,
    module_of,
    publisher_issuers,
)
from vsmcp.node.wasmdist.store import ModuleStore
from vsmcp.node.wasmdist.wire import CHUNK_BYTES, ChunkRequest, decode_request, encode_request

MODULE = b"\0asm\1\0\0\0" + b"x" * 100
SHA = hashlib.sha256(MODULE).hexdigest()


def _body(name: str = "wasm.echo") -> ModuleBody:
    return ModuleBody(name=name, sha256=SHA, size=len(MODULE), manifest=f'name = "{name}"')


def _store(authority: NodeKey, roles: dict[bytes, tuple[str, ...]]) -> PolicyStore:
    return PolicyStore(
        replica_id=b"r" * 8,
        authority_keys=[authority.public_key],
        allowed_issuers=any_of(publisher_issuers(roles.get)),
    )


def test_a_grant_signed_offline_by_the_authority_is_a_published_module() -> None:
    authority = NodeKey.generate()
    store = _store(authority, {})
    blob = sign_grant(
        authority, "wasm.echo", WASM_MODULE_KIND, body_of(_body()), now_ms=1, ttl_ms=1 << 50
    )
    assert store.accept_signed(blob)
    (policy,) = store.view()
    assert module_of(policy) == _body()


def test_only_a_publisher_node_may_issue_and_only_modules() -> None:
    authority, publisher, other = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    store = _store(authority, {publisher.public_key: (PUBLISHER_ROLE,), other.public_key: ()})
    store.issue(publisher, "wasm.echo", WASM_MODULE_KIND, body_of(_body()), ttl_ms=60_000)
    with pytest.raises(NotAuthorized):
        store.issue(other, "wasm.echo", WASM_MODULE_KIND, body_of(_body()), ttl_ms=60_000)
    with pytest.raises(NotAuthorized):  # the publisher role is for modules only
        store.issue(publisher, "x", "mitigation", {}, ttl_ms=60_000)
    blob = sign_grant(other, "m", WASM_MODULE_KIND, body_of(_body("m")), now_ms=1, ttl_ms=1 << 50)
    with pytest.raises(NotAuthorized):
        store.accept_signed(blob)
    assert store.rejected[WASM_MODULE_KIND] == 1


def test_a_body_that_does_not_decode_or_names_another_tool_is_not_a_module() -> None:
    authority = NodeKey.generate()
    store = _store(authority, {})
    store.issue(authority, "a", WASM_MODULE_KIND, {"name": "a", "sha256": "zz"}, ttl_ms=60_000)
    store.issue(authority, "b", WASM_MODULE_KIND, body_of(_body("c")), ttl_ms=60_000)
    assert [module_of(p) for p in store.view()] == [None, None]


def test_the_store_keeps_only_bytes_that_hash_to_their_name(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path / "wasm")
    with pytest.raises(ValueError, match="SHA-256"):
        store.write(SHA, MODULE + b"!")
    assert store.size(SHA) is None and store.read(SHA) is None
    store.write(SHA, MODULE)
    assert store.read(SHA) == MODULE and store.size(SHA) == len(MODULE)
    assert store.chunk(SHA, 4, 4) == MODULE[4:8]
    assert store.chunk(SHA, len(MODULE), 10) == b""
    store.path(SHA).write_bytes(b"tampered")
    assert store.read(SHA) is None  # no longer what its name says
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_chunk_requests_are_bounded() -> None:
    request = ChunkRequest(SHA, 0, CHUNK_BYTES)
    assert decode_request(encode_request(request)) == request
    assert decode_request(b"\x93\xa1x\x00\x01") is None  # not a hash
    too_big = encode_request(ChunkRequest(SHA, 0, CHUNK_BYTES + 1))
    assert decode_request(too_big) is None
