"""Ranking labels by score without sorting what nobody reads.

An answer over thousands of labels is read at its top (the first category, the top k the
`excluded` explanation compares): `best_first` finds the first n of the stable descending order
with one partition and a sort of the n (plus ties); `Ranking` extends that only as far as it is read.
"""
from __future__ import annotations

import math

import numpy as np

SMALL = 128  # below this many values one argsort costs less than the partition's several numpy calls
_NONE = np.zeros(0, dtype=np.int64)


def best_first(values: np.ndarray, n: int) -> np.ndarray:
    """Positions of the `n` largest values, largest first, ties in position order: the first n of
    the stable descending argsort (NaN last), without sorting the rest. A prefix of that order of
    length >= n is returned (ties at the n-th value come along)."""
    if n == 1 and values.size:  # the top answer, what an app reads first: argmax finds the first largest
        best = int(values.argmax())
        if values[best] == values[best]:  # NaN (argmax's pick when present) sorts last: the full order below
            return np.array([best])
    if 4 * n < values.size and values.size > SMALL:
        bound = np.partition(values, values.size - n)[values.size - n]  # the n-th largest (NaN: largest)
        candidates = np.flatnonzero(values >= bound)  # everything outside is smaller than every candidate
        if candidates.size >= n:  # else NaN took places among the n largest: sort everything
            return candidates[np.argsort(-values[candidates], kind="stable")]
    return np.argsort(-values, kind="stable")


class Ranking:
    """Kept label indices by descending score (ties: lower index first), at most `limit` of them,
    sorted only as far as someone reads (`first`)."""

    __slots__ = ("_scores", "_kept", "_order", "_sorted", "size")

    def __init__(self, scores: np.ndarray, keep: np.ndarray, limit: int | None):
        self._scores = scores
        self._kept = keep.nonzero()[0]  # keep is 1-D: flatnonzero without its ravel
        self.size = self._kept.size if limit is None else min(limit, self._kept.size)
        self._order, self._sorted = _NONE, 0  # the first `_sorted` kept labels, best first

    @classmethod
    def of_order(cls, order) -> "Ranking":
        """A ranking already sorted: label indices, best first."""
        ranking = cls.__new__(cls)
        ranking._order = np.asarray(order, dtype=np.int64)
        ranking._scores = ranking._kept = None
        ranking.size, ranking._sorted = ranking._order.size, math.inf
        return ranking

    def first(self, n: int) -> np.ndarray:
        """The first n label indices of the ranking (the limit does not apply: callers ask for the top k)."""
        if n > self._sorted:
            values = self._scores[self._kept]
            order = best_first(values, max(n, 2 * self._sorted))
            self._order = self._kept[order]
            self._sorted = order.size if order.size < values.size else math.inf  # inf: sorted to the end
        return self._order[:n]
