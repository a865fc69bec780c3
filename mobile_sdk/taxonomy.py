"""The label taxonomy a bundle may carry (`taxonomy.json`), and roll-up to a common ancestor.

The document (validated by `Taxonomy`):

    {"format": 1,
     "ranks": ["supercategory", "genus"],                       # coarsest first
     "labels": {"Aus bus": {"supercategory": "Birds", "genus": "Aus"}, ...}}

Each label is the species-level taxon; `ranks` are the ranks above it, coarsest first. A label may
lack a rank (missing or null): it then forms a group of its own there, never merged with others.

Roll-up (as iNaturalist's app and SpeciesNet do instead of a confident wrong species): when the top
label alone scores below a threshold, answer with the lowest taxon whose labels' summed score
reaches it. The trainer's dataset readers fill the same dictionary from the datasets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError

TAXONOMY_FORMAT = 1
SPECIES_RANK = "species"
# The Linnaean ranks iNaturalist's category records carry, coarsest first.
LINNAEAN_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


@dataclass(frozen=True)
class Taxon:
    """A taxon at `rank` (`species` for a single label) and the summed score of its labels."""
    rank: str
    name: str
    score: float


class Taxonomy:
    """The parsed taxonomy of a label list: per rank, each label's group id (numpy, for roll-up)."""

    def __init__(self, doc: dict, labels, source: str = "taxonomy.json"):
        def fail(problem):
            raise BundleError(f"{source}: malformed taxonomy: {problem}")

        if not isinstance(doc, dict) or doc.get("format") != TAXONOMY_FORMAT:
            fail(f"expected a JSON object with format {TAXONOMY_FORMAT}")
        ranks, entries = doc.get("ranks"), doc.get("labels")
        if not isinstance(ranks, list) or not ranks or not all(isinstance(r, str) and r for r in ranks) \
                or len(set(ranks)) != len(ranks) or SPECIES_RANK in ranks:
            fail(f"'ranks' must be distinct non-empty names other than {SPECIES_RANK!r}, got {ranks!r}")
        if not isinstance(entries, dict):
            fail("'labels' must map label names to {rank: name}")
        self.labels = list(labels)
        unknown = sorted(set(entries) - set(self.labels))
        if unknown:
            fail(f"names labels not in the label list: {unknown[:5]}")
        self.ranks = list(ranks)
        self.doc = {"format": TAXONOMY_FORMAT, "ranks": self.ranks, "labels": {}}
        self._group_ids, self._group_names = {}, {}
        for rank in self.ranks:
            names, ids = [], np.empty(len(self.labels), dtype=np.int64)
            index: dict[str, int] = {}
            for i, label in enumerate(self.labels):
                entry = entries.get(label) or {}
                if not isinstance(entry, dict):
                    fail(f"label {label!r}: expected {{rank: name}}, got {entry!r}")
                name = entry.get(rank)
                if name is not None and (not isinstance(name, str) or not name):
                    fail(f"label {label!r}: {rank} must be a non-empty string or null, got {name!r}")
                if name is None:  # unknown at this rank: a group of its own
                    ids[i] = len(names)
                    names.append(None)
                else:
                    if name not in index:
                        index[name] = len(names)
                        names.append(name)
                    ids[i] = index[name]
                    self.doc["labels"].setdefault(label, {})[rank] = name
            self._group_ids[rank], self._group_names[rank] = ids, names

    @classmethod
    def read(cls, path, labels) -> "Taxonomy":
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot read taxonomy {path}: {exc}") from None
        return cls(doc, labels, source=str(path))

    def to_json(self) -> str:
        return json.dumps(self.doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    def name_of(self, label_index: int, rank: str) -> str | None:
        """The label's taxon at `rank` (None where unknown); `species` is the label itself."""
        if rank == SPECIES_RANK:
            return self.labels[label_index]
        return self._group_names[rank][self._group_ids[rank][label_index]]

    def rollup(self, scores, threshold: float) -> Taxon | None:
        """The lowest taxon whose labels' summed score reaches `threshold`, for scores [L] summing to
        at most 1. None when the top label alone reaches it (no roll-up needed) or no taxon does.
        Ties within a rank go to the group holding the lowest label index (deterministic)."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.max() >= threshold:
            return None
        for rank in reversed(self.ranks):
            ids, names = self._group_ids[rank], self._group_names[rank]
            sums = np.bincount(ids, weights=scores, minlength=len(names))
            best = int(np.argmax(sums))
            if sums[best] >= threshold and names[best] is not None:
                return Taxon(rank, names[best], float(sums[best]))
        return None

    def contains(self, taxon: Taxon, label_index: int) -> bool:
        """Whether `label_index` belongs to `taxon` (the roll-up accuracy test)."""
        return self.name_of(label_index, taxon.rank) == taxon.name

