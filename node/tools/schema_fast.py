"""A fast acceptance check for the simple JSON Schemas most tools declare.

jsonschema's validators walk a schema through generic keyword dispatch on every call
(≈25 µs for `echo`'s one-string schema, a tenth of the node's CPU per call). Most tool
schemas use a handful of keywords — `type`, `properties`, `required`,
`additionalProperties`, lengths, bounds, `enum`, `items` — and those compile to a few
Python closures.

The compiled check is one-sided on purpose: when it says "valid", jsonschema would say
so too; when it says "not valid", or a schema uses anything outside the subset
(`compile_schema` returns None), the caller asks jsonschema, whose verdict and error
message are the ones reported. It is stricter than jsonschema where that is simpler
(`integer` is a Python `int`, `object` a `dict`), never looser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

# Drafts in which the keywords below mean the same (draft 3's `required` does not).
_LATEST = "https://json-schema.org/draft/2020-12/schema"  # jsonschema's default
_DRAFTS = frozenset(
    {
        "http://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-04/schema",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "https://json-schema.org/draft/2020-12/schema",
    }
)
# Keywords that assert nothing (jsonschema checks `format` only with a format checker,
# which the node does not pass).
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "format",
        "readOnly",
        "writeOnly",
        "deprecated",
        "contentMediaType",
        "contentEncoding",
    }
)
_ASSERTIONS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "enum",
        "items",
        "minItems",
        "maxItems",
    }
)
_TYPES: dict[str, Check] = {
    "object": lambda x: type(x) is dict,
    "string": lambda x: type(x) is str,
    "integer": lambda x: type(x) is int,
    "number": lambda x: type(x) is int or type(x) is float,
    "boolean": lambda x: type(x) is bool,
    "null": lambda x: x is None,
    "array": lambda x: type(x) is list,
}
_ENUM_TYPES = (str, int, bool, type(None))


class _Unsupported(Exception):
    """The schema uses something outside the subset: no fast check for it."""


def compile_schema(schema: Mapping[str, Any]) -> Check | None:
    """A check that accepts only instances `schema` accepts, or None when the schema is
    outside the subset. `schema` must already have passed `check_schema`."""
    if schema.get("$schema", _LATEST) not in _DRAFTS:
        return None
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _compile(schema: Any) -> Check:
    if schema is True:
        return _always
    if schema is False or type(schema) is not dict:
        raise _Unsupported
    unknown = schema.keys() - _ANNOTATIONS - _ASSERTIONS
    if unknown:
        raise _Unsupported
    checks: list[Check] = []
    if "type" in schema:
        checks.append(_type(schema["type"]))
    if "enum" in schema:
        checks.append(_enum(schema["enum"]))
    checks.extend(_string(schema))
    checks.extend(_number(schema))
    checks.extend(_object(schema))
    checks.extend(_array(schema))
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    all_checks = tuple(checks)
    return lambda x: all(check(x) for check in all_checks)


def _always(_: Any) -> bool:
    return True


def _type(declared: Any) -> Check:
    names = [declared] if type(declared) is str else declared
    if type(names) is not list or not names or any(n not in _TYPES for n in names):
        raise _Unsupported
    if len(names) == 1:
        return _TYPES[names[0]]
    checks = tuple(_TYPES[n] for n in names)
    return lambda x: any(check(x) for check in checks)


def _enum(values: Any) -> Check:
    if type(values) is not list or any(type(v) not in _ENUM_TYPES for v in values):
        raise _Unsupported
    # jsonschema tells 1 from True: equal value and equal type, as here.
    allowed = frozenset((type(v), v) for v in values)
    return lambda x: type(x) in _ENUM_TYPES and (type(x), x) in allowed


def _bound(schema: Mapping[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    value = schema.get(key)
    if value is not None and (type(value) not in kinds):
        raise _Unsupported
    return value


def _string(schema: Mapping[str, Any]) -> list[Check]:
    low = _bound(schema, "minLength", (int,))
    high = _bound(schema, "maxLength", (int,))
    if low is None and high is None:
        return []
    lo = 0 if low is None else low
    hi = -1 if high is None else high
    return [lambda x: type(x) is not str or (lo <= len(x) and (hi < 0 or len(x) <= hi))]


def _number(schema: Mapping[str, Any]) -> list[Check]:
    low = _bound(schema, "minimum", (int, float))
    high = _bound(schema, "maximum", (int, float))
    out: list[Check] = []
    if low is not None:
        out.append(lambda x: not (type(x) is int or type(x) is float) or x >= low)
    if high is not None:
        out.append(lambda x: not (type(x) is int or type(x) is float) or x <= high)
    return out


def _object(schema: Mapping[str, Any]) -> list[Check]:
    out: list[Check] = []
    properties = schema.get("properties")
    if properties is not None:
        if type(properties) is not dict:
            raise _Unsupported
        compiled = {name: _compile(sub) for name, sub in properties.items()}
        checked = tuple((n, c) for n, c in compiled.items() if c is not _always)
        if checked:
            out.append(
                lambda x: (
                    type(x) is not dict
                    or all(check(x[name]) for name, check in checked if name in x)
                )
            )
    required = schema.get("required")
    if required is not None:
        if type(required) is not list or any(type(r) is not str for r in required):
            raise _Unsupported
        needed = tuple(required)
        if needed:
            out.append(lambda x: type(x) is not dict or all(name in x for name in needed))
    extra = schema.get("additionalProperties", True)
    if extra is not True:
        known = frozenset(properties or ())
        if extra is False:
            out.append(lambda x: type(x) is not dict or known.issuperset(x))
        else:
            other = _compile(extra)
            out.append(
                lambda x: (
                    type(x) is not dict or all(other(v) for k, v in x.items() if k not in known)
                )
            )
    return out


def _array(schema: Mapping[str, Any]) -> list[Check]:
    out: list[Check] = []
    low = _bound(schema, "minItems", (int,))
    high = _bound(schema, "maxItems", (int,))
    if low is not None:
        out.append(lambda x: type(x) is not list or len(x) >= low)
    if high is not None:
        out.append(lambda x: type(x) is not list or len(x) <= high)
    if "items" in schema:
        each = _compile(schema["items"])  # a list of schemas (draft 7 tuples): unsupported
        if each is not _always:
            out.append(lambda x: type(x) is not list or all(each(v) for v in x))
    return out
