"""Telegram bridge: message → reply latency through the fake Bot API, one direct tool call.

    python benchmarks/bench_telegram.py [--messages 300] [--quick]

One `vsmcpd --dev` with `[bridges.telegram]` pointed at the fake Bot API
(tests/fakes/telegram_api.py, aiohttp, on this process's event loop); the chat is
mapped to zone `ops`. A trial: the fake queues an update holding `/call echo text=<i>`
(the clock starts there), the bridge's pending long poll (getUpdates) returns it, the
bridge calls `echo` through the mesh catalog and sends the answer; the clock stops when
the fake has received that sendMessage. Messages go one at a time (no overlap).
Then the same with free text (`echo m<i>`), planned by System 4's offline planner (no
key), which picks `echo` and its argument from the words and runs it.
Target: p50 ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.telegram_api import TOKEN, FakeTelegram
from tests.integration.harness import NodeProcess

CHAT = 100
TOKEN_ENV = "VSMCP_BENCH_TELEGRAM_TOKEN"
TARGET_P50_MS = 100.0
REPLY_TIMEOUT_S = 30.0
FIRST_REPLY_TIMEOUT_S = 120.0
WARMUP = 10


def _config(api_base: str) -> str:
    return f"""
[mesh]
preset = "local"
mdns = false
[tools]
entry_points = false
[bridges.telegram]
token_env = "{TOKEN_ENV}"
api_base = "{api_base}"
chats = {{ "{CHAT}" = "ops" }}
rate_per_s = 10000
burst = 10000
poll_timeout_s = 30
"""


# How a trial's message is written: a command, or words for the offline planner.
MODES = {"/call": "/call echo text=m{i}", "offline planner": "echo m{i}"}


async def _round_trip(
    api: FakeTelegram, i: int, mode: str = "/call", timeout_s: float = REPLY_TIMEOUT_S
) -> float:
    sent = len(api.sent)
    started = time.perf_counter()
    api.push_message(CHAT, MODES[mode].format(i=i))
    await api.wait_sent(sent + 1, timeout_s)
    elapsed = time.perf_counter() - started
    answer = api.sent[sent]["text"]
    assert answer == f"m{i}" if mode == "/call" else f"m{i}" in answer, api.sent[sent]
    return elapsed


async def run(messages: int) -> dict[str, list[float]]:
    async with FakeTelegram() as api:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            (base / "bridge.toml").write_text(_config(api.base_url))
            node = NodeProcess(
                base / "bridge", "--config", str(base / "bridge.toml"), env={TOKEN_ENV: TOKEN}
            )
            node.start(wait=False)
            try:
                await asyncio.to_thread(node.wait_ready)
                # The first waits for the bridge's client (aiogram is imported after start).
                await _round_trip(api, -1, timeout_s=FIRST_REPLY_TIMEOUT_S)
                times: dict[str, list[float]] = {}
                for mode in MODES:
                    for i in range(1, WARMUP):
                        await _round_trip(api, -1 - i, mode)
                    times[mode] = [await _round_trip(api, i, mode) for i in range(messages)]
                return times
            finally:
                await asyncio.to_thread(node.stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="30 messages")
    args = parser.parse_args()
    messages = 30 if args.quick else args.messages
    results = asyncio.run(run(messages))
    print(f"machine: {machine()}")
    print("| message | messages | p50 | p95 | max | min | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for mode, times in results.items():
        times_ms = sorted(t * 1000 for t in times)
        p50 = statistics.median(times_ms)
        p95 = times_ms[min(len(times_ms) - 1, int(len(times_ms) * 0.95))]
        met = "met" if p50 <= TARGET_P50_MS else "NOT met"
        print(
            f"| {mode} | {messages} | **{p50:.1f} ms** | {p95:.1f} ms | {times_ms[-1]:.1f} ms "
            f"| {times_ms[0]:.1f} ms | p50 ≤ {TARGET_P50_MS:.0f} ms: {met} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
