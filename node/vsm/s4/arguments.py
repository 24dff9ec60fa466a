"""Arguments for a tool from a request's words, by the tool's JSON Schema (simple types).

Each property gets a kind from its type, name and description (a time zone, a URL, a
number, an enum value, free text, ...); values of that kind are found in the request,
the structured ones first (they are taken out of the text the free text comes from).
Two properties of one kind (`source_timezone`/`target_timezone`, `from_unit`/`to_unit`)
are told apart by the word before each value ("from 5 kg", "to London").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vsmcp.node.vsm.s4.places import find_places
from vsmcp.node.vsm.s4.text import STOPWORDS, stem

QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|(?<!\w)\'([^\']+)\'(?!\w)')
URL = re.compile(r"https?://[^\s\"'<>]+")
# Each starts only where a token does (a lookbehind): a long run of word characters is
# then scanned once, not once per character.
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PATH = re.compile(r"(?<![\w:/.])/[^\s\"']*")
CLOCK = re.compile(r"\b\d{1,2}:\d{2}\b")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
HOST = re.compile(
    r"(?<![\w.-])(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
CURRENCY = re.compile(r"\b[A-Z]{3}\b")
IDENT = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
NUMBER = re.compile(r"(?<![\w.:/\-])-?\d+(?:\.\d+)?(?![\w.:]|-\d)")
COLON_REST = re.compile(r"(?<!\d):\s+(.+)$", re.S)
TRAILING = ".,;:!?)"
LAST_WORD = re.compile(r"(\S+)\s*$")
FIRST_WORD = re.compile(r"\s*([A-Za-z]+)")
NEAR_CHARS = 48
TRUE_WORDS = frozenset({"on", "enable", "enabled", "true", "yes", "start"})
FALSE_WORDS = frozenset({"off", "disable", "disabled", "false", "no", "stop"})
# Words before a value that make it the target of a pair; a number or these, the source.
TARGET_CUES = frozenset({"to", "into", "in", "->", "=>", "as"})
SOURCE_CUES = frozenset({"from"})
# Words that introduce free text rather than belong to it.
TEXT_CUES = frozenset(
    {"saying", "says", "message", "text", "called", "named", "that", "back", "unchanged"}
)


@dataclass(slots=True)
class Found:
    start: int
    end: int
    value: Any


class _Text:
    """The request and the spans its values were taken from."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.used: list[tuple[int, int]] = []

    def free(self, start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in self.used)

    def take(self, found: Found) -> Any:
        self.used.append((found.start, found.end))
        return found.value

    def find(self, pattern: re.Pattern[str], convert: Callable[[str], Any] = str) -> list[Found]:
        out = []
        for m in pattern.finditer(self.text):
            if self.free(m.start(), m.end()):
                value = m.group(0).rstrip(TRAILING) if pattern in (URL, PATH) else m.group(0)
                out.append(Found(m.start(), m.start() + len(value), convert(value)))
        return out

    def before(self, pos: int) -> str:
        # A word is short: looking back a little keeps this linear in the request.
        m = LAST_WORD.search(self.text[max(0, pos - NEAR_CHARS) : pos])
        return m.group(1).lower() if m else ""

    def after(self, pos: int) -> str:
        m = FIRST_WORD.match(self.text[pos : pos + NEAR_CHARS])
        return m.group(1).lower() if m else ""


def _number(value: str) -> float | int:
    return float(value) if "." in value else int(value)


def kind_of(name: str, prop: Mapping[str, Any]) -> str:
    """What a property holds, as far as extraction goes."""
    typ = prop.get("type")
    desc = str(prop.get("description", "")).lower()
    lname = name.lower()
    if isinstance(prop.get("enum"), list):
        return "enum"
    if typ == "boolean":
        return "boolean"
    if typ == "integer" or typ == "number":
        return str(typ)
    if typ not in (None, "string"):
        return "other"
    words = f"{lname} {desc}"
    checks = (
        ("timezone", "timezone" in words or "time zone" in words),
        ("clock", "hh:mm" in desc or lname == "time"),
        ("date", "yyyy-mm-dd" in desc or lname == "date"),
        ("url", "url" in words),
        ("email", "email" in words),
        ("path", "path" in words),
        ("host", lname in ("host", "hostname", "domain") or "host name" in desc),
        ("currency", "currency" in words),
        ("id", lname.endswith("_id") or lname == "chat" or desc.endswith(" id")),
        ("city", "city" in words),
    )
    return next((kind for kind, hit in checks if hit), "text")


def _candidates(t: _Text, kind: str, prop: Mapping[str, Any]) -> list[Found]:
    if kind == "timezone":
        return [
            Found(p.start, p.end, p.timezone) for p in find_places(t.text) if t.free(p.start, p.end)
        ]
    if kind == "city":
        return [
            Found(p.start, p.end, p.text) for p in find_places(t.text) if t.free(p.start, p.end)
        ]
    if kind == "enum":
        return _enum_values(t, prop["enum"])
    simple = {
        "clock": CLOCK,
        "date": DATE,
        "url": URL,
        "email": EMAIL,
        "path": PATH,
        "currency": CURRENCY,
        "id": IDENT,
    }
    if kind in simple:
        return t.find(simple[kind])
    if kind == "host":
        return sorted(t.find(IP) + t.find(HOST), key=lambda f: f.start)
    return []


def _enum_values(t: _Text, values: list[Any]) -> list[Found]:
    out: list[Found] = []
    for value in values:
        if not isinstance(value, str) or not value:
            continue
        pattern = re.compile(rf"(?<![\w']){re.escape(value)}s?\b", re.I)
        out.extend(Found(m.start(), m.end(), value) for m in pattern.finditer(t.text))
    return sorted((f for f in out if t.free(f.start, f.end)), key=lambda f: f.start)


def _pair(t: _Text, found: list[Found]) -> tuple[Found | None, Found | None]:
    """(source, target) of two properties of one kind."""
    if not found:
        return None, None

    def is_source(f: Found) -> bool:
        word = t.before(f.start)
        return word in SOURCE_CUES or NUMBER.fullmatch(word) is not None

    source = next((f for f in found if is_source(f)), None)
    rest = [f for f in found if f is not source]
    cued = [f for f in rest if t.before(f.start) in TARGET_CUES]
    target = cued[-1] if cued else (rest[1] if source is None and len(rest) > 1 else None)
    if target is None and source is not None and rest:
        target = rest[0]
    if source is None:
        source = next((f for f in rest if f is not target), None)
    return source, target


def _is_source_name(name: str) -> bool:
    return name.startswith(("source", "from", "src"))


def _is_target_name(name: str) -> bool:
    return name.startswith(("target", "to_", "dest", "dst"))


def extract(
    text: str, schema: Mapping[str, Any], vocabulary: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """(arguments found, required properties not found). `vocabulary`: the tool's own
    words (its name, description, properties), left out of free text."""
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return {}, []
    raw_required = schema.get("required")
    required = (
        [r for r in raw_required if isinstance(r, str)] if isinstance(raw_required, list) else []
    )
    kinds = {n: kind_of(n, p) for n, p in props.items() if isinstance(p, Mapping)}
    t = _Text(text)
    args: dict[str, Any] = {}
    # Quoted text is free text as written: kept out of every other kind.
    quotes = [
        Found(m.start(), m.end(), next(g for g in m.groups() if g is not None))
        for m in QUOTED.finditer(text)
    ]
    t.used.extend((q.start, q.end) for q in quotes)
    structured = [
        n for n, k in kinds.items() if k not in ("text", "integer", "number", "boolean", "other")
    ]
    for kind in dict.fromkeys(kinds[n] for n in structured):
        names = [n for n in structured if kinds[n] == kind]
        found = _candidates(t, kind, props[names[0]])
        if len(names) == 2 and (_is_source_name(names[0]) or _is_target_name(names[1])):
            source, target = _pair(t, found)
            for name, f in zip(names, (source, target), strict=True):
                if f is not None:
                    args[name] = t.take(f)
            continue
        for name in names:
            found = [f for f in found if t.free(f.start, f.end)]
            if found:
                args[name] = t.take(found[0])
    _numbers(t, props, kinds, args)
    _booleans(t, kinds, args)
    _free_text(t, kinds, required, quotes, vocabulary, args)
    missing = [r for r in required if r not in args]
    return args, missing


def _numbers(
    t: _Text, props: Mapping[str, Any], kinds: dict[str, str], args: dict[str, Any]
) -> None:
    names = [n for n, k in kinds.items() if k in ("integer", "number")]
    if not names:
        return
    found = t.find(NUMBER, _number)
    # A number next to its property's name ("5 days", "minimum 5") goes there first.
    for name in names:
        key = stem(name.lower())
        for f in found:
            near = (stem(t.before(f.start)), stem(t.after(f.end)))
            if any(len(w) >= 3 and (w.startswith(key) or key.startswith(w)) for w in near):
                args[name] = t.take(f)
                found.remove(f)
                break
    for name in names:
        if name in args or not found:
            continue
        f = found.pop(0)
        value = t.take(f)
        args[name] = int(value) if kinds[name] == "integer" and float(value).is_integer() else value
    del props


def _booleans(t: _Text, kinds: dict[str, str], args: dict[str, Any]) -> None:
    for name in (n for n, k in kinds.items() if k == "boolean"):
        for m in re.finditer(r"[a-z]+", t.text.lower()):
            if m.group(0) in TRUE_WORDS or m.group(0) in FALSE_WORDS:
                args[name] = m.group(0) in TRUE_WORDS
                break


def _free_text(
    t: _Text,
    kinds: dict[str, str],
    required: list[str],
    quotes: list[Found],
    vocabulary: frozenset[str],
    args: dict[str, Any],
) -> None:
    names = [n for n in kinds if kinds[n] == "text" and n not in args]
    # Required ones first: an optional subject does not take the only quoted text.
    names.sort(key=lambda n: n not in required)
    for name in names:
        if quotes:
            args[name] = quotes.pop(0).value
            continue
        if name not in required:
            continue
        value = _after_colon(t) or _remainder(t, vocabulary)
        if value:
            args[name] = value
        break


def _after_colon(t: _Text) -> str:
    m = COLON_REST.search(t.text)
    if m is None or not t.free(m.start(1), m.end(1)):
        return ""
    t.used.append((m.start(1), m.end(1)))
    return m.group(1).strip()


def _remainder(t: _Text, vocabulary: frozenset[str]) -> str:
    """The request's words that are neither the tool's nor filler, in order."""
    kept = []
    for m in re.finditer(r"\S+", t.text):
        if not t.free(m.start(), m.end()):
            continue
        word = m.group(0).strip(TRAILING + "(\"'")
        parts = [stem(w) for w in re.findall(r"[a-z0-9]+", word.lower())]
        if not parts or word.lower() in STOPWORDS or word.lower() in TEXT_CUES:
            continue
        if all(p in vocabulary or p in STOPWORDS for p in parts):
            continue
        kept.append(word)
    return " ".join(kept)
