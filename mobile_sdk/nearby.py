""""Expected nearby": which labels are expected at a place, per label, as iNaturalist's app flags them.

Two methods, chosen by the export and recorded in the manifest's `expected_nearby` section:

- `lpt_r` (models with location-only logits: a post-processing network's geo logits, a geo model's
  logits): a label is expected at a point when its log score there (mobile_sdk.geo_scores: log
  softmax of a post-processing model's geo logits or of a softmax geo model's logits, log sigmoid of
  a presence model's; never the raw logit, which can carry an arbitrary offset per location) reaches
  the label's threshold: the `percentile` (default 5) of that log score over the distinct cells
  (geohash, `cell_precision`) where it was observed in training ("lowest presence threshold,
  robust", as in iNaturalist's make_thresholds.py). The thresholds live in `expected_nearby.json`;
  a label never observed with a location has none (flag None).
- `whitelist` (other models): a label is expected where the whitelist table allows it, i.e. it was
  observed within the table's radius (widened by the location accuracy). Where the table has no
  data nearby the flags are None (unknown).

`Method` is the one home of both for many points at once: the export builds it from the bundle's
own parts, the evaluation from the Keras run, the geography benchmark from its geo nets and priors,
and all report `Method.report` (how often the true label is flagged at its own location,
and how many labels are flagged). `BundleThresholds` applies the same rule in the SDK, one point at a time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import geohash
from .errors import BundleError
from .geo_scores import location_objective, log_scores

# Format 2: every threshold is on a log score. Format 1 files of post-processing bundles hold
# thresholds on the raw geo logits (read as such); a format 1 geo bundle's were log scores already.
NEARBY_FORMAT = 2
READABLE_FORMATS = (1, 2)
METHODS = ("lpt_r", "whitelist")
DEFAULT_PERCENTILE = 5.0  # iNaturalist's LPT-R
DEFAULT_CELL_PRECISION = 4  # geohash cells of ~20-40 km, close to the H3 resolution-4 cells iNaturalist uses


def observed_cells(lat, lon, labels, precision: int = DEFAULT_CELL_PRECISION):
    """Distinct (label, cell) pairs of the located rows -> (labels [P], cell centre lat [P], lon [P])."""
    lat, lon, labels = (np.asarray(a) for a in (lat, lon, labels))
    known = np.isfinite(lat) & np.isfinite(lon)
    keys = geohash.encode(lat[known], lon[known], precision).astype(np.int64)
    pairs = np.unique(np.stack([labels[known].astype(np.int64), keys], axis=1), axis=0)
    centre_lat, centre_lon = geohash.decode_centres(pairs[:, 1].astype(np.uint64), precision)
    return pairs[:, 0], centre_lat, centre_lon


def lpt_r_thresholds(values_at, lat, lon, labels, num_labels: int, percentile: float = DEFAULT_PERCENTILE,
                     precision: int = DEFAULT_CELL_PRECISION, chunk: int = 4096) -> list[float | None]:
    """Per label: the `percentile` of its value over the distinct cells where it was observed.

    `values_at(latlon float32 [N, 2]) -> [N, num_labels]` (lpt_r_method passes the log scores)."""
    pair_labels, centre_lat, centre_lon = observed_cells(lat, lon, labels, precision)
    cells, cell_of_pair = np.unique(np.stack([centre_lat, centre_lon], axis=1), axis=0, return_inverse=True)
    values = np.empty(pair_labels.size, dtype=np.float64)
    for start in range(0, len(cells), chunk):
        logits = np.asarray(values_at(cells[start:start + chunk].astype(np.float32)), dtype=np.float64)
        sel = np.flatnonzero((cell_of_pair >= start) & (cell_of_pair < start + chunk))
        values[sel] = logits[cell_of_pair[sel] - start, pair_labels[sel]]
    out: list[float | None] = [None] * num_labels
    for label in np.unique(pair_labels):
        out[int(label)] = float(np.percentile(values[pair_labels == label], percentile))
    return out


def write_thresholds(path, thresholds, percentile: float, precision: int) -> Path:
    from .fileio import atomic_write_bytes

    doc = {"format": NEARBY_FORMAT, "method": "lpt_r", "percentile": float(percentile), "cell_precision": int(precision),
           "thresholds": [None if t is None else float(t) for t in thresholds]}
    return atomic_write_bytes(Path(path), (json.dumps(doc, allow_nan=False) + "\n").encode("utf-8"))


def _read(path, num_labels: int) -> tuple[int, np.ndarray]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        values = doc["thresholds"]
        if doc.get("format") not in READABLE_FORMATS or not isinstance(values, list) or len(values) != num_labels:
            raise ValueError(f"expected format {' or '.join(map(str, READABLE_FORMATS))} with {num_labels} thresholds")
        return doc["format"], np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"cannot read expected-nearby thresholds {path}: {exc}") from None


def read_thresholds(path, num_labels: int) -> np.ndarray:
    """float64 [L] thresholds; NaN where a label has none."""
    return _read(path, num_labels)[1]


@dataclass(frozen=True)
class BundleThresholds:
    """A bundle's LPT-R thresholds and the log score they are on."""
    values: np.ndarray  # float64 [L], NaN where a label has none
    objective: str | None  # mobile_sdk.geo_scores objective; None: raw geo logits (format 1 post-processing bundles)

    def scores(self, location_logits) -> np.ndarray:
        """float64 [L]: what the thresholds compare, from one point's location-only logits (a
        post-processing model's geo logits, a geo model's logits f)."""
        raw = np.asarray(location_logits, dtype=np.float64)
        return raw if self.objective is None else log_scores(raw, self.objective)

    def flag(self, score: float, index: int) -> bool | None:
        """One label's flag from its entry of `scores` (None: the label has no threshold)."""
        return None if np.isnan(self.values[index]) else bool(score >= self.values[index])

    def flags(self, location_logits) -> np.ndarray:
        """object [L] of True / False / None (no threshold) from one point's location-only logits."""
        return np.where(np.isnan(self.values), None, self.scores(location_logits) >= self.values).astype(object)


def open_thresholds(bundle) -> BundleThresholds | None:
    """The bundle's LPT-R thresholds, or None when its method is not `lpt_r`."""
    section = bundle.manifest.get("expected_nearby")
    if not section or section.get("method") != "lpt_r":
        return None
    fmt, values = _read(bundle.path / section["file"], len(bundle.labels))
    kind = bundle.manifest["model_kind"]
    try:
        objective = location_objective(kind, bundle.manifest.get("geo_objective"))
    except ValueError as exc:
        raise BundleError(f"expected-nearby thresholds (lpt_r) in a bundle without location-only logits: {exc}") from None
    return BundleThresholds(values, None if fmt == 1 and kind == "postprocess" else objective)


def flags_from_whitelist(allowed: np.ndarray | None, num_labels: int) -> np.ndarray:
    """object [L]: whitelisted labels True, others False; all None where the table has no data."""
    if allowed is None:
        return np.full(num_labels, None, dtype=object)
    flags = np.zeros(num_labels, dtype=bool)
    flags[allowed] = True
    return flags.astype(object)


def recall_and_count(flags: np.ndarray, truth: np.ndarray) -> dict:
    """flags bool [N, L] at each row's own location, truth int [N] -> how often the true label is
    flagged (recall) and the mean number of labels flagged (the whitelist table's two numbers)."""
    flags = np.asarray(flags, dtype=bool)
    return {"rows": int(len(truth)), "recall": float(flags[np.arange(len(truth)), truth].mean()),
            "mean_flagged": float(flags.sum(axis=1).mean())}


@dataclass(frozen=True)
class Method:
    """One model's expected-nearby method over many points: `flags(lat [N], lon [N])` -> bool [N, L],
    True where a label is flagged (None flags, i.e. unknown, count as not flagged)."""
    name: str  # one of METHODS
    flags: Callable[[np.ndarray, np.ndarray], np.ndarray]
    thresholds: tuple | None = None  # lpt_r: per label, None where a label has none

    def report(self, lat, lon, labels) -> dict:
        """Over the located rows: how often the true label is flagged (recall) and the mean number of
        labels flagged; `rows` = 0 (and nothing else) when no row is located."""
        lat, lon, labels = (np.asarray(a) for a in (lat, lon, labels))
        located = np.isfinite(lat) & np.isfinite(lon)
        if not located.any():
            return {"method": self.name, "rows": 0}
        return {"method": self.name, **recall_and_count(self.flags(lat[located], lon[located]), labels[located])}


def lpt_r_method(location_logits, objective: str, lat, lon, labels, num_labels: int,
                 percentile: float = DEFAULT_PERCENTILE, precision: int = DEFAULT_CELL_PRECISION,
                 chunk: int = 4096) -> Method:
    """LPT-R thresholds from the training rows (lat, lon, labels) over the log scores (objective:
    mobile_sdk.geo_scores, e.g. `location_objective(model_kind)`) of `location_logits(latlon float32
    [N, 2]) -> [N, num_labels]`, the model's location-only logits; the same rule flags new points."""
    def scores(latlon):
        return log_scores(location_logits(latlon), objective)

    thresholds = lpt_r_thresholds(scores, lat, lon, labels, num_labels, percentile, precision, chunk)
    values = np.array([np.nan if t is None else t for t in thresholds], dtype=np.float64)

    def flags(lat, lon):
        latlon = np.stack([np.asarray(lat, np.float32), np.asarray(lon, np.float32)], axis=1)
        parts = [scores(latlon[i:i + chunk]) for i in range(0, len(latlon), chunk)]
        return np.concatenate(parts or [np.zeros((0, num_labels))]) >= values  # NaN (no threshold): False

    return Method("lpt_r", flags, tuple(thresholds))


def whitelist_method(table) -> Method:
    """Flags from a `mobile_sdk.whitelist` table: the labels observed within its radius of a point
    (none where the table has no data nearby: unknown)."""

    def flags(lat, lon):
        allowed, _ = table.lookup_batch(lat, lon)
        out = np.zeros((len(allowed), table.num_labels), dtype=bool)
        for i, labels in enumerate(allowed):
            if labels is not None:
                out[i, labels] = True
        return out

    return Method("whitelist", flags)
