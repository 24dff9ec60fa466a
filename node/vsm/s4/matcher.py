"""The offline planner: BM25 over the tools' names, descriptions and schemas, then the
arguments from the request's words. Says when it is unsure rather than guessing."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vsmcp.node.tools.model import ToolSpec
from vsmcp.node.vsm.s4.arguments import EMAIL, PATH, QUOTED, URL, extract
from vsmcp.node.vsm.s4.bm25 import Bm25
from vsmcp.node.vsm.s4.text import SYNONYMS, name_words, query_words, words

# The name says most about a tool: its words count this many times.
NAME_WEIGHT = 3
# Below this BM25 score nothing matched in earnest (a shared common word at most).
MIN_SCORE = 1.0
# Candidates within this fraction of the top score have their arguments looked for:
# one that finds all it needs beats one that lacks some.
RERANK_WITHIN = 0.6
RERANK_MAX = 4
# Values (quoted text, URLs, addresses, paths) say what to pass, not what to run.
VALUE_PATTERNS = (QUOTED, URL, EMAIL, PATH)


def intent_text(text: str) -> str:
    """`text` without its values; the whole text when nothing else is left."""
    out = text
    for pattern in VALUE_PATTERNS:
        out = pattern.sub(" ", out)
    return out if out.strip() else text


def tool_document(spec: ToolSpec) -> list[str]:
    """The words a tool is found by."""
    doc = name_words(spec.name) * NAME_WEIGHT + words(spec.description or spec.title or "")
    props = spec.input_schema.get("properties")
    if isinstance(props, Mapping):
        for name, prop in props.items():
            doc += name_words(name)
            if isinstance(prop, Mapping):
                doc += words(str(prop.get("description", "")))
                enum = prop.get("enum")
                if isinstance(enum, list):
                    doc += [w for v in enum if isinstance(v, str) for w in words(v)]
    return doc


@dataclass(frozen=True, slots=True)
class Match:
    spec: ToolSpec
    confidence: float
    arguments: dict[str, Any]
    missing: list[str]


class ToolIndex:
    """An index over one tool set (rebuilt when the set changes: see `fingerprint`)."""

    def __init__(self, specs: Sequence[ToolSpec]) -> None:
        self.specs = list(specs)
        docs = [tool_document(s) for s in self.specs]
        self._vocab = [frozenset(d) for d in docs]
        self._bm25 = Bm25(docs)

    @staticmethod
    def fingerprint(specs: Sequence[ToolSpec]) -> tuple[tuple[str, str, str, str], ...]:
        return tuple(
            (s.name, s.zone, s.description, json.dumps(s.input_schema, sort_keys=True, default=str))
            for s in specs
        )

    def search(self, text: str, limit: int) -> list[tuple[ToolSpec, float]]:
        """The `limit` tools that match `text` best, with their BM25 scores, best first
        (ties by name); a tool that shares no word with `text` is left out."""
        scores = self._bm25.scores(query_words(text)) if self.specs else []
        ranked = sorted(
            (i for i, score in enumerate(scores) if score > 0),
            key=lambda i: (-scores[i], self.specs[i].name),
        )
        return [(self.specs[i], scores[i]) for i in ranked[:limit]]

    def best(self, text: str) -> Match | None:
        """The best tool for `text` and the confidence in it; None when nothing matched."""
        if not self.specs:
            return None
        scores = self._bm25.scores(query_words(intent_text(text)))
        ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        if scores[ranked[0]] < MIN_SCORE:
            return None
        floor = scores[ranked[0]] * RERANK_WITHIN
        candidates = []
        for i in ranked[:RERANK_MAX]:
            if scores[i] < floor:
                break
            spec = self.specs[i]
            arguments, missing = extract(text, spec.input_schema, self._vocab[i])
            candidates.append(
                (adjusted(scores[i], spec, arguments, missing), i, arguments, missing)
            )
        candidates.sort(key=lambda c: c[0], reverse=True)
        best, i, arguments, missing = candidates[0]
        runner_up = max(
            candidates[1][0] if len(candidates) > 1 else 0.0,
            _next_score(scores, ranked, len(candidates)),
        )
        explained = coverage(intent_text(text), self._vocab[i], arguments)
        sure = confidence(best, runner_up, explained, missing)
        return Match(self.specs[i], sure, arguments, missing)


def _next_score(scores: Sequence[float], ranked: Sequence[int], skip: int) -> float:
    return scores[ranked[skip]] if len(ranked) > skip else 0.0


def adjusted(
    score: float, spec: ToolSpec, arguments: Mapping[str, Any], missing: Sequence[str]
) -> float:
    """A score that prefers the tool whose arguments the request gives: less for each
    required one missing, a little more for each one found."""
    required = spec.input_schema.get("required")
    need = len(required) if isinstance(required, list) and required else 1
    return score * (1 - 0.5 * len(missing) / need) * (1 + 0.1 * len(arguments))


def coverage(text: str, vocabulary: frozenset[str], arguments: Mapping[str, Any]) -> float:
    """The share of the request's words the tool explains: its own words, or values
    taken as its arguments ("Tokyo" in "what time is it in Tokyo")."""
    asked = words(text)
    if not asked:
        return 0.0
    values = set(words(" ".join(str(v) for v in arguments.values())))
    explained = 0
    for word in asked:
        synonyms = SYNONYMS.get(word, ())
        if word in vocabulary or word in values or any(s in vocabulary for s in synonyms):
            explained += 1
    return explained / len(asked)


def confidence(top: float, second: float, explained: float, missing: Sequence[str]) -> float:
    """How sure the match is: how much of the request the tool explains and its lead
    over the runner-up, less for each required argument the request did not give."""
    lead = (top - second) / top if top > 0 else 0.0
    value = 0.5 * explained + 0.5 * lead
    return max(0.0, value - 0.15 * len(missing))
