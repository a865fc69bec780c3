"""What GeoClassifier answers: the ranked categories, a classification result, the species expected nearby.

Plain frozen values an app reads (docs/sdk.md, "Results"); `Categories` builds each Category only
when it is read, so asking for every label costs no more than asking for a few.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .answers import Excluded
from .ranking import Ranking
from .taxonomy import Taxon


@dataclass(frozen=True)
class Category:
    index: int
    label: str
    score: float  # the final score: the model's fused probability after the whitelist, renormalised
    vision_score: float | None = None  # image-only probability, where the model exposes vision_logits
    # the geo network's logit added to the vision logit (0 = no evidence); with a geo bundle, its log score
    geo_score: float | None = None
    expected_nearby: bool | None = None  # flagged expected at this location (None: unknown, see nearby.py)


class _ReadLikeTuple(Sequence):
    """A read-only sequence that compares, hashes, prints and pickles as the tuple of its items."""

    __slots__ = ()

    def __eq__(self, other):
        return tuple(self) == tuple(other) if isinstance(other, (tuple, _ReadLikeTuple)) else NotImplemented

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self):
        return repr(tuple(self))

    def __reduce__(self):  # pickle and deepcopy give the plain tuple
        return tuple, (tuple(self),)


class Deferred:
    """A value computed on first read (`get`; indexing reads into it): per-label work for answers
    nobody reads costs nothing. Results are per call, so a race only computes the same value twice."""

    __slots__ = ("_make", "_value")

    def __init__(self, make):
        self._make, self._value = make, None

    def get(self):
        if self._make is not None:
            self._value, self._make = self._make(), None
        return self._value

    def __getitem__(self, index):
        return self.get()[index]


class PerLabel(Deferred):
    """A Deferred [L] array whose single entries have a cheaper formula, `one(index)`: a Category
    reads its own label's entry without the whole column being built."""

    __slots__ = ("_one",)

    def __init__(self, make, one):
        super().__init__(make)
        self._one = one

    def __getitem__(self, index):
        return self._one(index) if self._make is not None else self._value[index]


def resolved(value):
    """The value itself, or a Deferred's computed value."""
    return value.get() if isinstance(value, Deferred) else value


class DeferredTuple(_ReadLikeTuple):
    """A tuple built on first read (the `excluded` explanation)."""

    __slots__ = ("_items",)

    def __init__(self, make):
        self._items = Deferred(lambda: tuple(make()))

    def __len__(self):
        return len(self._items.get())

    def __getitem__(self, position):
        return self._items.get()[position]


class Categories(_ReadLikeTuple):
    """The ranked answer, read like a tuple of `Category` (index, iterate, slice, len, ==).

    Each Category is built when first read, and the ranking is sorted only as far as it is read
    (`Ranking`): an app that looks at the top few of thousands of labels pays for those few only, so
    `max_results=None` (every label) costs no more than 5."""

    __slots__ = ("_ranking", "_labels", "_columns", "_built")

    def __init__(self, ranking, labels, **columns):
        # a Ranking, or label indices best first
        self._ranking = ranking if isinstance(ranking, Ranking) else Ranking.of_order(ranking)
        self._labels = labels
        self._columns = columns  # Category field -> values for every label (indexed by label), or None
        self._built = {}

    def __len__(self) -> int:
        return self._ranking.size

    def __getitem__(self, position):
        if not (type(position) is int and 0 <= position < self._ranking.size):  # else the common read, [0]
            if isinstance(position, slice):
                return tuple(self[i] for i in range(*position.indices(len(self))))
            if not isinstance(position, numbers.Integral) or isinstance(position, (bool, np.bool_)):
                raise TypeError(f"Categories indices must be integers or slices, not {type(position).__name__}")
            position = int(position)
            if position < 0:
                position += len(self)
            if not 0 <= position < len(self):
                raise IndexError("Categories index out of range")
        category = self._built.get(position)
        if category is None:
            index = int(self._ranking.first(position + 1)[position])
            category = self._built[position] = Category(
                index, self._labels[index],
                **{name: None if values is None else _python(values[index]) for name, values in self._columns.items()})
        return category

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _python(value):
    """A numpy scalar as the Python number it holds (float64 -> float, bool_ -> bool)."""
    return value.item() if isinstance(value, np.generic) else value



@dataclass(frozen=True)
class ClassificationResult:
    categories: Sequence[Category]  # a Categories: best first, each built when read
    location_used: bool  # a valid location was given and the model or the whitelist took it into account
    whitelist_filtered: bool  # the whitelist removed or down-weighted at least one label
    model_version: str
    location: tuple[float, float] | None = None  # (lat, wrapped lon) as used
    rollup: Taxon | None = None  # the lowest taxon reaching rollup_threshold; None: the top label does
    excluded: Sequence[Excluded] = ()  # vision top-k labels removed or demoted, with reasons (built when read)
    accuracy_m: float | None = None  # the location accuracy used

    def to_dict(self) -> dict:
        return dataclasses.asdict(dataclasses.replace(self, categories=tuple(self.categories),
                                                      excluded=tuple(self.excluded)))


@dataclass(frozen=True)
class NearbySpecies:
    """species_near's answer: the labels expected nearby, sorted by score: a geo bundle's score
    (mobile_sdk.geo_scores) or sigmoid(geo logit) where the model has a separable geo network, else
    1.0 for each whitelisted label."""
    categories: Sequence[Category]  # a Categories, like ClassificationResult's
    whitelist_covered: bool  # the table has training data near this point
    geo_scored: bool  # scores come from the model's geo network
    location: tuple[float, float] = field(default=(math.nan, math.nan))
    accuracy_m: float | None = None
