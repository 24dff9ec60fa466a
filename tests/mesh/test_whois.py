"""Whois tests: real UDP sockets on loopback, no mocks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.polling import async_wait_until
from tests.skips import require_ipv6_loopback
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.whois import (
    HEADER_BYTES,
    MAGIC_REQUEST,
    MAGIC_RESPONSE,
    MAX_PAYLOAD_BYTES,
    MAX_RESPONSE_BYTES,
    NONCE_BYTES,
    REQUEST_BYTES,
    WHOIS_VERSION,
    MalformedWhoisError,
    WhoisBindError,
    WhoisError,
    WhoisLimits,
    WhoisReply,
    WhoisResponder,
    WhoisTimeoutError,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
    source_key,
    whois,
)

DEADLINE_S = 10.0
LOOPBACK = "127.0.0.1"
# Frozen time: rate limit buckets never refill, so counts do not depend on speed.
FROZEN_CLOCK: Callable[[], float] = lambda: 1000.0  # noqa: E731


def echo_payload(nonce: bytes) -> bytes:
    return b"I am node " + nonce.hex().encode()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((LOOPBACK, 0))
    return sock


async def receive(sock: socket.socket, what: str) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DEADLINE_S):
        data, address = await loop.sock_recvfrom(sock, 65536)
    assert data is not None, what
    return data, address


def pending(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None


@pytest.fixture
async def responder() -> AsyncIterator[WhoisResponder]:
    async with WhoisResponder(LOOPBACK, 0, echo_payload) as service:
        yield service


# --- codec ----------------------------------------------------------------------------


def test_request_layout() -> None:
    nonce = bytes(range(NONCE_BYTES))
    request = encode_request(nonce)
    assert len(request) == REQUEST_BYTES
    assert request[:8] == MAGIC_REQUEST == b"VSMCPWHO"
    assert request[8] == WHOIS_VERSION == 1
    assert request[9:25] == nonce
    assert request[25:] == bytes(REQUEST_BYTES - 25)
    assert parse_request(request) == nonce


def test_response_layout() -> None:
    nonce = bytes(range(NONCE_BYTES))
    response = encode_response(nonce, b"payload")
    assert response == b"VSMCPWHR" + b"\x01" + nonce + b"payload"
    assert response[:8] == MAGIC_RESPONSE
    assert parse_response(response, nonce) == b"payload"
    assert HEADER_BYTES + MAX_PAYLOAD_BYTES == MAX_RESPONSE_BYTES == REQUEST_BYTES


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "size"),
        (encode_request(bytes(16))[:-1], "size"),
        (encode_request(bytes(16)) + b"\x00", "size"),
        (b"X" + encode_request(bytes(16))[1:], "magic"),
        (MAGIC_REQUEST + b"\x02" + encode_request(bytes(16))[9:], "version"),
        (MAGIC_RESPONSE + encode_request(bytes(16))[8:], "magic"),
    ],
)
def test_parse_request_rejects(datagram: bytes, reason: str) -> None:
    with pytest.raises(MalformedWhoisError) as info:
        parse_request(datagram)
    assert info.value.reason == reason


def test_parse_response_rejects() -> None:
    nonce = b"n" * NONCE_BYTES
    good = encode_response(nonce, b"x")
    cases = {
        "size": [good[: HEADER_BYTES - 1], good + bytes(MAX_RESPONSE_BYTES)],
        "magic": [b"Y" + good[1:], encode_request(nonce)[: len(good)]],
        "version": [MAGIC_RESPONSE + b"\x00" + good[9:]],
        "nonce": [encode_response(b"m" * NONCE_BYTES, b"x")],
    }
    for reason, datagrams in cases.items():
        for datagram in datagrams:
            with pytest.raises(MalformedWhoisError) as info:
                parse_response(datagram, nonce)
            assert info.value.reason == reason


def test_encoders_check_sizes() -> None:
    with pytest.raises(ValueError):
        encode_request(b"short")
    with pytest.raises(MalformedWhoisError):
        encode_response(bytes(NONCE_BYTES), bytes(MAX_PAYLOAD_BYTES + 1))
    assert len(encode_response(bytes(NONCE_BYTES), bytes(MAX_PAYLOAD_BYTES))) == REQUEST_BYTES


def test_errors_are_mesh_errors() -> None:
    assert issubclass(WhoisError, MeshError)
    assert issubclass(WhoisBindError, WhoisError)
    assert issubclass(WhoisTimeoutError, WhoisError)
    assert issubclass(WhoisTimeoutError, TimeoutError)


@given(st.binary(max_size=2 * REQUEST_BYTES))
def test_parse_request_never_crashes(datagram: bytes) -> None:
    try:
        nonce = parse_request(datagram)
    except MalformedWhoisError as exc:
        assert exc.reason in {"size", "magic", "version"}
    else:
        assert len(nonce) == NONCE_BYTES


@given(
    st.one_of(
        st.binary(max_size=2 * REQUEST_BYTES),
        st.binary(min_size=REQUEST_BYTES - 9, max_size=REQUEST_BYTES - 9).map(
            lambda tail: MAGIC_REQUEST + bytes([WHOIS_VERSION]) + tail
        ),
    ),
    st.sampled_from(["127.0.0.1", "10.0.0.1", "::1"]),
)
def test_handle_datagram_never_crashes(datagram: bytes, source: str) -> None:
    service = WhoisResponder(LOOPBACK, 0, echo_payload)
    response = service.handle_datagram(datagram, source)
    if response is not None:
        assert len(response) <= len(datagram)
        assert parse_response(response, datagram[9:25]) == echo_payload(datagram[9:25])
    assert sum(service.stats.values()) == (0 if response is not None else 1)


@given(st.binary(max_size=2 * MAX_RESPONSE_BYTES), st.binary(min_size=16, max_size=16))
def test_parse_response_never_crashes(datagram: bytes, nonce: bytes) -> None:
    try:
        payload = parse_response(datagram, nonce)
    except MalformedWhoisError as exc:
        assert exc.reason in {"size", "magic", "version", "nonce"}
    else:
        assert len(payload) <= MAX_PAYLOAD_BYTES


# --- round trip -----------------------------------------------------------------------


async def test_round_trip(responder: WhoisResponder) -> None:
    reply = await whois(LOOPBACK, responder.port, timeout_s=2.0)
    assert isinstance(reply, WhoisReply)
    assert len(reply.nonce) == NONCE_BYTES
    assert reply.payload == echo_payload(reply.nonce)
    assert responder.stats["answered"] == 1


async def test_each_whois_uses_a_fresh_nonce(responder: WhoisResponder) -> None:
    first = await whois(LOOPBACK, responder.port, timeout_s=2.0)
    second = await whois(LOOPBACK, responder.port, timeout_s=2.0)
    assert first.nonce != second.nonce


async def test_round_trip_ipv6() -> None:
    require_ipv6_loopback()
    service = WhoisResponder("::1", 0, echo_payload)
    await service.start()
    try:
        reply = await whois("::1", service.port, timeout_s=2.0)
        assert reply.payload == echo_payload(reply.nonce)
    finally:
        await service.stop()


async def test_callback_none_is_no_answer() -> None:
    async with WhoisResponder(LOOPBACK, 0, lambda nonce: None) as service:
        with pytest.raises(WhoisTimeoutError):
            await whois(LOOPBACK, service.port, timeout_s=0.05, attempts=2)
        await async_wait_until(
            lambda: service.stats["no_answer"] == 2, what="two unanswered requests"
        )


async def test_failing_callback_is_counted_and_port_keeps_answering() -> None:
    calls: list[bytes] = []

    def flaky(nonce: bytes) -> bytes:
        calls.append(nonce)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return b"ok"

    async with WhoisResponder(LOOPBACK, 0, flaky) as service:
        # The first attempt hits the failure; a retransmission gets the answer.
        reply = await whois(LOOPBACK, service.port, timeout_s=0.2, attempts=20)
        assert reply.payload == b"ok"
        assert service.stats["callback_error"] == 1


# --- responder drops ------------------------------------------------------------------


async def test_bad_datagrams_are_dropped_and_counted(responder: WhoisResponder) -> None:
    client = udp_socket()
    try:
        target = (LOOPBACK, responder.port)
        bad = {
            "size": [b"", b"garbage", encode_request(bytes(16))[:-1], bytes(4000)],
            "magic": [b"Z" * REQUEST_BYTES],
            "version": [MAGIC_REQUEST + b"\x07" + bytes(REQUEST_BYTES - 9)],
        }
        for datagrams in bad.values():
            for datagram in datagrams:
                client.sendto(datagram, target)
        total = sum(len(d) for d in bad.values())
        await async_wait_until(
            lambda: sum(responder.stats.values()) == total, what="all drops counted"
        )
        assert responder.stats == {reason: len(d) for reason, d in bad.items()}
        assert pending(client) is None

        nonce = b"k" * NONCE_BYTES
        client.sendto(encode_request(nonce), target)
        data, source = await receive(client, "answer after garbage")
        assert source == target
        assert parse_response(data, nonce) == echo_payload(nonce)
        assert responder.stats["answered"] == 1
    finally:
        client.close()


async def test_oversized_callback_payload_is_not_sent() -> None:
    sizes = iter([MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES])
    async with WhoisResponder(LOOPBACK, 0, lambda nonce: bytes(next(sizes))) as service:
        client = udp_socket()
        try:
            target = (LOOPBACK, service.port)
            client.sendto(encode_request(b"a" * NONCE_BYTES), target)
            await async_wait_until(
                lambda: service.stats["response_too_large"] == 1, what="oversize count"
            )
            assert pending(client) is None
            # The largest allowed payload fills the response up to the request's size.
            client.sendto(encode_request(b"b" * NONCE_BYTES), target)
            data, _ = await receive(client, "largest answer")
            assert len(data) == REQUEST_BYTES
            assert parse_response(data, b"b" * NONCE_BYTES) == bytes(MAX_PAYLOAD_BYTES)
            assert service.stats == {"response_too_large": 1, "answered": 1}
        finally:
            client.close()


# --- rate limiting --------------------------------------------------------------------


async def test_flood_from_one_source_is_rate_limited_others_still_answered() -> None:
    limits = WhoisLimits(source_burst=5, global_burst=50)
    async with WhoisResponder(LOOPBACK, 0, echo_payload, limits=limits, clock=FROZEN_CLOCK) as s:
        target = (LOOPBACK, s.port)
        flooder, other = udp_socket(), udp_socket()
        try:
            flood = 40
            for i in range(flood):
                flooder.sendto(encode_request(i.to_bytes(NONCE_BYTES, "big")), target)
            await async_wait_until(
                lambda: s.stats["answered"] + s.stats["rate_limited_source"] == flood,
                what="flood handled",
            )
            assert s.stats["answered"] == 5
            assert s.stats["rate_limited_source"] == flood - 5
            answers = [(await receive(flooder, "flood answer"))[0] for _ in range(5)]
            assert {a[9:25] for a in answers} == {i.to_bytes(16, "big") for i in range(5)}
            assert pending(flooder) is None

            # The same host is one source whatever its port: both sockets are 127.0.0.1,
            # so the "other" source is another loopback address.
            other.close()
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.setblocking(False)
            other.bind(("127.0.0.2", 0))
            nonce = b"o" * NONCE_BYTES
            other.sendto(encode_request(nonce), target)
            data, _ = await receive(other, "answer to another source")
            assert parse_response(data, nonce) == echo_payload(nonce)
            assert s.stats["answered"] == 6
        finally:
            flooder.close()
            other.close()


def test_global_bucket_bounds_many_sources() -> None:
    limits = WhoisLimits(global_burst=50, source_burst=5, max_sources=8)
    service = WhoisResponder(LOOPBACK, 0, echo_payload, limits=limits, clock=FROZEN_CLOCK)
    request = encode_request(bytes(NONCE_BYTES))
    answered = sum(
        service.handle_datagram(request, f"10.0.{i // 256}.{i % 256}") is not None
        for i in range(1000)
    )
    assert answered == 50
    assert service.stats["rate_limited_global"] == 950
    assert len(service._sources) == 8


def test_buckets_refill_with_time() -> None:
    now = [0.0]
    limits = WhoisLimits(source_rate_per_s=5.0, source_burst=5)
    service = WhoisResponder(LOOPBACK, 0, echo_payload, limits=limits, clock=lambda: now[0])
    request = encode_request(bytes(NONCE_BYTES))
    results = [service.handle_datagram(request, "10.0.0.1") is not None for _ in range(6)]
    assert results == [True] * 5 + [False]
    now[0] = 1.0  # five more tokens, never more than the burst
    results = [service.handle_datagram(request, "10.0.0.1") is not None for _ in range(6)]
    assert results == [True] * 5 + [False]


def test_source_keys() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("fe80::1%eth0") == source_key("fe80::2%eth1")
    assert source_key("not:an:address") == "not:an:address"


def test_one_ipv6_slash64_is_one_source() -> None:
    limits = WhoisLimits(source_burst=5)
    service = WhoisResponder(LOOPBACK, 0, echo_payload, limits=limits, clock=FROZEN_CLOCK)
    request = encode_request(bytes(NONCE_BYTES))
    answered = sum(
        service.handle_datagram(request, f"2001:db8:0:1::{i:x}") is not None for i in range(20)
    )
    assert answered == 5
    assert service.handle_datagram(request, "2001:db8:0:2::1") is not None


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        WhoisLimits(source_burst=0)
    with pytest.raises(ValueError):
        WhoisLimits(global_rate_per_s=-1.0)


# --- client ---------------------------------------------------------------------------


async def test_client_ignores_wrong_nonce_and_garbage() -> None:
    fake = udp_socket()
    try:
        port = fake.getsockname()[1]
        task = asyncio.create_task(whois(LOOPBACK, port, timeout_s=DEADLINE_S, attempts=1))
        request, client = await receive(fake, "whois request")
        nonce = parse_request(request)
        fake.sendto(encode_response(b"w" * NONCE_BYTES, b"impostor"), client)
        fake.sendto(b"garbage", client)
        fake.sendto(MAGIC_RESPONSE + b"\x02" + nonce + b"future", client)
        fake.sendto(encode_response(nonce, b"x") + bytes(MAX_RESPONSE_BYTES), client)
        fake.sendto(encode_response(nonce, b"genuine"), client)
        reply = await task
        assert reply == WhoisReply(nonce=nonce, payload=b"genuine")
    finally:
        fake.close()


async def test_client_accepts_answer_from_another_address() -> None:
    fake, elsewhere = udp_socket(), udp_socket()
    try:
        port = fake.getsockname()[1]
        task = asyncio.create_task(whois(LOOPBACK, port, timeout_s=DEADLINE_S, attempts=1))
        request, client = await receive(fake, "whois request")
        elsewhere.sendto(encode_response(parse_request(request), b"multihomed"), client)
        assert (await task).payload == b"multihomed"
    finally:
        fake.close()
        elsewhere.close()


async def test_client_retransmits_same_nonce() -> None:
    fake = udp_socket()
    try:
        port = fake.getsockname()[1]
        task = asyncio.create_task(whois(LOOPBACK, port, timeout_s=0.05, attempts=200))
        first, _ = await receive(fake, "first request")
        second, client = await receive(fake, "retransmission")
        assert first == second
        fake.sendto(encode_response(parse_request(first), b"late"), client)
        assert (await task).payload == b"late"
    finally:
        fake.close()


async def test_timeout_when_nothing_listens() -> None:
    probe = udp_socket()
    port = probe.getsockname()[1]
    probe.close()  # a port with nothing behind it
    with pytest.raises(WhoisTimeoutError) as info:
        await whois(LOOPBACK, port, timeout_s=0.05, attempts=2)
    assert info.value.reason == "timeout"


async def test_timeout_when_peer_is_silent() -> None:
    silent = udp_socket()
    try:
        with pytest.raises(WhoisTimeoutError):
            await whois(LOOPBACK, silent.getsockname()[1], timeout_s=0.05, attempts=3)
        requests = 0
        while pending(silent) is not None:
            requests += 1
        assert requests == 3
    finally:
        silent.close()


async def test_client_argument_checks() -> None:
    with pytest.raises(ValueError):
        await whois(LOOPBACK, 1, timeout_s=0)
    with pytest.raises(ValueError):
        await whois(LOOPBACK, 1, attempts=0)
    with pytest.raises(WhoisError) as info:
        await whois("no-such-host.invalid", 1, timeout_s=0.05)
    assert info.value.reason == "resolve"


# --- lifecycle ------------------------------------------------------------------------


async def test_start_stop_idempotent_and_port_freed() -> None:
    service = WhoisResponder(LOOPBACK, 0, echo_payload)
    assert not service.running
    with pytest.raises(WhoisError):
        _ = service.port
    await service.stop()  # stop before start is fine
    await service.start()
    port = service.port
    await service.start()
    assert service.port == port
    assert (await whois(LOOPBACK, port, timeout_s=2.0)).payload
    await service.stop()
    await service.stop()
    assert not service.running

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reuse:
        reuse.bind((LOOPBACK, port))  # raises if the responder still held it

    # A stopped responder can start again on the same port.
    again = WhoisResponder(LOOPBACK, port, echo_payload)
    async with again:
        assert (await whois(LOOPBACK, port, timeout_s=2.0)).payload


async def test_port_taken_raises_bind_error() -> None:
    holder = udp_socket()
    try:
        port = holder.getsockname()[1]
        with pytest.raises(WhoisBindError) as info:
            await WhoisResponder(LOOPBACK, port, echo_payload).start()
        assert info.value.reason == "bind"
        assert "in use" in str(info.value)
        assert str(port) in str(info.value)
    finally:
        holder.close()


async def test_tcp_port_of_same_number_does_not_conflict() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((LOOPBACK, 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        async with WhoisResponder(LOOPBACK, port, echo_payload) as service:
            assert service.port == port
            assert (await whois(LOOPBACK, port, timeout_s=2.0)).payload
