"""The audit log: append-only, hash-chained, Ed25519-signed entries in the store.

Entry `n` (seq is contiguous from 1) is the tuple (seq, ts_ms, kind, actor, data), where
`data` is canonical JSON text (`canonical_json`: sorted keys, compact separators,
ASCII-only). Its canonical encoding (`encode_entry`) is, with all integers big-endian:

    seq   u64 | ts_ms i64 | len(kind) u32 | kind | len(actor) u32 | actor | len(data) u32 | data

(strings UTF-8). Then

    hash_n = sha256(prev_hash_n || encode_entry(entry_n)),   prev_hash_1 = 32 zero bytes,
    prev_hash_n = hash_{n-1}.

Entries are committed in batches, one transaction each. The last entry of every batch is
a checkpoint: its `sig` is an Ed25519 detached signature over its hash. Every other entry
stores an empty `sig` (b""): as the hashes chain, a checkpoint's signature authenticates
it and every entry before it, so one signature per batch does the work of one per entry.
(Logs written before checkpoints have every entry signed; each is a checkpoint to the
verifier, so they verify unchanged.)

The single `audit_head` row holds (seq, hash) of the last entry and a signature over
`HEAD_SIG_DOMAIN || seq u64 || hash`; it is rewritten in the same transaction as every
batch, so deleting entries from the tail breaks the head, and a healthy log ends with a
checkpoint whose hash is the head's. The domain prefix keeps a checkpoint's signature
from being reused as a head signature (which would allow truncating to any checkpoint).
An attacker holding an old copy of the database can still roll the log back to it: the
anchor outside this file is `<data_dir>/audit.head` (`node/store/audit_head.py`), rewritten after
every batch and checked at start, so a log that went backwards is refused.

Verifying walks the chain (contiguous seqs, prev_hash links, recomputed hashes). An entry
is authenticated when a valid checkpoint at or after it, or the valid head, is reached
from it through the chain. A `sig` that is present but does not verify (wrong key, length
or type) is an error; an empty one is not: stripping a checkpoint's signature loses
nothing while a later checkpoint or the head still covers the entry, so it is not
reported, but entries that nothing covers are. `first_bad_seq` is the first entry that
is not authenticated: the entry after the last valid checkpoint before the damage, which
can be earlier than the damaged entry (an edit of entry k with every later hash
recomputed is only caught at the first checkpoint after k).

`AuditLog` appends through a bounded queue to one writer task that seals (hashes and
signs, in a worker thread) and commits whole batches. `verify_audit_log` checks a log
file without an event loop, for `vsmcp audit verify`; a damaged file (SQLite's check
fails, or a row cannot be read) is reported as broken, never raised.

Durability: `append` returns once the entry is queued, not committed. An entry is
committed within `linger_s` (the batch waits that long for company; default 5 ms) plus
one seal-and-commit (one fsync) of its batch, while the queue stays below `batch_size`;
under a backlog, behind at most `queue_maxsize` entries (appends wait when it is full).
A crash (kill -9, power loss) loses the entries accepted but not yet committed: `pending`
counts them (metric `vsmcp_audit_uncommitted_entries`). `append(..., durable=True)`
returns only once the entry is committed, and cuts the linger short.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from vsmcp.mesh.envelope import wall_clock_ms
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service
from vsmcp.node.errors import NodeError
from vsmcp.node.store.audit_head import (
    HeadFileError,
    SignedHead,
    head_message,
    read_head_file,
    rollback_problem,
    write_head_file,
)
from vsmcp.node.store.database import Store, StoreError, integrity_summary

log = logging.getLogger(__name__)

HASH_BYTES: Final = 32
SIG_BYTES: Final = 64
PUBLIC_KEY_BYTES: Final = 32
GENESIS_PREV_HASH: Final = bytes(HASH_BYTES)
UNSIGNED: Final = b""  # the `sig` of an entry that is not a checkpoint
DEFAULT_QUEUE_MAXSIZE: Final = 65_536
DEFAULT_BATCH_SIZE: Final = 2_048
DEFAULT_LINGER_S: Final = 0.005  # group commit: how long a batch waits for more
MAX_LABEL_BYTES: Final = 256  # kind and actor
MAX_DATA_BYTES: Final = 256 * 1024
MAX_QUOTED_CHARS: Final = 160  # of an error message quoted in a verify report

_INT_HEADER = struct.Struct(">QqI")
_LEN = struct.Struct(">I")
_MAX_SEQ: Final = 2**64 - 1

Signer = Callable[[bytes], bytes]
# (ts_ms, kind, actor, canonical data JSON), queued by `append`.
_Pending = tuple[int, str, str, str]
# A row of audit_entries in column order.
_Row = tuple[int, int, str, str, str, bytes, bytes, bytes]

_INSERT_ENTRY = (
    "INSERT INTO audit_entries (seq, ts_ms, kind, actor, data, prev_hash, hash, sig) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_HEAD = (
    "INSERT INTO audit_head (id, seq, hash, sig) VALUES (1, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, sig = excluded.sig"
)


class AuditError(NodeError):
    """Base of the audit log's errors; `reason` is a short machine label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuditEntryError(AuditError):
    """`append` was given an entry that cannot be recorded (type, size, non-JSON data)."""


class AuditWriteError(AuditError):
    """Entries could not be committed; the log stopped accepting entries."""


class AuditIntegrityError(AuditError):
    """The stored log is inconsistent (or signed by another key); the writer will not
    extend it. Run `vsmcp audit verify` to find the damage."""


class AuditRollbackError(AuditIntegrityError):
    """The log is shorter than, or not a continuation of, the head recorded outside it:
    it went backwards. Refused until an operator accepts it."""


# Built once: json.dumps with these options builds an encoder per call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical_json(data: Mapping[str, Any]) -> str:
    """The one JSON text of `data` that is hashed and stored."""
    return _CANONICAL.encode(data)


def encode_entry(seq: int, ts_ms: int, kind: str, actor: str, data: str) -> bytes:
    """The canonical encoding of an entry (see the module docstring)."""
    kind_b = kind.encode()
    actor_b = actor.encode()
    data_b = data.encode()
    return b"".join(
        (
            _INT_HEADER.pack(seq, ts_ms, len(kind_b)),
            kind_b,
            _LEN.pack(len(actor_b)),
            actor_b,
            _LEN.pack(len(data_b)),
            data_b,
        )
    )


def entry_hash(prev_hash: bytes, seq: int, ts_ms: int, kind: str, actor: str, data: str) -> bytes:
    return hashlib.sha256(prev_hash + encode_entry(seq, ts_ms, kind, actor, data)).digest()


def _checked_sig(sig: bytes) -> bytes:
    if len(sig) != SIG_BYTES:
        raise AuditError(
            f"signer returned {len(sig)} bytes, expected a {SIG_BYTES}-byte signature",
            reason="bad_signer",
        )
    return bytes(sig)


@dataclass(frozen=True, slots=True)
class _SealedBatch:
    rows: list[_Row]
    last_seq: int
    last_hash: bytes
    head_sig: bytes


def _seal_batch(
    batch: Sequence[_Pending], first_seq: int, prev_hash: bytes, sign: Signer
) -> _SealedBatch:
    """Hash-chain a batch, sign its last entry (the checkpoint) and the head.

    Runs in a worker thread: no event-loop access.
    """
    rows: list[_Row] = []
    last_seq = first_seq + len(batch) - 1
    for seq, (ts_ms, kind, actor, data) in enumerate(batch, start=first_seq):
        hash_ = entry_hash(prev_hash, seq, ts_ms, kind, actor, data)
        sig = _checked_sig(sign(hash_)) if seq == last_seq else UNSIGNED
        rows.append((seq, ts_ms, kind, actor, data, prev_hash, hash_, sig))
        prev_hash = hash_
    head_sig = _checked_sig(sign(head_message(last_seq, prev_hash)))
    return _SealedBatch(rows, last_seq, prev_hash, head_sig)


def _validate_label(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise AuditEntryError(
            f"audit {name} must be a str, got {type(value).__name__}", reason="bad_entry"
        )
    try:
        size = len(value.encode())
    except UnicodeEncodeError as exc:
        raise AuditEntryError(
            f"audit {name} is not valid Unicode: {exc}", reason="bad_entry"
        ) from exc
    if size > MAX_LABEL_BYTES:
        raise AuditEntryError(
            f"audit {name} is {size} bytes, over the {MAX_LABEL_BYTES}-byte limit",
            reason="too_large",
        )
    return value


class AuditLog(Service):
    """Appends audit entries to `store`; use `async with AuditLog(store, sign, pk) as audit:`.

    `sign(msg)` must return a 64-byte detached Ed25519 signature by the key whose public
    half is `public_key`. It is called from a worker thread, one call at a time.

    `head_file` (`<data_dir>/audit.head`): where the signed head is kept outside the
    database; checked at start (`AuditRollbackError` if the log went backwards, unless
    `accept_rollback`, which records the rollback as an entry and carries on).
    """

    def __init__(
        self,
        store: Store,
        sign: Signer,
        public_key: bytes,
        *,
        queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger_s: float = DEFAULT_LINGER_S,
        clock_ms: Callable[[], int] = wall_clock_ms,
        loops: LoopSupervisor | None = None,
        head_file: Path | None = None,
        accept_rollback: bool = False,
    ) -> None:
        if queue_maxsize < 1 or batch_size < 1:
            raise ValueError("queue_maxsize and batch_size must be at least 1")
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise ValueError(f"public_key must be {PUBLIC_KEY_BYTES} bytes")
        self._loops = loops or LoopSupervisor()
        self._store = store
        self._sign = sign
        self._verify_key = VerifyKey(bytes(public_key))
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._clock_ms = clock_ms
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_maxsize)
        self._writer: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._head_seq = 0
        self._head_hash = GENESIS_PREV_HASH
        # Entries accepted by `append` (counted before they are queued, so a flush or
        # close also waits for appends blocked on a full queue) and entries committed.
        self._accepted = 0
        # Entries put in the queue: the n-th is the n-th committed (or lost), so this,
        # not `_accepted`, numbers the entry a durable append waits for.
        self._queued = 0
        self._committed = 0
        self._failure: BaseException | None = None
        self._failure_message = ""
        self._lost = 0
        self._closing = False
        self._closed = False
        self._head_file = head_file
        self._accept_rollback = accept_rollback
        self._head_file_failing = False
        # Set when someone waits for a commit (durable append, close): the writer stops
        # lingering for company.
        self._hurry = asyncio.Event()
        self._durable_waiting = 0
        # Entries the writer took off the queue for its next batch: kept here, not in a
        # local, so a run of the loop cancelled while lingering leaves them to the next.
        self._in_hand: list[_Pending] = []
        # The batch being sealed and committed, in a task of its own (see `_run_writer`).
        self._batch_task: asyncio.Task[None] | None = None
        self._writer_runs = 0
        # Appends waiting for room in a full queue (woken when the log is abandoned).
        self._putting = 0
        self._wake_task: asyncio.Task[None] | None = None

    @property
    def head_seq(self) -> int:
        """Seq of the last committed entry (0 for an empty log)."""
        return self._head_seq

    @property
    def head_hash(self) -> bytes:
        """Hash of the last committed entry (the genesis hash for an empty log)."""
        return self._head_hash

    @property
    def pending(self) -> int:
        """Entries accepted by `append` and not yet committed (lost to a crash now)."""
        return max(0, self._accepted - self._committed - self._lost)

    async def start(self) -> None:
        """Read the signed head and start the writer. Idempotent."""
        if self._writer is not None:
            return
        if self._closed:
            raise AuditError("audit log is closed", reason="closed")
        self._head_seq, self._head_hash = await self._load_head()
        rollback = await self._check_head_file()
        self._writer = self._loops.spawn("audit-writer", self._run_writer)
        self._writer.add_done_callback(self._writer_ended)
        if rollback is not None:
            await self.append("audit.rollback_accepted", "operator", rollback, durable=True)

    async def close(self) -> None:
        """Commit everything appended, then stop the writer. Idempotent.

        Stops waiting once a write failed: what was not committed then is counted lost
        and logged, and its appenders raise. Raises `AuditWriteError` (once) if entries
        were not committed.
        """
        if self._closed:
            return
        self._closing = True
        self._hurry.set()
        try:
            if self._writer is not None:
                async with self._progress:
                    await self._progress.wait_for(
                        lambda: self._settled() or self._failure is not None
                    )
        finally:
            self._closed = True
            writer, self._writer = self._writer, None
            if writer is not None:
                # Idle at `queue.get()` once everything is settled.
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            # A batch the writer handed on runs to its end (it is never cut in half).
            tasks = [t for t in (self._batch_task, self._wake_task) if t is not None]
            if tasks:
                await asyncio.wait(tasks)
            await self._abandon_unwritten()
        if self._failure is not None:
            raise self._write_error()

    async def stop(self) -> None:
        await self.close()

    async def append(
        self, kind: str, actor: str, data: Mapping[str, Any], *, durable: bool = False
    ) -> None:
        """Queue an entry. Waits while the queue is full; never drops an entry.

        Returning means queued, not durable, unless `durable`: then it returns once the
        entry is committed. If a later write fails, the next `append`, `flush` or
        `close` raises.

        Raises `AuditEntryError` for an entry that cannot be recorded and
        `AuditWriteError` once an earlier write failed.
        """
        if self._closing or self._writer is None:
            raise AuditError("audit log is not running", reason="closed")
        if self._failure is not None:
            raise self._write_error()
        pending = self._make_pending(kind, actor, data)
        self._accepted += 1
        self._putting += 1
        try:
            await self._queue.put(pending)
        except BaseException:
            self._accepted -= 1
            async with self._progress:
                self._progress.notify_all()
            raise
        finally:
            self._putting -= 1
        # Numbered once in the queue, with no await since `put` put it there: appends
        # waiting for room do not enter in the order they came (one arriving as room
        # frees takes it before a woken waiter), and the queue's order is the commit order.
        self._queued += 1
        position = self._queued
        if durable:
            await self._wait_committed(position)
        if self._failure is not None:
            raise self._write_error()
        if self._closed and self._committed < position:
            # Queued while close gave up on the log (close was cancelled): never written.
            raise AuditError("audit log closed before the entry was written", reason="closed")

    async def _wait_committed(self, position: int) -> None:
        """Wait until the `position`-th queued entry is committed (or writing failed).

        Entries are committed (or counted lost) in the order they were queued, so this
        is the entry's own commit. An append cancelled while waiting for room was never
        queued and numbered nothing: no count to correct.
        """
        self._durable_waiting += 1
        self._hurry.set()
        try:
            async with self._progress:
                await self._progress.wait_for(
                    lambda: (
                        self._committed + self._lost >= position
                        or self._failure is not None
                        or self._closed
                    )
                )
        finally:
            self._durable_waiting -= 1

    async def flush(self) -> None:
        """Return once every entry appended before this call is committed."""
        if self._writer is None:
            if self._failure is not None:
                raise self._write_error()
            return
        # Counts appends still waiting for room; one of those cancelled is never
        # written, so the target comes down with `_accepted` (a later append may then
        # be waited for too, which is written: never a hang).
        target = self._accepted
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._committed >= min(target, self._accepted) or self._failure is not None
            )
        if self._failure is not None:
            raise self._write_error()

    def _settled(self) -> bool:
        """Every accepted entry is committed, or known lost after a write failure."""
        return self._committed + self._lost >= self._accepted

    def _make_pending(self, kind: str, actor: str, data: Mapping[str, Any]) -> _Pending:
        kind = _validate_label("kind", kind)
        actor = _validate_label("actor", actor)
        if not isinstance(data, Mapping):
            raise AuditEntryError(
                f"audit data must be a mapping, got {type(data).__name__}", reason="bad_entry"
            )
        try:
            data_json = canonical_json(data)
        except (TypeError, ValueError) as exc:
            raise AuditEntryError(f"audit data is not JSON: {exc}", reason="bad_entry") from exc
        if len(data_json) > MAX_DATA_BYTES:
            raise AuditEntryError(
                f"audit data is {len(data_json)} bytes, over the {MAX_DATA_BYTES}-byte limit",
                reason="too_large",
            )
        return (self._clock_ms(), kind, actor, data_json)

    def _write_error(self) -> AuditWriteError:
        error = AuditWriteError(self._failure_message, reason="write_failed")
        error.__cause__ = self._failure
        return error

    async def _load_head(self) -> tuple[int, bytes]:
        conn = self._store.conn
        async with conn.execute("SELECT seq, hash, sig FROM audit_head WHERE id = 1") as cur:
            head = await cur.fetchone()
        async with conn.execute(
            "SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1"
        ) as (cur):
            last = await cur.fetchone()
        where = f"audit log in {self._store.db_path}"
        hint = "; run `vsmcp audit verify`"
        if head is None:
            if last is not None:
                raise AuditIntegrityError(
                    f"{where} has entries but no head{hint}", reason="no_head"
                )
            return 0, GENESIS_PREV_HASH
        head_seq, head_hash, head_sig = int(head[0]), bytes(head[1]), bytes(head[2])
        try:
            self._verify_key.verify(head_message(head_seq, head_hash), head_sig)
        except BadSignatureError as exc:
            raise AuditIntegrityError(
                f"{where}: head signature does not verify with this node's key{hint}",
                reason="bad_head",
            ) from exc
        if last is None or int(last[0]) != head_seq or bytes(last[1]) != head_hash:
            last_seq = None if last is None else int(last[0])
            raise AuditIntegrityError(
                f"{where}: signed head is entry {head_seq} but the last entry is {last_seq}{hint}",
                reason="bad_head",
            )
        return head_seq, head_hash

    async def _run_writer(self) -> None:
        """The supervised writer loop. It can be cancelled at any await and restarted
        (`LoopSupervisor.inject_fault`, a stray cancellation): each batch is sealed,
        committed and counted in a task of its own that runs to its end whatever
        happens to the loop, so a batch is never cut in half, and the entries taken for
        the next batch wait in `_in_hand` for the next run."""
        self._writer_runs += 1
        if self._writer_runs > 1:
            await self._resume()
        while True:
            await self._next_batch()
            batch, self._in_hand = self._in_hand, []
            self._batch_task = asyncio.create_task(self._settle(batch), name="audit-batch")
            await asyncio.shield(self._batch_task)

    async def _resume(self) -> None:
        """A restarted loop: wait for the batch the last run handed on, then take the
        head from the database, the record of what was committed."""
        batch_task = self._batch_task
        if batch_task is not None and not batch_task.done():
            await asyncio.wait([batch_task])
        if self._failure is not None:
            return
        try:
            self._head_seq, self._head_hash = await self._load_head()
        except Exception as exc:  # noqa: BLE001 - the log stops, and says so
            self._record_failure(exc, [], "could not resume")
            async with self._progress:
                self._progress.notify_all()

    async def _settle(self, batch: list[_Pending]) -> None:
        """Write `batch`, count it committed or lost, and tell the waiters."""
        try:
            if self._failure is not None:
                # Keep draining so appends blocked on a full queue wake up and raise.
                self._lost += len(batch)
            else:
                await self._write(batch)
        finally:
            async with self._progress:
                self._progress.notify_all()

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            sealed = await asyncio.to_thread(
                _seal_batch, batch, self._head_seq + 1, self._head_hash, self._sign
            )
            async with self._store.transaction() as conn:
                await conn.executemany(_INSERT_ENTRY, sealed.rows)
                await conn.execute(
                    _UPSERT_HEAD, (sealed.last_seq, sealed.last_hash, sealed.head_sig)
                )
        except Exception as exc:  # noqa: BLE001 - top-level handler of the batch task
            self._record_failure(exc, batch)
            return
        except asyncio.CancelledError as exc:
            # Nobody cancels a batch task (only the event loop's teardown): if it
            # happens, the entries are reported, not silently dropped.
            self._record_failure(exc, batch)
            raise
        self._head_seq = sealed.last_seq
        self._head_hash = sealed.last_hash
        self._committed += len(batch)
        await self._write_head_file(SignedHead(sealed.last_seq, sealed.last_hash, sealed.head_sig))

    def _writer_ended(self, writer: asyncio.Task[None]) -> None:
        """The supervisor gave the writer loop up (or it ended) before close stopped it:
        nothing will write the entries, so the log stops, and its waiters are told. That
        includes a close waiting for its entries (it sets `_closed` before it cancels the
        writer, so only its own stop is ignored here)."""
        if self._closed:
            return
        if self._failure is None:
            error = AuditError(
                "its supervisor gave the writer loop up (it kept failing)", reason="writer_stopped"
            )
            self._record_failure(error, [], "writer stopped")
        self._wake_task = asyncio.get_running_loop().create_task(
            self._wake_waiters(), name="audit-wake"
        )

    async def _wake_waiters(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _abandon_unwritten(self) -> None:
        """After the writer stopped for good: count what it did not write as lost (and
        say so), and empty the queue until no append waits for room (they raise)."""
        unwritten = self._accepted - self._committed - self._lost
        if unwritten > 0:
            self._lost += unwritten
            log.error(
                "audit log %s closed with %d entries not committed (entries after %d)",
                self._store.db_path,
                unwritten,
                self._head_seq,
            )
        self._in_hand = []
        while True:
            while not self._queue.empty():
                self._queue.get_nowait()
            if self._putting == 0:
                break
            await asyncio.sleep(0)  # the appends woken put their entries, then raise
        async with self._progress:
            self._progress.notify_all()

    async def _next_batch(self) -> None:
        """Fill `_in_hand` with the next batch (at least one entry)."""
        batch = self._in_hand
        if not batch:
            batch.append(await self._queue.get())
        if (
            self._queue.qsize() < self._batch_size
            and self._linger_s > 0
            and not self._hurry.is_set()
        ):
            # Group commit: under a stream of appends, one transaction (and one fsync)
            # for many entries instead of one each; appends never wait for this, and a
            # caller waiting for its commit cuts it short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), self._linger_s)
        if not self._closing and self._durable_waiting == 0:
            # Durable appends queued after this point set it again.
            self._hurry.clear()
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break

    async def _write_head_file(self, head: SignedHead) -> None:
        """Record the committed head outside the database. A failure here loses no entry
        (the file only falls behind, which start-up accepts), so it is logged, not fatal."""
        if self._head_file is None:
            return
        try:
            await asyncio.to_thread(write_head_file, self._head_file, head)
        except OSError as exc:
            if not self._head_file_failing:
                log.error("cannot write audit head %s: %s", self._head_file, exc)
            self._head_file_failing = True
        else:
            if self._head_file_failing:
                log.info("audit head %s written again", self._head_file)
            self._head_file_failing = False

    async def _check_head_file(self) -> dict[str, Any] | None:
        """Compare the log with the head recorded outside it (see `node/store/audit_head.py`).

        Returns what to record when an operator accepted a rollback, else None.
        """
        if self._head_file is None:
            return None
        problem: str | None
        try:
            recorded = read_head_file(self._head_file, self._verify_key)
        except HeadFileError as exc:
            recorded, problem = None, str(exc)
        else:
            if recorded is None:
                if self._head_seq > 0:
                    log.warning(
                        "no %s for an audit log of %d entries: writing it now (a rollback "
                        "before this start cannot be detected here)",
                        self._head_file,
                        self._head_seq,
                    )
                    await self._write_current_head()
                return None
            problem = rollback_problem(
                recorded, self._head_seq, await self.stored_hash(recorded.seq)
            )
            if problem is not None:
                problem = f"{self._head_file}: {problem}"
        if problem is None:
            return None
        where = f"audit log in {self._store.db_path} went backwards"
        if not self._accept_rollback:
            raise AuditRollbackError(
                f"{where}: {problem}; restore the newer database, or start once with "
                f"--accept-audit-rollback to continue from this one",
                reason="rollback",
            )
        log.warning("%s: %s; accepted by the operator (--accept-audit-rollback)", where, problem)
        await self._write_current_head()
        return {
            "problem": problem,
            "recorded_seq": None if recorded is None else recorded.seq,
            "recorded_hash": None if recorded is None else recorded.hash.hex(),
            "log_seq": self._head_seq,
        }

    async def _write_current_head(self) -> None:
        conn = self._store.conn
        async with conn.execute("SELECT seq, hash, sig FROM audit_head WHERE id = 1") as cur:
            row = await cur.fetchone()
        if row is None:
            # An empty log has no signed head row; sign one for the anchor.
            sig = await asyncio.to_thread(self._sign, head_message(0, GENESIS_PREV_HASH))
            head = SignedHead(0, GENESIS_PREV_HASH, _checked_sig(sig))
        else:
            head = SignedHead(int(row[0]), bytes(row[1]), bytes(row[2]))
        await self._write_head_file(head)

    async def stored_hash(self, seq: int) -> bytes | None:
        """The hash of committed entry `seq` (the genesis hash for 0), None if absent."""
        if seq == 0:
            return GENESIS_PREV_HASH
        async with self._store.conn.execute(
            "SELECT hash FROM audit_entries WHERE seq = ?", (seq,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` committed entries, newest first (for the status page)."""
        async with self._store.conn.execute(
            "SELECT seq, ts_ms, kind, actor, data FROM audit_entries ORDER BY seq DESC LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            {"seq": r[0], "ts_ms": r[1], "kind": r[2], "actor": r[3], "data": json.loads(r[4])}
            for r in rows
        ]

    def _record_failure(
        self, exc: BaseException, batch: list[_Pending], what: str = "write failed"
    ) -> None:
        """Stop the log: `batch` (which `what` befell) is lost, and so is every entry
        after it; each later append, flush and close raises."""
        first = self._head_seq + 1
        self._lost += len(batch)
        self._failure = exc
        entries = f" for entries {first}..{first + len(batch) - 1}" if batch else ""
        self._failure_message = (
            f"audit {what}{entries} in {self._store.db_path}: {exc!r}; "
            f"the audit log stopped at entry {self._head_seq}"
        )
        log.error("%s", self._failure_message, exc_info=exc)


@dataclass(frozen=True, slots=True)
class AuditVerifyResult:
    """Outcome of `verify_audit_log`.

    `entries` counts the entries authenticated before the first problem (all of them
    when `ok`); `first_bad_seq` (then `entries + 1`) is the first entry that is not:
    the damaged or missing entry, or the first after the last valid checkpoint before
    it (see the module docstring). `reason` says where the damage was found. A file
    whose entries all verify but which fails SQLite's integrity check is not `ok`
    either, with `first_bad_seq` None: the damage is outside the entries.
    """

    ok: bool
    entries: int
    first_bad_seq: int | None
    reason: str


def verify_audit_log(
    db_path: Path, public_key: bytes, *, head_file: Path | None = None
) -> AuditVerifyResult:
    """Check the audit log in the SQLite file `db_path` against `public_key`.

    Read-only and synchronous (no event loop). Detects edited, deleted, reordered,
    inserted and re-signed entries, a truncated tail, a head older than the entries, a
    damaged file (SQLite's quick_check, rows that cannot be read) and, given the
    `head_file` recorded outside the database, a log that went backwards.
    Raises `StoreError` only if the file cannot be opened at all (absent, no access).
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public_key must be {PUBLIC_KEY_BYTES} bytes")
    verify_key = VerifyKey(bytes(public_key))
    db_path = Path(db_path)
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {db_path}: {exc}", reason="open") from exc
    try:
        result = _verify_file(conn, verify_key)
        if result.ok and head_file is not None:
            result = _check_head_file(conn, result, head_file, verify_key)
    except sqlite3.Error as exc:
        if not _is_damage(exc):
            raise StoreError(f"cannot read audit log in {db_path}: {exc}", reason="read") from exc
        result = _broken(0, f"database unreadable ({_quoted(exc)}): damaged, or not a store")
    finally:
        conn.close()
    return result


# SQLite's names for "this file is damaged" (and not "you may not open it").
_DAMAGE_ERRORS: Final = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_ERROR"})


def _is_damage(exc: sqlite3.Error) -> bool:
    # SQLITE_ERROR: a table missing from a file that opened (emptied, or not a store).
    return getattr(exc, "sqlite_errorname", None) in _DAMAGE_ERRORS


def _verify_file(conn: sqlite3.Connection, verify_key: VerifyKey) -> AuditVerifyResult:
    conn.execute("BEGIN")  # one consistent snapshot, even while a node is writing
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        # Damage the check cannot walk past; the entries may still be readable up to it.
        problems = [str(exc)]
    result = _verify(conn, verify_key)
    if problems == ["ok"]:
        return result
    damage = f"database fails SQLite's integrity check ({integrity_summary(problems)})"
    if not result.ok:
        return _broken(result.entries, f"{result.reason}; {damage}")
    return AuditVerifyResult(
        ok=False,
        entries=result.entries,
        first_bad_seq=None,
        reason=f"{damage}; all {result.entries} entries verified",
    )


def _check_head_file(
    conn: sqlite3.Connection,
    result: AuditVerifyResult,
    head_file: Path,
    verify_key: VerifyKey,
) -> AuditVerifyResult:
    """An intact log must still reach the head recorded outside it."""
    try:
        recorded = read_head_file(head_file, verify_key)
    except HeadFileError as exc:
        return AuditVerifyResult(
            ok=False, entries=result.entries, first_bad_seq=None, reason=str(exc)
        )
    if recorded is None:
        return result
    stored = GENESIS_PREV_HASH if recorded.seq == 0 else None
    if recorded.seq > 0:
        row = conn.execute(
            "SELECT hash FROM audit_entries WHERE seq = ?", (recorded.seq,)
        ).fetchone()
        stored = row[0] if row is not None and isinstance(row[0], bytes) else None
    problem = rollback_problem(recorded, result.entries, stored)
    if problem is None:
        return result
    first_bad = min(recorded.seq, result.entries + 1)
    return AuditVerifyResult(
        ok=False,
        entries=first_bad - 1,
        first_bad_seq=first_bad,
        reason=f"log went backwards: {head_file}: {problem}",
    )


def _quoted(exc: BaseException) -> str:
    """An error for a one-line report: SQLite quotes damaged text in its messages."""
    text = "".join(c if c.isprintable() else "?" for c in str(exc))
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + "…"


def _broken(authenticated: int, reason: str) -> AuditVerifyResult:
    return AuditVerifyResult(
        ok=False, entries=authenticated, first_bad_seq=authenticated + 1, reason=reason
    )


def _uncovered(first: int, last: int) -> str:
    """Reason suffix for entries first..last, which chain to no valid signature."""
    if first > last:
        return ""
    span = f"entry {first}" if first == last else f"entries {first}..{last}"
    checkpoint = f"entry {first - 1}" if first > 1 else "none"
    return f"; {span} not authenticated (last valid checkpoint: {checkpoint})"


def _verify(conn: sqlite3.Connection, verify_key: VerifyKey) -> AuditVerifyResult:
    # The head first: the walk remembers the hash of the entry it names on the way.
    head = conn.execute("SELECT seq, hash, sig FROM audit_head WHERE id = 1").fetchone()
    walk = ChainWalk(verify_key, head)
    rows = conn.execute(
        "SELECT seq, ts_ms, kind, actor, data, prev_hash, hash, sig FROM audit_entries ORDER BY seq"
    )
    while True:
        try:
            row = next(rows, None)
        except sqlite3.DatabaseError as exc:
            # Rows come in seq order: the one that cannot be read follows the last read.
            return walk.unreadable(f"unreadable ({_quoted(exc)}) (damaged file)")
        if row is None:
            break
        problem = walk.add(row)
        if problem is not None:
            return problem
    return walk.finish()


class ChainWalk:
    """The verifier's walk over one node's entries, fed in seq order from any store (the
    SQLite file, or the PostgreSQL mirror: `vsmcp.node.bridges.postgres_verify`).

    `head` is the signed head row (seq, hash, sig) or None. `add(row)` takes a row in
    `audit_entries` column order and returns the result when the walk must stop there;
    `finish()` checks the head once every row was added.
    """

    def __init__(self, verify_key: VerifyKey, head: Sequence[object] | None) -> None:
        self._verify_key = verify_key
        self._head = head
        head_seq = head[0] if head is not None else None
        self._want_seq = head_seq if isinstance(head_seq, int) else None
        self._hash_at_want: object = GENESIS_PREV_HASH if self._want_seq == 0 else None
        self.prev_hash = GENESIS_PREV_HASH
        self.last_seq = 0
        # Seq of the last valid checkpoint: 1..checkpoint are authenticated.
        self.checkpoint = 0

    def bad(self, seq: int, problem: str) -> AuditVerifyResult:
        """Stop at entry `seq`, which has `problem`."""
        return _broken(
            self.checkpoint,
            f"entry {seq}: {problem}" + _uncovered(self.checkpoint + 1, seq - 1),
        )

    def unreadable(self, problem: str) -> AuditVerifyResult:
        """The next row could not be read."""
        return self.bad(self.last_seq + 1, problem)

    def add(self, row: Sequence[Any]) -> AuditVerifyResult | None:
        seq, ts_ms, kind, actor, data, row_prev, row_hash, sig = row
        if seq != self.last_seq + 1:
            return _broken(
                self.checkpoint,
                f"entry {self.last_seq + 1} missing (deleted)"
                + _uncovered(self.checkpoint + 1, self.last_seq),
            )
        if row_prev != self.prev_hash:
            return self.bad(seq, "chain broken (reordered or deleted)")
        try:
            computed = entry_hash(self.prev_hash, seq, ts_ms, kind, actor, data)
        except (TypeError, ValueError, AttributeError, struct.error) as exc:
            return self.bad(seq, f"malformed field ({exc}) (edited)")
        if computed != row_hash:
            return self.bad(seq, "hash mismatch (edited)")
        if sig != UNSIGNED:
            if not _signature_ok(self._verify_key, row_hash, sig):
                return self.bad(seq, "bad signature (re-signed, edited or wrong key)")
            self.checkpoint = seq
        if seq == self._want_seq:
            self._hash_at_want = row_hash
        self.prev_hash = row_hash
        self.last_seq = seq
        return None

    def finish(self, *, mirror: bool = False) -> AuditVerifyResult:
        """The chain 1..last_seq is intact and 1..checkpoint authenticated: the head must
        cover the rest and say where the log ends.

        `mirror`: the rows are a copy that may have moved past the last head copied with
        them; entries after the head are then fine when checkpoints cover them all.
        """
        checkpoint, last_seq = self.checkpoint, self.last_seq
        uncovered = _uncovered(checkpoint + 1, last_seq)
        head = self._head
        if head is None:
            if last_seq == 0 or (mirror and checkpoint == last_seq):
                # (A mirror with no head copied yet: its checkpoints cover every entry.)
                return AuditVerifyResult(ok=True, entries=last_seq, first_bad_seq=None, reason="ok")
            return _broken(checkpoint, "head: missing (deleted)" + uncovered)
        head_seq, head_hash, head_sig = head
        if (
            not isinstance(head_seq, int)
            or not 0 <= head_seq <= _MAX_SEQ
            or not isinstance(head_hash, bytes)
        ):
            return _broken(checkpoint, "head: malformed (edited)" + uncovered)
        if not _signature_ok(self._verify_key, head_message(head_seq, head_hash), head_sig):
            return _broken(checkpoint, "head: bad signature (edited)" + uncovered)
        if head_seq > last_seq:
            return _broken(
                checkpoint,
                f"head: signed head is entry {head_seq} but the log ends at entry {last_seq} "
                f"(entries {last_seq + 1}..{head_seq} deleted: tail truncated)" + uncovered,
            )
        if head_hash != self._hash_at_want:
            # The chain was changed where only the head vouched for it: trust only the
            # checkpoints before the head's entry.
            authenticated = max(0, min(checkpoint, head_seq - 1))
            return _broken(
                authenticated,
                f"head: hash does not match entry {head_seq} (edited)"
                + _uncovered(authenticated + 1, head_seq - 1),
            )
        if head_seq < last_seq and not (mirror and checkpoint == last_seq):
            return _broken(
                head_seq,
                f"head: entries {head_seq + 1}..{last_seq} are not covered by the signed head "
                f"(head rolled back or entries inserted)",
            )
        return AuditVerifyResult(ok=True, entries=last_seq, first_bad_seq=None, reason="ok")


def _signature_ok(verify_key: VerifyKey, message: bytes, sig: object) -> bool:
    if not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
        return False
    try:
        verify_key.verify(message, sig)
    except BadSignatureError:
        return False
    return True
