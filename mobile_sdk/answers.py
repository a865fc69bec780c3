"""What a result explains beyond the ranking: per-label overrides, and why a label was excluded.

The classifier (mobile_sdk.classifier) calls these; they hold no model state, only label arrays.

- `always_allow`: labels that geography never removes (the whitelist keeps them, in either mode).
- `label_thresholds`: a per-label minimum score, on top of the global `score_threshold`.
- `excluded`: the labels the vision part ranked in its top k that the final answer does not rank
  in its top k, each with its vision score and the first reason that applies, in this order:

  | reason | meaning |
  | --- | --- |
  | `denylist` | removed by `category_denylist` / not in `category_allowlist` |
  | `no_observation_within_radius` | the whitelist removed it (hard) or down-weighted it (soft) |
  | `below_label_threshold` | its final score is below its `label_thresholds` entry |
  | `below_score_threshold` | its final score is below `score_threshold` |
  | `below_expected_nearby_threshold` | demoted, and not expected nearby here (mobile_sdk.nearby) |
  | `geo_down_weighted` | the location evidence lowered it out of the top k (no rule removed it) |
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import InvalidOptionsError
from .ranking import best_first

REASONS = ("denylist", "no_observation_within_radius", "below_label_threshold", "below_score_threshold",
           "below_expected_nearby_threshold", "geo_down_weighted")


@dataclass(frozen=True)
class Excluded:
    """A label the vision part ranked in its top k that geography (or a rule) removed or demoted."""
    index: int
    label: str
    vision_score: float  # image-only probability (the model's output where it has no vision part)
    reason: str  # one of REASONS


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def check_options(options) -> None:
    """Validate (and normalise) the options this module owns; InvalidOptionsError names the field."""
    threshold = options.rollup_threshold
    if threshold is not None and (not _is_number(threshold) or not 0.0 < threshold <= 1.0):
        raise InvalidOptionsError(f"rollup_threshold must be a number in (0, 1] or None, got {threshold!r}")
    k = options.excluded_top_k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InvalidOptionsError(f"excluded_top_k must be an int >= 0, got {k!r}")
    allow = options.always_allow
    if allow is not None:
        if isinstance(allow, str) or not all(isinstance(v, str) for v in allow):
            raise InvalidOptionsError(f"always_allow must be a sequence of label names, got {allow!r}")
        object.__setattr__(options, "always_allow", tuple(allow))
    thresholds = options.label_thresholds
    if thresholds is not None:
        if not isinstance(thresholds, Mapping):
            raise InvalidOptionsError(f"label_thresholds must map label names to scores, got {thresholds!r}")
        for name, value in thresholds.items():
            if not isinstance(name, str):
                raise InvalidOptionsError(f"label_thresholds keys must be label names, got {name!r}")
            if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise InvalidOptionsError(f"label_thresholds[{name!r}] must be a number in [0, 1], got {value!r}")
        object.__setattr__(options, "label_thresholds", dict(thresholds))
    if options.split_models is not None and not isinstance(options.split_models, bool):
        raise InvalidOptionsError(f"split_models must be a bool or None (the manifest's recommendation), "
                                  f"got {options.split_models!r}")


class Overrides:
    """`always_allow` and `label_thresholds` resolved against a bundle's labels."""

    def __init__(self, options, labels):
        index = {label: i for i, label in enumerate(labels)}
        named = list(options.always_allow or ()) + list(options.label_thresholds or {})
        unknown = [n for n in named if n not in index]
        if unknown:
            raise InvalidOptionsError(f"always_allow/label_thresholds name labels not in this bundle: {unknown[:5]}")
        self.always_allow = np.zeros(len(labels), dtype=bool)
        self.always_allow[[index[n] for n in options.always_allow or ()]] = True
        self._allows_any = bool(self.always_allow.any())
        self.min_score = np.zeros(len(labels), dtype=np.float64)
        for name, value in (options.label_thresholds or {}).items():
            self.min_score[index[name]] = float(value)

    def allow(self, mask: np.ndarray | None) -> np.ndarray | None:
        """The whitelist mask with the always-allowed labels let through."""
        return mask if mask is None or not self._allows_any else mask | self.always_allow


def excluded_labels(labels, vision: np.ndarray, scores: np.ndarray, top_final: np.ndarray, k: int, *,
                    category_mask: np.ndarray, whitelist: np.ndarray | None, whitelisted_out: bool,
                    nearby: np.ndarray | None, min_score: np.ndarray, score_threshold: float) -> tuple[Excluded, ...]:
    """The vision top-k labels missing from the final top-k (`top_final`: the answer's first k label indices).

    `vision`: image-only probabilities [L]; `scores`: final scores [L]; `whitelist`: the mask the
    whitelist applied (None when it did not filter); `nearby`: expected-nearby flags (None: unknown)."""
    if k == 0:
        return ()
    top_vision = best_first(vision, k)[:k]
    top_final = set(top_final[:k].tolist())
    # Python values of the k labels at once: a numpy scalar read per label and rule costs more.
    rows = zip(top_vision.tolist(), category_mask[top_vision].tolist(),
               [True] * k if whitelist is None or not whitelisted_out else whitelist[top_vision].tolist(),
               scores[top_vision].tolist(), min_score[top_vision].tolist(),
               [None] * k if nearby is None else nearby[top_vision].tolist(), vision[top_vision].tolist())
    out = []
    for i, listed, whitelisted, score, label_min, near, vision_score in rows:
        if i in top_final:
            continue
        if not listed:
            reason = "denylist"
        elif not whitelisted:
            reason = "no_observation_within_radius"
        elif score < label_min:
            reason = "below_label_threshold"
        elif score < score_threshold:
            reason = "below_score_threshold"
        elif near is False:
            reason = "below_expected_nearby_threshold"
        else:
            reason = "geo_down_weighted"
        out.append(Excluded(i, labels[i], vision_score, reason))
    return tuple(out)
