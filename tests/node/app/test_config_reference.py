"""README.md's config reference is generated from the config structs and must match them."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from vsmcp.node.app.config import Config, load_config
from vsmcp.node.app.config_reference import (
    BEGIN_MARKER,
    END_MARKER,
    REGENERATE_COMMAND,
    ReferenceError,
    current_block,
    fenced_block,
    main,
    render,
    undocumented_keys,
)
from vsmcp.node.tools.config import doc

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_config_key_has_a_description() -> None:
    missing = undocumented_keys()
    assert not missing, (
        f"config keys without a description: {missing}. Declare each field as "
        '`name: Annotated[T, doc("what it does, in its unit")] = default` '
        f"(node/tools/config.py: doc), then run: {REGENERATE_COMMAND}"
    )


def test_readme_reference_matches_the_config_structs() -> None:
    expected = fenced_block()
    actual = current_block(README)
    if actual != expected:
        diff = "\n".join(
            difflib.unified_diff(
                actual.splitlines(), expected.splitlines(), "README.md", "generated", lineterm=""
            )
        )
        pytest.fail(
            f"README.md's config reference is out of date with the config structs.\n"
            f"Regenerate it with:\n\n    {REGENERATE_COMMAND}\n\n{diff}",
            pytrace=False,
        )


def _leaves(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:  # a table (a default inline table is {})
            found.update(_leaves(value, dotted))
        else:
            found[dotted] = value
    return found


def _without_none(table: dict[str, Any]) -> dict[str, Any]:
    # A table whose every key is optional (None: [bridges] with each bridge unset) is
    # still a table, shown empty: it must not vanish with its keys.
    return {
        k: _without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None
    }


def _defaults_with_a_value() -> dict[str, Any]:
    return _leaves(_without_none(msgspec.to_builtins(Config())))


def test_readme_reference_is_toml_holding_every_default() -> None:
    block = current_block(README)
    toml_text = block.split("```toml\n", 1)[1].rsplit("```", 1)[0]
    parsed = tomllib.loads(toml_text)
    expected = _defaults_with_a_value()
    # Arrays and maps of tables (tools.mounts, limits.origins) are shown as commented
    # examples; the rest is a real key with its real default, and none is missing.
    for key in [k for k, v in expected.items() if v in ([], {})]:
        if f"# [[{key}]]" in toml_text or f'# [{key}."<name>"]' in toml_text:
            del expected[key]
    assert _leaves(parsed) == expected
    assert load_config(None, environ={}) == msgspec.convert(parsed, Config)


class _Inner(msgspec.Struct, kw_only=True):
    documented: Annotated[int, doc("has one")] = 1
    bare: int = 2


class _Root(msgspec.Struct, kw_only=True):
    section: Annotated[_Inner, doc("a section")] = msgspec.field(default_factory=_Inner)
    items: Annotated[list[_Inner], doc("a list")] = msgspec.field(default_factory=list)


def test_a_field_without_a_description_is_named() -> None:
    assert undocumented_keys(_Root) == ["section.bare", "items[].bare"]
    with pytest.raises(ReferenceError, match=r"section\.bare.*doc\("):
        render(_Root)


def test_write_and_check_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# title\n\nbefore\n\n{BEGIN_MARKER}\n```toml\n[old]\n```\n{END_MARKER}\nafter\n"
    )
    assert main(["--check", str(readme)]) == 1
    assert REGENERATE_COMMAND in capsys.readouterr().out
    assert main(["--write", str(readme)]) == 0
    assert main(["--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith(f"{END_MARKER}\nafter\n")
    assert "[old]" not in text and "[mcp]" in text


def test_a_readme_without_markers_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    assert main(["--write", str(readme)]) == 2
    err = capsys.readouterr().err
    assert BEGIN_MARKER in err and REGENERATE_COMMAND in err
    assert readme.read_text() == "# no block here\n"
