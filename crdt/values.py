"""Boundary hygiene for values that enter or leave pycrdt and our signed payloads.

pycrdt (Yrs) stores numbers as JavaScript does: an int comes back as a float, an int
beyond i64 makes the Rust side panic, and bytes come back as `bytearray`. Every value
that crosses into the CRDT layer goes through `check_value` (reject what cannot round
trip) and every value read back goes through `from_crdt` (normalize).
"""

from __future__ import annotations

import json
import math
from typing import Any

from vsmcp.crdt.errors import InvalidValue, ValueOutOfRange

MAX_SAFE_INT = 2**53 - 1
MAX_VALUE_DEPTH = 32
MAX_JSON_TEXT_BYTES = 64 * 1024


def check_int(value: int, *, what: str = "value") -> int:
    """Return `value` if it is an int (not bool) within ±(2**53 - 1), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{what} must be an int, got {type(value).__name__}")
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise ValueOutOfRange(f"{what}={value} is outside ±(2**53 - 1)")
    return value


def check_value(value: Any, *, path: str = "$", depth: int = 0) -> None:
    """Raise unless `value` is JSON-like data that round-trips through the CRDT exactly.

    Accepted: None, bool, int within ±(2**53 - 1), finite float, str, bytes, list/tuple,
    dict with str keys; nested at most MAX_VALUE_DEPTH deep.
    """
    if depth > MAX_VALUE_DEPTH:
        raise InvalidValue(f"{path}: nested deeper than {MAX_VALUE_DEPTH}")
    if value is None or isinstance(value, bool | str | bytes):
        return
    if isinstance(value, int):
        check_int(value, what=path)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueOutOfRange(f"{path}: non-finite float {value}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_value(item, path=f"{path}[{index}]", depth=depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(f"{path}: dict key {key!r} is not a str")
            check_value(item, path=f"{path}.{key}", depth=depth + 1)
        return
    raise InvalidValue(f"{path}: unsupported type {type(value).__name__}")


def to_crdt(value: Any) -> Any:
    """Validate a value about to be written into a pycrdt container; return it unchanged."""
    check_value(value)
    return value


def from_crdt(value: Any) -> Any:
    """Normalize a value read from pycrdt: integral floats -> int, bytearray -> bytes.

    pycrdt gives no way to tell a stored 1.0 from a stored 1, so integral floats become
    ints. Signed payloads avoid the question: they are msgpack blobs, typed exactly.
    """
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, float):
        if value.is_integer() and -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, list):
        return [from_crdt(item) for item in value]
    if isinstance(value, dict):
        return {key: from_crdt(item) for key, item in value.items()}
    to_py = getattr(value, "to_py", None)
    if callable(to_py):
        return from_crdt(to_py())
    return value


def as_blob(value: Any) -> bytes | None:
    """The bytes of a stored blob, or None when a (possibly hostile) replica stored
    something that is not a blob."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    return None


def dump_json(value: Any, *, what: str) -> str:
    """Canonical JSON text (sorted keys, no spaces) of a checked value."""
    check_value(value, path=what)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # bytes are not JSON
        raise InvalidValue(f"{what}: not JSON-serializable: {exc}") from exc
    if len(text.encode()) > MAX_JSON_TEXT_BYTES:
        raise InvalidValue(f"{what}: JSON text exceeds {MAX_JSON_TEXT_BYTES} bytes")
    return text


def load_json_object(text: str, *, what: str) -> dict[str, Any]:
    """Parse JSON text that must hold an object of checked values."""
    if len(text) > MAX_JSON_TEXT_BYTES:
        raise InvalidValue(f"{what}: JSON text exceeds {MAX_JSON_TEXT_BYTES} bytes")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidValue(f"{what}: invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidValue(f"{what}: JSON must be an object")
    check_value(value, path=what)
    return value
