"""A mounted server that misbehaves (`faulty_server.py`) must cost one call, not the mount."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import async_wait_until, wait_for
from vsmcp.node.app.logs import JsonFormatter, TextFormatter
from vsmcp.node.tools.config import MountConfig, ToolsConfig
from vsmcp.node.tools.errors import ResultTooLarge, ToolQuarantined, ToolUnavailable
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.mounted import _drop_duplicate
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.stdio import STDERR_LINES_PER_S, escape_line
from vsmcp.node.tools.supervisor import Unit, UnitState

CTX = CallContext(caller_id="t", caller_zone="public", origin="test")
SERVER = Path(__file__).with_name("faulty_server.py")
CAP_BYTES = 1 << 20


def faulty_mount(**kw: Any) -> MountConfig:
    return MountConfig(
        name="f", command=sys.executable, args=[str(SERVER)], health_interval_s=0.2, **kw
    )


def catalog_for(mount: MountConfig, **tools: Any) -> LocalCatalog:
    cfg = ToolsConfig(mounts=[mount], entry_points=False, max_result_bytes=CAP_BYTES, **tools)
    cfg.supervision.backoff_initial_s = 0.05
    cfg.supervision.crash_loop_failures = 3
    return build_local_catalog(cfg)


@pytest.fixture
async def catalog() -> AsyncIterator[LocalCatalog]:
    async with catalog_for(faulty_mount()) as cat:
        await cat.supervisor.wait_running(timeout_s=30)
        yield cat


def unit_of(catalog: LocalCatalog) -> Unit:
    return catalog.supervisor.units["mount:f"]


async def echo(catalog: LocalCatalog, text: str = "hi") -> str:
    result = await catalog.call_tool("f.echo", {"text": text}, CTX)
    assert result["isError"] is False
    return str(result["content"][0]["text"])


async def test_an_answer_over_the_cap_fails_that_call_only(catalog: LocalCatalog) -> None:
    unit = unit_of(catalog)
    with pytest.raises(ResultTooLarge) as err:
        await catalog.call_tool("f.big", {"mb": 5}, CTX)
    size = err.value.data["size_bytes"]
    assert size > 5_000_000 and err.value.data["max_bytes"] == CAP_BYTES
    assert str(size) in err.value.message and str(CAP_BYTES) in err.value.message
    # The connection survived: same process, no restart, other tools answer.
    assert await echo(catalog) == "hi"
    assert unit.restarts == 0 and unit.state is UnitState.RUNNING
    assert unit.provider.stats.oversized_messages == 1  # type: ignore[attr-defined]


async def test_large_text_is_not_sent_twice(catalog: LocalCatalog) -> None:
    # `big` declares an output schema (the SDK wraps its `str` as {"result": ...}), so
    # the structured copy stays (clients check it) and the text becomes a pointer.
    spec = catalog.spec("f.big")
    assert spec is not None and spec.output_schema is not None
    result = await catalog.call_tool("f.big", {"mb": 0.2}, CTX)
    assert len(result["structuredContent"]["result"]) == 200_000
    assert result["content"] == [
        {"type": "text", "text": "[200000 characters, the same as structuredContent]"}
    ]
    # A small answer keeps both.
    small = await catalog.call_tool("f.echo", {"text": "x"}, CTX)
    assert small["structuredContent"] == {"result": "x"}
    assert small["content"][0]["text"] == "x"


def test_a_large_copy_without_an_output_schema_keeps_only_the_text() -> None:
    text = json.dumps({"rows": list(range(2000))})
    result = {"content": [{"type": "text", "text": text}], "structuredContent": json.loads(text)}
    _drop_duplicate(result, has_output_schema=False)
    assert result == {"content": [{"type": "text", "text": text}]}
    other = {"content": [{"type": "text", "text": "y" * 5000}], "structuredContent": {"n": 1}}
    _drop_duplicate(other, has_output_schema=False)
    assert other["structuredContent"] == {"n": 1}  # not a copy: kept


async def test_a_garbage_stdout_line_is_skipped_and_counted(catalog: LocalCatalog) -> None:
    unit = unit_of(catalog)
    for _ in range(3):
        result = await catalog.call_tool("f.garbage", {}, CTX)
        assert result["content"][0]["text"] == "after garbage"
    assert await echo(catalog) == "hi"
    assert unit.restarts == 0 and unit.state is UnitState.RUNNING
    assert unit.provider.stats.garbage_lines == 3  # type: ignore[attr-defined]


def mount_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "mount", None) == "f" and hasattr(r, "stderr")]


FAKE = "2026-12-06T06:00:00.000Z ERROR   node.daemon: fake\n\x1b[31mred\x1b[0m\rX\n"


async def test_stderr_lines_are_prefixed_escaped_records(
    catalog: LocalCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vsmcp.node.tools.stdio")
    await catalog.call_tool("f.inject", {"text": FAKE}, CTX)
    records = await async_wait_until(
        lambda: mount_records(caplog) if len(mount_records(caplog)) >= 2 else None,
        what="two stderr records",
    )
    # One record per stderr line, never a raw newline or escape character in one.
    assert [r.stderr for r in records] == [  # type: ignore[attr-defined]
        "2026-12-06T06:00:00.000Z ERROR   node.daemon: fake",
        "\\x1b[31mred\\x1b[0m\\rX",
    ]
    text = TextFormatter().format(records[0])
    assert text.endswith("mount f stderr: 2026-12-06T06:00:00.000Z ERROR   node.daemon: fake")
    assert "\n" not in TextFormatter().format(records[1])
    assert "\x1b" not in TextFormatter().format(records[1])
    assert '"stderr": "\\\\x1b[31mred' in JsonFormatter().format(records[1])


def test_escape_line_caps_the_length() -> None:
    out = escape_line("a" * 5000 + "\n", max_chars=100)
    assert out.startswith("a" * 100) and "cut" in out and len(out) < 150
    assert escape_line("tab\there\u2028") == "tab\\there\\u2028"


async def test_a_crashing_tool_is_quarantined_alone(catalog: LocalCatalog) -> None:
    unit = unit_of(catalog)
    for n in range(3):
        await async_wait_until(lambda: unit.state is UnitState.RUNNING, what="running")
        with pytest.raises(ToolUnavailable) as err:
            await catalog.call_tool("f.crash", {}, CTX)
        # The caller learns why, not only when to retry.
        assert "crash" in err.value.message and "connection closed" in err.value.message
        assert unit.state is not UnitState.QUARANTINED, f"unit quarantined after {n + 1} crashes"
    await async_wait_until(lambda: unit.state is UnitState.RUNNING, timeout_s=20, what="back up")
    with pytest.raises(ToolQuarantined):
        await catalog.call_tool("f.crash", {}, CTX)
    assert await echo(catalog) == "hi"


async def test_a_command_that_does_not_exist_is_named_in_the_error(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-server")
    async with catalog_for(MountConfig(name="f", command=missing)) as cat:
        unit = unit_of(cat)
        await async_wait_until(lambda: unit.last_error, what="a failed start")
    assert missing in str(unit.last_error) and "No such file" in str(unit.last_error)
    assert any(missing in r.getMessage() for r in caplog.records)


def read_pids(path: Path) -> list[int] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_server_that_never_initializes_times_out_and_stops_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "pids"
    env = {"FAULTY_NO_INIT": "1", "FAULTY_PID_FILE": str(pid_file), "FAULTY_CHILD": "1"}
    mount = faulty_mount(env=env, start_timeout_s=0.5, stop_grace_s=0.2)
    async with catalog_for(mount) as cat:
        unit = unit_of(cat)
        await async_wait_until(lambda: unit.last_error, timeout_s=20, what="a start timeout")
        assert "did not initialize within 0.5 s" in str(unit.last_error)
        assert str(SERVER) in str(unit.last_error)
        pids = await async_wait_until(lambda: read_pids(pid_file), timeout_s=20, what="pids")
        started = time.monotonic()
    # Stopped during a start that hangs: not held for the start timeout.
    assert time.monotonic() - started < 10
    assert any("did not initialize" in r.getMessage() for r in caplog.records)
    # The server and its child (which ignores SIGTERM) are both gone.
    wait_for(lambda: not any(alive(p) for p in pids), timeout_s=10, what="process group gone")
    assert len(pids) == 2 and os.getpid() not in pids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(params=["sse", "json"])
def http_server(request: pytest.FixtureRequest) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "FAULTY_HTTP_PORT": str(port)}
    if request.param == "json":
        env["FAULTY_JSON"] = "1"
    proc = subprocess.Popen([sys.executable, str(SERVER)], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: accepts(port) or proc.poll() is not None, timeout_s=30, what="listening")
        assert proc.poll() is None, "the HTTP test server exited"
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


async def test_an_http_answer_over_the_cap_fails_that_call_only(http_server: str) -> None:
    mount = MountConfig(name="f", url=http_server, health_interval_s=0.2)
    async with catalog_for(mount) as cat:
        await cat.supervisor.wait_running(timeout_s=30)
        with pytest.raises(ResultTooLarge, match=f"over the cap of {CAP_BYTES} bytes") as err:
            await cat.call_tool("f.big", {"mb": 5}, CTX)
        # Cut while it was read (so its size is unknown), never held whole.
        assert err.value.data["size_bytes"] is None
        assert await echo(cat) == "hi"
        # Below the cap, a large answer passes (sent once, as the stdio one).
        result = await cat.call_tool("f.big", {"mb": 0.2}, CTX)
        assert len(result["structuredContent"]["result"]) == 200_000
        unit = unit_of(cat)
        assert unit.restarts == 0 and unit.state is UnitState.RUNNING
        assert unit.provider.stats.oversized_messages == 1  # type: ignore[attr-defined]


async def test_a_flood_of_stderr_is_rate_limited_and_counted(
    catalog: LocalCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vsmcp.node.tools.stdio")
    lines = STDERR_LINES_PER_S * 4
    await catalog.call_tool("f.inject", {"text": "spam\n" * lines}, CTX)
    stats = unit_of(catalog).provider.stats  # type: ignore[attr-defined]
    await async_wait_until(
        lambda: stats.stderr_lines + stats.stderr_dropped >= lines, what="all lines seen"
    )
    # Within one second at most the limit is logged; the rest is counted, then reported.
    assert stats.stderr_dropped > 0
    assert len(mount_records(caplog)) < lines
    await async_wait_until(
        lambda: any("stderr lines (over" in r.getMessage() for r in caplog.records),
        timeout_s=15,
        what="the drop reported",
    )
