"""README.md's configuration reference, generated from the config structs.

The msgspec structs of node/app/config.py and node/tools/config.py are the one source of
truth: each field's default comes from the struct, its description from
`Annotated[T, doc("...")]`. Adding a key is adding a field with a description, then:

    python -m vsmcp.node.app.config_reference --write README.md  # rewrite the marked block
    python -m vsmcp.node.app.config_reference --check README.md  # exit 1 if it is stale
    python -m vsmcp.node.app.config_reference                    # print the block

Keys whose default is a value are written as TOML (the block, uncommented, loads as the
default config); optional tables, arrays of tables and keys unset by default are shown
commented out, with a `<type>` placeholder where there is no default.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
from msgspec import inspect as mi

from vsmcp.node.app.config import Config
from vsmcp.node.toml_text import toml_key, toml_value

BEGIN_MARKER: Final = (
    "<!-- config-reference: generated from the config structs by "
    "`python -m vsmcp.node.app.config_reference --write README.md`; do not edit by hand -->"
)
END_MARKER: Final = "<!-- /config-reference -->"
REGENERATE_COMMAND: Final = "python -m vsmcp.node.app.config_reference --write README.md"
COMMENT_COLUMN: Final = 37
MAX_LINE_CHARS: Final = 100


class ReferenceError(Exception):
    """The reference cannot be generated or placed (a field without a description, no markers)."""


@dataclass(frozen=True, slots=True)
class _Field:
    key: str  # dotted, e.g. "tools.supervision.quarantine_s"
    name: str
    type: mi.Type
    description: str | None
    default: Any  # msgspec.NODEFAULT when required


def _unwrap(t: mi.Type) -> tuple[mi.Type, str | None]:
    if isinstance(t, mi.Metadata):
        description = (t.extra_json_schema or {}).get("description")
        inner, nested = _unwrap(t.type)
        return inner, description or nested
    return t, None


def _fields(struct: mi.StructType, prefix: str) -> Iterator[_Field]:
    for f in struct.fields:
        inner, description = _unwrap(f.type)
        if f.default is not msgspec.NODEFAULT:
            default = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f.default_factory()
        else:
            default = msgspec.NODEFAULT
        key = f"{prefix}.{f.encode_name}" if prefix else f.encode_name
        yield _Field(key, f.encode_name, inner, description, default)


def _non_none(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        rest = [u for u in t.types if not isinstance(u, mi.NoneType)]
        if len(rest) == 1:
            return _unwrap(rest[0])[0]
    return t


def _table_kind(t: mi.Type) -> tuple[str, mi.StructType] | None:
    """("table" | "array" | "map", element struct) for fields written as TOML tables."""
    t = _non_none(t)
    if isinstance(t, mi.StructType):
        return "table", t
    if isinstance(t, mi.ListType):
        item = _unwrap(t.item_type)[0]
        if isinstance(item, mi.StructType):
            return "array", item
    if isinstance(t, mi.DictType):
        value = _unwrap(t.value_type)[0]
        if isinstance(value, mi.StructType):
            return "map", value
    return None


def undocumented_keys(root: type[msgspec.Struct] = Config) -> list[str]:
    """Dotted keys of every field (at any depth) that has no description."""
    missing: list[str] = []

    def walk(struct: mi.StructType, prefix: str) -> None:
        for f in _fields(struct, prefix):
            if not f.description:
                missing.append(f.key)
            table = _table_kind(f.type)
            if table is not None:
                walk(table[1], f.key + ("[]" if table[0] == "array" else ""))

    walk(_struct_info(root), "")
    return missing


def _struct_info(root: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(root)
    assert isinstance(info, mi.StructType)
    return info


def render(root: type[msgspec.Struct] = Config) -> str:
    """The reference as a TOML block (without the fence), ending in a newline."""
    missing = undocumented_keys(root)
    if missing:
        raise ReferenceError(
            f"config keys without a description: {', '.join(missing)}; declare each as "
            '`Annotated[T, doc("what it does, in its unit")]` (node/tools/config.py)'
        )
    lines: list[str] = []
    for f in _fields(_struct_info(root), ""):
        table = _table_kind(f.type)
        if table is None:
            raise ReferenceError(f"top-level config field {f.key} is not a table")
        _render_table(f, table[0], table[1], commented=False, lines=lines)
    return "\n".join(lines) + "\n"


def _render_table(
    f: _Field, kind: str, struct: mi.StructType, *, commented: bool, lines: list[str]
) -> None:
    header = {"table": f"[{f.key}]", "array": f"[[{f.key}]]", "map": f'[{f.key}."<name>"]'}[kind]
    # Unset by default (an optional table, an array of tables, a map of them, a table of
    # only such tables like [bridges]): an example.
    commented = commented or kind != "table" or f.default is None or not _sets_a_key(struct)
    _emit(lines, header, f.description or "", commented)
    children = list(_fields(struct, f.key))
    for child in children:
        if _table_kind(child.type) is None:
            _render_key(child, commented=commented, lines=lines)
    for child in children:
        table = _table_kind(child.type)
        if table is not None:
            _render_table(child, table[0], table[1], commented=commented, lines=lines)


def _sets_a_key(struct: mi.StructType) -> bool:
    """Whether a table holds a key with a default value (at any depth of plain tables)."""
    for child in _fields(struct, ""):
        table = _table_kind(child.type)
        if child.default is None or child.default is msgspec.NODEFAULT:
            continue
        if table is None or (table[0] == "table" and _sets_a_key(table[1])):
            return True
    return False


def _render_key(f: _Field, *, commented: bool, lines: list[str]) -> None:
    description = f.description or ""
    if f.default is msgspec.NODEFAULT:
        value, description = _placeholder(f.type), f"required: {description}"
        commented = True
    elif f.default is None:
        value, commented = _placeholder(f.type), True
    else:
        value = toml_value(f.default)
    _emit(lines, f"{toml_key(f.name)} = {value}", description, commented)


def _emit(lines: list[str], code: str, description: str, commented: bool) -> None:
    if commented:
        code = "# " + code
    start = max(COMMENT_COLUMN, len(code) + 2)
    width = max(MAX_LINE_CHARS - start - 2, 30)
    wrapped = textwrap.wrap(
        description, width=width, break_long_words=False, break_on_hyphens=False
    ) or [""]
    lines.append(f"{code.ljust(start)}# {wrapped[0]}".rstrip())
    lines.extend(f"{' ' * start}# {more}" for more in wrapped[1:])


def _placeholder(t: mi.Type) -> str:
    t = _non_none(t)
    if isinstance(t, mi.LiteralType):
        return "<" + " | ".join(str(v) for v in t.values) + ">"
    names = {
        mi.StrType: "str",
        mi.IntType: "int",
        mi.FloatType: "float",
        mi.BoolType: "bool",
        mi.ListType: "array",
        mi.DictType: "table",
    }
    return f"<{names.get(type(t), 'value')}>"


# -- the block in README.md ----------------------------------------------------------------


def fenced_block(root: type[msgspec.Struct] = Config) -> str:
    """The markers with the TOML block between them, as it stands in README.md."""
    return f"{BEGIN_MARKER}\n```toml\n{render(root)}```\n{END_MARKER}"


def _block_span(text: str, path: Path) -> tuple[int, int]:
    begin = text.find(BEGIN_MARKER)
    end = text.find(END_MARKER)
    if begin < 0 or end < begin:
        raise ReferenceError(
            f"{path} has no config reference block: put the lines\n{BEGIN_MARKER}\n"
            f"{END_MARKER}\nwhere it goes, then run {REGENERATE_COMMAND}"
        )
    return begin, end + len(END_MARKER)


def current_block(path: Path) -> str:
    """The block (markers included) as it stands in `path`."""
    text = path.read_text(encoding="utf-8")
    begin, end = _block_span(text, path)
    return text[begin:end]


def write(path: Path) -> bool:
    """Replace the block in `path` with a freshly generated one; True if it changed."""
    text = path.read_text(encoding="utf-8")
    begin, end = _block_span(text, path)
    updated = text[:begin] + fenced_block() + text[end:]
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vsmcp.node.app.config_reference",
        description="Generate README.md's config reference from the config structs.",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="README", help="rewrite the block in place")
    group.add_argument("--check", type=Path, metavar="README", help="exit 1 if it is stale")
    args = p.parse_args(argv)
    try:
        if args.write is not None:
            changed = write(args.write)
            print(f"{args.write}: config reference {'updated' if changed else 'already current'}")
        elif args.check is not None:
            if current_block(args.check) != fenced_block():
                print(f"{args.check}: config reference is stale; run {REGENERATE_COMMAND}")
                return 1
        else:
            sys.stdout.write(render())
    except (ReferenceError, OSError) as e:
        print(f"config_reference: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
