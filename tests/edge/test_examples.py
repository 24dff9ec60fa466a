"""The example tools, built from source: WAT (assembled by wasmtime at load) and Rust
(wasm32-wasi with Debian's rustc and libstd-rust-dev-wasm32, std only)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.edge.conftest import EXAMPLES
from tests.skips import skip_or_fail
from vsmcp.edge.manifest import load_manifest

RUST = EXAMPLES / "rust"


def _build_rust(directory: Path) -> Path:
    """Build the Rust example into `directory` with its own script; skip/fail without rustc."""
    for name in ("word_count.rs", "word_count.toml", "build.sh"):
        shutil.copy(RUST / name, directory / name)
    try:
        built = subprocess.run(
            [str(directory / "build.sh")], capture_output=True, text=True, timeout=300
        )
    except OSError as exc:
        skip_or_fail(f"cannot run the Rust example's build.sh: {exc}")
    if built.returncode != 0:
        skip_or_fail(
            "no Rust toolchain for wasm32-wasi (apt-get install rustc libstd-rust-dev-wasm32 "
            f"lld-14): {built.stderr.strip()[-300:]}"
        )
    return directory / "word_count.toml"


async def test_the_rust_example_counts_words_and_refuses_bad_arguments(
    runtime: Any, tmp_path: Path
) -> None:
    tool = runtime.load(load_manifest(_build_rust(tmp_path)))
    counted = await runtime.call(tool, json.dumps({"text": "héllo wörld\nline two"}).encode(), 1.0)
    assert (counted.exit_code, json.loads(counted.stdout)) == (
        0,
        {"words": 4, "lines": 2, "chars": 20},
    )
    refused = await runtime.call(tool, b'{"txt": 1}', 1.0)
    assert refused.exit_code == 2
    assert b"expected" in refused.stderr


async def test_the_wat_example_echoes(runtime: Any) -> None:
    tool = runtime.load(load_manifest(EXAMPLES / "echo.toml"))
    outcome = await runtime.call(tool, b'{"k":"v"}', 1.0)
    assert json.loads(outcome.stdout) == {"echo": {"k": "v"}}
