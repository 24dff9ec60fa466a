"""The one place that decides whether a missing service or tool skips a test or fails it.

Tests that need something outside the project (a broker, a database, Node, Chromium,
network namespaces, IPv6, an optional PyPI package) call `skip_or_fail` with the reason.
Locally they skip with that reason; in CI (`VSMCP_REQUIRE_SERVICES=1`) absence is a
failure, so a green CI run never hides a test that did not run.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import socket
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REQUIRE_SERVICES = os.environ.get("VSMCP_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with `reason`, or fail with it when VSMCP_REQUIRE_SERVICES=1."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (VSMCP_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def require_module(name: str) -> ModuleType:
    """Import an optional module, or skip/fail naming it (instead of `importorskip`)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(f"{name} is not installed: {exc}")


def require_ipv6_loopback() -> None:
    """Skip/fail unless this host can bind a socket on ::1."""
    if not socket.has_ipv6:
        skip_or_fail("no IPv6 support in this Python")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        skip_or_fail(f"no IPv6 loopback: {exc}")


POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_DSN = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"


def require_postgres() -> str:
    """The DSN of the machine's PostgreSQL (trust auth, database `test`), or skip/fail
    when it or asyncpg is absent. Call it from synchronous code (a fixture): it runs its
    own event loop for the probe."""
    asyncpg = require_module("asyncpg")

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES_DSN}: {exc}")
    return POSTGRES_DSN


MOSQUITTO_ADDRESS = ("127.0.0.1", 1883)


def require_mosquitto() -> tuple[str, int]:
    """Skip/fail unless aiomqtt is installed and Mosquitto listens on 127.0.0.1:1883;
    returns the broker's (host, port)."""
    require_module("aiomqtt")
    try:
        socket.create_connection(MOSQUITTO_ADDRESS, timeout=2).close()
    except OSError as exc:
        skip_or_fail(f"no MQTT broker at {MOSQUITTO_ADDRESS[0]}:{MOSQUITTO_ADDRESS[1]}: {exc}")
    return MOSQUITTO_ADDRESS


MOSQUITTO_BINARY = "/usr/sbin/mosquitto"


def require_mosquitto_binary() -> str:
    """Skip/fail unless aiomqtt is installed and the Mosquitto broker's binary is there
    (for a test that starts its own broker); returns its path."""
    require_module("aiomqtt")
    path = shutil.which("mosquitto") or shutil.which(MOSQUITTO_BINARY)
    if path is None:
        skip_or_fail(f"no mosquitto binary (PATH, {MOSQUITTO_BINARY}): Debian package mosquitto")
    return path


RABBITMQ_URL = os.environ.get("VSMCP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def require_rabbitmq() -> str:
    """Skip/fail unless aio-pika is installed and RabbitMQ accepts a connection on
    127.0.0.1:5672; returns the broker's URL."""
    require_module("aio_pika")
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        skip_or_fail(f"RabbitMQ is not reachable on 127.0.0.1:5672: {exc}")
    return RABBITMQ_URL


CHROMIUM = "/usr/bin/chromium"


def require_browser(driver_dir: str) -> None:
    """Skip/fail unless Debian's Chromium, Node and playwright-core (`npm ci --prefix
    <driver_dir>`) are there: the status page's browser tests drive them."""
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"{CHROMIUM} is missing (Debian package chromium)")
    if shutil.which("node") is None:
        skip_or_fail("node is not on PATH")
    if not (Path(driver_dir) / "node_modules" / "playwright-core").is_dir():
        skip_or_fail(f"playwright-core not installed: npm ci --prefix {driver_dir}")
