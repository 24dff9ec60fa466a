"""Network namespaces joined by a veth pair: separate hosts on one machine, for tests of
what crosses a network (discovery, admission by real address, floods from a neighbour)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.skips import skip_or_fail


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str, str, str]]:
    """Two fresh namespaces joined by a veth pair; yields (ns_a, ip_a, ns_b, ip_b)."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        skip_or_fail("`ip` (iproute2) is not available")
    tag = uuid.uuid4().hex[:8]
    ns_a, ns_b = f"vsmcp-a-{tag}", f"vsmcp-b-{tag}"
    veth_a, veth_b = f"vsa{tag}", f"vsb{tag}"
    # 10.x in a /30 that exists only inside these two namespaces.
    octet = 1 + secrets.randbelow(250)
    ip_a, ip_b = f"10.231.{octet}.1", f"10.231.{octet}.2"
    created: list[str] = []
    try:
        try:
            for ns in (ns_a, ns_b):
                _ip("netns", "add", ns)
                created.append(ns)
            _ip("netns", "exec", ns_a, "ip", "link", "add", veth_a, "type", "veth",
                "peer", "name", veth_b, "netns", ns_b)  # fmt: skip
            for ns, dev, addr in ((ns_a, veth_a, ip_a), (ns_b, veth_b, ip_b)):
                _ip("netns", "exec", ns, "ip", "addr", "add", f"{addr}/30", "dev", dev)
                _ip("netns", "exec", ns, "ip", "link", "set", dev, "up")
                _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            skip_or_fail(f"cannot create network namespaces: {stderr.decode().strip() or exc}")
        yield ns_a, ip_a, ns_b, ip_b
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
