"""A running node's renewed certificate (node/app/trust.py `renewed_identity`,
node/app/cert_reload.py): what is taken, what is refused and why."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vsmcp.mesh.certs import (
    SignedCertificate,
    ZoneOrder,
    certificate_to_pem,
    issue_certificate,
    verify_certificate,
)
from vsmcp.mesh.identity import NodeKey
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.app.cert_reload import CertificateReloader
from vsmcp.node.app.trust import NodeIdentity, TrustError, renewed_identity

ZONES = ZoneOrder(("public", "ops", "restricted"))
NOW = 1_800_000_000
AUTHORITY = NodeKey.generate()
PARENT = NodeKey.generate()
SIBLING = NodeKey.generate()
CHILD = NodeKey.generate()


def certified(key: NodeKey, now_s: int = NOW) -> SignedCertificate:
    return issue_certificate(AUTHORITY, key.public_key, "ops", ["tools"], 86400, now_s=now_s)


def delegated(
    issuer: NodeKey, parent: SignedCertificate, lifetime_s: int = 60, *, now_s: int = NOW
) -> SignedCertificate:
    return issue_certificate(
        issuer, CHILD.public_key, "ops", ["tools"], lifetime_s, now_s=now_s, parent=parent
    )


def child_identity(now_s: int = NOW) -> NodeIdentity:
    signed = delegated(PARENT, certified(PARENT, now_s), now_s=now_s)
    cert = verify_certificate(signed, AUTHORITY.public_key, ZONES, now_s=now_s)
    return NodeIdentity(CHILD, signed, cert, AUTHORITY.public_key, ZONES, dev=False)


def test_a_renewal_from_the_same_parent_is_taken() -> None:
    current = child_identity()
    later = delegated(PARENT, certified(PARENT), 60, now_s=NOW + 30)
    renewed = renewed_identity(current, later, now_s=NOW + 31)
    assert renewed.certificate.expires_at_s == NOW + 90
    assert renewed.key is CHILD and renewed.fingerprint != current.fingerprint


def test_an_older_certificate_is_refused_even_if_still_valid() -> None:
    current = child_identity(NOW + 30)
    older = delegated(PARENT, certified(PARENT), 3600, now_s=NOW)  # valid, but issued before
    with pytest.raises(TrustError, match=f"issued at {NOW}, before the running node's"):
        renewed_identity(current, older, now_s=NOW + 31)


def test_a_certificate_the_parent_did_not_issue_is_refused() -> None:
    foreign = delegated(SIBLING, certified(SIBLING))  # verifies up to the same authority
    with pytest.raises(TrustError, match=f"issued by {SIBLING.node_id}, not by this node's parent"):
        renewed_identity(child_identity(), foreign, now_s=NOW + 1)


def test_a_certificate_outside_the_authority_is_refused() -> None:
    stranger = NodeKey.generate()
    own_root = issue_certificate(stranger, stranger.public_key, "ops", ["tools"], 86400, now_s=NOW)
    with pytest.raises(TrustError, match="renewed certificate rejected"):
        renewed_identity(child_identity(), delegated(stranger, own_root), now_s=NOW + 1)


def test_an_expired_one_or_another_keys_or_another_zones_is_refused() -> None:
    current = child_identity()
    with pytest.raises(TrustError, match="expired"):
        renewed_identity(current, delegated(PARENT, certified(PARENT), 10), now_s=NOW + 3600)
    other = issue_certificate(
        PARENT, SIBLING.public_key, "ops", ["tools"], 60, now_s=NOW, parent=certified(PARENT)
    )
    with pytest.raises(TrustError, match="another key"):
        renewed_identity(current, other, now_s=NOW + 1)
    public = issue_certificate(
        PARENT, CHILD.public_key, "public", ["tools"], 60, now_s=NOW, parent=certified(PARENT)
    )
    with pytest.raises(TrustError, match="its zone differ"):
        renewed_identity(current, public, now_s=NOW + 1)


def test_the_reloader_takes_a_changed_file_once_and_keeps_the_old_on_refusal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.cert"
    now = int(time.time())  # the reloader checks against the clock
    current = child_identity(now)
    path.write_text(certificate_to_pem(current.signed_certificate))
    taken: list[NodeIdentity] = []
    holder = [current]

    def take(identity: NodeIdentity) -> None:
        taken.append(identity)
        holder[0] = identity

    reloader = CertificateReloader(LoopSupervisor(), path, lambda: holder[0], take)
    assert reloader.check() is False  # unchanged since start
    foreign = delegated(SIBLING, certified(SIBLING, now), now_s=now)
    path.write_text(certificate_to_pem(foreign))
    os.utime(path, ns=(1, 1))
    assert reloader.check() is False
    assert reloader.view()["refused"] == 1 and "not by this node's parent" in str(
        reloader.view()["last_error"]
    )
    assert taken == []
    path.write_text("not a certificate")
    assert reloader.check() is False and "unreadable" in str(reloader.last_error)
    good = delegated(PARENT, certified(PARENT, now), 86400 // 2, now_s=now)
    path.write_text(certificate_to_pem(good))
    assert reloader.check() is True and reloader.check() is False
    assert [t.signed_certificate for t in taken] == [good]
    assert reloader.view() == {"renewed": 1, "refused": 2, "last_error": None}
    # Renamed over it with the same size and mtime: still seen as a change.
    again = delegated(PARENT, certified(PARENT, now), 86400 // 2, now_s=now + 1)
    replacement = tmp_path / "node.cert.new"
    replacement.write_text(certificate_to_pem(again))
    before = path.stat()
    assert replacement.stat().st_size == before.st_size
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, path)
    assert reloader.check() is True
    assert [t.signed_certificate for t in taken] == [good, again]
