"""What a chat types (`/call` arguments) and how long answers are cut into messages."""

from __future__ import annotations

import pytest

from vsmcp.node.bridges.telegram_commands import (
    MAX_MESSAGE_CHARS,
    MAX_REPLY_MESSAGES,
    CommandError,
    parse_call,
    parse_command,
    split_message,
)


def test_call_arguments_are_json_when_they_parse_else_words() -> None:
    tool, args = parse_call(
        'weather.get city=Tokyo days=3 metric=true tags=["a", "b"] note="two words" '
        'opts={"x": {"y": null}} id=007x'
    )
    assert tool == "weather.get"
    assert args == {
        "city": "Tokyo",
        "days": 3,
        "metric": True,
        "tags": ["a", "b"],
        "note": "two words",
        "opts": {"x": {"y": None}},
        "id": "007x",
    }


@pytest.mark.parametrize(
    ("rest", "problem"),
    [
        ("", "usage: /call TOOL"),
        ("echo text", "expected key=value"),
        ("echo a=1 a=2", "given twice"),
        ('echo text="unterminated', "is not JSON"),
    ],
)
def test_bad_call_arguments_say_what_is_wrong(rest: str, problem: str) -> None:
    with pytest.raises(CommandError, match=problem):
        parse_call(rest)


def test_commands_drop_the_bot_name_and_free_text_is_not_a_command() -> None:
    assert parse_command("/Call@my_bot echo text=x") == parse_command("/call echo text=x")
    assert parse_command("  what time is it? ").name == ""


def test_long_answers_are_split_at_line_breaks_and_capped() -> None:
    lines = "\n".join(f"line {i:05d}" for i in range(1000))  # 10,999 characters
    parts = split_message(lines)
    assert "".join(parts) == lines
    assert all(len(p) <= MAX_MESSAGE_CHARS for p in parts)
    assert all(p.endswith("\n") for p in parts[:-1])
    huge = split_message("h" * (MAX_MESSAGE_CHARS * 10))
    assert len(huge) == MAX_REPLY_MESSAGES and all(len(p) <= MAX_MESSAGE_CHARS for p in huge)
    assert huge[-1].endswith("the reply is too long for a chat)")
    assert split_message("") == ["(empty)"]
