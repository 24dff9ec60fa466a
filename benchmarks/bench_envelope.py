"""Envelope pipeline throughput against raw PyNaCl, measured in the same run.

    python benchmarks/bench_envelope.py [--quick]

Prints ops/s for raw sign/verify of a ~200-byte message (PyNaCl's SigningKey/VerifyKey
API and the bare libsodium bindings), Sealer.seal and Opener.open (size check + verify +
decode + replay check) with a 200-byte payload, and the ratios. Operations run in small
interleaved chunks so they all see the same background load on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.bindings
import nacl.signing
from _machine import machine

from vsmcp.mesh.envelope import MsgType, Opener, Sealer
from vsmcp.mesh.identity import NodeKey
from vsmcp.mesh.replay import ReplayGuard

PAYLOAD = b'{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"disk_usage"}}'
PAYLOAD = (PAYLOAD * 3)[:200]


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    args = parser.parse_args()
    chunk = 500
    chunks = 8 if args.quick else 80

    key = NodeKey.generate()
    signing_key = nacl.signing.SigningKey(key.seed)
    verify_key = signing_key.verify_key
    secret_key = key.seed + key.public_key
    pk = key.public_key
    message = PAYLOAD
    signed_messages = [signing_key.sign(message) for _ in range(chunk)]
    signed_raw = [bytes(m) for m in signed_messages]
    sealer = Sealer(key)
    opener = Opener(ReplayGuard())
    seal = sealer.seal
    open_ = opener.open
    names = (
        "pynacl_sign",
        "libsodium_sign",
        "seal",
        "pynacl_verify",
        "libsodium_verify",
        "open",
    )
    total = dict.fromkeys(names, 0.0)
    per_chunk: dict[str, list[float]] = {name: [] for name in names}

    # Small interleaved chunks: every operation sees the same background load, which
    # matters on a shared 2-core machine far more than any single long run.
    for _ in range(chunks):
        wires: list[bytes] = []
        times = {
            "pynacl_sign": timed(lambda: [signing_key.sign(message) for _ in range(chunk)]),
            "libsodium_sign": timed(
                lambda: [nacl.bindings.crypto_sign(message, secret_key) for _ in range(chunk)]
            ),
            "seal": timed(
                lambda w=wires: w.extend([seal(MsgType.INVOKE, PAYLOAD) for _ in range(chunk)])  # type: ignore[misc]
            ),
            "pynacl_verify": timed(lambda: [verify_key.verify(m) for m in signed_messages]),
            "libsodium_verify": timed(
                lambda: [nacl.bindings.crypto_sign_open(m, pk) for m in signed_raw]
            ),
            "open": timed(lambda w=wires: [open_(x) for x in w]),  # type: ignore[misc]
        }
        for name, seconds in times.items():
            total[name] += seconds
            per_chunk[name].append(seconds)
    assert opener.accepted == chunk * chunks
    n = chunk * chunks
    best = {name: n / seconds for name, seconds in total.items()}

    def median_ratio(numerator: str, denominator: str) -> float:
        # time ratio inverted = throughput ratio, per chunk
        ratios = sorted(
            d / t for t, d in zip(per_chunk[numerator], per_chunk[denominator], strict=True)
        )
        return ratios[len(ratios) // 2]

    wire_bytes = len(wires[0])
    rows = [
        ("raw sign, PyNaCl SigningKey.sign", best["pynacl_sign"]),
        ("raw sign, libsodium binding crypto_sign", best["libsodium_sign"]),
        ("Sealer.seal", best["seal"]),
        ("raw verify, PyNaCl VerifyKey.verify", best["pynacl_verify"]),
        ("raw verify, libsodium binding crypto_sign_open", best["libsodium_verify"]),
        ("Opener.open (size+verify+decode+replay)", best["open"]),
    ]
    mode = "quick" if args.quick else "full"
    print(f"# Envelope benchmark ({mode}: {chunks} interleaved chunks x {chunk} ops)")
    print(f"machine: {machine()}")
    print(f"payload {len(PAYLOAD)} B, envelope on the wire {wire_bytes} B\n")
    print("| operation | ops/s |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:,.0f} |")
    print()
    print("| ratio (throughput) | total | median per chunk | target |")
    print("|---|---:|---:|---:|")
    for label, num, den, target in (
        ("open / PyNaCl verify", "open", "pynacl_verify", 0.85),
        ("open / libsodium verify", "open", "libsodium_verify", 0.85),
        ("seal / PyNaCl sign", "seal", "pynacl_sign", 0.75),
        ("seal / libsodium sign", "seal", "libsodium_sign", 0.75),
    ):
        print(
            f"| {label} | {best[num] / best[den]:.2f} | {median_ratio(num, den):.2f} "
            f"| >= {target} |"
        )


if __name__ == "__main__":
    main()
