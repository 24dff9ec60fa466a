"""Tests for mesh/discovery.py: seeds, the peer-list codec, the aggregator, and mDNS
discovery with real python-zeroconf on loopback (and across network namespaces).

Loopback multicast: on this machine nothing has to be configured. `lo` has no
MULTICAST flag and there is no 224.0.0.0/4 route, yet mDNS works, because
python-zeroconf, given `interfaces=["127.0.0.1"]`, pins IP_MULTICAST_IF to 127.0.0.1
and enables IP_MULTICAST_LOOP, so the kernel needs neither. Only `lo` must be UP
(it is down in a fresh network namespace: `ip link set lo up`). Where it does not
work, the mDNS tests skip with the probe's reason, unless VSMCP_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import IPVersion, ServiceInfo, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from tests.polling import async_wait_until
from tests.skips import skip_or_fail
from vsmcp.mesh.discovery import (
    MAX_PEER_LIST_BYTES,
    MAX_PEER_LIST_ENTRIES,
    SERVICE_TYPE,
    Candidate,
    Discovery,
    InvalidCandidateError,
    InvalidSeedError,
    MdnsDiscovery,
    PeerListError,
    SeedDiscovery,
    candidate_from_service_info,
    decode_peer_list,
    encode_peer_list,
    instance_label,
    parse_seed,
    parse_seeds,
)
from vsmcp.mesh.errors import MeshError

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
DEADLINE_S = 20.0
PROTOCOL_VERSION = 1

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def new_node_id() -> str:
    """Shaped like a libp2p Ed25519 PeerID (52 characters)."""
    return "12D3KooW" + "".join(secrets.choice(_B58) for _ in range(44))


def new_fingerprint() -> str:
    return secrets.token_hex(32)


# -- loopback multicast probe ------------------------------------------------------


async def _probe_loopback_mdns() -> str | None:
    """Raw zeroconf, no vsmcp code: can one responder on 127.0.0.1 be browsed?"""
    probe_type = f"_vsmcpprobe{secrets.token_hex(2)}._tcp.local."
    try:
        a = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
        b = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    except OSError as exc:
        return f"cannot open mDNS sockets on {LOOPBACK}: {exc}"
    seen = asyncio.Event()

    def handler(**kwargs: Any) -> None:
        if kwargs["state_change"] is ServiceStateChange.Added:
            seen.set()

    browser = AsyncServiceBrowser(b.zeroconf, probe_type, handlers=[handler])
    try:
        info = ServiceInfo(
            probe_type,
            f"probe.{probe_type}",
            port=9,
            properties={"x": "1"},
            server="vsmcp-probe.local.",
            parsed_addresses=[LOOPBACK],
        )
        await a.async_register_service(info)
        await asyncio.wait_for(seen.wait(), 8)
    except TimeoutError:
        return (
            "multicast on loopback does not deliver mDNS here "
            "(is `lo` UP? try `ip link set lo up multicast on`)"
        )
    finally:
        await browser.async_cancel()
        await a.async_close()
        await b.async_close()
    return None


@pytest.fixture(scope="session")
def loopback_mdns_problem() -> str | None:
    # A fresh thread, so the probe's event loop never nests inside a test's loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _probe_loopback_mdns()).result()


@pytest.fixture
def loopback_mdns(loopback_mdns_problem: str | None) -> None:
    if loopback_mdns_problem is not None:
        skip_or_fail(loopback_mdns_problem)


# -- helpers ---------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.found: dict[str, Candidate] = {}
        self.lost: list[str] = []

    def on_candidate(self, candidate: Candidate) -> None:
        assert candidate.node_id is not None
        self.found[candidate.node_id] = candidate
        with suppress(ValueError):
            self.lost.remove(candidate.node_id)

    def on_lost(self, node_id: str) -> None:
        self.found.pop(node_id, None)
        self.lost.append(node_id)


class Node:
    def __init__(self, http_port: int | None = 8080) -> None:
        self.node_id = new_node_id()
        self.fingerprint = new_fingerprint()
        self.mesh_port = 20000 + secrets.randbelow(40000)
        self.http_port = http_port
        self.rec = Recorder()
        self.mdns = MdnsDiscovery(
            node_id=self.node_id,
            cert_fingerprint=self.fingerprint,
            mesh_port=self.mesh_port,
            http_port=http_port,
            protocol_version=PROTOCOL_VERSION,
            on_candidate=self.rec.on_candidate,
            on_lost=self.rec.on_lost,
            interfaces=[LOOPBACK],
        )

    def assert_describes(self, candidate: Candidate) -> None:
        assert candidate.node_id == self.node_id
        assert candidate.host == LOOPBACK
        assert candidate.mesh_port == self.mesh_port
        assert candidate.http_port == self.http_port
        assert candidate.cert_fingerprint == self.fingerprint
        assert candidate.protocol_version == PROTOCOL_VERSION
        assert candidate.source == "mdns"


async def start_nodes(stack: AsyncExitStack, nodes: list[Node]) -> None:
    for node in nodes:
        stack.push_async_callback(node.mdns.stop)
    await asyncio.gather(*(node.mdns.start() for node in nodes))


# -- mDNS on loopback, one process ---------------------------------------------------


@pytest.mark.usefixtures("loopback_mdns")
async def test_two_nodes_find_each_other_and_see_goodbye() -> None:
    a, b = Node(http_port=8080), Node(http_port=None)
    async with AsyncExitStack() as stack:
        await start_nodes(stack, [a, b])
        await async_wait_until(
            lambda: b.node_id in a.rec.found, what="a to find b", timeout_s=DEADLINE_S
        )
        await async_wait_until(
            lambda: a.node_id in b.rec.found, what="b to find a", timeout_s=DEADLINE_S
        )
        b.assert_describes(a.rec.found[b.node_id])
        a.assert_describes(b.rec.found[a.node_id])
        assert a.node_id not in a.rec.found, "a node must not discover itself"

        await b.mdns.stop()
        await b.mdns.stop()  # idempotent
        await async_wait_until(
            lambda: b.node_id in a.rec.lost, what="a to see b leave", timeout_s=DEADLINE_S
        )
        assert b.node_id not in a.rec.found
        assert a.mdns.malformed_counts().get("callback_error") is None


@pytest.mark.usefixtures("loopback_mdns")
async def test_five_nodes_find_each_other_and_all_see_one_leave() -> None:
    nodes = [Node() for _ in range(5)]
    async with AsyncExitStack() as stack:
        await start_nodes(stack, nodes)
        for node in nodes:
            others = {n.node_id for n in nodes if n is not node}
            await async_wait_until(
                lambda n=node, o=others: o <= n.rec.found.keys(),
                what="full view",
                timeout_s=DEADLINE_S,
            )
            for other in nodes:
                if other is not node:
                    other.assert_describes(node.rec.found[other.node_id])
        leaver, stayers = nodes[0], nodes[1:]
        await leaver.mdns.stop()
        for node in stayers:
            await async_wait_until(
                lambda n=node: leaver.node_id in n.rec.lost,
                what="goodbye seen",
                timeout_s=DEADLINE_S,
            )


async def test_start_stop_is_idempotent_and_restartable(loopback_mdns: None) -> None:
    node = Node()
    await node.mdns.stop()  # never started: no-op
    async with node.mdns:
        await node.mdns.start()  # already running: no-op
        assert node.mdns.running
    assert not node.mdns.running
    await node.mdns.stop()
    async with node.mdns:
        assert node.mdns.running


async def test_a_stop_right_after_start_ends_the_announcements(loopback_mdns: None) -> None:
    # start() returns once probing found the name free; the announcements go on in the
    # background (the node is healthy sooner), and stop() must end them.
    node = Node()
    before = asyncio.all_tasks()
    await node.mdns.start()
    await node.mdns.stop()
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == set()


@pytest.mark.usefixtures("loopback_mdns")
async def test_a_node_browses_before_it_registers() -> None:
    # start(register=False) is how a node starts: browsing at once, the probe later.
    a, b = Node(), Node()
    async with AsyncExitStack() as stack:
        await start_nodes(stack, [a])
        stack.push_async_callback(b.mdns.stop)
        await b.mdns.start(register=False)
        await async_wait_until(
            lambda: a.node_id in b.rec.found,
            what="b (not registered) to find a",
            timeout_s=DEADLINE_S,
        )
        assert b.node_id not in a.rec.found  # b has not advertised yet
        await b.mdns.register()
        await async_wait_until(
            lambda: b.node_id in a.rec.found,
            what="a to find b once registered",
            timeout_s=DEADLINE_S,
        )


async def test_a_stop_during_the_probe_leaves_no_task_behind(loopback_mdns: None) -> None:
    node = Node()
    before = asyncio.all_tasks()
    await node.mdns.start(register=False)
    registering = asyncio.create_task(node.mdns.register())
    await asyncio.sleep(0)  # the probe has begun
    registering.cancel()
    await asyncio.gather(registering, return_exceptions=True)
    await node.mdns.stop()
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == set()


# -- malformed records ----------------------------------------------------------------


def raw_service(label: str, port: int, props: dict[str, str | bytes]) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=port,
        properties=dict(props),
        server=f"{label}.local.",
        parsed_addresses=[LOOPBACK],
    )


@pytest.mark.usefixtures("loopback_mdns")
async def test_malformed_txt_records_are_ignored_and_counted() -> None:
    def good_props(**overrides: str | bytes) -> dict[str, str | bytes]:
        props: dict[str, str | bytes] = {
            "id": new_node_id(),
            "fp": new_fingerprint(),
            "mp": "7000",
            "hp": "8000",
            "pv": "1",
        }
        props.update(overrides)
        return props

    bad = {
        "bad_port": raw_service("bad-port", 7000, good_props(mp="99999")),
        "txt_value_too_large": raw_service("huge", 7000, good_props(id="x" * 250)),
        "missing_fp": raw_service(
            "no-fp", 7000, {k: v for k, v in good_props().items() if k != "fp"}
        ),
        "bad_protocol_version": raw_service("bad-pv", 7000, good_props(pv="+1")),
        "port_mismatch": raw_service("mismatch", 7001, good_props()),
        "txt_not_ascii": raw_service("utf8", 7000, good_props(id="nöde".encode())),
        "bad_fingerprint": raw_service("bad-fp", 7000, good_props(fp="zz" * 32)),
        "txt_too_large": raw_service(
            "big-txt", 7000, good_props(**{f"k{i}": "v" * 100 for i in range(12)})
        ),
    }
    sentinel_props = good_props()
    sentinel = raw_service("sentinel", 7000, sentinel_props)

    observer = Node()
    rogue = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    try:
        async with observer.mdns:
            await asyncio.gather(
                *(rogue.async_register_service(i) for i in [*bad.values(), sentinel])
            )
            sentinel_id = str(sentinel_props["id"])
            await async_wait_until(
                lambda: sentinel_id in observer.rec.found, what="valid record", timeout_s=DEADLINE_S
            )
            await async_wait_until(
                lambda: set(bad) <= observer.mdns.malformed_counts().keys(),
                what=f"every malformed reason counted, got {observer.mdns.malformed_counts()}",
                timeout_s=DEADLINE_S,
            )
            found_ids = set(observer.rec.found)
            for info in bad.values():
                bad_id = (info.properties.get(b"id") or b"").decode("ascii", "replace")
                assert bad_id not in found_ids
            assert observer.mdns.running
    finally:
        await rogue.async_close()


@pytest.mark.usefixtures("loopback_mdns")
async def test_changed_txt_record_is_reported_again() -> None:
    props: dict[str, str | bytes] = {
        "id": new_node_id(),
        "fp": new_fingerprint(),
        "mp": "7000",
        "hp": "8000",
        "pv": "1",
    }
    node_id = str(props["id"])
    info = raw_service("changing", 7000, props)
    observer = Node()
    other = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    try:
        async with observer.mdns:
            await other.async_register_service(info)
            await async_wait_until(
                lambda: node_id in observer.rec.found, what="first version", timeout_s=DEADLINE_S
            )
            assert observer.rec.found[node_id].http_port == 8000
            updated = raw_service("changing", 7000, {**props, "hp": "8001"})
            await other.async_update_service(updated)
            await async_wait_until(
                lambda: observer.rec.found[node_id].http_port == 8001,
                what="updated http port",
                timeout_s=DEADLINE_S,
            )
    finally:
        await other.async_close()


txt_keys = st.sampled_from([b"id", b"fp", b"mp", b"hp", b"pv", b"x"]) | st.binary(max_size=10)
txt_values = st.none() | st.binary(max_size=250) | st.from_regex(rb"[0-9]{1,7}", fullmatch=True)


@given(
    props=st.dictionaries(txt_keys, txt_values, max_size=8),
    port=st.integers(0, 65535),
    addresses=st.lists(st.ip_addresses().map(str), max_size=3),
)
def test_txt_parsing_never_crashes(
    props: dict[bytes, bytes | None], port: int, addresses: list[str]
) -> None:
    info = ServiceInfo(
        SERVICE_TYPE,
        f"x.{SERVICE_TYPE}",
        port=port,
        properties=props,
        server="x.local.",
        parsed_addresses=addresses,
    )
    with suppress(InvalidCandidateError):
        candidate = candidate_from_service_info(info, IPVersion.All)
        assert candidate.source == "mdns" and candidate.mesh_port == port


# -- mDNS across processes and namespaces -------------------------------------------

PEER_SCRIPT = r"""
import asyncio, json, sys
from vsmcp.mesh.discovery import MdnsDiscovery

def say(**event):
    print(json.dumps(event), flush=True)

async def main():
    node_id, fingerprint, port, iface = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    async with MdnsDiscovery(
        node_id=node_id, cert_fingerprint=fingerprint, mesh_port=port, http_port=None,
        protocol_version=1, interfaces=[iface],
        on_candidate=lambda c: say(event="found", node_id=c.node_id, host=c.host,
                                   mesh_port=c.mesh_port, fp=c.cert_fingerprint),
        on_lost=lambda n: say(event="lost", node_id=n),
    ):
        say(event="ready")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    say(event="stopped")

asyncio.run(main())
"""


class PeerProcess:
    """One MdnsDiscovery in a separate OS process, reporting events as JSON lines."""

    def __init__(self, iface: str, netns: str | None = None) -> None:
        self.node_id = new_node_id()
        self.fingerprint = new_fingerprint()
        self.mesh_port = 20000 + secrets.randbelow(40000)
        self.iface = iface
        self.netns = netns
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        argv = [sys.executable, "-c", PEER_SCRIPT, self.node_id, self.fingerprint]
        argv += [str(self.mesh_port), self.iface]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
        )
        await self.wait_event(lambda e: e["event"] == "ready", "peer process ready")

    async def wait_event(self, match: Callable[[dict[str, Any]], bool], what: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while not any(match(e) for e in self.events):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; events: {self.events}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                continue
            if not line:
                raise AssertionError(f"peer process exited before {what}: {self.events}")
            self.events.append(json.loads(line))

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), DEADLINE_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def peer_processes() -> AsyncIterator[list[PeerProcess]]:
    peers: list[PeerProcess] = []
    yield peers
    await asyncio.gather(*(p.stop() for p in peers))


@pytest.mark.usefixtures("loopback_mdns")
async def test_discovery_across_two_os_processes(peer_processes: list[PeerProcess]) -> None:
    local = Node(http_port=None)
    remote = PeerProcess(LOOPBACK)
    peer_processes.append(remote)
    async with local.mdns:
        await remote.start()
        await async_wait_until(
            lambda: remote.node_id in local.rec.found,
            what="local to find remote",
            timeout_s=DEADLINE_S,
        )
        seen = local.rec.found[remote.node_id]
        assert (seen.host, seen.mesh_port) == (LOOPBACK, remote.mesh_port)
        assert seen.cert_fingerprint == remote.fingerprint
        await remote.wait_event(
            lambda e: (
                e["event"] == "found"
                and e["node_id"] == local.node_id
                and e["mesh_port"] == local.mesh_port
                and e["fp"] == local.fingerprint
            ),
            "remote to find local",
        )
        await remote.stop()
        await async_wait_until(
            lambda: remote.node_id in local.rec.lost,
            what="local to see remote leave",
            timeout_s=DEADLINE_S,
        )


async def test_discovery_across_network_namespaces(
    netns_pair: tuple[str, str, str, str], peer_processes: list[PeerProcess]
) -> None:
    ns_a, ip_a, ns_b, ip_b = netns_pair
    a, b = PeerProcess(ip_a, netns=ns_a), PeerProcess(ip_b, netns=ns_b)
    peer_processes.extend([a, b])
    await asyncio.gather(a.start(), b.start())
    await a.wait_event(
        lambda e: e["event"] == "found" and e["node_id"] == b.node_id and e["host"] == ip_b,
        "a to find b across the veth",
    )
    await b.wait_event(
        lambda e: e["event"] == "found" and e["node_id"] == a.node_id and e["host"] == ip_a,
        "b to find a across the veth",
    )
    await a.stop()
    await b.wait_event(lambda e: e == {"event": "lost", "node_id": a.node_id}, "b to see a go")


# -- instance names ---------------------------------------------------------------------


def test_instance_label_is_the_node_id_when_it_fits() -> None:
    node_id = new_node_id()
    assert instance_label(node_id) == node_id


@given(st.text(min_size=1, max_size=300))
def test_instance_label_is_always_a_dns_label(node_id: str) -> None:
    label = instance_label(node_id)
    assert 0 < len(label.encode()) <= 63
    assert label.isascii() and all(ch.isalnum() or ch == "-" for ch in label)
    assert not label.startswith("-") and not label.endswith("-")


def test_instance_labels_of_long_ids_differ() -> None:
    long_a, long_b = "a" * 100 + "1", "a" * 100 + "2"
    assert instance_label(long_a) != instance_label(long_b)


def test_mdns_rejects_an_invalid_own_advertisement() -> None:
    with pytest.raises(InvalidCandidateError):
        MdnsDiscovery(
            node_id="bad id",
            cert_fingerprint=new_fingerprint(),
            mesh_port=7000,
            http_port=None,
            protocol_version=1,
            on_candidate=lambda c: None,
            interfaces=[LOOPBACK],
        )


# -- seeds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "node_id", "host", "port"),
    [
        ("10.0.0.5:7400", None, "10.0.0.5", 7400),
        ("  node1.example.org:1  ", None, "node1.example.org", 1),
        ("Node-1.Example.ORG.:65535", None, "node-1.example.org", 65535),
        ("[::1]:7400", None, "::1", 7400),
        ("[fd00:0:0::2]:7400", None, "fd00::2", 7400),
        ("localhost:7400", None, "localhost", 7400),
        ("12D3KooWabc@10.0.0.5:7400", "12D3KooWabc", "10.0.0.5", 7400),
    ],
)
def test_parse_good_seeds(seed: str, node_id: str | None, host: str, port: int) -> None:
    candidate = parse_seed(seed)
    assert (candidate.node_id, candidate.host, candidate.mesh_port) == (node_id, host, port)
    assert candidate.source == "seed"
    assert candidate.cert_fingerprint is None and candidate.protocol_version is None


@pytest.mark.parametrize(
    ("seed", "reason", "why"),
    [
        ("", "empty", "empty"),
        ("   ", "empty", "empty"),
        ("10.0.0.5", "missing_port", "missing port"),
        ("10.0.0.5:", "missing_port", "missing port"),
        (":7400", "empty_host", "empty host"),
        ("10.0.0.5:0", "bad_port", "out of range"),
        ("10.0.0.5:65536", "bad_port", "out of range"),
        ("10.0.0.5:99999999999", "bad_port", "not a number"),
        ("10.0.0.5:-1", "bad_port", "not a number"),
        ("10.0.0.5:http", "bad_port", "not a number"),
        ("10.0.0.5:٣٣", "bad_port", "not a number"),
        ("::1:7400", "bad_host", "brackets"),
        ("[::1:7400", "bad_host", "unclosed"),
        ("[::1]7400", "missing_port", "missing port"),
        ("999.1.1.1:7400", "bad_host", "not a valid IP"),
        ("bad_host!:7400", "bad_host", "neither an IP"),
        ("@10.0.0.5:7400", "bad_node_id", "empty node id"),
        ("bad id@10.0.0.5:7400", "bad_node_id", "node id"),
        ("h" * 600 + ":1", "too_long", "longer than"),
    ],
)
def test_parse_bad_seeds(seed: str, reason: str, why: str) -> None:
    with pytest.raises(InvalidSeedError) as info:
        parse_seed(seed)
    assert info.value.reason == reason
    assert why in str(info.value)
    assert isinstance(info.value, MeshError)
    assert info.value.seed == seed


def test_seed_discovery_validates_all_and_deduplicates() -> None:
    seeds = SeedDiscovery(["10.0.0.1:7400", "10.0.0.1:7400", "[::1]:7400"])
    assert [c.address for c in seeds.seeds()] == ["10.0.0.1:7400", "[::1]:7400"]
    with pytest.raises(InvalidSeedError, match=r"'10\.0\.0\.2'"):
        SeedDiscovery(["10.0.0.1:7400", "10.0.0.2"])
    assert parse_seeds([]) == []


# -- peer-list codec --------------------------------------------------------------------

node_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True)
hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9]{0,19}(\.[a-z][a-z0-9-]{0,10}[a-z0-9]){0,3}", fullmatch=True),
)
ports = st.integers(1, 65535)
identified = st.builds(
    Candidate,
    node_id=node_ids,
    host=hosts,
    mesh_port=ports,
    http_port=st.none() | ports,
    cert_fingerprint=st.binary(min_size=16, max_size=64).map(bytes.hex),
    protocol_version=st.integers(0, 65535),
    source=st.sampled_from(["mdns", "gossip"]),
)


@given(st.lists(identified, max_size=8))
def test_peer_list_round_trip(peers: list[Candidate]) -> None:
    payload = encode_peer_list(peers)
    assert len(payload) <= MAX_PEER_LIST_BYTES
    decoded = decode_peer_list(payload)
    assert len(decoded) == len(peers)
    for sent, got in zip(peers, decoded, strict=True):
        assert got.same_claims(sent)
        assert got.source == "gossip"


@given(st.binary(max_size=4096))
def test_peer_list_garbage_bytes_never_crash(data: bytes) -> None:
    with suppress(PeerListError):
        decode_peer_list(data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@given(msgpack_values)
def test_peer_list_wrong_shapes_never_crash(value: object) -> None:
    with suppress(PeerListError):
        decode_peer_list(msgspec.msgpack.encode(value))


def wire_entry(**overrides: object) -> list[object]:
    entry: dict[str, object] = {
        "node_id": new_node_id(),
        "host": "10.0.0.1",
        "mesh_port": 7400,
        "http_port": None,
        "fp": new_fingerprint(),
        "pv": 1,
    }
    entry.update(overrides)
    return list(entry.values())


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"mesh_port": 0}, "bad_port"),
        ({"mesh_port": 70000}, "bad_port"),
        ({"http_port": -1}, "bad_port"),
        ({"host": "not a host"}, "bad_host"),
        ({"host": ""}, "bad_host"),
        ({"fp": "xyz"}, "bad_fingerprint"),
        ({"node_id": "a b"}, "bad_node_id"),
        ({"node_id": "n" * 129}, "invalid"),
        ({"pv": 1 << 20}, "bad_protocol_version"),
        ({"mesh_port": "7400"}, "invalid"),
    ],
)
def test_peer_list_rejects_invalid_entries(overrides: dict[str, object], reason: str) -> None:
    payload = msgspec.msgpack.encode({"v": 1, "peers": [wire_entry(), wire_entry(**overrides)]})
    with pytest.raises(PeerListError) as info:
        decode_peer_list(payload)
    assert info.value.reason == reason


def test_peer_list_caps() -> None:
    too_many = [wire_entry() for _ in range(MAX_PEER_LIST_ENTRIES + 1)]
    with pytest.raises(PeerListError) as info:
        decode_peer_list(msgspec.msgpack.encode({"v": 1, "peers": too_many}))
    assert info.value.reason == "invalid"
    with pytest.raises(PeerListError) as info:
        decode_peer_list(b"\x00" * (MAX_PEER_LIST_BYTES + 1))
    assert info.value.reason == "too_large"
    with pytest.raises(PeerListError) as info:
        decode_peer_list(msgspec.msgpack.encode({"v": 2, "peers": []}))
    assert info.value.reason == "bad_version"
    # Extra trailing fields from a newer sender are ignored.
    newer = msgspec.msgpack.encode({"v": 1, "peers": [[*wire_entry(), "future"]]})
    assert len(decode_peer_list(newer)) == 1


def test_full_peer_list_fits_the_cap() -> None:
    longest = [
        gossip("n" * 125 + f"{i:03d}", host="h" * 60 + f".{i:03d}x.example", http_port=65535)
        for i in range(MAX_PEER_LIST_ENTRIES)
    ]
    payload = encode_peer_list(longest)
    assert len(payload) <= MAX_PEER_LIST_BYTES
    assert len(decode_peer_list(payload)) == MAX_PEER_LIST_ENTRIES


def test_encode_refuses_seeds_and_oversized_lists() -> None:
    with pytest.raises(PeerListError):
        encode_peer_list([parse_seed("10.0.0.1:1")])
    peer = gossip(new_node_id())
    with pytest.raises(PeerListError):
        encode_peer_list([peer] * (MAX_PEER_LIST_ENTRIES + 1))


# -- Candidate ----------------------------------------------------------------------


def test_candidate_validates_and_normalises() -> None:
    fp = new_fingerprint().upper()
    c = Candidate(
        node_id="n1", host="FD00:0::1", mesh_port=1, cert_fingerprint=fp,
        protocol_version=0, source="gossip",
    )  # fmt: skip
    assert c.host == "fd00::1" and c.cert_fingerprint == fp.lower()
    assert c.address == "[fd00::1]:1"
    with pytest.raises(InvalidCandidateError):
        Candidate(node_id=None, host="h", mesh_port=1, source="mdns")
    with pytest.raises(InvalidCandidateError):
        Candidate(node_id=None, host="h", mesh_port=1, protocol_version=1, source="seed")
    with pytest.raises(InvalidCandidateError):
        Candidate(node_id=None, host="h", mesh_port=True, source="seed")


# -- aggregator ---------------------------------------------------------------------


def gossip(node_id: str, host: str = "10.0.0.1", port: int = 7400, **kw: Any) -> Candidate:
    return Candidate(
        node_id=node_id,
        host=host,
        mesh_port=port,
        cert_fingerprint=kw.pop("fp", "ab" * 32),
        protocol_version=1,
        source=kw.pop("source", "gossip"),
        **kw,
    )


def test_aggregator_deduplicates_and_reports_changes() -> None:
    changes: list[Candidate] = []
    d = Discovery(self_node_id="me", on_change=changes.append)
    assert d.offer(gossip("n1"))
    assert not d.offer(gossip("n1"))  # same claims
    assert d.offer(gossip("n1", port=7401))  # moved
    assert not d.offer(gossip("me"))  # ourselves
    assert [c.mesh_port for c in changes] == [7400, 7401]
    assert len(d) == 1 and d.get("n1") == gossip("n1", port=7401)


def test_aggregator_prefers_mdns_over_gossip() -> None:
    d = Discovery()
    assert d.offer(gossip("n1", source="mdns"))
    assert not d.offer(gossip("n1", host="10.6.6.6"))  # hearsay cannot override
    assert d.get("n1") == gossip("n1", source="mdns")
    lost: list[str] = []
    d = Discovery(on_lost=lost.append)
    d.offer(gossip("n1", source="mdns"))
    d.lost("n1")
    assert lost == ["n1"] and d.get("n1") is None
    assert d.offer(gossip("n1", host="10.0.0.9"))  # after loss gossip is welcome again


def test_aggregator_drops_seeds_superseded_by_identified_peers() -> None:
    d = Discovery()
    assert d.offer(parse_seed("10.0.0.1:7400"))
    assert not d.offer(parse_seed("10.0.0.1:7400"))
    assert d.offer(gossip("n1", host="10.0.0.1", port=7400))
    assert [c.source for c in d.candidates()] == ["gossip"]
    assert d.is_address_known("10.0.0.1", 7400)
    assert not d.offer(parse_seed("10.0.0.1:7400"))  # the address is known now
    d.lost("n1")
    assert not d.is_address_known("10.0.0.1", 7400)
    assert d.offer(parse_seed("10.0.0.1:7400"))


def test_aggregator_is_bounded_and_evicts_gossip_first() -> None:
    d = Discovery(max_candidates=3)
    d.offer(gossip("m1", source="mdns"))
    d.offer(gossip("g1", host="10.0.0.2"))
    d.offer(parse_seed("10.0.0.3:1"))
    for i in range(10):
        d.offer(gossip(f"x{i}", host=f"10.1.0.{i}"))
    assert len(d) == 3 and d.evicted == 10
    ids = {c.node_id for c in d.candidates()}
    assert "m1" in ids and "x9" in ids and "g1" not in ids


def test_aggregator_offers_gossip_payloads() -> None:
    d = Discovery()
    assert d.offer_peer_list(encode_peer_list([gossip("n1"), gossip("n2", host="10.0.0.2")])) == 2
    with pytest.raises(PeerListError):
        d.offer_peer_list(b"\xc1")


async def test_aggregator_updates_coalesce_and_end_on_close() -> None:
    async with Discovery() as d:
        d.offer(gossip("n1"))
        d.offer(gossip("n2", host="10.0.0.2"))
        d.offer(gossip("n1", port=7401))  # coalesces with the pending n1
        received: list[Candidate] = []

        async def consume() -> None:
            async for candidate in d.updates():
                received.append(candidate)

        consumer = asyncio.create_task(consume(), name="test-consumer")
        await async_wait_until(
            lambda: len(received) == 2, what="backlog delivered", timeout_s=DEADLINE_S
        )
        assert [c.node_id for c in received] == ["n2", "n1"]
        assert received[1].mesh_port == 7401
        d.offer(gossip("n3", host="10.0.0.3"))
        await async_wait_until(
            lambda: len(received) == 3, what="live update delivered", timeout_s=DEADLINE_S
        )
    await asyncio.wait_for(consumer, DEADLINE_S)
