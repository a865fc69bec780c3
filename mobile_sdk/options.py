"""GeoClassifierOptions: what an app may ask of a GeoClassifier, validated once when built.

Every problem is an InvalidOptionsError (also a ValueError) naming the field; numbers may be numpy
numbers and are stored as Python ones (docs/sdk.md, "Options"). Options that name labels are checked
against the bundle when the classifier is created (mobile_sdk.classifier, mobile_sdk.answers).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from . import answers
from .errors import InvalidOptionsError

# Measured on the demo world's tuning split through this SDK on an exported bundle (tempered, fused
# as recommended; docs/sdk.md, "Roll-up"): the most specific threshold whose answers (species or
# roll-up taxon) contain the true label at least 90% of the time.
DEFAULT_ROLLUP_THRESHOLD = 0.7

WHITELIST_MODES = ("hard", "soft")


@dataclass(frozen=True)
class GeoClassifierOptions:
    """Immutable, validated at construction (InvalidOptionsError, also a ValueError, naming the field)."""
    bundle_path: str | None = None
    geo_bundle_path: str | None = None  # a geo model bundle (model_kind geoprior) to fuse with an image-only bundle
    max_results: int | None = None  # None: every label, as in MediaPipe (built lazily: see Categories)
    score_threshold: float = 0.0
    category_allowlist: tuple[str, ...] | None = None
    category_denylist: tuple[str, ...] | None = None
    num_threads: int | None = None
    # None: the bundle's recommended fusion (manifest "recommended_fusion"; bundles without one: hard).
    use_whitelist: bool | None = None
    whitelist_mode: str | None = None
    whitelist_floor: float | None = None  # soft mode: the factor applied to labels outside the whitelist
    rollup_threshold: float | None = DEFAULT_ROLLUP_THRESHOLD  # None: never roll up
    excluded_top_k: int = 5  # `excluded` explains the vision part's top k (0: never)
    always_allow: tuple[str, ...] | None = None  # labels geography never removes
    label_thresholds: dict | None = None  # label name -> minimum score
    split_models: bool | None = None  # run geo.tflite + vision.tflite; None: as the manifest recommends

    def __post_init__(self):
        for name in ("bundle_path", "geo_bundle_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, bytes)) and not hasattr(value, "__fspath__"):
                raise InvalidOptionsError(f"{name} must be a path, got {type(value).__name__}")
        numbers_ = dict(max_results=positive_int("max_results", self.max_results),
                        num_threads=positive_int("num_threads", self.num_threads),
                        score_threshold=_real_in("score_threshold", self.score_threshold, 0.0, 1.0, "[0, 1]"),
                        whitelist_floor=None if self.whitelist_floor is None else
                        _real_in("whitelist_floor", self.whitelist_floor, 0.0, 1.0, "(0, 1] or None"))
        for name, value in numbers_.items():  # numpy scalars become Python numbers
            object.__setattr__(self, name, value)
        for name in ("category_allowlist", "category_denylist"):
            value = getattr(self, name)
            if value is not None:
                try:
                    names = tuple(value) if not isinstance(value, (str, bytes)) else None
                except TypeError:
                    names = None
                if names is None or not all(isinstance(v, str) for v in names):
                    raise InvalidOptionsError(f"{name} must be a sequence of label names, got {value!r}")
                object.__setattr__(self, name, names)
        if self.category_allowlist is not None and self.category_denylist is not None:
            raise InvalidOptionsError("category_allowlist and category_denylist are mutually exclusive")
        if self.use_whitelist is not None:
            if not isinstance(self.use_whitelist, (bool, np.bool_)):
                raise InvalidOptionsError(f"use_whitelist must be a bool or None, got {self.use_whitelist!r}")
            object.__setattr__(self, "use_whitelist", bool(self.use_whitelist))
        if self.whitelist_mode is not None and (not isinstance(self.whitelist_mode, str)
                                                or self.whitelist_mode not in WHITELIST_MODES):
            raise InvalidOptionsError(f"whitelist_mode must be one of {WHITELIST_MODES} or None, "
                                      f"got {self.whitelist_mode!r}")
        if self.whitelist_floor == 0.0:
            raise InvalidOptionsError(f"whitelist_floor must be in (0, 1] or None, got {self.whitelist_floor!r}")

        answers.check_options(self)


def positive_int(name, value):
    """None, or a positive integer (numpy integers too; never a bool) as a Python int."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidOptionsError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def _real_in(name, value, low, high, shown):
    """A real number in [low, high] (numpy floats too; never a bool or NaN) as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise InvalidOptionsError(f"{name} must be a number in {shown}, got {value!r}")
    return float(value)
