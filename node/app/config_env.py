"""Environment overrides: `VSMCP_<KEY PATH>` → a dotted config key, found in the schema.

A variable names a key by its path of table and key names joined by underscores,
upper case, after `VSMCP_`: `VSMCP_HTTP_PORT` is `http.port`,
`VSMCP_VSM_CONCURRENCY_INITIAL_LIMIT` is `vsm.concurrency.initial_limit`,
`VSMCP_BRIDGES_AMQP_URL` is `bridges.amqp.url`. Names are matched against every key the
config structs declare (at any depth), not split at the first underscore, since key
names hold underscores too. Where one name could mean two keys, the variable is refused
naming both; a double underscore between the parts is always unambiguous
(`VSMCP_VSM__CONCURRENCY__INITIAL_LIMIT`) and accepted everywhere.

Keys under tables only: arrays of tables (`tools.plugins`) and maps (`limits.tools`) are
keys themselves, set whole as a TOML value. A variable starting with a section's name
(`VSMCP_HTTP_...`) that names no key is refused (a typo must not pass unnoticed); other
`VSMCP_*` variables (`VSMCP_REQUIRE_SERVICES`, ...) are not config and are left alone.
A value is read as a TOML value when it parses as one (numbers, booleans, arrays, inline
tables, quoted strings) and as a bare string otherwise.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec
from msgspec import inspect as mi

from vsmcp.node.errors import ConfigError

ENV_PREFIX: Final = "VSMCP_"
_UNDERSCORES = re.compile("_+")


def env_spelling(variable: str) -> str:
    """One spelling for every variable that may name the same key (`VSMCP_VSM__X_Y` and
    `VSMCP_VSM_X_Y`): upper case, runs of underscores as one. A child VSM drops what it
    inherits in any spelling of a key its parent imposes (node/children/process.py)."""
    return _UNDERSCORES.sub("_", variable.upper())


def _table(t: mi.Type) -> mi.StructType | None:
    """The struct a field's type is written as a TOML table of (optional or not)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        rest = [u for u in t.types if not isinstance(u, mi.NoneType)]
        if len(rest) != 1:
            return None
        return _table(rest[0])
    return t if isinstance(t, mi.StructType) else None


def _key_paths(struct: mi.StructType, prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for field in struct.fields:
        path = (*prefix, field.encode_name)
        table = _table(field.type)
        if table is None:
            yield path
        else:
            yield from _key_paths(table, path)


@functools.cache
def env_names(root: type[msgspec.Struct]) -> Mapping[str, tuple[str, ...]]:
    """Every variable name (without the prefix) → the dotted keys it may mean."""
    info = mi.type_info(root)
    assert isinstance(info, mi.StructType)
    names: dict[str, list[str]] = {}
    for path in _key_paths(info, ()):
        key = ".".join(path)
        for name in {"_".join(path).upper(), "__".join(path).upper()}:
            names.setdefault(name, []).append(key)
    return {name: tuple(keys) for name, keys in names.items()}


def _sections(root: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f"{s.upper()}_" for s in root.__struct_fields__)


def is_config_variable(variable: str, root: type[msgspec.Struct]) -> bool:
    """A variable `env_overrides` reads as config: one naming a key (in either spelling),
    or one under a section's name it would refuse. A child VSM inherits none of them
    (node/children/process.py): the rest (`VSMCP_TOKEN`, ...) are not config."""
    upper = variable.upper()
    if not upper.startswith(ENV_PREFIX):
        return False
    rest = upper[len(ENV_PREFIX) :]
    return rest in env_names(root) or rest.startswith(_sections(root))


def env_overrides(environ: Mapping[str, str], root: type[msgspec.Struct]) -> dict[str, Any]:
    """The dotted keys the `VSMCP_*` variables set, with their values."""
    if not any(variable.startswith(ENV_PREFIX) for variable in environ):
        return {}  # the table of names (≈80 KiB, kept) only for a node given some
    names = env_names(root)
    sections = _sections(root)
    found: dict[str, Any] = {}
    setters: dict[str, str] = {}  # key -> the variable that set it
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        rest = variable[len(ENV_PREFIX) :].upper()
        keys = names.get(rest)
        if keys is None:
            if rest.startswith(sections):
                raise ConfigError(
                    variable,
                    "names no config key (VSMCP_<SECTION>_<KEY>, deeper tables joined by "
                    "underscores: VSMCP_BRIDGES_AMQP_URL or VSMCP_BRIDGES__AMQP__URL)",
                )
            continue  # VSMCP_REQUIRE_SERVICES and friends are not config keys
        if len(keys) > 1:
            spelled = ", ".join(f"{ENV_PREFIX}{'__'.join(k.split('.')).upper()}" for k in keys)
            raise ConfigError(
                variable, f"ambiguous: may mean {' or '.join(keys)}; write one of {spelled}"
            )
        key = keys[0]
        if key in setters:
            raise ConfigError(variable, f"{setters[key]} sets {key} too; keep one of them")
        setters[key] = variable
        found[key] = parse_env_value(value)
    return found


def parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
