"""Child certificates (node/children/manager.py): renewal is due at half the lifetime a
child's certificate was actually issued with, which our own certificate's expiry may
clamp below `recursion.child_certificate_s`; a renewal of our own re-certifies the
running children (real keys, real files; no child process is started)."""

from __future__ import annotations

import time
from pathlib import Path

from vsmcp.mesh.certs import (
    DEFAULT_ZONES,
    ZoneOrder,
    certificate_from_pem,
    peek_certificate,
    self_certify,
)
from vsmcp.mesh.identity import NodeKey
from vsmcp.node.app.config import load_config
from vsmcp.node.children.config import RecursionSection
from vsmcp.node.children.manager import (
    CERT_FILE_NAME,
    RENEW_AT_FRACTION,
    ChildManager,
    ParentTrust,
)
from vsmcp.node.children.process import child_environment

PARENT_LEFT_S = 40  # our own certificate expires in 40 s
CHILD_LIFETIME_S = 3600
MESH_NAME = "123"  # reads as a number unless quoted


def trust(key: NodeKey, lifetime_s: int) -> ParentTrust:
    zones = ZoneOrder(DEFAULT_ZONES)
    signed = self_certify(key, "restricted", lifetime_s, zones=zones)
    return ParentTrust(key, signed, peek_certificate(signed), zones, key.public_key)


class Sink:
    def publish(self, event: object) -> None:
        pass


def manager(tmp_path: Path, parent: ParentTrust) -> ChildManager:
    return ChildManager(
        data_dir=tmp_path,
        trust=parent,
        limits=RecursionSection(child_certificate_s=CHILD_LIFETIME_S),
        seed=lambda: "",
        mesh_preset="local",
        mesh_name=MESH_NAME,
        events=Sink(),  # type: ignore[arg-type]
        audit=lambda kind, data: None,
        tools_of=lambda name: [],
    )


def test_a_child_is_told_our_mesh_name_not_left_to_inherit_it(tmp_path: Path) -> None:
    # The parent's own VSMCP_MESH_NAME is not inherited (no config variable is): the
    # name is imposed, as a TOML string, so a child joins our mesh whatever it reads.
    m = manager(tmp_path, trust(NodeKey.generate(), PARENT_LEFT_S))
    inherited = {"VSMCP_MESH_NAME": "ours-from-the-environment", "PATH": "/usr/bin"}
    env = child_environment(inherited, m._child_env(), 4242)
    child_file = tmp_path / "child.toml"
    child_file.write_text('[mesh]\nname = "its-own"\n')
    assert load_config(child_file, environ=env).mesh.name == MESH_NAME


def test_renewal_is_due_at_half_the_clamped_lifetime(tmp_path: Path) -> None:
    m = manager(tmp_path, trust(NodeKey.generate(), PARENT_LEFT_S))
    child_dir = tmp_path / "children" / "c"
    child_dir.mkdir(parents=True)
    before = time.monotonic()
    m._certify(child_dir, "restricted")
    cert = peek_certificate(certificate_from_pem((child_dir / CERT_FILE_NAME).read_text()))
    lifetime_s = cert.expires_at_s - cert.issued_at_s
    assert lifetime_s <= PARENT_LEFT_S  # clamped to ours
    due = m._renew_at["c"]
    # Due well before it expires (not at half of child_certificate_s, an hour away).
    assert due <= time.monotonic() + lifetime_s * RENEW_AT_FRACTION
    assert due >= before + lifetime_s * RENEW_AT_FRACTION - 1
