"""Environment overrides reach keys at any depth, matched against the config schema."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from tests.fresh_python import run_python
from vsmcp.node.app import config_env
from vsmcp.node.app.config import Config, load_config
from vsmcp.node.app.config_env import env_names, env_overrides
from vsmcp.node.errors import ConfigError


def test_keys_of_deeper_tables_are_set_from_the_environment() -> None:
    config = load_config(
        environ={
            "VSMCP_VSM_CONCURRENCY_INITIAL_LIMIT": "7",  # single underscores, found in the schema
            "VSMCP_VSM__CONCURRENCY__MAX_LIMIT": "50",  # double: always unambiguous
            "VSMCP_BRIDGES_AMQP_URL": "amqp://u:p@broker/",
            "VSMCP_HTTP_PORT": "2222",  # two levels, as before
        }
    )
    assert config.vsm.concurrency is not None
    assert (config.vsm.concurrency.initial_limit, config.vsm.concurrency.max_limit) == (7, 50)
    assert config.bridges.amqp is not None and config.bridges.amqp.url == "amqp://u:p@broker/"
    assert config.http.port == 2222


def test_a_deeper_key_from_the_environment_overrides_the_file_and_keeps_its_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vsmcp.toml"
    path.write_text("[vsm.concurrency]\ninitial_limit = 5\nmin_limit = 2\n")
    config = load_config(path, environ={"VSMCP_VSM_CONCURRENCY_INITIAL_LIMIT": "9"})
    assert config.vsm.concurrency is not None
    assert (config.vsm.concurrency.initial_limit, config.vsm.concurrency.min_limit) == (9, 2)


@pytest.mark.parametrize(
    "variable",
    ["VSMCP_HTTP_BOGUS", "VSMCP_VSM_CONCURRENCY_BOGUS", "VSMCP_BRIDGES__AMQP__BOGUS"],
)
def test_a_variable_naming_no_key_is_refused_naming_the_variable(variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(environ={variable: "1"})
    assert refused.value.key == variable
    assert "names no config key" in refused.value.reason


def test_variables_that_are_not_config_are_left_alone() -> None:
    assert env_overrides({"VSMCP_REQUIRE_SERVICES": "1", "PATH": "/bin"}, _Root) == {}


def test_a_bad_value_from_a_deeper_variable_names_the_key() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(environ={"VSMCP_VSM_CONCURRENCY_INITIAL_LIMIT": "many"})
    assert refused.value.key == "vsm.concurrency.initial_limit"


def test_two_variables_for_one_key_are_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(environ={"VSMCP_HTTP_PORT": "1", "VSMCP_HTTP__PORT": "2"})
    assert "VSMCP_HTTP_PORT" in str(refused.value) and "VSMCP_HTTP__PORT" in str(refused.value)


class _Deep(msgspec.Struct):
    b: int = 0


class _Section(msgspec.Struct):
    a_b: int = 0
    a: _Deep | None = None


class _Root(msgspec.Struct):
    s: _Section = msgspec.field(default_factory=_Section)


def test_a_name_meaning_two_keys_is_refused_and_double_underscores_tell_them_apart() -> None:
    assert env_names(_Root)["S_A_B"] == ("s.a_b", "s.a.b")
    with pytest.raises(ConfigError) as refused:
        env_overrides({"VSMCP_S_A_B": "1"}, _Root)
    assert refused.value.key == "VSMCP_S_A_B"
    assert "s.a_b or s.a.b" in refused.value.reason
    assert "VSMCP_S__A_B" in refused.value.reason and "VSMCP_S__A__B" in refused.value.reason
    assert env_overrides({"VSMCP_S__A__B": "1"}, _Root) == {"s.a.b": 1}
    assert env_overrides({"VSMCP_S__A_B": "2"}, _Root) == {"s.a_b": 2}


def test_no_two_keys_of_the_real_config_share_a_variable_name() -> None:
    assert {name: keys for name, keys in env_names(Config).items() if len(keys) > 1} == {}


def test_every_variable_the_docs_give_as_an_example_names_one_key() -> None:
    # The module's docstring and README's configuration section teach by example: each
    # `VSMCP_<SECTION>_...` name they spell must be one the loader takes.
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    section = section[: section.index("<!-- config-reference")]
    texts = {"config_env": config_env.__doc__ or "", "README": section}
    sections = tuple(f"{s.upper()}_" for s in Config.__struct_fields__)
    names = env_names(Config)
    for where, text in texts.items():
        examples = {
            m.removeprefix("VSMCP_")
            for m in re.findall(r"VSMCP_[A-Z0-9_]+", text)
            if not m.endswith("_")
        }
        examples = {e for e in examples if e.startswith(sections)}
        assert examples, where
        for example in examples:
            assert len(names.get(example, ())) == 1, f"{where}: VSMCP_{example}"


def test_without_any_vsmcp_variable_the_table_of_names_is_not_built() -> None:
    # The table of every key's names (≈80 KiB) is for nodes given VSMCP_ variables.
    code = (
        "from vsmcp.node.app.config import Config\n"
        "from vsmcp.node.app.config_env import env_names, env_overrides\n"
        "assert env_overrides({'PATH': '/bin', 'HOME': '/root'}, Config) == {}\n"
        "print(env_names.cache_info().currsize)\n"
    )
    assert run_python(code).split() == ["0"]
