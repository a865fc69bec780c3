"""What a geo bundle's logits f mean: it depends on the objective its geo network was trained with
(trainer.training.geoprior), which the manifest records as `geo_objective`:

- `softmax` (cross-entropy over the labels of the observations): softmax(f) is P(label | location),
  summing to 1 over the labels;
- `presence` (SINR's "assume negative" loss): sigmoid(f_j) is label j's own presence probability at
  the point (they do not sum to 1).

The log score (log softmax(f), or log sigmoid(f)) is the one number the SDK uses: added to
log P(vision) it fuses vision x geo (for `softmax` this is the paper's Bayesian prior, eq. 2, with
the network as P(L|G)); the expected-nearby thresholds of a geo bundle are percentiles of it
(mobile_sdk.nearby); exp of it is species_near's score. The model's `probabilities` output is the
same quantity, computed in the graph.

A post-processing model's geo logits g have the `softmax` meaning too: they are added to the image
logits under one softmax, so g + c(location) gives the same answers for any per-location c, and
only log softmax(g) (the model's P(label | location) for an image that says nothing) is comparable
from place to place. `location_objective` says which rule a model kind's location-only logits follow.
"""
from __future__ import annotations

import numpy as np

GEO_OBJECTIVES = ("softmax", "presence")
# A geo bundle whose manifest has no `geo_objective` was written when presence-only was the only one.
UNRECORDED_GEO_OBJECTIVE = "presence"


def location_objective(model_kind: str, geo_objective: str | None = None) -> str:
    """The objective whose log score reads a model's location-only logits: a geo model's (model_kind
    `geoprior`) own `geo_objective` (None: UNRECORDED_GEO_OBJECTIVE), `softmax` for a post-processing
    model's geo logits; a ValueError for kinds without location-only logits."""
    if model_kind == "geoprior":
        return UNRECORDED_GEO_OBJECTIVE if geo_objective is None else geo_objective
    if model_kind == "postprocess":
        return "softmax"
    raise ValueError(f"a {model_kind!r} model has no location-only logits")


def log_scores(logits, objective: str) -> np.ndarray:
    """float64 log scores of geo logits [..., L] (last axis: labels) trained with `objective`."""
    z = np.asarray(logits, dtype=np.float64)
    if objective == "presence":
        return -np.logaddexp(0.0, -z)  # log sigmoid, stable for large |z|
    if objective == "softmax":
        shifted = z - z.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    raise ValueError(f"unknown geo objective {objective!r}; expected one of {GEO_OBJECTIVES}")
