"""Words of requests and tool descriptions, as the offline matcher compares them."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+")

# Words that say nothing about which tool is meant.
STOPWORDS = frozenset(
    """a about all am an and any are as at be been but by can could did do does doing for
    from get give go going had has have he her here hi him his how i if in into is it its
    it's just let me more most my no not now of on or our out over please right s she should
    so some such t than that the their them then there these they this those through to too
    us very was we were what what's when where which while who whom why will with would you
    your yours tell want need show""".split()  # noqa: SIM905 - a paragraph reads better
)

# A few general synonyms (a request's word → the word tools tend to use).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "clock": ("time",),
    "hour": ("time",),
    "windy": ("wind",),
    "rainy": ("rain",),
    "sunny": ("weather",),
    "degree": ("temperature",),
    "folder": ("directory",),
    "ls": ("list", "directory"),
    "cat": ("read", "file"),
    "download": ("fetch",),
    "webpage": ("web", "page"),
    "mail": ("email",),
    "resolve": ("dns",),
    "ip": ("address",),
    "reachable": ("ping",),
    "sum": ("add",),
    "plus": ("add",),
    "times": ("multiply",),
    "product": ("multiply",),
    "digest": ("hash",),
    "meeting": ("event",),
    "schedule": ("calendar",),
    "appointment": ("event",),
    "jot": ("note",),
    "remember": ("note",),
    "bounce": ("restart",),
    "reboot": ("restart",),
    "heating": ("thermostat",),
    "die": ("dice",),
    "dice": ("die",),
    "viable": ("viability",),
    "space": ("disk",),
    "exchange": ("currency",),
    "money": ("currency",),
    "repeat": ("echo",),
    "say": ("translate",),
    "translation": ("translate",),
    "conversion": ("convert",),
    "find": ("search",),
    "look": ("search",),
    "character": ("count",),
}


def stem(word: str) -> str:
    """A light suffix strip (plural, -ing, -ed): `files` → `file`, `switched` → `switch`."""
    if len(word) > 4 and word.endswith(("ies", "ied")):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lower-case stems of `text` without stopwords."""
    return [stem(w) for w in WORD.findall(text.lower()) if w not in STOPWORDS]


# A synonym counts for less than the word the request used.
SYNONYM_WEIGHT = 0.5


def query_words(text: str) -> dict[str, float]:
    """`words` with each word's synonyms added, weighted (a request, not a description)."""
    out: dict[str, float] = {}
    for word in words(text):
        out[word] = 1.0
        for synonym in SYNONYMS.get(word, ()):
            out.setdefault(synonym, SYNONYM_WEIGHT)
    return out


def name_words(name: str) -> list[str]:
    """A tool's name as words: `time.get_current_time` → get, current, time, time."""
    return words(re.sub(r"[._\-/]+", " ", name))
