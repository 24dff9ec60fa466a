from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.mesh.certs import (
    CERT_SIGNING_CONTEXT,
    PEM_BEGIN,
    PEM_END,
    Certificate,
    SignedCertificate,
    ZoneOrder,
    certificate_from_pem,
    certificate_to_pem,
    decode_certificate,
    encode_certificate,
    fingerprint,
    issue_certificate,
    peek_certificate,
    self_certify,
    verify_certificate,
)
from vsmcp.mesh.errors import (
    CertificateChainError,
    CertificateDepthError,
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateSignatureError,
    ForeignAuthorityError,
    MalformedCertificateError,
    UnknownZoneError,
)
from vsmcp.mesh.identity import NodeKey

NOW = 1_700_000_000
DAY = 86_400
ZONES = ZoneOrder()
AUTHORITY = NodeKey.from_seed(b"A" * 32)
NODE = NodeKey.from_seed(b"N" * 32)
CHILD = NodeKey.from_seed(b"C" * 32)


def node_cert(zone: str = "ops", roles: tuple[str, ...] = ("node", "tools")) -> SignedCertificate:
    return issue_certificate(AUTHORITY, NODE.public_key, zone, roles, DAY, now_s=NOW)


def sign_raw(issuer: NodeKey, cert: Certificate) -> SignedCertificate:
    """Sign an arbitrary body, bypassing issue_certificate's own checks (an attacker can)."""
    body = msgspec.msgpack.encode(cert)
    return SignedCertificate(body, issuer.sign_detached(CERT_SIGNING_CONTEXT + body))


def test_zone_order() -> None:
    assert ZONES.rank("public") < ZONES.rank("ops") < ZONES.rank("restricted")
    assert ZONES.allows("ops", "public") and ZONES.allows("ops", "ops")
    assert not ZONES.allows("ops", "restricted")
    with pytest.raises(UnknownZoneError):
        ZONES.rank("secret")
    with pytest.raises(ValueError):
        ZoneOrder(["a", "a"])
    assert ZoneOrder(["low", "high"]).allows("high", "low")


def test_valid_certificate_verifies() -> None:
    cert = verify_certificate(node_cert(), AUTHORITY.public_key, ZONES, now_s=NOW + 10)
    assert cert.node_public_key == NODE.public_key
    assert cert.zone == "ops" and cert.roles == ("node", "tools")
    assert cert.depth == 0 and cert.expires_at_s == NOW + DAY


def test_tampered_body_or_signature_is_bad_signature() -> None:
    signed = node_cert()
    body = bytearray(signed.body)
    index = bytes(body).index(b"ops")
    body[index : index + 3] = b"xyz"  # still decodes, different zone name bytes
    with pytest.raises(CertificateSignatureError):
        verify_certificate(
            SignedCertificate(bytes(body), signed.signature), AUTHORITY.public_key, ZONES, now_s=NOW
        )
    sig = bytearray(signed.signature)
    sig[10] ^= 0x01
    with pytest.raises(CertificateSignatureError) as info:
        verify_certificate(
            SignedCertificate(signed.body, bytes(sig)), AUTHORITY.public_key, ZONES, now_s=NOW
        )
    assert info.value.reason == "bad_signature"


def test_zone_upgrade_by_tampering_is_rejected() -> None:
    signed = node_cert(zone="ops")
    cert = peek_certificate(signed)
    forged = msgspec.structs.replace(cert, zone="restricted")
    tampered = SignedCertificate(msgspec.msgpack.encode(forged), signed.signature)
    with pytest.raises(CertificateSignatureError):
        verify_certificate(tampered, AUTHORITY.public_key, ZONES, now_s=NOW)


def test_validity_window_with_skew() -> None:
    signed = node_cert()
    verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW - 59)
    with pytest.raises(CertificateNotYetValidError):
        verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW - 120)
    verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW + DAY)
    with pytest.raises(CertificateExpiredError) as info:
        verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW + DAY + 120)
    assert info.value.reason == "expired"


def test_unknown_zone() -> None:
    signed = issue_certificate(
        AUTHORITY, NODE.public_key, "lab", ["node"], DAY, now_s=NOW, zones=ZoneOrder(["lab"])
    )
    with pytest.raises(UnknownZoneError) as info:
        verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW)
    assert info.value.reason == "unknown_zone"
    with pytest.raises(UnknownZoneError):
        issue_certificate(AUTHORITY, NODE.public_key, "lab", ["node"], DAY, now_s=NOW)


def test_foreign_authority() -> None:
    other = NodeKey.from_seed(b"X" * 32)
    signed = issue_certificate(other, NODE.public_key, "ops", ["node"], DAY, now_s=NOW)
    with pytest.raises(ForeignAuthorityError) as info:
        verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW)
    assert info.value.reason == "foreign_authority"
    # Claiming our authority as issuer but signed by another key: bad signature.
    forged = sign_raw(other, msgspec.structs.replace(peek_certificate(node_cert())))
    with pytest.raises(CertificateSignatureError):
        verify_certificate(forged, AUTHORITY.public_key, ZONES, now_s=NOW)


def test_delegated_chain_valid() -> None:
    parent = node_cert(zone="ops")
    child = issue_certificate(
        NODE, CHILD.public_key, "public", ["tools"], 3 * DAY, now_s=NOW + 5, parent=parent
    )
    cert = verify_certificate(child, AUTHORITY.public_key, ZONES, now_s=NOW + 10)
    assert cert.depth == 1
    assert cert.zone == "public"
    assert cert.expires_at_s == NOW + DAY  # clamped to the parent's expiry
    grandchild_key = NodeKey.from_seed(b"G" * 32)
    grandchild = issue_certificate(
        CHILD, grandchild_key.public_key, "public", [], 60, now_s=NOW + 6, parent=child
    )
    assert verify_certificate(grandchild, AUTHORITY.public_key, ZONES, now_s=NOW + 10).depth == 2
    # The whole chain expires with its root.
    with pytest.raises(CertificateExpiredError):
        verify_certificate(grandchild, AUTHORITY.public_key, ZONES, now_s=NOW + DAY + 120)


def test_issue_refuses_bad_delegations() -> None:
    parent = node_cert(zone="ops", roles=("node",))
    with pytest.raises(CertificateChainError):
        issue_certificate(NODE, CHILD.public_key, "restricted", [], DAY, now_s=NOW, parent=parent)
    with pytest.raises(CertificateChainError):
        issue_certificate(NODE, CHILD.public_key, "ops", ["admin"], DAY, now_s=NOW, parent=parent)
    with pytest.raises(CertificateChainError):  # not the holder of the parent
        issue_certificate(CHILD, CHILD.public_key, "ops", [], DAY, now_s=NOW, parent=parent)


def _child_body(parent: SignedCertificate, **overrides: object) -> Certificate:
    base = Certificate(
        node_public_key=CHILD.public_key,
        zone="ops",
        roles=("node",),
        issued_at_s=NOW,
        expires_at_s=NOW + 60,
        depth=1,
        issuer_public_key=NODE.public_key,
        parent=parent,
    )
    return msgspec.structs.replace(base, **overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"zone": "restricted"},  # wider zone
        {"roles": ("node", "admin")},  # roles not in the parent
        {"depth": 2},  # inconsistent depth
        {"expires_at_s": NOW + DAY + 1},  # outlives the parent
        {"issuer_public_key": CHILD.public_key},  # self-issued under someone else's parent
    ],
)
def test_forged_delegations_rejected(overrides: dict[str, object]) -> None:
    parent = node_cert(zone="ops", roles=("node",))
    issuer = CHILD if "issuer_public_key" in overrides else NODE
    forged = sign_raw(issuer, _child_body(parent, **overrides))
    with pytest.raises(CertificateChainError) as info:
        verify_certificate(forged, AUTHORITY.public_key, ZONES, now_s=NOW)
    assert info.value.reason in {"bad_chain", "depth_exceeded"}


def test_delegation_signed_by_wrong_key_rejected() -> None:
    parent = node_cert()
    forged = sign_raw(CHILD, _child_body(parent, roles=()))  # claims NODE issued it
    with pytest.raises(CertificateSignatureError):
        verify_certificate(forged, AUTHORITY.public_key, ZONES, now_s=NOW)


def test_depth_beyond_max_rejected() -> None:
    keys = [NodeKey.from_seed(bytes([i]) * 32) for i in range(1, 8)]
    chain = issue_certificate(AUTHORITY, keys[0].public_key, "ops", [], DAY, now_s=NOW)
    for holder, child in itertools.pairwise(keys):
        chain = issue_certificate(holder, child.public_key, "ops", [], DAY, now_s=NOW, parent=chain)
    assert peek_certificate(chain).depth == 6
    verify_certificate(chain, AUTHORITY.public_key, ZONES, now_s=NOW, max_depth=6)
    with pytest.raises(CertificateDepthError) as info:
        verify_certificate(chain, AUTHORITY.public_key, ZONES, now_s=NOW, max_depth=4)
    assert info.value.reason == "depth_exceeded"


def test_root_with_parent_mismatch_is_bad_chain() -> None:
    parent = node_cert()
    forged = sign_raw(AUTHORITY, _child_body(parent, depth=0))
    with pytest.raises(CertificateChainError):
        verify_certificate(forged, AUTHORITY.public_key, ZONES, now_s=NOW)


def test_encoding_pem_and_fingerprint_round_trip() -> None:
    parent = node_cert()
    child = issue_certificate(NODE, CHILD.public_key, "public", [], 60, now_s=NOW, parent=parent)
    for signed in (parent, child):
        data = encode_certificate(signed)
        assert decode_certificate(data) == signed
        pem = certificate_to_pem(signed)
        assert pem.startswith(PEM_BEGIN + "\n") and pem.rstrip().endswith(PEM_END)
        assert all(len(line) <= 64 for line in pem.splitlines())
        again = certificate_from_pem("comment before\n" + pem + "trailing\n")
        assert again == signed
        assert again.body == signed.body  # exact bytes kept, never re-encoded
        verify_certificate(again, AUTHORITY.public_key, ZONES, now_s=NOW)
        assert len(fingerprint(signed)) == 64
    assert fingerprint(parent) != fingerprint(child)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        f"{PEM_BEGIN}\n!!!!\n{PEM_END}\n",
        f"{PEM_BEGIN}\nAAAA\n{PEM_END}\n",
        f"{PEM_BEGIN}\n{'QUFB' * 10}\n",  # no END
        f"{PEM_END}\n{PEM_BEGIN}\n",
        f"{PEM_BEGIN}\n{'A' * 40_000}\n{PEM_END}\n",
    ],
)
def test_garbage_pem_rejected(text: str) -> None:
    with pytest.raises(CertificateError):
        certificate_from_pem(text)


@given(st.binary(max_size=400))
def test_garbage_bytes_raise_certificate_error(data: bytes) -> None:
    try:
        signed = decode_certificate(data)
    except CertificateError:
        return
    with pytest.raises(CertificateError):
        verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW)


def test_decode_is_size_capped() -> None:
    with pytest.raises(MalformedCertificateError):
        decode_certificate(b"\x92" + b"\xc6" + (100_000).to_bytes(4, "big") + bytes(100_000))


def test_self_certify_for_dev_mode() -> None:
    key = NodeKey.generate()
    signed = self_certify(key, "restricted", DAY, roles=["dev"], now_s=NOW)
    cert = verify_certificate(signed, key.public_key, ZONES, now_s=NOW)
    assert cert.node_public_key == key.public_key == cert.issuer_public_key
    with pytest.raises(ForeignAuthorityError):
        verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW)


def test_unknown_fields_fail_closed() -> None:
    cert = peek_certificate(node_cert())
    raw = msgspec.to_builtins(cert)
    raw["restrict_to_host"] = "x"
    body = msgspec.msgpack.encode(raw)
    signed = SignedCertificate(body, AUTHORITY.sign_detached(CERT_SIGNING_CONTEXT + body))
    with pytest.raises(MalformedCertificateError):
        verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=NOW)
