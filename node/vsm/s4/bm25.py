"""A small Okapi BM25 index: a few dozen to a few thousand short documents (tools), so a
dictionary per document is lighter than a sparse-matrix library and needs no import."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

K1 = 1.2
B = 0.75


class Bm25:
    def __init__(self, documents: Sequence[Sequence[str]]) -> None:
        self._tf = [Counter(doc) for doc in documents]
        self._len = [len(doc) for doc in documents]
        self._avg = (sum(self._len) / len(documents)) if documents else 0.0
        df: Counter[str] = Counter()
        for tf in self._tf:
            df.update(tf.keys())
        n = len(documents)
        self._idf = {w: math.log(1 + (n - d + 0.5) / (d + 0.5)) for w, d in df.items()}

    def scores(self, query: Mapping[str, float]) -> list[float]:
        """Each document's score for `query` (word → weight)."""
        terms = [w for w in query if w in self._idf]
        out = []
        for tf, length in zip(self._tf, self._len, strict=True):
            norm = K1 * (1 - B + B * length / self._avg) if self._avg else K1
            score = 0.0
            for w in terms:
                f = tf.get(w, 0)
                if f:
                    score += query[w] * self._idf[w] * f * (K1 + 1) / (f + norm)
            out.append(score)
        return out
