"""mDNS / DNS-SD discovery on `_vsmcp._tcp.local.` with python-zeroconf's asyncio API.

Everything runs on the caller's event loop: `AsyncZeroconf` attaches to the running
loop, browsing callbacks fire in it, and resolution uses `AsyncServiceInfo.async_request`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import ifaddr
from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from vsmcp.mesh._discovery_model import (
    MAX_PORT,
    Candidate,
    DiscoveryError,
    InvalidCandidateError,
    validate_fingerprint,
    validate_host,
    validate_node_id,
    validate_port,
    validate_protocol_version,
)
from vsmcp.mesh.service import Service

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SERVICE_TYPE = "_vsmcp._tcp.local."
MAX_DNS_LABEL_BYTES = 63
# Every TXT value we define fits well under this; anything larger is hostile or broken.
MAX_TXT_VALUE_BYTES = 160
MAX_TXT_BYTES = 1024
MAX_SERVICE_NAME_BYTES = 255
# Anyone on the segment can advertise: beyond this many services (known or being
# resolved) new names are ignored until some leave. A larger mesh finds the rest of
# its members by gossip.
MAX_KNOWN_SERVICES = 512
MAX_CONCURRENT_RESOLVES = 8
RESOLVE_TIMEOUT_S = 3.0
_MAX_PORT_DIGITS = len(str(MAX_PORT))
_MAX_VERSION_DIGITS = 5

IpVersion = Literal["v4", "v6", "all"]
_IP_VERSIONS: dict[IpVersion, IPVersion] = {
    "v4": IPVersion.V4Only,
    "v6": IPVersion.V6Only,
    "all": IPVersion.All,
}
_LABEL_SAFE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_LABEL_UNSAFE_CHAR_RE = re.compile(r"[^A-Za-z0-9-]")
_DIGITS_RE = re.compile(r"[0-9]+")


class MdnsError(DiscoveryError):
    """mDNS could not start: sockets could not be opened or our name is taken."""


def instance_label(node_id: str) -> str:
    """A DNS label (LDH, at most 63 bytes) naming this node's service and host.

    The node id itself when it fits; otherwise a readable prefix plus a hash of the
    whole id so that distinct ids never share a label.
    """
    if len(node_id) <= MAX_DNS_LABEL_BYTES and _LABEL_SAFE_RE.fullmatch(node_id):
        return node_id
    digest = hashlib.sha256(node_id.encode()).hexdigest()[:16]
    prefix = _LABEL_UNSAFE_CHAR_RE.sub("-", node_id)[: MAX_DNS_LABEL_BYTES - len(digest) - 1]
    prefix = prefix.strip("-") or "vsmcp"
    return f"{prefix}-{digest}"


def _txt_str(props: dict[bytes, bytes | None], key: bytes, *, required: bool) -> str | None:
    raw = props.get(key)
    if raw is None:
        if required:
            raise InvalidCandidateError(f"TXT {key!r} missing", f"missing_{key.decode()}")
        return None
    if len(raw) > MAX_TXT_VALUE_BYTES:
        raise InvalidCandidateError(f"TXT {key!r} too large", "txt_value_too_large")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidCandidateError(f"TXT {key!r} not ASCII", "txt_not_ascii") from None


def _txt_int(text: str, max_digits: int, reason: str) -> int:
    # int() alone would accept '+1', ' 1', '1_0' and unbounded digit strings.
    if len(text) > max_digits or not _DIGITS_RE.fullmatch(text):
        raise InvalidCandidateError(f"{text!r} is not a small decimal integer", reason)
    return int(text)


def _pick_host(info: ServiceInfo, version: IPVersion) -> str:
    """First usable advertised address, IPv4 before IPv6."""
    addresses = info.parsed_scoped_addresses(version)
    ordered = sorted(addresses, key=lambda a: ":" in a)
    for address in ordered[:16]:
        try:
            return validate_host(address)
        except InvalidCandidateError:
            continue
    raise InvalidCandidateError("no usable address", "no_address")


def candidate_from_service_info(info: ServiceInfo, version: IPVersion) -> Candidate:
    """Validate a resolved service; raises `InvalidCandidateError` with a counted reason."""
    if len(info.text) > MAX_TXT_BYTES:
        raise InvalidCandidateError("TXT record too large", "txt_too_large")
    props = info.properties
    node_id = validate_node_id(_txt_str(props, b"id", required=True))
    fingerprint = validate_fingerprint(_txt_str(props, b"fp", required=True))
    mp_text = _txt_str(props, b"mp", required=True)
    assert mp_text is not None
    mesh_port = validate_port(_txt_int(mp_text, _MAX_PORT_DIGITS, "bad_port"), "mesh port")
    hp_text = _txt_str(props, b"hp", required=False)
    http_port = None
    if hp_text:
        http_port = validate_port(_txt_int(hp_text, _MAX_PORT_DIGITS, "bad_port"), "http port")
    pv_text = _txt_str(props, b"pv", required=True)
    assert pv_text is not None
    version_number = validate_protocol_version(
        _txt_int(pv_text, _MAX_VERSION_DIGITS, "bad_protocol_version")
    )
    if info.port != mesh_port:
        raise InvalidCandidateError("SRV port differs from TXT mp", "port_mismatch")
    return Candidate(
        node_id=node_id,
        host=_pick_host(info, version),
        mesh_port=mesh_port,
        http_port=http_port,
        cert_fingerprint=fingerprint,
        protocol_version=version_number,
        source="mdns",
    )


def _default_advertise_addresses(
    interfaces: Sequence[str] | None, version: IpVersion | None
) -> list[str]:
    """Explicit interface IPs, or every non-loopback address of this host."""
    if interfaces is not None:
        return [str(ipaddress.ip_address(i)) for i in interfaces]
    want_v4 = version in (None, "v4", "all")
    want_v6 = version in ("v6", "all")
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and want_v4:
                addr = ipaddress.ip_address(ip.ip)
            elif isinstance(ip.ip, tuple) and want_v6:
                addr = ipaddress.ip_address(ip.ip[0])
                if addr.is_link_local:
                    continue  # needs a scope id a peer cannot use
            else:
                continue
            if not addr.is_loopback:
                found.append(str(addr))
    return found or ["127.0.0.1"]


class MdnsDiscovery(Service):
    """Advertises this node on `_vsmcp._tcp.local.` and reports other nodes found there.

    `on_candidate` is called (in the event loop) for every other node found or whose
    record changed; `on_lost(node_id)` when its service goes away (goodbye or expiry).
    Malformed records are ignored and counted in `malformed_counts()`.

    `interfaces`: IPs to bind mDNS to (e.g. ["127.0.0.1"]); None means all interfaces.
    `ip_version`: None lets zeroconf decide (detected from `interfaces`, else IPv4).
    `advertise_addresses`: addresses put in our A/AAAA records; defaults to the
    `interfaces` IPs, else every non-loopback address of the host.
    """

    def __init__(
        self,
        *,
        node_id: str,
        cert_fingerprint: str,
        mesh_port: int,
        http_port: int | None,
        protocol_version: int,
        on_candidate: Callable[[Candidate], None],
        on_lost: Callable[[str], None] | None = None,
        interfaces: Sequence[str] | None = None,
        ip_version: IpVersion | None = None,
        advertise_addresses: Sequence[str] | None = None,
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
    ) -> None:
        # Our own advertisement is validated like anyone else's, before we send it.
        self._self = Candidate(
            node_id=node_id,
            host="127.0.0.1",
            mesh_port=mesh_port,
            http_port=http_port,
            cert_fingerprint=cert_fingerprint,
            protocol_version=protocol_version,
            source="mdns",
        )
        self._node_id = node_id
        self._on_candidate = on_candidate
        self._on_lost = on_lost
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._ip_version = ip_version
        self._resolve_version = _IP_VERSIONS[ip_version] if ip_version else IPVersion.All
        self._advertise = [
            validate_host(a)
            for a in (advertise_addresses or _default_advertise_addresses(interfaces, ip_version))
        ]
        self._resolve_timeout_ms = int(resolve_timeout_s * 1000)
        self.label = instance_label(node_id)
        self.service_name = f"{self.label}.{SERVICE_TYPE}"
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        # The announcements after a successful probe (zeroconf's task, ours to end).
        self._announcing: asyncio.Future[Any] | None = None
        self._known: dict[str, Candidate] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._resolve_again: set[str] = set()
        self._resolve_slots = asyncio.Semaphore(MAX_CONCURRENT_RESOLVES)
        self._malformed: collections.Counter[str] = collections.Counter()
        self.callback_errors = 0
        self._running = False

    # -- lifecycle --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def start(self, *, register: bool = True) -> None:
        """Open sockets, start browsing and register our service (probing for conflicts).

        `register=False` leaves the registration to a later `register()`: browsing starts
        at once, and the caller need not wait for the probe (≈1.1 s) to be up.
        """
        if self._running:
            return
        self._running = True
        try:
            await self._open()
            if register:
                await self.register()
        except BaseException:
            await self.stop()
            raise

    async def _open(self) -> None:
        version = _IP_VERSIONS[self._ip_version] if self._ip_version else None
        try:
            if self._interfaces is None:
                self._aiozc = AsyncZeroconf(ip_version=version)
            else:
                self._aiozc = AsyncZeroconf(interfaces=self._interfaces, ip_version=version)
        except OSError as exc:
            raise MdnsError(f"cannot open mDNS sockets: {exc}", "socket") from exc
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, [SERVICE_TYPE], handlers=[self._on_state_change]
        )

    async def register(self) -> None:
        """Advertise our service; MdnsError ("name_conflict") if another node holds the name.

        Probing (conflict detection: a random 150–250 ms, then three probes 500 ms apart)
        is awaited. The announcements that follow (the first at once, then two more
        225 ms apart) are not: the node is reachable before the last one. Cancelling
        during the probe leaves nothing registered, so nothing to say goodbye for.
        """
        if self._aiozc is None:
            raise MdnsError("mDNS is not started", "not_started")
        try:
            announcing = await self._aiozc.async_register_service(self._service_info())
        except NonUniqueNameException as exc:
            raise MdnsError(
                f"mDNS name {self.service_name!r} is already in use", "name_conflict"
            ) from exc
        future = asyncio.ensure_future(announcing)
        if not self._running:  # stopped while probing: no announcements to a closed socket
            future.cancel()
            return
        self._announcing = future

    async def stop(self) -> None:
        """Send goodbyes, stop browsing and close sockets. Idempotent."""
        if not self._running:
            return
        self._running = False
        browser, self._browser = self._browser, None
        aiozc, self._aiozc = self._aiozc, None
        announcing, self._announcing = self._announcing, None
        if announcing is not None:
            announcing.cancel()
            await asyncio.gather(announcing, return_exceptions=True)
        if browser is not None:
            await browser.async_cancel()
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resolving.clear()
        self._resolve_again.clear()
        self._known.clear()
        if aiozc is not None:
            # async_close unregisters every service, which sends the goodbye packets.
            await aiozc.async_close()

    def _service_info(self) -> AsyncServiceInfo:
        me = self._self
        props: dict[str | bytes, str | bytes | None] = {
            "id": self._node_id,
            "fp": me.cert_fingerprint,
            "mp": str(me.mesh_port),
            "pv": str(me.protocol_version),
        }
        if me.http_port is not None:
            props["hp"] = str(me.http_port)
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.service_name,
            port=me.mesh_port,
            properties=props,
            server=f"{self.label}.local.",
            parsed_addresses=self._advertise,
        )

    # -- observability ----------------------------------------------------------

    def malformed_counts(self) -> dict[str, int]:
        """Records ignored so far, by reason."""
        return dict(self._malformed)

    @property
    def malformed_total(self) -> int:
        return sum(self._malformed.values())

    def known(self) -> list[Candidate]:
        """Other nodes currently advertised (validated)."""
        return list(self._known.values())

    # -- browsing ---------------------------------------------------------------

    def _on_state_change(
        self,
        *,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if not self._running or name == self.service_name:
            return
        if len(name.encode()) > MAX_SERVICE_NAME_BYTES:
            self._malformed["bad_name"] += 1
            return
        if state_change is ServiceStateChange.Removed:
            self._handle_removed(name)
        else:
            self._schedule_resolve(name)

    def _schedule_resolve(self, name: str) -> None:
        if name in self._resolving:
            # Re-read after the current resolve, so the latest records win.
            self._resolve_again.add(name)
            return
        if name not in self._known and len(self._known) + len(self._resolving) >= (
            MAX_KNOWN_SERVICES
        ):
            self._malformed["too_many_services"] += 1
            return
        task = asyncio.create_task(self._resolve(name), name=f"mdns-resolve:{name[:80]}")
        self._resolving[name] = task
        task.add_done_callback(functools.partial(self._resolve_done, name))

    def _resolve_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is not task:
            return  # cancelled on removal; a newer resolve may own the name now
        del self._resolving[name]
        if name in self._resolve_again and self._running:
            self._resolve_again.discard(name)
            self._schedule_resolve(name)

    async def _resolve(self, name: str) -> None:
        aiozc = self._aiozc
        if aiozc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        async with self._resolve_slots:
            resolved = await info.async_request(aiozc.zeroconf, self._resolve_timeout_ms)
        if not resolved:
            self._malformed["unresolved"] += 1
            return
        try:
            candidate = candidate_from_service_info(info, self._resolve_version)
        except InvalidCandidateError as exc:
            self._malformed[exc.reason] += 1
            log.debug("ignoring mDNS service %r: %s", name, exc)
            return
        if candidate.node_id == self._node_id:
            return  # another record claiming our id; the hello would reject it anyway
        previous = self._known.get(name)
        if previous is not None and previous.same_claims(candidate):
            return
        self._known[name] = candidate
        if previous is not None and previous.node_id != candidate.node_id:
            self._report_lost(previous)  # the name now speaks for someone else
        self._emit(self._on_candidate, candidate)

    def _handle_removed(self, name: str) -> None:
        task = self._resolving.pop(name, None)
        if task is not None:
            task.cancel()
        self._resolve_again.discard(name)
        gone = self._known.pop(name, None)
        if gone is not None:
            self._report_lost(gone)

    def _report_lost(self, gone: Candidate) -> None:
        if gone.node_id is None or self._on_lost is None:
            return
        if any(c.node_id == gone.node_id for c in self._known.values()):
            return  # still advertised under another name
        self._emit(self._on_lost, gone.node_id)

    def _emit(self, callback: Callable[[_T], None], value: _T) -> None:
        # Top-level handler for a zeroconf callback: a faulty consumer must not
        # break browsing for everyone else.
        try:
            callback(value)
        except Exception:
            self.callback_errors += 1
            log.exception("discovery callback failed")


__all__ = [
    "MAX_TXT_BYTES",
    "MAX_TXT_VALUE_BYTES",
    "SERVICE_TYPE",
    "IpVersion",
    "MdnsDiscovery",
    "MdnsError",
    "candidate_from_service_info",
    "instance_label",
]
