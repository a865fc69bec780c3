"""Geolocation priors (paper §3.1, eqs. 2 and 3): no training, just the training labels seen near
each evaluation location.

For a location G and radius r, the histogram counts the training observations of each label within
r of G (great-circle). It is then either normalised into P(L|G) and multiplied into the image
classifier's output (Bayesian prior, eq. 2) or used as a 0/1 whitelist (eq. 3). Where the histogram
is empty (no training data within r, or the location is unknown) the image-only output is kept.

Counting uses one index over all observations, whatever the number of labels (LabelHistogram:
an octree over unit vectors whose cells carry their label histograms), so a query costs about the
cells the radius cuts, not a tree walk per label (docs/evaluation.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from mobile_sdk.arrays import expand_ranges
from mobile_sdk.geo import chord_for_km, miles_to_km, to_unit_vectors, validate_locations
from trainer.evaluation.metrics import top_k_accuracy

SWEEP_RADII_MILES = (50, 100, 500, 1000)


class LabelHistogram:
    """Training labels indexed by location, to count the labels within a radius of query points.

    Rows of `train_latlon` that are unknown (NaN) carry no geography and are left out.

    One index over all observations, whatever the number of labels: an octree of cube cells over
    the unit vectors (a cell splits into its 8 children while it holds more than `_LEAF_POINTS`
    points), each cell with a bounding sphere around its points and, for cells that split, the
    sparse histogram of its labels. A query takes a cell whole when its sphere lies inside the
    radius (its histogram, or its few points), skips it when outside, and otherwise descends; only
    points in leaves cut by the radius are tested one by one, with the same test as a cKDTree
    ball query: squared chord <= chord².
    """

    def __init__(self, train_latlon, train_labels, num_labels: int):
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
        latlon, known = validate_locations(train_latlon)
        labels = np.asarray(train_labels)
        if labels.ndim != 1 or labels.shape[0] != latlon.shape[0]:
            raise ValueError(f"train_labels must have shape [{latlon.shape[0]}] to match train_latlon, got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"train_labels must be integer label ids, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"train_labels must lie in [0, {num_labels}), got range [{labels.min()}, {labels.max()}]")
        self.num_labels = int(num_labels)
        self.num_located = int(known.sum())
        self._index = _Octree(to_unit_vectors(latlon[known, 0], latlon[known, 1]), labels[known],
                              self.num_labels) if self.num_located else None

    def counts(self, query_latlon, radius_miles: float) -> np.ndarray:
        """int32 [N, L]: training observations of each label within `radius_miles` (great-circle,
        boundary included) of each query. Unknown (NaN) query rows get all zeros."""
        chord = float(chord_for_km(miles_to_km(_check_radius(radius_miles))))
        latlon, known = validate_locations(query_latlon)
        out = np.zeros((latlon.shape[0], self.num_labels), dtype=np.int32)
        rows = np.flatnonzero(known)
        if not rows.size or not self.num_located:
            return out
        points = to_unit_vectors(latlon[rows, 0], latlon[rows, 1])
        step = min(_CHUNK_QUERIES, max(1, _CHUNK_ENTRIES // self.num_labels))
        for i in range(0, rows.size, step):
            out[rows[i:i + step]] = self._index.counts(points[i:i + step], chord)
        return out



_DEPTH = 16  # at most 16 halvings of the cube (cells ~200 m): observations piled on one place stop splitting there
_LEAF_POINTS = 32  # a cell holding more points splits into its (up to 8) children
_MARGIN = 1e-9  # chord units (~6 mm): a cell this close to the radius has its points tested one by one
_CHUNK_ENTRIES = 1 << 22  # queries x labels counted at once: bounds one chunk's work arrays
_CHUNK_QUERIES = 4096


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Integers below 2**16 -> their bits at every third position (one axis of a 3-D Morton key)."""
    v = v.astype(np.uint64)
    for shift, mask in ((16, 0x0000FF0000FF), (8, 0x00F00F00F00F), (4, 0x0C30C30C30C3), (2, 0x249249249249)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _squared_chords(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances of rows, summed in cKDTree's order (so boundary cases agree with its test)."""
    d = a - b
    return d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]


def _sum_duplicates(rows: np.ndarray, labels: np.ndarray, counts: np.ndarray, num_labels: int):
    """(rows, labels, counts) with each (row, label) once, its counts summed; sorted by (row, label)."""
    key = rows * num_labels + labels
    order = np.argsort(key)
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return key[first] // num_labels, key[first] % num_labels, np.add.reduceat(counts[order], first)


@dataclass(frozen=True)
class _Level:
    """The cells of one depth of the octree."""

    start: np.ndarray  # int64 [C]: the cell's points are points[start:stop] (points sorted by Morton key)
    stop: np.ndarray
    centre: np.ndarray  # float64 [C, 3]: the cube's centre
    radius: np.ndarray  # float64 [C]: no point of the cell lies farther from the centre
    split: np.ndarray  # bool [C]: the cell has children: cells [child_start, child_stop) of the next depth
    child_start: np.ndarray
    child_stop: np.ndarray
    label_start: np.ndarray  # the cell's histogram: labels[label_start:label_stop] with their counts
    label_stop: np.ndarray
    labels: np.ndarray
    label_counts: np.ndarray


class _Octree:
    """The spatial index behind LabelHistogram (see there)."""

    def __init__(self, points: np.ndarray, labels: np.ndarray, num_labels: int):
        self.num_labels = num_labels
        grid = np.clip(np.floor((points + 1.0) * 2.0 ** (_DEPTH - 1)), 0, 2 ** _DEPTH - 1)
        key = ((_spread_bits(grid[:, 0]) << np.uint64(2)) | (_spread_bits(grid[:, 1]) << np.uint64(1))
               | _spread_bits(grid[:, 2])).astype(np.int64)
        del grid
        order = np.argsort(key)
        self.points, self.labels, key = points[order], labels[order].astype(np.int64), key[order]
        del order
        # Top-down: the cells that exist (children only under cells that split), with their points.
        cubes, starts, stops, parents, splits = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], [np.array([key.size])], [None], []
        for depth in range(_DEPTH + 1):
            split = (stops[-1] - starts[-1] > _LEAF_POINTS) & (depth < _DEPTH)
            splits.append(split)
            if not split.any():
                break
            shift = 3 * (_DEPTH - depth - 1)
            child = ((cubes[-1][split, None] << 3) | np.arange(8)).ravel()
            lo, hi = np.searchsorted(key, child << shift), np.searchsorted(key, (child + 1) << shift)
            keep = hi > lo
            cubes.append(child[keep])
            starts.append(lo[keep])
            stops.append(hi[keep])
            parents.append(np.repeat(np.flatnonzero(split), 8)[keep])
        del key
        # Bottom-up: bounding radii (leaves from their points, split cells from their children's
        # spheres) and label counts (leaves from their points, split cells summed from their children).
        self.levels: list[_Level] = []
        below = None  # the next depth: (_Level, parent of each cell, its histogram as (row, label, count))
        for depth in range(len(splits) - 1, -1, -1):
            start, stop, split = starts[depth], stops[depth], splits[depth]
            side = 2.0 ** (1 - depth)
            corner = np.minimum(np.floor((self.points[start] + 1.0) / side), 2 ** depth - 1)
            centre = (corner + 0.5) * side - 1.0
            radius = np.zeros(start.size)
            leaf = np.flatnonzero(~split)
            owner, index = expand_ranges(start[leaf], stop[leaf])
            if index.size:
                length = stop[leaf] - start[leaf]
                radius[leaf] = np.maximum.reduceat(np.sqrt(_squared_chords(self.points[index], centre[leaf][owner])),
                                                   np.cumsum(length) - length)
            triples = (leaf[owner], self.labels[index], np.ones(index.size, np.int64))
            child_start = child_stop = np.zeros(start.size, np.int64)
            if below is not None:
                level, parent, (rows, labels, counts) = below
                child_start = np.searchsorted(parent, np.arange(start.size))
                child_stop = np.searchsorted(parent, np.arange(start.size), side="right")
                reach = np.sqrt(_squared_chords(level.centre, centre[parent])) + level.radius
                radius[split] = np.maximum.reduceat(reach, child_start[split])
                triples = tuple(np.concatenate(pair) for pair in zip(triples, (parent[rows], labels, counts)))
            triples = _sum_duplicates(*triples, num_labels)
            bounds = np.searchsorted(triples[0], np.arange(start.size + 1))
            level = _Level(start, stop, centre, radius, split, child_start, child_stop, bounds[:-1], bounds[1:],
                           triples[1], triples[2])
            self.levels.append(level)
            below = (level, parents[depth], triples)
        self.levels.reverse()

    def counts(self, queries: np.ndarray, chord: float) -> np.ndarray:
        """int32 [N, L] counts within `chord` of unit vectors `queries` [N, 3]."""
        n, num_labels = queries.shape[0], self.num_labels
        found, weights = [], []  # query * L + label, and how many observations of it
        query, cell = np.arange(n), np.zeros(n, np.int64)
        for level in self.levels:
            distance = np.sqrt(_squared_chords(queries[query], level.centre[cell]))
            radius = level.radius[cell]
            near = distance - radius <= chord + _MARGIN
            query, cell, distance, radius = query[near], cell[near], distance[near], radius[near]
            inside = distance + radius <= chord - _MARGIN
            # A cell inside the radius counts whole: its histogram.
            owner, index = expand_ranges(level.label_start[cell[inside]], level.label_stop[cell[inside]])
            found.append(query[inside][owner] * num_labels + level.labels[index])
            weights.append(level.label_counts[index])
            split = level.split[cell]
            cut = ~inside & ~split  # a leaf cut by the radius: its few points one by one
            owner, index = expand_ranges(level.start[cell[cut]], level.stop[cell[cut]])
            at = query[cut][owner]
            ok = _squared_chords(self.points[index], queries[at]) <= chord * chord
            found.append(at[ok] * num_labels + self.labels[index[ok]])
            weights.append(np.ones(ok.sum()))
            descend = ~inside & split
            owner, cell = expand_ranges(level.child_start[cell[descend]], level.child_stop[cell[descend]])
            query = query[descend][owner]
        # float64 sums of integer counts stay exact (below 2**53).
        total = np.bincount(np.concatenate(found), np.concatenate(weights), minlength=n * num_labels)
        return total.reshape(n, num_labels).astype(np.int32)


def _check_radius(radius_miles) -> float:
    try:
        radius = float(radius_miles)
    except (TypeError, ValueError):
        raise ValueError(f"radius_miles must be a number, got {radius_miles!r}") from None
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius_miles must be positive and finite, got {radius_miles!r}")
    return radius


def _check_probs_and_counts(image_probs, counts) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(image_probs, dtype=np.float64)
    hist = np.asarray(counts, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"image_probs must have shape [N, L], got {probs.shape}")
    if hist.shape != probs.shape:
        raise ValueError(f"counts shape {hist.shape} does not match image_probs shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("image_probs must be finite and non-negative (pass probabilities, not logits)")
    if not np.isfinite(hist).all() or (hist < 0).any():
        raise ValueError("counts (weights) must be finite and non-negative")
    return probs, hist


def product_scores(image_probs, weights) -> np.ndarray:
    """Renormalised image_probs·weights per row, the shared form of eqs. 2 and 3 (and of the
    oracle, with the true range density as weights). Rows where the product is all zero keep
    `image_probs`: the fallback to the image-only prediction."""
    probs, weights = _check_probs_and_counts(image_probs, weights)
    fused = probs * weights
    mass = fused.sum(axis=1, keepdims=True)
    # mass == 0: empty histogram, or the image model gave every in-range label exactly 0 — ranking
    # by the prior alone would then be arbitrary, so the image-only prediction stands.
    fallback = mass[:, 0] <= 0
    out = np.divide(fused, mass, out=np.zeros_like(fused), where=mass > 0)
    out[fallback] = probs[fallback]
    return out


def bayesian_prior_scores(image_probs, counts) -> np.ndarray:
    """Eq. 2: f(I|L)·P(L|G), P(L|G) the normalised histogram; returned as a posterior per row.
    Rows whose histogram is empty keep the image probabilities."""
    probs, hist = _check_probs_and_counts(image_probs, counts)
    total = hist.sum(axis=1, keepdims=True)
    prior = np.divide(hist, total, out=np.zeros_like(hist), where=total > 0)
    return product_scores(probs, prior)


def whitelist_scores(image_probs, counts) -> np.ndarray:
    """Eq. 3: f(I|L)·1θ(L,G), 1θ = 1 when L has a training observation within the radius; returned
    renormalised per row. Rows whose histogram is empty keep the image probabilities."""
    probs, hist = _check_probs_and_counts(image_probs, counts)
    return product_scores(probs, (hist > 0).astype(np.float64))


PRIOR_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "bayesian": bayesian_prior_scores,
    "whitelist": whitelist_scores,
}


def select_radius(val_top1: Mapping[float, float]) -> float:
    """The radius with the best validation top-1; ties go to the smallest (most local) radius."""
    if not val_top1:
        raise ValueError("select_radius needs at least one radius")
    best = max(val_top1.values())
    return min(r for r, acc in val_top1.items() if acc == best)


@dataclass(frozen=True)
class PriorSweep:
    """A radius sweep of one prior method: radius chosen on validation, scores for the test rows."""

    method: str
    radii: tuple[float, ...]
    val_top1: dict[float, float]
    chosen_radius: float
    test_scores: dict[float, np.ndarray]  # radius -> [N_test, L] fused scores


def sweep_prior(
    histogram: LabelHistogram,
    method: str,
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    radii: Sequence[float] = SWEEP_RADII_MILES,
) -> PriorSweep:
    """Sweep `radii` for `method` ('bayesian' or 'whitelist').

    val = (image_probs, latlon, labels) chooses the radius; test = (image_probs, latlon) only gets
    scored (its labels are never seen here, so the choice cannot leak from test).
    """
    if method not in PRIOR_METHODS:
        raise ValueError(f"unknown prior method {method!r}; choose one of {tuple(PRIOR_METHODS)}")
    radii = tuple(_check_radius(r) for r in radii)
    if not radii:
        raise ValueError("radii must not be empty")
    fuse = PRIOR_METHODS[method]
    val_probs, val_latlon, val_labels = val
    test_probs, test_latlon = test
    val_top1 = {r: top_k_accuracy(fuse(val_probs, histogram.counts(val_latlon, r)), val_labels, 1) for r in radii}
    test_scores = {r: fuse(test_probs, histogram.counts(test_latlon, r)) for r in radii}
    return PriorSweep(method, radii, val_top1, select_radius(val_top1), test_scores)


def main(argv=None) -> None:
    """Time the histogram at iNaturalist scale: `python -m trainer.evaluation.priors --observations FILE`."""
    import argparse
    import time

    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--observations", required=True, help="npz with train_locs [N,2] and train_ids [N]")
    parser.add_argument("--queries", type=int, default=10000, help="query locations drawn from the file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with np.load(args.observations) as data:
        latlon = data["train_locs"].astype(np.float64)
        _, labels = np.unique(data["train_ids"], return_inverse=True)
    # CPU time next to wall time: on a shared machine the wall time adds the waits for a core.
    start, start_cpu = time.perf_counter(), time.process_time()
    hist = LabelHistogram(latlon, labels, int(labels.max()) + 1)
    print(f"index {len(latlon):,} observations of {hist.num_labels} labels: {time.process_time() - start_cpu:.2f} s CPU "
          f"({time.perf_counter() - start:.2f} s wall)")
    queries = latlon[np.random.default_rng(args.seed).choice(len(latlon), args.queries, replace=False)]
    for radius in tqdm(SWEEP_RADII_MILES, desc="radii"):
        start, start_cpu = time.perf_counter(), time.process_time()
        counts = hist.counts(queries, radius)
        tqdm.write(f"{radius:>5} mi: {args.queries:,} queries in {time.process_time() - start_cpu:.2f} s CPU "
                   f"({time.perf_counter() - start:.2f} s wall), "
                   f"mean {counts.sum(1).mean():,.0f} observations and {(counts > 0).sum(1).mean():.1f} labels in range")


if __name__ == "__main__":
    main()
