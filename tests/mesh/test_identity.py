from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.mesh.errors import (
    CorruptKeyFileError,
    InvalidNodeIdError,
    KeyFileError,
    KeyFilePermissionError,
)
from vsmcp.mesh.identity import (
    NodeKey,
    load_key_file,
    load_or_create_key_file,
    node_id_from_public_key,
    public_key_from_node_id,
    save_key_file,
    verify_detached,
)


def test_node_id_has_libp2p_prefix_and_round_trips() -> None:
    key = NodeKey.generate()
    assert key.node_id.startswith("12D3KooW")
    assert public_key_from_node_id(key.node_id) == key.public_key


def test_known_peer_id_vector() -> None:
    # All-zero key: prefix bytes fixed by the libp2p spec, so the id is fixed too.
    expected = base58.b58encode(b"\x00\x24\x08\x01\x12\x20" + bytes(32)).decode()
    assert node_id_from_public_key(bytes(32)) == expected
    assert expected.startswith("12D3KooW")


@given(st.binary(min_size=32, max_size=32))
def test_node_id_round_trip_property(pk: bytes) -> None:
    assert public_key_from_node_id(node_id_from_public_key(pk)) == pk


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "12D3KooW",
        "not base58 0OIl",
        "x" * 1000,
        base58.b58encode(b"\x00\x24\x08\x02\x12\x20" + bytes(32)).decode(),  # secp256k1 type
        base58.b58encode(b"\x00\x24\x08\x01\x12\x20" + bytes(31)).decode(),  # short key
        "1" + base58.b58encode(b"\x00\x24\x08\x01\x12\x20" + bytes(32)).decode(),  # alias
        "12D3KooWé",
    ],
)
def test_malformed_node_ids_rejected(bad: str) -> None:
    with pytest.raises(InvalidNodeIdError):
        public_key_from_node_id(bad)


@given(st.text(max_size=80))
def test_random_text_node_id_never_crashes(text: str) -> None:
    try:
        pk = public_key_from_node_id(text)
    except InvalidNodeIdError:
        return
    assert node_id_from_public_key(pk) == text


def test_sign_combined_and_detached_verify() -> None:
    key = NodeKey.from_seed(bytes(range(32)))
    msg = b"hello mesh"
    signed = key.sign(msg)
    assert signed[64:] == msg
    sig = key.sign_detached(msg)
    assert sig == signed[:64]
    assert verify_detached(key.public_key, msg, sig)
    assert not verify_detached(key.public_key, msg + b"!", sig)
    assert not verify_detached(NodeKey.generate().public_key, msg, sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_detached(key.public_key, msg, flipped)


@pytest.mark.parametrize(
    ("pk", "sig"),
    [(b"", bytes(64)), (bytes(31), bytes(64)), (bytes(32), bytes(63)), ("x" * 32, bytes(64))],
)
def test_verify_detached_bad_inputs_return_false(pk: object, sig: bytes) -> None:
    assert verify_detached(pk, b"m", sig) is False  # type: ignore[arg-type]


def test_from_seed_is_deterministic_and_repr_hides_seed() -> None:
    seed = os.urandom(32)
    a, b = NodeKey.from_seed(seed), NodeKey.from_seed(seed)
    assert a.public_key == b.public_key and a.seed == seed
    assert seed.hex() not in repr(a)
    with pytest.raises(ValueError):
        NodeKey.from_seed(b"short")


# --- key files ------------------------------------------------------------------------


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key, created = load_or_create_key_file(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_key_file(path)
    assert not created_again
    assert again.public_key == key.public_key
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_key_file(path, NodeKey.generate())
    key = NodeKey.generate()
    save_key_file(path, key)
    assert load_key_file(path).public_key == key.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_group_or_world_access_rejected(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    save_key_file(path, NodeKey.generate())
    path.chmod(mode)
    with pytest.raises(KeyFilePermissionError) as info:
        load_key_file(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert f"chmod 600 {path}" in message


def _write_raw(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _valid_document() -> dict[str, object]:
    key = NodeKey.generate()
    return {
        "type": "ed25519",
        "version": 1,
        "seed": base64.b64encode(key.seed).decode(),
        "public_key": base64.b64encode(key.public_key).decode(),
    }


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: "{not json", "not JSON"),
        (lambda d: "[1, 2]", "not a JSON object"),
        (lambda d: {**d, "type": "rsa"}, "type"),
        (lambda d: {**d, "version": 9}, "version"),
        (lambda d: {**d, "seed": "!!!notbase64"}, "not base64"),
        (lambda d: {**d, "seed": "AAAA"}, "expected 32"),
        (lambda d: {k: v for k, v in d.items() if k != "public_key"}, "public_key"),
        (lambda d: {**d, "public_key": _valid_document()["public_key"]}, "does not derive"),
    ],
)
def test_corrupt_key_files_rejected(tmp_path: Path, mutate: object, needle: str) -> None:
    path = tmp_path / "node.key"
    result = mutate(_valid_document())  # type: ignore[operator]
    text = result if isinstance(result, str) else json.dumps(result)
    _write_raw(path, text.encode())
    with pytest.raises(CorruptKeyFileError) as info:
        load_key_file(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_truncated_key_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_key_file(path, NodeKey.generate())
    data = path.read_bytes()
    for cut in (0, 1, len(data) // 2, len(data) - 3):
        _write_raw(path, data[:cut])
        with pytest.raises(CorruptKeyFileError):
            load_key_file(path)


def test_oversized_key_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    _write_raw(path, b" " * 10_000)
    with pytest.raises(CorruptKeyFileError):
        load_key_file(path)


def test_save_refuses_symlink_but_load_follows_it(tmp_path: Path) -> None:
    target = tmp_path / "real.key"
    key = NodeKey.generate()
    save_key_file(target, key)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    assert load_key_file(link).public_key == key.public_key
    with pytest.raises(KeyFileError):
        save_key_file(link, NodeKey.generate())
    assert load_key_file(target).public_key == key.public_key


def test_create_race_keeps_first_identity(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = NodeKey.generate()
    save_key_file(path, first)
    key, created = load_or_create_key_file(path)
    assert not created and key.public_key == first.public_key
