"""A Mosquitto of one's own with TLS listeners, for the MQTT bridge's TLS test and
benchmark: a throwaway CA (tests/tls_ca.py) certifies the broker as `broker.test` only
(not its address); listeners on free loopback ports: `port` (TLS), `client_port` (TLS, a
client certificate from the CA required) and `plain_port` (no TLS, for publishers whose
side is not what is measured)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.polling import wait_for
from tests.tls_ca import TestCa

BROKER_NAME = "broker.test"  # the only name in the broker's certificate


@dataclass(frozen=True, slots=True)
class TlsBroker:
    ca: TestCa
    port: int  # TLS
    client_port: int  # TLS, a client certificate from `ca` required
    plain_port: int  # plain TCP
    log: Path


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def tls_mosquitto(binary: str, directory: Path, settings: str = "") -> Iterator[TlsBroker]:
    """Run the broker (`settings`: more mosquitto.conf lines) until the block ends."""
    ca = TestCa.create(directory, "broker")
    server = ca.issue(directory, "server", dns=(BROKER_NAME,))
    port, client_port, plain_port = free_ports(3)
    tls = f"cafile {ca.cert}\ncertfile {server.cert}\nkeyfile {server.key}\n"
    config = directory / "mosquitto.conf"
    config.write_text(
        "user root\npersistence false\nallow_anonymous true\nlog_dest stderr\n"
        f"{settings}\n"
        f"listener {port} 127.0.0.1\n{tls}"
        f"listener {client_port} 127.0.0.1\n{tls}require_certificate true\n"
        f"listener {plain_port} 127.0.0.1\n"
    )
    log = directory / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=out, stderr=out)
    ports = (port, client_port, plain_port)
    try:
        wait_for(
            lambda: process.poll() is not None or all(_accepts(p) for p in ports),
            timeout_s=15,
            what="mosquitto listening",
        )
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text()[-2000:]}")
        yield TlsBroker(ca, port, client_port, plain_port, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
