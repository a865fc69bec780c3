"""Geolocation priors (paper §3.1, eqs. 2 and 3): no training, just the training labels seen near
each evaluation location.

For a location G and radius r, the histogram counts the training observations of each label within
r of G (great-circle). It is then either normalised into P(L|G) and multiplied into the image
classifier's output (Bayesian prior, eq. 2) or used as a 0/1 whitelist (eq. 3). Where the histogram
is empty (no training data within r, or the location is unknown) the image-only output is kept.

Counting uses one cKDTree per label on unit vectors, queried with `return_length=True`: the tree
walk runs in C and never materialises neighbour lists, so a 1000-mile query over 272k iNaturalist
observations stays a few seconds for tens of thousands of locations (docs/evaluation.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from mobile_sdk.geo import chord_for_km, miles_to_km, to_unit_vectors, validate_locations
from trainer.evaluation.metrics import top_k_accuracy

SWEEP_RADII_MILES = (50, 100, 500, 1000)


class LabelHistogram:
    """Training labels indexed by location, to count the labels within a radius of query points.

    Rows of `train_latlon` that are unknown (NaN) carry no geography and are left out.
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
        points = to_unit_vectors(latlon[known, 0], latlon[known, 1])
        labels = labels[known].astype(np.int64)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(self.num_labels + 1))
        # One tree per label: a query then yields that label's count directly, in C.
        self._trees = [
            cKDTree(points[order[lo:hi]]) if hi > lo else None for lo, hi in zip(bounds[:-1], bounds[1:])
        ]

    def counts(self, query_latlon, radius_miles: float) -> np.ndarray:
        """int32 [N, L]: training observations of each label within `radius_miles` (great-circle,
        boundary included) of each query. Unknown (NaN) query rows get all zeros."""
        chord = float(chord_for_km(miles_to_km(_check_radius(radius_miles))))
        latlon, known = validate_locations(query_latlon)
        out = np.zeros((latlon.shape[0], self.num_labels), dtype=np.int32)
        if not known.any():
            return out
        points = to_unit_vectors(latlon[known, 0], latlon[known, 1])
        for label, tree in enumerate(self._trees):
            if tree is not None:
                out[known, label] = tree.query_ball_point(points, chord, return_length=True)
        return out


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
    start = time.perf_counter()
    hist = LabelHistogram(latlon, labels, int(labels.max()) + 1)
    print(f"index {len(latlon):,} observations of {hist.num_labels} labels: {time.perf_counter() - start:.2f} s")
    queries = latlon[np.random.default_rng(args.seed).choice(len(latlon), args.queries, replace=False)]
    for radius in tqdm(SWEEP_RADII_MILES, desc="radii"):
        start = time.perf_counter()
        counts = hist.counts(queries, radius)
        tqdm.write(f"{radius:>5} mi: {args.queries:,} queries in {time.perf_counter() - start:.2f} s, "
                   f"mean {counts.sum(1).mean():,.0f} observations and {(counts > 0).sum(1).mean():.1f} labels in range")


if __name__ == "__main__":
    main()
