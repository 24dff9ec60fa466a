"""TOML text of JSON-shaped values (the README's config reference, the configs System 3
writes for its scale children). Python's standard library reads TOML but does not write it."""

from __future__ import annotations

import json
import re
from typing import Final

import msgspec

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: object) -> str:
    """`value` as a TOML value. A JSON string is a TOML basic string once non-ASCII
    characters are kept as they are (JSON's surrogate-pair escapes of characters beyond
    the BMP are not TOML). None has no TOML form: a table leaves such a key out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, msgspec.Struct):
        return toml_value(msgspec.to_builtins(value))
    raise TypeError(f"no TOML form for {type(value).__name__}")
