"""The pattern engine as a node service: one engine subscribed to the node's stream,
fed by named pattern sources.

Sources:
- the directory `vsm.patterns_dir`, polled every `vsm.patterns_poll_s` by an owned loop
  and swapped in all or nothing: a file that does not parse, or a pattern that is
  refused, is logged with the file, the pattern and the reason, and the set already
  running keeps running (until the directory changes again);
- the policies CRDT: a policy of kind `pattern` whose issuer is an authority key carries
  `{"patterns": [...]}` (the JSON form of a pattern file). Records the CRDT rejects
  (bad signature, an issuer that may not issue `pattern`) and verified ones from a
  non-authority issuer are ignored and counted; one policy's patterns are refused or
  taken as a whole, without touching the others;
- any component of the node (`set_source`), e.g. built-in patterns.

Names are unique across sources: a source bringing a name another source holds is
refused (the one that came first keeps it). Every change rebuilds the engine's set with
`PatternEngine.replace`, so unchanged patterns keep their windows.

Actions run through `actions` (an `ActionDispatcher`), on which other services register
their handlers (`algedonic`, `policy`/`mitigate`); `emit` is registered here, and `tool`
(alias `call`) when the node gives a `ToolCaller`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsmcp.crdt.policies import Policy, PolicyStore
from vsmcp.crdt.replica import Change
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service
from vsmcp.node.errors import NodeError
from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.events import NODE_CATALOG
from vsmcp.node.vsm.patterns.actions import ActionDispatcher, Match, emit_handler
from vsmcp.node.vsm.patterns.compile import PatternEngine
from vsmcp.node.vsm.patterns.model import (
    Action,
    Pattern,
    ToolAction,
    load_pattern_dir,
    parse_patterns,
)
from vsmcp.node.vsm.stream import DEFAULT_SUBSCRIBER_CAPACITY, EventStream

if TYPE_CHECKING:
    from vsmcp.node.vsm.patterns.loader import PatternDirectory

log = logging.getLogger(__name__)

PATTERN_POLICY_KIND = "pattern"
DEFAULT_POLL_INTERVAL_S = 2.0
# Tool calls started by `tool` actions and not finished yet; more are dropped (counted).
MAX_TOOL_ACTIONS_IN_FLIGHT = 16
SUBSCRIBER_NAME = "patterns"

ToolCaller = Callable[[str, Mapping[str, Any], str], Awaitable[object]]
"""`call(tool, arguments, pattern)`: run a tool for a `tool` action of `pattern`."""


class PatternService(Service):
    """Owns the node's `PatternEngine`, its sources and the action registry."""

    def __init__(
        self,
        stream: EventStream,
        *,
        actions: ActionDispatcher | None = None,
        directory: Path | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        capacity: int = DEFAULT_SUBSCRIBER_CAPACITY,
        loops: LoopSupervisor | None = None,
    ) -> None:
        self._stream = stream
        self.actions = actions if actions is not None else ActionDispatcher()
        self.actions.register("emit", emit_handler(stream))
        self.engine = PatternEngine(self.actions, NODE_CATALOG)
        self.directory = directory
        self._dir: PatternDirectory | None = None
        if directory is not None:
            # Imported with `vsm.patterns_dir`: a node without one never loads it.
            from vsmcp.node.vsm.patterns.loader import PatternDirectory

            self._dir = PatternDirectory(directory, self.engine)
        self._poll_interval_s = poll_interval_s
        self._capacity = capacity
        self._loops = loops or LoopSupervisor()
        self._sources: dict[str, tuple[Pattern, ...]] = {}
        self._refused_fingerprint: bytes | None = None
        self._dir_fingerprint: bytes | None = None
        self._authority_keys: frozenset[bytes] = frozenset()
        self._policies: PolicyStore | None = None
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        # `ignored_unsigned`: pattern policies not signed by an authority (rejected by
        # the CRDT, or from another issuer); `refused_policies`: signed ones whose
        # patterns were refused; `reloads`/`refused_reloads`: the directory.
        self.stats: Counter[str] = Counter()
        self.last_error: PatternError | None = None

    # -- sources ---------------------------------------------------------------------

    def sources(self) -> dict[str, str]:
        """Pattern name -> the source it came from."""
        return {p.name: source for source, patterns in self._sources.items() for p in patterns}

    def set_source(self, source: str, patterns: Sequence[Pattern]) -> None:
        """Replace the patterns of `source` (all or nothing). Raises `PatternError`
        (the running set unchanged) for a refused pattern or a name another source holds."""
        taken = {
            p.name: other for other, held in self._sources.items() if other != source for p in held
        }
        for pattern in patterns:
            if pattern.name in taken:
                raise PatternError(
                    source, pattern.name, f"the name is also used by {taken[pattern.name]}"
                )
        sources = {**self._sources, source: tuple(patterns)}
        if not patterns:
            del sources[source]
        merged = [p for held in sources.values() for p in held]
        self.engine.replace(merged, source=source)
        self._sources = sources

    def drop_source(self, source: str) -> None:
        if source in self._sources:
            self.set_source(source, ())

    # -- the directory ---------------------------------------------------------------

    def _dir_source(self) -> str:
        return f"dir:{self.directory}"

    def _read_directory(self) -> tuple[bytes, tuple[Pattern, ...] | PatternError | None]:
        """Runs in a thread: the fingerprint, and the patterns when it is new."""
        assert self._dir is not None and self.directory is not None
        try:
            fingerprint = self._dir.fingerprint()
        except PatternError as e:
            return b"", e
        if fingerprint in (self._refused_fingerprint, self._dir_fingerprint):
            return fingerprint, None
        try:
            return fingerprint, load_pattern_dir(self.directory, NODE_CATALOG)
        except PatternError as e:
            return fingerprint, e

    async def reload_directory(self) -> bool:
        """Swap in the directory's patterns if they changed; False when a file was
        refused (logged once per content; the previous set keeps running)."""
        if self._dir is None:
            return True
        fingerprint, loaded = await asyncio.to_thread(self._read_directory)
        if loaded is None:
            return True
        if isinstance(loaded, tuple):
            try:
                self.set_source(self._dir_source(), loaded)
            except PatternError as e:
                loaded = e
            else:
                self._dir_fingerprint = fingerprint
                self._refused_fingerprint = None
                self.last_error = None
                self.stats["reloads"] += 1
                log.info("patterns: %d loaded from %s", len(loaded), self.directory)
                return True
        self.stats["refused_reloads"] += 1
        self.last_error = loaded
        self._refused_fingerprint = fingerprint or None
        log.error(
            "patterns not reloaded (the previous set keeps running): file %s, pattern %r: %s",
            loaded.source,
            loaded.pattern,
            loaded.reason,
        )
        return False

    async def _poll_directory(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            await self.reload_directory()

    # -- the policies CRDT -----------------------------------------------------------

    def watch_policies(self, policies: PolicyStore, authority_keys: Collection[bytes]) -> None:
        """Take `pattern` policies of the authority from the replicated store."""
        self._policies = policies
        self._authority_keys = frozenset(authority_keys)
        policies.on_change(self._policies_changed)
        for policy in policies.view():
            self._apply_policy(policy)

    def unsigned_patterns(self) -> int:
        """Pattern policies ignored for want of an authority signature."""
        rejected = self._policies.rejected[PATTERN_POLICY_KIND] if self._policies else 0
        return rejected + self.stats["ignored_unsigned"]

    @staticmethod
    def _policy_source(policy: Policy) -> str:
        return f"policy:{policy.issuer.hex()[:16]}/{policy.id}"

    def _policies_changed(self, change: Change[Policy]) -> None:
        for policy in change.removed:
            if policy.kind == PATTERN_POLICY_KIND:
                self.drop_source(self._policy_source(policy))
        for policy in (*change.added, *change.changed):
            self._apply_policy(policy)

    def _apply_policy(self, policy: Policy) -> None:
        if policy.kind != PATTERN_POLICY_KIND:
            return
        source = self._policy_source(policy)
        if policy.issuer not in self._authority_keys:
            self.stats["ignored_unsigned"] += 1
            log.warning("pattern policy %s ignored: not issued by the authority", source)
            return
        try:
            patterns = _patterns_of(policy.body, source)
            self.set_source(source, patterns)
        except PatternError as e:
            self.stats["refused_policies"] += 1
            self.last_error = e
            log.error("pattern policy refused: %s", e)
            return
        log.info("patterns: %d from policy %s", len(patterns), source)

    # -- the `tool` action -----------------------------------------------------------

    def enable_tool_action(self, call: ToolCaller) -> None:
        """Run `tool` actions through `call` (at most MAX_TOOL_ACTIONS_IN_FLIGHT at once)."""

        def tool(match: Match, action: Action) -> None:
            assert isinstance(action, ToolAction)
            if len(self._tool_tasks) >= MAX_TOOL_ACTIONS_IN_FLIGHT:
                self.stats["tool_actions_dropped"] += 1
                return
            task = asyncio.create_task(
                self._run_tool(call, action, match.pattern),
                name=f"pattern-tool-{match.pattern}",
            )
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)

        self.actions.register("tool", tool)

    async def _run_tool(self, call: ToolCaller, action: ToolAction, pattern: str) -> None:
        try:
            await call(action.tool, action.arguments, pattern)
        except NodeError as e:  # the tool's own refusal or failure
            self.stats["tool_actions_failed"] += 1
            log.warning("pattern %s: tool action %s failed: %s", pattern, action.tool, e)
        except Exception:  # top-level of the action's task: counted, logged
            self.stats["tool_actions_failed"] += 1
            log.exception("pattern %s: tool action %s failed", pattern, action.tool)
        else:
            self.stats["tool_actions_ok"] += 1

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the directory (raises `PatternError` when it is refused: a node does not
        start on a bad pattern file) and subscribe the engine."""
        if self._task is not None or any(
            s.name == SUBSCRIBER_NAME for s in self._stream.subscribers()
        ):
            return
        if self._dir is not None:
            if not await self.reload_directory():
                assert self.last_error is not None
                raise self.last_error
            self._task = self._loops.spawn("patterns-reload", self._poll_directory)
        self._stream.subscribe(SUBSCRIBER_NAME, self.engine.process_batch, capacity=self._capacity)

    async def stop(self) -> None:
        await self._stream.unsubscribe(SUBSCRIBER_NAME)
        tasks = [t for t in (self._task, *self._tool_tasks) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- views -----------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """What `GET /api/patterns` shows: each pattern with its source and matches."""
        counts = self.engine.match_counts()
        windows = self.engine.window_stats()
        sources = self.sources()
        patterns = []
        for pattern in self.engine.patterns:
            item: dict[str, Any] = {
                "name": pattern.name,
                "source": sources.get(pattern.name, ""),
                "kinds": list(pattern.kinds),
                "matches": counts.get(pattern.name, 0),
                "group_by": pattern.group_by,
                "actions": [_action_type(a) for a in pattern.actions],
            }
            if pattern.name in windows:
                item["window"] = windows[pattern.name]
            patterns.append(item)
        return {
            "patterns": patterns,
            "evictions": sum(w["evictions"] for w in windows.values()),
            "events": self.engine.events,
            "bad_events": self.engine.bad_events,
            "directory": str(self.directory) if self.directory is not None else None,
            "last_error": str(self.last_error) if self.last_error is not None else None,
            "unsigned_policies_ignored": self.unsigned_patterns(),
            "stats": dict(self.stats),
            "actions": dict(self.actions.stats),
        }


def _action_type(action: Action) -> str:
    return str(type(action).__struct_config__.tag)


def _patterns_of(body: Mapping[str, Any], source: str) -> tuple[Pattern, ...]:
    """A policy body is a pattern file's JSON form (its size is bounded by the CRDT)."""
    return parse_patterns(dict(body), source, NODE_CATALOG)
