"""`vsmcpd`: run one node until SIGTERM or SIGINT, then shut down cleanly (exit 0).

Exit codes: 0 clean stop; 2 bad config, key or certificate, or the node gave up (its
audit log went backwards: fix it, do not restart); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsmcp.node import __version__
from vsmcp.node.app.config import load_config
from vsmcp.node.app.logs import setup_logging
from vsmcp.node.app.parent_watch import parent_pid_from, watch_parent
from vsmcp.node.app.profiles import PROFILES
from vsmcp.node.app.sdnotify import SystemdNotifier
from vsmcp.node.client_tls import import_aiohttp_deferring_cas
from vsmcp.node.errors import EXIT_BAD_CONFIG, StartupError

if TYPE_CHECKING:
    from vsmcp.node.app.node import Node

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
# Young-generation threshold of the cyclic GC once serving (CPython's default: 700).
# A tool call allocates a few hundred short-lived containers; at 700 the collector runs
# every few calls, and before `tune_gc` each full collection walked ~115k start-up
# objects (≈65 ms): ≈30 µs per call at the entry node, measured under load.
GC_GEN0_THRESHOLD = 10_000
# SIGTERM means exit within 5 s (README), and so does the node giving up (`node.fatal`).
# Calls in flight are cancelled and mounts killed well before; should anything still
# hold the process past this (a plugin's thread that never returns keeps asyncio.run
# waiting for ever), it is ended, mounted servers' process groups first: after giving
# up EXIT_BAD_CONFIG; else exit 0 if the node itself had stopped (its state is saved),
# EXIT_FAILURE if not.
SHUTDOWN_WATCHDOG_S = 4.5
# Once the node has stopped, how long anything else may still hold the process.
AFTER_STOP_GRACE_S = 1.0


def tune_gc() -> None:
    """Collect the start-up garbage, move what survives out of the collector's sight
    (it lives as long as the process), and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vsmcpd", description="Run a vsmcp mesh node (a Viable System per host)."
    )
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument(
        "--data-dir", help="key, certificate and database (default ~/.local/share/vsmcp)"
    )
    p.add_argument("--http-port", type=int, help="HTTP port on 127.0.0.1; 0 picks a free one")
    p.add_argument("--http-host", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--mesh-port", type=int, help="mesh (ZeroMQ) port; 0 picks a free one")
    p.add_argument(
        "--seed",
        action="append",
        dest="seeds",
        metavar="HOST:PORT",
        help="a peer to join through (repeatable)",
    )
    p.add_argument("--no-mdns", action="store_true", help="do not use multicast discovery")
    p.add_argument(
        "--dev", action="store_true", help="self-certify: single machine only, never in a real mesh"
    )
    p.add_argument("--name", help="a human name for this node")
    p.add_argument(
        "--accept-audit-rollback",
        action="store_true",
        help="start although the audit log is shorter than, or not a continuation of, the "
        "head recorded at its last run (restored backup, truncated file); the rollback "
        "is recorded in the log",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        help="edge: a small host, WASM tools only (plugins and mounts refused)",
    )
    p.add_argument("--log-format", choices=("text", "json"))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--version", action="version", version=f"vsmcpd {__version__}")
    return p


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as dotted config keys; flags not given leave the config alone."""
    pairs = {
        "node.data_dir": args.data_dir,
        "http.port": args.http_port,
        "http.host": args.http_host,
        "mesh.port": args.mesh_port,
        "mesh.seeds": args.seeds,
        "node.name": args.name,
        "node.log_format": args.log_format,
        "node.log_level": args.log_level,
        "node.profile": args.profile,
        "node.dev": True if args.dev else None,
        "mesh.mdns": False if args.no_mdns else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


async def serve(node: Node, stop: asyncio.Event, watchdog: ShutdownWatchdog | None = None) -> None:
    systemd = SystemdNotifier()
    async with node:
        tune_gc()
        info = node.runtime_info()
        # One plain line on stdout whatever the log format: scripts wait for it.
        print(f"vsmcpd ready node_id={info['node_id']} http={info['http_url']}", flush=True)
        log.info("serving", extra={"node_id": info["node_id"], "http_url": info["http_url"]})
        systemd.ready(
            f"serving as {info['node_id']}", healthy=node.healthy, problems=node.health_problems
        )
        try:
            await _until_either(stop, node.fatal)
            if node.fatal.is_set() and watchdog is not None:
                watchdog.arm(gave_up=True)
        finally:
            log.info("shutting down")
            await systemd.stopping()
    # Reached only once the node stopped (its state saved), whether it was told to or
    # gave up: what still holds the process gets only the short grace.
    if watchdog is not None:
        watchdog.node_stopped()
    if node.fatal_error is not None:
        # main() turns this into exit 2.
        raise StartupError(node.fatal_error)


async def _until_either(first: asyncio.Event, second: asyncio.Event) -> None:
    waits = [
        asyncio.create_task(first.wait(), name="daemon-stop-wait"),
        asyncio.create_task(second.wait(), name="daemon-fatal-wait"),
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


class ShutdownWatchdog:
    """Armed by the first SIGTERM/SIGINT, or by the node giving up: a thread, so a
    blocked event loop cannot stop it."""

    def __init__(self, timeout_s: float = SHUTDOWN_WATCHDOG_S) -> None:
        self._timeout_s = timeout_s
        self._timer = self._new_timer(timeout_s)
        self._armed_at: float | None = None
        self._node_stopped = False
        self._gave_up = False

    def _new_timer(self, delay_s: float) -> threading.Timer:
        timer = threading.Timer(delay_s, self._force_exit)
        timer.daemon = True
        return timer

    def _force_exit(self) -> None:
        if self._node_stopped:
            log.warning("node stopped, but threads of tool calls still run; exiting anyway")
        else:
            log.error(
                "shutdown did not finish within %.1f s; killing mounted servers and exiting",
                self._timeout_s,
            )
        _kill_mount_process_groups()
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os._exit(self.exit_code())

    def exit_code(self) -> int:
        """What the process exits with if this watchdog ends it."""
        if self._gave_up:
            return EXIT_BAD_CONFIG  # as main() says it when nothing hangs
        return EXIT_OK if self._node_stopped else EXIT_FAILURE

    def arm(self, *, gave_up: bool = False) -> None:
        """Start counting (once); `gave_up`: the node stops because it cannot go on."""
        self._gave_up = self._gave_up or gave_up
        if self._armed_at is None:
            self._armed_at = time.monotonic()
            self._timer.start()

    def node_stopped(self) -> None:
        """The node's state is saved: what is left (threads of calls that never return,
        which asyncio.run waits for) gets only a short while."""
        self._node_stopped = True
        if self._armed_at is None:
            return
        left_s = self._timeout_s - (time.monotonic() - self._armed_at)
        self._timer.cancel()
        self._timer = self._new_timer(max(0.0, min(AFTER_STOP_GRACE_S, left_s)))
        self._timer.start()

    def disarm(self) -> None:
        self._timer.cancel()


async def run(node: Node, watchdog: ShutdownWatchdog | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if watchdog is not None:
            watchdog.arm()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await serve(node, stop, watchdog)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def warn_of_standing_rollback_acceptance(
    accept_audit_rollback: bool, environ: Mapping[str, str]
) -> None:
    """`--accept-audit-rollback` is an operator's word for one start. Left in a unit's
    ExecStart (systemd sets INVOCATION_ID for each run of a unit), every restart would
    accept whatever rollback it finds, silently but for the log entry."""
    if accept_audit_rollback and environ.get("INVOCATION_ID"):
        log.warning(
            "started by systemd with --accept-audit-rollback: it is meant for one start; "
            "remove it from the unit once this node runs, or every restart accepts a "
            "rolled-back audit log"
        )


def event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """`asyncio.run`, or uvloop's (config `node.event_loop`: auto, uvloop, asyncio).

    uvloop takes ≈15 % off the entry node's CPU per mesh call; "auto" uses it when it
    is installed. The config check has already refused "uvloop" when it is not.
    """
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    return run


def node_class() -> type[Node]:
    """The node, imported here: the first import of aiohttp (its HTTP server) leaves the
    CA certificates of aiohttp's default client contexts unread until a plugin or a bridge
    may use them (≈2 MiB of an idle node; node/client_tls.py)."""
    import_aiohttp_deferring_cas()
    from vsmcp.node.app.node import Node

    return Node


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=flag_overrides(args))
    except StartupError as e:
        print(f"vsmcpd: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(config.node.log_format, config.node.log_level)
    parent_pid = parent_pid_from(os.environ)
    if parent_pid is not None:  # a child VSM (node/children): never outlive the parent
        watch_parent(parent_pid)
    warn_of_standing_rollback_acceptance(args.accept_audit_rollback, os.environ)
    watchdog = ShutdownWatchdog()
    try:
        node = node_class()(config, accept_audit_rollback=args.accept_audit_rollback)
        event_loop_runner(config.node.event_loop)(run(node, watchdog))
    except StartupError as e:
        log.error("cannot start: %s", e)
        print(f"vsmcpd: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:  # top-level handler: log it whole, exit non-zero
        log.exception("vsmcpd failed")
        return EXIT_FAILURE
    finally:
        watchdog.disarm()
        # Normally none is left (each mount kills its own group on stop).
        _kill_mount_process_groups()
    return EXIT_OK


def _kill_mount_process_groups() -> None:
    """SIGKILL what is left of stdio mounts' process groups. `tools.stdio` is imported
    with the first stdio mount: a node that has not imported it started none."""
    stdio = sys.modules.get("vsmcp.node.tools.stdio")
    if stdio is not None:
        stdio.kill_all_process_groups()


if __name__ == "__main__":
    sys.exit(main())
