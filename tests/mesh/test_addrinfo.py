"""mesh.addrinfo: IP literals resolved in place, no resolver thread started."""

from __future__ import annotations

import json
import socket

import pytest

from tests.fresh_python import run_python
from tests.skips import require_module
from vsmcp.mesh.addrinfo import bound_stream_socket, getaddrinfo, numeric_addrinfo


def test_an_ip_literal_is_resolved_without_a_resolver() -> None:
    infos = numeric_addrinfo("127.0.0.1", 7700, type=socket.SOCK_STREAM)
    assert infos is not None
    assert [(i[0], i[4]) for i in infos] == [(socket.AF_INET, ("127.0.0.1", 7700))]


def test_a_name_is_left_to_the_resolver() -> None:
    assert numeric_addrinfo("localhost", 7700, type=socket.SOCK_STREAM) is None


def test_no_host_with_ai_passive_is_the_wildcard() -> None:
    infos = numeric_addrinfo(None, 0, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    assert infos is not None
    assert {i[4][0] for i in infos} <= {"0.0.0.0", "::"}
    assert infos


async def test_names_still_resolve_through_the_loop() -> None:
    infos = await getaddrinfo("localhost", 7700, type=socket.SOCK_STREAM)
    assert any(i[4][0] in ("127.0.0.1", "::1") for i in infos)


def test_a_bound_socket_is_reusable_non_blocking_and_on_the_address() -> None:
    info = numeric_addrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    assert info is not None
    with bound_stream_socket(info[0]) as sock:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.getsockname()[1] > 0
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1


def test_binding_a_taken_port_raises_and_leaves_no_socket_open() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        info = numeric_addrinfo(
            "127.0.0.1", taken.getsockname()[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        assert info is not None
        with pytest.raises(OSError) as raised:
            bound_stream_socket(info[0])
    assert raised.value.errno == 98  # EADDRINUSE


# uvloop runs the loop's getaddrinfo in libuv's worker pool: its threads appear at the
# first call and stay. Resolving literals in place must not start them.
_THREADS_AFTER = """
import asyncio, json, os, socket, uvloop
from vsmcp.mesh.addrinfo import getaddrinfo

async def main():
    await getaddrinfo("127.0.0.1", 1, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    await getaddrinfo("::1", 1, type=socket.SOCK_DGRAM)
    tasks = os.listdir("/proc/self/task")
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks)

print(json.dumps(uvloop.run(main())))
"""


def test_resolving_literals_starts_no_libuv_resolver_thread() -> None:
    require_module("uvloop")
    assert "libuv-worker" not in json.loads(run_python(_THREADS_AFTER))


def test_a_non_ascii_host_is_no_literal() -> None:
    assert numeric_addrinfo("bücher.example", 80, type=socket.SOCK_STREAM) is None


def test_a_literal_needs_no_idna_codec() -> None:
    code = (
        "import socket, sys\n"
        "from vsmcp.mesh.addrinfo import numeric_addrinfo\n"
        "assert numeric_addrinfo('127.0.0.1', 1, type=socket.SOCK_STREAM)\n"
        "print('encodings.idna' in sys.modules)\n"
    )
    assert run_python(code).strip() == "False"
