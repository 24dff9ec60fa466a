"""Distribution of published WASM modules on one node.

Publishing (`publish`, from `POST /api/wasm/modules`): the bytes are checked against the
manifest's SHA-256 and size and kept in `<data_dir>/wasm`; the signed manifest (a
`wasm_module` grant, signed by the authority offline, or here by this node when its
certificate has the `publisher` role) enters the policies CRDT and replicates.

Running (`[edge] run`): whenever the policies change, the wanted modules are reconciled:
a module whose bytes are not held is fetched from a holder over the mesh (WASM_CHUNK
requests of `CHUNK_BYTES`, at most the manifest's size and `edge.max_module_bytes`),
hash-checked before use, and tried from the next holder when one fails, gives a chunk
shorter than asked for, or takes longer than `fetch_deadline_s` for the module; then it is
loaded as a WASM tool (`wasm:<name>`) and the catalog announces it. A module revoked,
replaced or expired is unloaded. Every node serves the modules it holds, so a node that
fetched one is a holder too.

A refusal (bytes that do not match, a manifest that does not verify or does not parse,
too large, does not load) is counted in `stats` (`refused_<reason>`), published as a
`wasm_refused` event and written to the audit log; a module that could not be had is
tried again after `RETRY_S`, then less and less often (up to `MAX_RETRY_S`) until the
policies change.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vsmcp.crdt.errors import CrdtError
from vsmcp.crdt.policies import Policy, PolicyStore
from vsmcp.crdt.signing import Signer
from vsmcp.mesh.envelope import Envelope, MsgType
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service
from vsmcp.node.errors import NodeError
from vsmcp.node.routing.wire import InvokeError, encode
from vsmcp.node.tools.config import EdgeConfig, ToolsConfig
from vsmcp.node.tools.registry import LocalCatalog, unit_policy
from vsmcp.node.vsm.events import EventSink, WasmModuleRefused
from vsmcp.node.wasmdist.model import (
    DEFAULT_PUBLISH_TTL_MS,
    WASM_MODULE_KIND,
    ModuleBody,
    body_of,
    module_of,
)
from vsmcp.node.wasmdist.store import ModuleStore, sha256_hex
from vsmcp.node.wasmdist.wire import CHUNK_BYTES, NOT_HELD, ChunkRequest, decode_request
from vsmcp.node.wasmdist.wire import encode_request as encode_chunk_request

if TYPE_CHECKING:
    from vsmcp.node.peers.service import MeshService

log = logging.getLogger(__name__)

RETRY_S: Final = 5.0
MAX_RETRY_S: Final = 300.0
MAX_REMEMBERED_REFUSALS: Final = 1024
CHUNK_TIMEOUT_S: Final = 10.0
# A whole module from one holder: a minute, plus a second per this many bytes (a slow
# holder is passed over for the next rather than holding up every other module).
FETCH_BASE_S: Final = 60.0
FETCH_MIN_BYTES_PER_S: Final = 256 << 10
UNIT_PREFIX: Final = "wasm:"

Audit = Callable[[str, dict[str, Any]], None]


def fetch_deadline_s(size: int) -> float:
    """How long one holder has to give a module of `size` bytes."""
    return FETCH_BASE_S + size / FETCH_MIN_BYTES_PER_S


class PublishRefused(NodeError):
    """A module or manifest posted to the node that it does not take."""


class WasmDistribution(Service):
    def __init__(
        self,
        *,
        policies: PolicyStore,
        catalog: LocalCatalog,
        mesh: MeshService,
        directory: Path,
        edge: EdgeConfig,
        tools: ToolsConfig,
        node_id: str,
        signer: Signer,
        events: EventSink,
        audit: Audit,
        loops: LoopSupervisor,
    ) -> None:
        self._policies = policies
        self._catalog = catalog
        self._mesh = mesh
        self.store = ModuleStore(directory)
        self._edge = edge
        self._tools = tools
        self._node_id = node_id
        self._signer = signer
        self._events = events
        self._audit = audit
        self._loops = loops
        self._loaded: dict[str, str] = {}  # tool name -> sha256 of the loaded module
        # (sha256, reason) refused already: counted once, not at every retry.
        self._refused: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # published, fetched, loaded, unloaded, chunks_served, fetch_failed, short_chunk,
        # fetch_timeout, refused_<reason>
        self.stats: Counter[str] = Counter()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._mesh.handle_requests(MsgType.WASM_CHUNK, self._serve)
        self._policies.on_change(lambda _change: self._wake.set())
        self._wake.set()
        self._task = self._loops.spawn("wasm-distribution", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for name in list(self._loaded):
            await self._unload(name)

    # -- what the HTTP API offers --------------------------------------------------------

    def published(self) -> list[tuple[Policy, ModuleBody]]:
        out = []
        for policy in self._policies.view():
            body = module_of(policy)
            if body is not None:
                out.append((policy, body))
        return out

    def view(self) -> dict[str, Any]:
        """`GET /api/wasm/modules`."""
        return {
            "modules": [
                {
                    "name": body.name,
                    "sha256": body.sha256,
                    "size": body.size,
                    "issuer": policy.issuer.hex(),
                    "version": policy.version,
                    "expires_at_ms": policy.expires_at_ms,
                    "held": self.store.size(body.sha256) == body.size,
                    "loaded": self._loaded.get(body.name) == body.sha256,
                }
                for policy, body in self.published()
            ],
            "stats": dict(self.stats),
        }

    async def publish(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /api/wasm/modules`: `{"record": b64, "module"?: b64}` (a grant signed
        elsewhere; without the module, its bytes are fetched from the holder it names) or
        `{"module": b64, "manifest": toml}` (signed here). Raises `PublishRefused`
        (counted when it refuses a module) or ValueError (not base64). Decoding, hashing
        and writing megabytes run in threads, off the event loop."""
        module = None
        digest = ""
        if request.get("module"):
            module = await asyncio.to_thread(
                base64.b64decode, str(request["module"]), validate=True
            )
            digest = await asyncio.to_thread(sha256_hex, module)
            if len(module) > self._edge.max_module_bytes:
                self._refuse("?", "too_large", digest, f"{len(module)} bytes")
                raise PublishRefused(
                    f"the module has {len(module)} bytes, over edge.max_module_bytes "
                    f"({self._edge.max_module_bytes})"
                )
        if request.get("record"):
            blob = base64.b64decode(str(request["record"]), validate=True)
            return await self._take_record(blob, module, digest)
        if not module or not request.get("manifest"):
            raise PublishRefused(
                'nothing to publish: give "module" with "record" (signed elsewhere) or '
                'with "manifest" (signed here)'
            )
        manifest = str(request["manifest"])
        name = self._check_manifest(manifest, digest)
        body = ModuleBody(
            name=name, sha256=digest, size=len(module), manifest=manifest, holder=self._node_id
        )
        if not self._policies.may_issue(self._signer.public_key, WASM_MODULE_KIND):
            self._refuse(name, "signature", digest, "this node has no publisher role")
            raise PublishRefused(
                "this node may not sign a module (its certificate has no publisher role): "
                "sign it with the authority key (--authority-key)"
            )
        await asyncio.to_thread(self.store.write, digest, module)
        try:
            policy = self._policies.issue(
                self._signer, name, WASM_MODULE_KIND, body_of(body), ttl_ms=DEFAULT_PUBLISH_TTL_MS
            )
        except CrdtError as e:
            raise PublishRefused(f"module {name!r} not published: {e}") from e
        self._published(policy, body)
        return {"name": name, "sha256": digest, "size": len(module), "issuer": "node"}

    async def _take_record(self, blob: bytes, module: bytes | None, digest: str) -> dict[str, Any]:
        try:
            record = self._policies.verify_signed(blob)
        except CrdtError as e:
            self._refuse("?", "signature", digest, str(e))
            raise PublishRefused(f"manifest refused: {e}") from e
        body = None if record is None else module_of(record)
        if record is None or body is None:
            self._refuse("?", "manifest", digest, "not a wasm_module grant")
            raise PublishRefused("the record is not a wasm_module grant with a valid body")
        if module is not None and (body.sha256 != digest or body.size != len(module)):
            self._refuse(body.name, "hash", digest, f"the manifest names {body.sha256}")
            raise PublishRefused(
                f"the module's SHA-256 {digest} ({len(module)} bytes) is not the manifest's "
                f"{body.sha256} ({body.size} bytes)"
            )
        self._check_manifest(body.manifest, body.sha256, name=body.name)
        if module is not None:
            await asyncio.to_thread(self.store.write, body.sha256, module)
        if not self._policies.accept_signed(blob):
            raise PublishRefused("the node holds a newer version of this module's manifest")
        self._published(record, body)
        return {"name": body.name, "sha256": body.sha256, "size": body.size, "issuer": "record"}

    def _published(self, policy: Policy, body: ModuleBody) -> None:
        self.stats["published"] += 1
        self._audit(
            "wasm.publish",
            {
                "name": body.name,
                "sha256": body.sha256,
                "size": body.size,
                "issuer": policy.issuer.hex(),
            },
        )
        log.info("wasm module %s published (%s, %d bytes)", body.name, body.sha256, body.size)

    def _check_manifest(self, text: str, digest: str, *, name: str | None = None) -> str:
        from vsmcp.edge.errors import EdgeError
        from vsmcp.edge.manifest import published_manifest

        try:
            manifest = published_manifest(text, Path("manifest.toml"), Path("module.wasm"))
        except EdgeError as e:
            self._refuse(name or "?", "manifest", digest, str(e))
            raise PublishRefused(f"manifest refused: {e}") from e
        if name is not None and manifest.name != name:
            self._refuse(name, "manifest", digest, f"names the tool {manifest.name!r}")
            raise PublishRefused(f"the manifest names {manifest.name!r}, the record {name!r}")
        return manifest.name

    def unpublish(self, name: str) -> int:
        """`DELETE /api/wasm/modules/{name}`: revoke the module's manifests this node
        signed; how many. (The authority's are revoked with its key: `vsmcp wasm
        unpublish --authority-key`.)"""
        revoked = 0
        for policy, body in self.published():
            if body.name == name and policy.issuer == self._signer.public_key:
                revoked += self._policies.revoke(policy.issuer, policy.id, by=self._signer)
        if revoked:
            self._audit("wasm.unpublish", {"name": name})
        return revoked

    # -- serving holders' bytes ----------------------------------------------------------

    async def _serve(self, peer: Any, envelope: Envelope) -> tuple[MsgType, bytes]:
        request = decode_request(envelope.payload)
        if request is None:
            error = InvokeError(reason="malformed", message="not a chunk request")
            return MsgType.ERROR, encode(error)
        data = self.store.chunk(request.sha256, request.offset, request.length)
        if data is None:
            return MsgType.ERROR, encode(InvokeError(reason=NOT_HELD, message="not held here"))
        self.stats["chunks_served"] += 1
        return MsgType.RESULT, data

    # -- running published modules -------------------------------------------------------

    def _wants(self, name: str) -> bool:
        run = self._edge.run
        return run == "*" or (isinstance(run, list) and name in run)

    def _wanted(self) -> dict[str, tuple[Policy, ModuleBody]]:
        """The newest live manifest of each module this node runs."""
        wanted: dict[str, tuple[Policy, ModuleBody]] = {}
        for policy, body in self.published():
            if not self._wants(body.name):
                continue
            other = wanted.get(body.name)
            if other is None or policy.issued_at_ms > other[0].issued_at_ms:
                wanted[body.name] = (policy, body)
        return wanted

    async def _run(self) -> None:
        retry_s: float | None = None
        while True:
            changed = True
            try:
                # Idle until the policies change, unless a wanted module is still missing:
                # then try again, less often while nothing changes (a bad holder is not
                # asked for its bytes every few seconds for ever).
                async with asyncio.timeout(retry_s):
                    await self._wake.wait()
            except TimeoutError:
                changed = False
            self._wake.clear()
            pending = await self._reconcile()
            if not pending:
                retry_s = None
            elif changed or retry_s is None:
                retry_s = RETRY_S
            else:
                retry_s = min(retry_s * 2, MAX_RETRY_S)

    async def _reconcile(self) -> bool:
        """Load what is wanted, unload what is not; whether a wanted module is missing."""
        wanted = self._wanted()
        for name, digest in list(self._loaded.items()):
            entry = wanted.get(name)
            if entry is None or entry[1].sha256 != digest:
                await self._unload(name)
        for name, (policy, body) in wanted.items():
            if name in self._loaded:
                continue
            module = await self._bytes_of(policy, body)
            if module is not None:
                self._load(body)
        return any(name not in self._loaded for name in wanted)

    async def _bytes_of(self, policy: Policy, body: ModuleBody) -> bytes | None:
        if body.size > self._edge.max_module_bytes:
            self._refuse(body.name, "too_large", body.sha256, f"{body.size} bytes", once=True)
            return None
        held = await asyncio.to_thread(self.store.read, body.sha256)
        if held is not None:
            return held
        if self.store.size(body.sha256) is not None:  # held, but not what it should be
            self._refuse(body.name, "hash", body.sha256, "the bytes held here", once=True)
        holders = self._holders(policy, body)
        for node_id in holders:
            try:
                async with asyncio.timeout(fetch_deadline_s(body.size)):
                    data = await self._fetch(node_id, body)
            except TimeoutError:
                self.stats["fetch_timeout"] += 1
                log.info("wasm module %s: %s too slow, trying the next holder", body.name, node_id)
                continue
            if data is None:
                continue
            if await asyncio.to_thread(sha256_hex, data) != body.sha256:
                self._refuse(body.name, "hash", body.sha256, f"bytes from {node_id}", once=True)
                continue
            await asyncio.to_thread(self.store.write, body.sha256, data)
            self.stats["fetched"] += 1
            return data
        self.stats["fetch_failed"] += 1
        log.warning("wasm module %s: no holder gave its bytes (asked %d)", body.name, len(holders))
        return None

    def _holders(self, policy: Policy, body: ModuleBody) -> list[str]:
        """Peers to ask, the one the manifest names first (the others may hold it too:
        every node that fetched a module serves it)."""
        peers = sorted(self._mesh.peers)
        if body.holder in peers:
            peers.remove(body.holder)
            peers.insert(0, body.holder)
        return peers

    async def _fetch(self, node_id: str, body: ModuleBody) -> bytes | None:
        parts: list[bytes] = []
        got = 0
        while got < body.size:
            request = ChunkRequest(body.sha256, got, min(CHUNK_BYTES, body.size - got))
            try:
                reply = await self._mesh.request(
                    node_id,
                    MsgType.WASM_CHUNK,
                    encode_chunk_request(request),
                    timeout_s=CHUNK_TIMEOUT_S,
                )
            except (MeshError, NodeError, TimeoutError) as e:
                log.info("wasm module %s: fetch from %s failed: %s", body.name, node_id, e)
                return None
            if reply.type != MsgType.RESULT or not reply.payload:
                return None
            chunk = reply.payload[: request.length]  # never more than asked for
            if len(chunk) < request.length:
                # Every chunk asked for is there to give in full (the last one asks for
                # what is left): a short one is a holder that does not hold the module,
                # or one dribbling bytes to hold the reconciler up.
                self.stats["short_chunk"] += 1
                log.info(
                    "wasm module %s: %s gave %d of %d bytes at %d, trying the next holder",
                    body.name, node_id, len(chunk), request.length, got,
                )  # fmt: skip
                return None
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _load(self, body: ModuleBody) -> None:
        from vsmcp.edge.errors import EdgeError
        from vsmcp.edge.manifest import published_manifest
        from vsmcp.node.tools.wasm import WasmProvider, edge_permissions, shared_runtime
        from vsmcp.node.vsm.audits import check_probe_schema

        path = self.store.path(body.sha256)
        try:
            manifest = published_manifest(
                body.manifest, path.with_suffix(".toml"), path, edge_permissions(self._edge)
            )
        except EdgeError as e:
            self._refuse(body.name, "manifest", body.sha256, str(e), once=True)
            return
        why = None if manifest.probe is None else check_probe_schema(manifest.probe.expect)
        if why is not None:
            detail = f"probe.expect: not a JSON schema: {why}"
            self._refuse(body.name, "manifest", body.sha256, detail, once=True)
            return
        try:
            # The runtime of the node's configured WASM tools, if any (one per node).
            cache = self.store.directory.parent / "wasm-cache"
            runtime = shared_runtime(self._catalog, self._edge, cache)
        except EdgeError as e:  # no wasmtime here
            self._refuse(body.name, "load", body.sha256, str(e), once=True)
            return
        unit = UNIT_PREFIX + body.name
        if unit in self._catalog.supervisor.units:
            self._refuse(
                body.name, "load", body.sha256, f"a unit {unit} is configured here", once=True
            )
            return
        self._catalog.add(WasmProvider(manifest, runtime), unit_policy(self._tools))
        self._loaded[body.name] = body.sha256
        self.stats["loaded"] += 1
        log.info("wasm module %s (%s) loaded", body.name, body.sha256)

    async def _unload(self, name: str) -> None:
        self._loaded.pop(name, None)
        await self._catalog.supervisor.remove(UNIT_PREFIX + name)
        self.stats["unloaded"] += 1
        log.info("wasm module %s unloaded (unpublished, replaced or expired)", name)

    def _refuse(
        self, name: str, reason: str, digest: str, detail: str, *, once: bool = False
    ) -> None:
        """Count, publish and audit a refusal; `once`: not again for the same module and
        reason (the reconciler retries every few seconds)."""
        if once:
            if (digest, reason) in self._refused:
                return
            if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
                self._refused.clear()
            self._refused.add((digest, reason))
        self.stats[f"refused_{reason}"] += 1
        log.warning("wasm module %s refused (%s): %s", name, reason, detail)
        self._events.publish(
            WasmModuleRefused(
                ts=time.time(), module=name, reason=reason, sha256=digest, detail=detail[:500]
            )
        )
        self._audit(
            "wasm.refused", {"module": name, "reason": reason, "sha256": digest, "detail": detail}
        )
