"""Patterns as data: their structs, parsing from TOML/JSON, and validation against an
event catalog.

A pattern file holds `[[patterns]]` tables (TOML) or `{"patterns": [...]}` (JSON):

    [[patterns]]
    name = "auth-storm"
    kinds = ["envelope_rejected"]        # or kind = "envelope_rejected"
    where = {field = "reason", op = "eq", value = "bad_signature"}
    group_by = "sender"                  # one window per sender
    window = {count = 20, within_s = 10} # or {rate_per_s = 2, within_s = 10}
    actions = [{type = "algedonic", valence = "pain", intensity = 0.8}]

Conditions: `{field, op, value}` with op one of `eq ne lt le gt ge in regex exists absent`
(`in` takes a list, `exists`/`absent` no value), and `{all = [...]}`, `{any = [...]}`,
`{not = {...}}`. A sequence ("A followed by B within T") has `then = {kind(s), where,
within_s}`; `group_by` then correlates A and B (the field must exist in both).

Everything is checked before a set is accepted: an unknown kind, field, operator, a value
of the wrong type for the field, a bad regex, a window of 0 are refused with a
`PatternError` naming the file, the pattern and the reason.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import msgspec

from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.events import EventCatalog, FieldType

OPERATORS = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "in", "regex", "exists", "absent"})
ORDERING_OPERATORS = frozenset({"lt", "le", "gt", "ge"})
PRESENCE_OPERATORS = frozenset({"exists", "absent"})

MAX_PATTERNS = 10_000  # per set
MAX_PATTERN_FILE_BYTES = 1024 * 1024
MAX_CONDITION_DEPTH = 16
MAX_CONDITION_TERMS = 1_000  # leaves and combinators in one pattern
MAX_IN_VALUES = 10_000
MAX_REGEX_CHARS = 1_000
MAX_NAME_CHARS = 200
# Window state is bounded per pattern: at most max_groups groups, each holding at most
# `count` timestamps (a group is emptied when it fires).
DEFAULT_MAX_GROUPS = 10_000
MAX_GROUPS_LIMIT = 1_000_000
MAX_WINDOW_COUNT = 100_000
MAX_WINDOW_S = 7 * 24 * 3600.0
SELF_FEEDING_KIND = "pattern_matched"  # the kind the `emit` action publishes

Value = str | int | float | bool
CompareValue: TypeAlias = Value | tuple[Value, ...] | None


class Compare(msgspec.Struct, frozen=True):
    """`field op value`. `value` is a tuple for `in`, None for `exists`/`absent`."""

    field: str
    op: str
    value: CompareValue = None


class All(msgspec.Struct, frozen=True):
    terms: tuple[Condition, ...]


class AnyOf(msgspec.Struct, frozen=True):
    terms: tuple[Condition, ...]


class Not(msgspec.Struct, frozen=True):
    term: Condition


Condition: TypeAlias = Compare | All | AnyOf | Not


class CountWindow(msgspec.Struct, frozen=True):
    """Match when `count` matching events of one group fall within `within_s` seconds
    (a window (t - within_s, t]); the group's window then starts afresh."""

    count: int
    within_s: float


class Then(msgspec.Struct, frozen=True):
    """The B of "A followed by B within `within_s`" (inclusive)."""

    kinds: tuple[str, ...]
    where: Condition | None
    within_s: float


class AlgedonicAction(msgspec.Struct, frozen=True, tag_field="type", tag="algedonic"):
    """Raise pain or pleasure with an intensity in [0, 1]."""

    valence: Literal["pain", "pleasure"]
    intensity: float
    reason: str = ""


class PolicyAction(msgspec.Struct, frozen=True, tag_field="type", tag="policy"):
    """Issue a mitigation policy (e.g. `block_origin`) aimed at the match's group, for
    `ttl_s` seconds."""

    policy: str
    ttl_s: float
    params: dict[str, str | int | float | bool] = {}


class EmitAction(msgspec.Struct, frozen=True, tag_field="type", tag="emit"):
    """Publish a `pattern_matched` event carrying `label`."""

    label: str = ""


class ToolAction(msgspec.Struct, frozen=True, tag_field="type", tag="tool"):
    """Call a tool with these arguments."""

    tool: str
    arguments: dict[str, Any] = {}


Action: TypeAlias = AlgedonicAction | PolicyAction | EmitAction | ToolAction


class Pattern(msgspec.Struct, frozen=True):
    """One validated pattern. With neither `window` nor `then` it is a filter: every
    matching event is a match."""

    name: str
    kinds: tuple[str, ...]
    where: Condition | None = None
    group_by: str | None = None
    max_groups: int = DEFAULT_MAX_GROUPS
    window: CountWindow | None = None
    then: Then | None = None
    actions: tuple[Action, ...] = ()

    def state_identity(self) -> tuple[object, ...]:
        """What a pattern's window state depends on: equal identities keep the state
        across a hot swap (actions may change freely)."""
        return (
            self.name,
            self.kinds,
            self.where,
            self.group_by,
            self.max_groups,
            self.window,
            self.then,
        )


# -- parsing -----------------------------------------------------------------------------


class _Refused(Exception):
    """Internal: a reason, turned into a PatternError with the source and the name."""


_PATTERN_KEYS = frozenset(
    {"name", "kind", "kinds", "where", "group_by", "max_groups", "window", "then", "actions"}
)


def parse_patterns(data: Any, source: str, catalog: EventCatalog) -> tuple[Pattern, ...]:
    """Validated patterns from the decoded form of a pattern file (a table with a
    `patterns` list, or the list itself). Raises `PatternError`."""
    if isinstance(data, Mapping):
        extra = set(data) - {"patterns"}
        if extra:
            raise PatternError(source, "", f"unknown top-level keys {sorted(extra)}")
        data = data.get("patterns", [])
    if not isinstance(data, list):
        raise PatternError(source, "", "expected a list of patterns")
    if len(data) > MAX_PATTERNS:
        raise PatternError(source, "", f"more than {MAX_PATTERNS} patterns")
    patterns: list[Pattern] = []
    for position, raw in enumerate(data):
        label = (
            str(raw.get("name"))
            if isinstance(raw, Mapping) and raw.get("name")
            else f"#{position + 1}"
        )
        try:
            patterns.append(_parse_pattern(raw, catalog))
        except _Refused as e:
            raise PatternError(source, label, str(e)) from None
    check_unique_names(patterns, source)
    return tuple(patterns)


def check_unique_names(patterns: Iterable[Pattern], source: str) -> None:
    seen: set[str] = set()
    for pattern in patterns:
        if pattern.name in seen:
            raise PatternError(source, pattern.name, "a second pattern has this name")
        seen.add(pattern.name)


def validate_patterns(
    patterns: Sequence[Pattern], source: str, catalog: EventCatalog
) -> tuple[Pattern, ...]:
    """Check patterns built in code (not parsed) the way a file is checked."""
    checked = []
    for pattern in patterns:
        try:
            _validate_pattern(pattern, catalog)
        except _Refused as e:
            raise PatternError(source, pattern.name, str(e)) from None
        checked.append(pattern)
    if len(checked) > MAX_PATTERNS:
        raise PatternError(source, "", f"more than {MAX_PATTERNS} patterns")
    check_unique_names(checked, source)
    return tuple(checked)


def _parse_pattern(raw: Any, catalog: EventCatalog) -> Pattern:
    if not isinstance(raw, Mapping):
        raise _Refused("a pattern must be a table")
    unknown = set(raw) - _PATTERN_KEYS
    if unknown:
        raise _Refused(f"unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise _Refused(f"'name' must be a non-empty string of at most {MAX_NAME_CHARS} chars")
    kinds = _parse_kinds(raw, "")
    where = _parse_condition(raw["where"], "where", 0) if "where" in raw else None
    group_by = raw.get("group_by")
    if group_by is not None and not isinstance(group_by, str):
        raise _Refused("'group_by' must be a field name")
    max_groups = raw.get("max_groups", DEFAULT_MAX_GROUPS)
    window = _parse_window(raw["window"]) if "window" in raw else None
    then = _parse_then(raw["then"]) if "then" in raw else None
    actions = _parse_actions(raw.get("actions", []))
    if not isinstance(max_groups, int) or isinstance(max_groups, bool):
        raise _Refused("'max_groups' must be an integer")
    if "max_groups" in raw and window is None and then is None:
        raise _Refused("'max_groups' needs a 'window' or a 'then'")
    pattern = Pattern(
        name=name,
        kinds=kinds,
        where=where,
        group_by=group_by,
        max_groups=max_groups,
        window=window,
        then=then,
        actions=actions,
    )
    _validate_pattern(pattern, catalog)
    return pattern


def _parse_kinds(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    has_kind, has_kinds = "kind" in raw, "kinds" in raw
    if has_kind == has_kinds:
        raise _Refused(f"{where}give exactly one of 'kind' or 'kinds'")
    kinds = [raw["kind"]] if has_kind else raw["kinds"]
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise _Refused(f"{where}'kinds' must be a non-empty list of kind names")
    if len(set(kinds)) != len(kinds):
        raise _Refused(f"{where}'kinds' lists a kind twice")
    return tuple(kinds)


def _parse_condition(raw: Any, path: str, depth: int) -> Condition:
    if depth > MAX_CONDITION_DEPTH:
        raise _Refused(f"{path}: conditions nested deeper than {MAX_CONDITION_DEPTH}")
    if not isinstance(raw, Mapping):
        raise _Refused(f"{path}: a condition must be a table")
    combinators = [k for k in ("all", "any", "not") if k in raw]
    if combinators:
        if len(raw) != 1:
            raise _Refused(f"{path}: {combinators[0]!r} takes no other keys")
        key = combinators[0]
        if key == "not":
            return Not(_parse_condition(raw["not"], f"{path}.not", depth + 1))
        terms = raw[key]
        if not isinstance(terms, list):
            raise _Refused(f"{path}.{key}: expected a list of conditions")
        parsed = tuple(
            _parse_condition(t, f"{path}.{key}[{i}]", depth + 1) for i, t in enumerate(terms)
        )
        return All(parsed) if key == "all" else AnyOf(parsed)
    unknown = set(raw) - {"field", "op", "value"}
    if unknown:
        raise _Refused(f"{path}: unknown keys {sorted(unknown)}")
    field, op = raw.get("field"), raw.get("op")
    if not isinstance(field, str):
        raise _Refused(f"{path}: 'field' must be a field name")
    if not isinstance(op, str):
        raise _Refused(f"{path}: 'op' must be one of {sorted(OPERATORS)}")
    value = raw.get("value")
    if isinstance(value, list):
        value = tuple(value)
    return Compare(field, op, value)


def _parse_number(raw: Mapping[str, Any], key: str, where: str) -> float:
    value = raw.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Refused(f"{where}: '{key}' must be a number")
    return float(value)


def _parse_window(raw: Any) -> CountWindow:
    if not isinstance(raw, Mapping):
        raise _Refused("'window' must be a table")
    unknown = set(raw) - {"count", "rate_per_s", "within_s"}
    if unknown:
        raise _Refused(f"window: unknown keys {sorted(unknown)}")
    within_s = _parse_number(raw, "within_s", "window")
    if ("count" in raw) == ("rate_per_s" in raw):
        raise _Refused("window: give exactly one of 'count' or 'rate_per_s'")
    if "count" in raw:
        count = raw["count"]
        if not isinstance(count, int) or isinstance(count, bool):
            raise _Refused("window: 'count' must be an integer")
    else:
        rate = _parse_number(raw, "rate_per_s", "window")
        if not (rate > 0 and math.isfinite(rate)):
            raise _Refused("window: 'rate_per_s' must be positive")
        # A rate over a window is a count over that window: at least rate x within events.
        count = max(1, math.ceil(rate * within_s - 1e-9)) if math.isfinite(within_s) else 0
    return CountWindow(count=count, within_s=within_s)


def _parse_then(raw: Any) -> Then:
    if not isinstance(raw, Mapping):
        raise _Refused("'then' must be a table")
    unknown = set(raw) - {"kind", "kinds", "where", "within_s"}
    if unknown:
        raise _Refused(f"then: unknown keys {sorted(unknown)}")
    kinds = _parse_kinds(raw, "then: ")
    where = _parse_condition(raw["where"], "then.where", 0) if "where" in raw else None
    return Then(kinds=kinds, where=where, within_s=_parse_number(raw, "within_s", "then"))


# Other names of action types, accepted in pattern files: `call` a tool, `mitigate`
# (issue a mitigation policy).
ACTION_ALIASES: Mapping[str, str] = {"call": "tool", "mitigate": "policy"}


def _unalias(raw: Any) -> Any:
    if isinstance(raw, Mapping) and raw.get("type") in ACTION_ALIASES:
        return {**raw, "type": ACTION_ALIASES[raw["type"]]}
    return raw


def _parse_actions(raw: Any) -> tuple[Action, ...]:
    if isinstance(raw, list):
        raw = [_unalias(action) for action in raw]
    try:
        actions: tuple[Action, ...] = msgspec.convert(raw, tuple[Action, ...])
    except msgspec.ValidationError as e:
        raise _Refused(f"actions: {e}") from None
    return actions


# -- validation --------------------------------------------------------------------------


def _validate_pattern(pattern: Pattern, catalog: EventCatalog) -> None:
    if not pattern.name or len(pattern.name) > MAX_NAME_CHARS:
        raise _Refused(f"'name' must be a non-empty string of at most {MAX_NAME_CHARS} chars")
    _check_kinds(pattern.kinds, catalog, "kinds")
    if pattern.where is not None:
        _check_condition_size(pattern.where)
        _check_condition(pattern.where, pattern.kinds, catalog, "where")
    if pattern.window is not None and pattern.then is not None:
        raise _Refused("a pattern has a 'window' or a 'then', not both")
    if pattern.group_by is not None:
        if pattern.window is None and pattern.then is None:
            raise _Refused("'group_by' needs a 'window' or a 'then'")
        kinds = pattern.kinds + (pattern.then.kinds if pattern.then else ())
        _check_field(pattern.group_by, kinds, catalog, "group_by")
    if not 1 <= pattern.max_groups <= MAX_GROUPS_LIMIT:
        raise _Refused(f"'max_groups' must be in 1..{MAX_GROUPS_LIMIT}")
    if pattern.window is not None:
        _check_within(pattern.window.within_s, "window")
        if not 1 <= pattern.window.count <= MAX_WINDOW_COUNT:
            raise _Refused(f"window: 'count' must be in 1..{MAX_WINDOW_COUNT}")
    if pattern.then is not None:
        _check_kinds(pattern.then.kinds, catalog, "then.kinds")
        _check_within(pattern.then.within_s, "then")
        if pattern.then.where is not None:
            _check_condition_size(pattern.then.where)
            _check_condition(pattern.then.where, pattern.then.kinds, catalog, "then.where")
    for action in pattern.actions:
        _check_action(action)
    every_kind = set(pattern.kinds) | set(pattern.then.kinds if pattern.then else ())
    if SELF_FEEDING_KIND in every_kind and any(isinstance(a, EmitAction) for a in pattern.actions):
        # Each match would publish an event the pattern matches again: a busy loop.
        raise _Refused(f"an 'emit' action on {SELF_FEEDING_KIND!r} events would feed itself")


def _check_within(within_s: float, where: str) -> None:
    if not (0 < within_s <= MAX_WINDOW_S):
        raise _Refused(f"{where}: 'within_s' must be in (0, {MAX_WINDOW_S:g}] seconds")


def _check_kinds(kinds: tuple[str, ...], catalog: EventCatalog, where: str) -> None:
    if not kinds:
        raise _Refused(f"{where}: no kinds")
    for kind in kinds:
        if kind not in catalog.kinds:
            raise _Refused(f"{where}: unknown event kind {kind!r}")


def _check_field(
    field: str, kinds: tuple[str, ...], catalog: EventCatalog, where: str
) -> FieldType:
    """The field's type, the same in every kind (else the condition could never be
    compiled to one comparison)."""
    found: FieldType | None = None
    for kind in kinds:
        field_type = catalog.kinds[kind].fields.get(field)
        if field_type is None:
            raise _Refused(f"{where}: kind {kind!r} has no field {field!r}")
        if found is not None and found.base != field_type.base:
            raise _Refused(f"{where}: field {field!r} has different types in different kinds")
        if found is None or field_type.optional:
            found = field_type
    assert found is not None
    return found


def _check_condition_size(condition: Condition) -> None:
    count = 0
    stack: list[Condition] = [condition]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONDITION_TERMS:
            raise _Refused(f"a condition has more than {MAX_CONDITION_TERMS} terms")
        if isinstance(node, All | AnyOf):
            stack.extend(node.terms)
        elif isinstance(node, Not):
            stack.append(node.term)


def _check_condition(
    condition: Condition, kinds: tuple[str, ...], catalog: EventCatalog, path: str, depth: int = 0
) -> None:
    if depth > MAX_CONDITION_DEPTH:
        raise _Refused(f"{path}: conditions nested deeper than {MAX_CONDITION_DEPTH}")
    if isinstance(condition, All | AnyOf):
        name = "all" if isinstance(condition, All) else "any"
        for i, term in enumerate(condition.terms):
            _check_condition(term, kinds, catalog, f"{path}.{name}[{i}]", depth + 1)
        return
    if isinstance(condition, Not):
        _check_condition(condition.term, kinds, catalog, f"{path}.not", depth + 1)
        return
    if condition.op not in OPERATORS:
        raise _Refused(f"{path}: unknown operator {condition.op!r} (one of {sorted(OPERATORS)})")
    field_type = _check_field(condition.field, kinds, catalog, path)
    _check_value(condition, field_type, path)


def _check_value(condition: Compare, field_type: FieldType, path: str) -> None:
    op, value = condition.op, condition.value
    if op in PRESENCE_OPERATORS:
        if value is not None:
            raise _Refused(f"{path}: {op!r} takes no value")
        return
    if op == "regex":
        if field_type.base != "str":
            raise _Refused(f"{path}: 'regex' needs a string field, {condition.field!r} is not")
        if not isinstance(value, str) or len(value) > MAX_REGEX_CHARS:
            raise _Refused(f"{path}: 'regex' needs a pattern of at most {MAX_REGEX_CHARS} chars")
        try:
            re.compile(value)
        except re.error as e:
            raise _Refused(f"{path}: bad regex {value!r}: {e}") from None
        return
    if op == "in":
        if not isinstance(value, tuple) or len(value) > MAX_IN_VALUES:
            raise _Refused(f"{path}: 'in' needs a list of at most {MAX_IN_VALUES} values")
        for item in value:
            _check_scalar(item, field_type, condition.field, path)
        return
    if op in ORDERING_OPERATORS and field_type.base == "bool":
        raise _Refused(f"{path}: {op!r} cannot order the boolean field {condition.field!r}")
    _check_scalar(value, field_type, condition.field, path)


def _check_scalar(value: object, field_type: FieldType, field: str, path: str) -> None:
    base = field_type.base
    if base == "bool":
        ok = isinstance(value, bool)
    elif base == "num":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and isinstance(value, float) and not math.isfinite(value):
            raise _Refused(f"{path}: {value!r} is not a finite number")
    else:
        ok = isinstance(value, str)
    if not ok:
        wanted = {"bool": "a boolean", "num": "a number", "str": "a string"}[base]
        raise _Refused(f"{path}: field {field!r} takes {wanted}, got {value!r}")


def _check_action(action: Action) -> None:
    if isinstance(action, AlgedonicAction) and not 0.0 <= action.intensity <= 1.0:
        raise _Refused("actions: algedonic 'intensity' must be in [0, 1]")
    if isinstance(action, PolicyAction) and not (0 < action.ttl_s <= MAX_WINDOW_S * 52):
        raise _Refused("actions: policy 'ttl_s' must be positive")
    if isinstance(action, ToolAction) and not action.tool:
        raise _Refused("actions: tool action needs a 'tool'")


# -- files -------------------------------------------------------------------------------

PATTERN_SUFFIXES = (".toml", ".json")


def decode_pattern_file(path: Path) -> Any:
    """The decoded content of one pattern file (TOML or JSON by suffix)."""
    source = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PATTERN_FILE_BYTES + 1)
    except OSError as e:
        raise PatternError(source, "", f"cannot read: {e.strerror or e}") from e
    if len(data) > MAX_PATTERN_FILE_BYTES:
        raise PatternError(source, "", f"larger than {MAX_PATTERN_FILE_BYTES} bytes")
    try:
        if path.suffix == ".json":
            return json.loads(data)
        if path.suffix == ".toml":
            return tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError
        raise PatternError(source, "", f"cannot parse: {e}") from e
    raise PatternError(source, "", f"unknown pattern file type (want {PATTERN_SUFFIXES})")


def load_pattern_file(path: Path, catalog: EventCatalog) -> tuple[Pattern, ...]:
    return parse_patterns(decode_pattern_file(path), str(path), catalog)


def pattern_files(directory: Path) -> list[Path]:
    """The pattern files of a directory, in name order (hidden files skipped)."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as e:
        raise PatternError(str(directory), "", f"cannot list: {e.strerror or e}") from e
    return [
        p
        for p in entries
        if p.suffix in PATTERN_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]


def load_pattern_dir(directory: Path, catalog: EventCatalog) -> tuple[Pattern, ...]:
    """Every pattern of a directory; a name used in two files is refused, naming both."""
    patterns: list[Pattern] = []
    origin: dict[str, Path] = {}
    for path in pattern_files(directory):
        for pattern in load_pattern_file(path, catalog):
            if pattern.name in origin:
                raise PatternError(
                    str(path), pattern.name, f"the name is also used in {origin[pattern.name]}"
                )
            origin[pattern.name] = path
            patterns.append(pattern)
    if len(patterns) > MAX_PATTERNS:
        raise PatternError(str(directory), "", f"more than {MAX_PATTERNS} patterns")
    return tuple(patterns)
