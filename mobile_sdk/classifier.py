"""GeoClassifier: what an app does with a bundle, modelled on MediaPipe Tasks' ImageClassifier.

    with GeoClassifier.from_bundle("bundle/") as clf:
        result = clf.classify("photo.jpg", lat=37.77, lon=-122.42)
        print(result.categories[0].label, result.location_used)

The model fuses image and location itself (its `probabilities` output), or, for an image-only bundle
with a geo bundle (`geo_bundle_path`, a geo model trained on observations by
trainer.training.geoprior), the SDK multiplies the image probabilities by the geo model's score of
each label at the location: P(label | location) for a softmax-trained geo model (the paper's
Bayesian prior, eq. 2), the label's presence probability for a presence-only one (vision x geo, as
Mac Aodha et al. 2019 and iNaturalist's app do; mobile_sdk.geo_scores). The SDK adds the paper's
whitelist (eq. 3) on top: `hard` drops labels with no training observation within the radius,
`soft` multiplies them by a floor so a stale table can never zero a label out. Scores are then
renormalised to sum to 1 over the labels that remain. Which of off / soft / hard applies is the
bundle's `recommended_fusion` (measured at export on tuning images) unless the options say
otherwise (`GeoClassifier.fusion` tells which applies and why).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import answers, geo_scores, nearby
from .accuracy import validate_accuracy_m, widened_whitelist
from .answers import Excluded
from .bundle import Bundle, open_bundle
from .errors import GeoAwareError, InvalidImageError, InvalidLocationError, InvalidOptionsError
from .geo import validate_location
from .preprocess import prepare_image
from .ranking import Ranking
from .split_runner import open_split_models
from .taxonomy import Taxon

# Measured on the demo world's tuning split through this SDK on an exported bundle (tempered, fused
# as recommended; docs/sdk.md, "Roll-up"): the most specific threshold whose answers (species or
# roll-up taxon) contain the true label at least 90% of the time.
DEFAULT_ROLLUP_THRESHOLD = 0.7

WHITELIST_MODES = ("hard", "soft")
GEO_MODEL_KIND = "geoprior"
_UNKNOWN_LOCATION = np.full((1, 2), np.nan, dtype=np.float32)  # the contract: NaN = unknown, never (0, 0)


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
        numbers_ = dict(max_results=_positive_int("max_results", self.max_results),
                        num_threads=_positive_int("num_threads", self.num_threads),
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

def _positive_int(name, value):
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


DEFAULT_SOFT_FLOOR = 0.01
_NO_RECOMMENDATION = {"whitelist": "hard", "floor": None}  # bundles exported before recommended_fusion


@dataclass(frozen=True)
class Fusion:
    """How the whitelist joins the model's output in this classifier, and who chose it."""
    whitelist: str  # "off", "soft" or "hard"
    floor: float | None  # the soft factor (soft only)
    source: str  # "bundle" (its recommended_fusion), "options", or "default" (a bundle without one)

    @classmethod
    def resolve(cls, manifest: dict, options: GeoClassifierOptions) -> "Fusion":
        """Options that are set win over the bundle's recommendation: use_whitelist=False turns it
        off, whitelist_mode picks the mode (use_whitelist=True alone turns an "off" into hard)."""
        recommended = manifest.get("recommended_fusion")
        base = recommended or _NO_RECOMMENDATION
        mode = base["whitelist"]
        if options.use_whitelist is False:
            mode = "off"
        elif options.whitelist_mode is not None:
            mode = options.whitelist_mode
        elif options.use_whitelist and mode == "off":
            mode = "hard"
        floor = options.whitelist_floor if options.whitelist_floor is not None else \
            base.get("floor") or DEFAULT_SOFT_FLOOR
        overridden = any(v is not None for v in (options.use_whitelist, options.whitelist_mode, options.whitelist_floor))
        return cls(mode, float(floor) if mode == "soft" else None,
                   "options" if overridden else "bundle" if recommended else "default")


@dataclass(frozen=True)
class Category:
    index: int
    label: str
    score: float  # the final score: the model's fused probability after the whitelist, renormalised
    vision_score: float | None = None  # image-only probability, where the model exposes vision_logits
    # the geo network's logit added to the vision logit (0 = no evidence); with a geo bundle, its log score
    geo_score: float | None = None
    expected_nearby: bool | None = None  # flagged expected at this location (None: unknown, see nearby.py)


class Categories(Sequence):
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
        if isinstance(position, slice):
            return tuple(self[i] for i in range(*position.indices(len(self))))
        if isinstance(position, numbers.Integral) and not isinstance(position, (bool, np.bool_)):
            position = int(position)
            if position < 0:
                position += len(self)
            if not 0 <= position < len(self):
                raise IndexError("Categories index out of range")
        else:
            raise TypeError(f"Categories indices must be integers or slices, not {type(position).__name__}")
        category = self._built.get(position)
        if category is None:
            index = int(self._ranking.first(position + 1)[position])
            category = self._built[position] = Category(
                index=index, label=self._labels[index],
                **{name: None if values is None else _python(values[index]) for name, values in self._columns.items()})
        return category

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other):
        return tuple(self) == tuple(other) if isinstance(other, (tuple, Categories)) else NotImplemented

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self):
        return repr(tuple(self))

    def __reduce__(self):  # pickle and deepcopy give the plain tuple
        return tuple, (tuple(self),)


def _python(value):
    """A numpy scalar as the Python number it holds (float64 -> float, bool_ -> bool)."""
    return value.item() if isinstance(value, np.generic) else value


def _ranked(scores: np.ndarray, keep: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the kept labels by descending score (ties: lower index first), at most `limit`."""
    ranking = Ranking(scores, keep, limit)
    return ranking.first(ranking.size)


@dataclass(frozen=True)
class ClassificationResult:
    categories: Sequence[Category]  # a Categories: best first, each built when read
    location_used: bool  # a valid location was given and the model or the whitelist took it into account
    whitelist_filtered: bool  # the whitelist removed or down-weighted at least one label
    model_version: str
    location: tuple[float, float] | None = None  # (lat, wrapped lon) as used
    rollup: Taxon | None = None  # the lowest taxon reaching rollup_threshold; None: the top label does
    excluded: tuple[Excluded, ...] = ()  # vision top-k labels removed or demoted, with reasons
    accuracy_m: float | None = None  # the location accuracy used

    def to_dict(self) -> dict:
        return dataclasses.asdict(dataclasses.replace(self, categories=tuple(self.categories)))


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


def _tempered(out: dict, temperature: float) -> dict:
    """The model's outputs with logits / T and the probabilities recomputed from them (temperature
    scaling: the ranking is unchanged, the confidences are calibrated)."""
    logits = out["logits"] if "logits" in out else np.log(np.maximum(out["probabilities"], np.finfo(np.float32).tiny))
    logits = logits.astype(np.float64) / temperature
    return {**out, "logits": logits, "probabilities": _softmax(logits.reshape(-1)).reshape(logits.shape)}


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64; -inf logits (labels removed by a hard whitelist) get exactly 0."""
    e = logits.astype(np.float64)  # a copy, then in place: the same arithmetic, fewer allocations
    e -= e.max()
    np.exp(e, out=e)
    e /= e.sum()
    return e


class GeoClassifier:
    """Thread-safe: each thread runs its own interpreter over the shared model bytes."""

    def __init__(self, bundle: Bundle, options: GeoClassifierOptions, geo_bundle: Bundle | None = None):
        self._bundle = bundle
        self.options = options
        self.labels = list(bundle.labels)
        self._geo_only = bundle.manifest["model_kind"] == GEO_MODEL_KIND
        self._geo = bundle if self._geo_only else geo_bundle
        if geo_bundle is not None:
            if geo_bundle.manifest["model_kind"] != GEO_MODEL_KIND:
                raise InvalidOptionsError(f"geo_bundle_path must be a geo model bundle (model_kind {GEO_MODEL_KIND!r}), "
                                          f"got {geo_bundle.manifest['model_kind']!r}")
            if bundle.manifest["model_kind"] != "image":
                raise InvalidOptionsError("a geo bundle fuses with an image-only bundle; this one is "
                                          f"{bundle.manifest['model_kind']!r} and uses the location itself already")
            if list(geo_bundle.labels) != self.labels:
                raise InvalidOptionsError("the geo bundle's labels differ from the image bundle's (names or order)")
        outputs = bundle.model.output_shapes
        self._has_parts = "vision_logits" in outputs and "geo_logits" in outputs
        self.fusion = Fusion.resolve(bundle.manifest, options)
        self._temperature = float((bundle.manifest.get("calibration") or {}).get("temperature", 1.0))
        self._location_matters = bundle.manifest["model_kind"] != "image" or self._geo is not None or (
            self.fusion.whitelist != "off" and bundle.whitelist is not None)
        self._closed = threading.Event()
        index = {label: i for i, label in enumerate(self.labels)}
        self._category_mask = np.ones(len(self.labels), dtype=bool)
        for name, keep in (("category_allowlist", True), ("category_denylist", False)):
            names = getattr(options, name)
            if names is not None:
                unknown = [n for n in names if n not in index]
                if unknown:
                    raise InvalidOptionsError(f"{name} names labels not in this bundle: {unknown[:5]}")
                chosen = np.zeros(len(self.labels), dtype=bool)
                chosen[[index[n] for n in names]] = True
                self._category_mask = chosen if keep else ~chosen
        self._overrides = answers.Overrides(options, self.labels)
        # a label is kept when its score reaches both score_threshold and its own label threshold
        self._min_score = np.maximum(self._overrides.min_score, options.score_threshold)
        self._split = open_split_models(bundle, options.split_models, options.num_threads)
        # A geo bundle's expected-nearby thresholds are on its own scores: they answer where it is present.
        self._nearby_thresholds = nearby.open_thresholds(bundle if self._geo is None else self._geo)
        self._geo_objective = None if self._geo is None else \
            self._geo.manifest.get("geo_objective", geo_scores.UNRECORDED_GEO_OBJECTIVE)

    @classmethod
    def create_from_options(cls, options: GeoClassifierOptions) -> "GeoClassifier":
        if not isinstance(options, GeoClassifierOptions):
            raise InvalidOptionsError(f"options must be GeoClassifierOptions, got {type(options).__name__}")
        if options.bundle_path is None:
            raise InvalidOptionsError("options.bundle_path is required")
        geo = None if options.geo_bundle_path is None else open_bundle(options.geo_bundle_path, num_threads=options.num_threads)
        return cls(open_bundle(options.bundle_path, num_threads=options.num_threads), options, geo)

    @classmethod
    def from_bundle(cls, path, options: GeoClassifierOptions | None = None) -> "GeoClassifier":
        options = GeoClassifierOptions() if options is None else options
        if not isinstance(options, GeoClassifierOptions):
            raise InvalidOptionsError(f"options must be GeoClassifierOptions, got {type(options).__name__}")
        return cls.create_from_options(dataclasses.replace(options, bundle_path=str(path)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._closed.set()

    @property
    def model_version(self) -> str:
        return self._bundle.model_version

    @property
    def manifest(self) -> dict:
        return self._bundle.manifest

    def _check_open(self):
        if self._closed.is_set():
            raise GeoAwareError("this GeoClassifier is closed")

    def _whitelist_allowed(self, location, accuracy_m, off: bool) -> np.ndarray | None:
        """Label indices the table allows (widened by the accuracy), or None where it has no say (or `off`)."""
        table = self._bundle.whitelist
        if location is None or table is None or off:
            return None
        return widened_whitelist(table, location, accuracy_m)

    def _whitelist_mask(self, allowed) -> np.ndarray | None:
        """bool [L] of the `allowed` labels and always_allow, or None when the whitelist does not apply here."""
        if allowed is None:
            return None
        mask = np.zeros(len(self.labels), dtype=bool)
        mask[allowed] = True
        return self._overrides.allow(mask)

    def _nearby_flags(self, location, allowed, geo_logits) -> np.ndarray | None:
        """object [L] expected-nearby flags (True/False/None), or None without a location."""
        if location is None:
            return None
        if self._nearby_thresholds is not None and geo_logits is not None:
            return nearby.flags_from_logits(geo_logits, self._nearby_thresholds)
        return nearby.flags_from_whitelist(allowed, len(self.labels))

    def _run(self, pixels, location) -> dict:
        if self._split is not None:
            return self._split.run(pixels, location)
        loc = _UNKNOWN_LOCATION if location is None else np.array([location], dtype=np.float32)
        return self._bundle.model.run(pixels, loc)

    def classify(self, image, lat=None, lon=None, accuracy_m=None) -> ClassificationResult:
        """Classify one image; lat/lon in degrees, both or neither (None = location unknown);
        accuracy_m: how far (metres) the true point may lie from (lat, lon), None = exact."""
        self._check_open()
        if self._geo_only:
            raise GeoAwareError("this bundle is a geo model (location -> per-label scores): use species_near, "
                                "or pass it as geo_bundle_path beside an image-only bundle")
        location = validate_location(lat, lon)
        accuracy_m = validate_accuracy_m(accuracy_m)
        pixels = prepare_image(image, self._bundle.input_size)
        out = self._run(pixels, location)
        if self._temperature != 1.0:  # the bundle's calibration (fitted at export on tuning images)
            out = _tempered(out, self._temperature)
        probs = out["probabilities"].reshape(-1).astype(np.float64)
        vision = geo = location_logits = None  # location_logits: what the expected-nearby thresholds compare
        if self._has_parts:
            vision = _softmax(out["vision_logits"].reshape(-1))
            geo = location_logits = out["geo_logits"].reshape(-1).astype(np.float64)
        elif self._geo is not None and location is not None:
            # vision x geo: log softmax(vision logits) + the geo model's log score, renormalised.
            vision_logits = out["logits"].reshape(-1).astype(np.float64)
            vision = _softmax(vision_logits)
            geo = location_logits = self._geo_log_scores(location)
            out["logits"] = np.log(np.maximum(vision, 1e-300)) + geo
            probs = _softmax(out["logits"])

        scores, filtered = probs, False
        # One table lookup: what lives here (for expected_nearby, unless the options turned the table
        # off) is also what the fusion filters by, unless the fusion is off.
        allowed = self._whitelist_allowed(location, accuracy_m, off=self.options.use_whitelist is False)
        mask = None if self.fusion.whitelist == "off" else self._whitelist_mask(allowed)
        if mask is not None and 0 < np.count_nonzero(mask) < mask.size:
            hard = self.fusion.whitelist == "hard"
            if "logits" in out:  # softmax(logits + log w): exact even where a probability underflowed
                logits = out["logits"].reshape(-1)
                if hard:  # log 0 = -inf outside: exactly 0 there, the softmax of the allowed logits inside
                    scores = np.zeros(len(mask))
                    scores[mask] = _softmax(logits[mask])
                else:
                    scores = _softmax(logits + np.log(np.where(mask, 1.0, self.fusion.floor)))
                filtered = True
            else:
                weight = mask.astype(np.float64) if hard else np.where(mask, 1.0, self.fusion.floor)
                if (probs * weight).sum() > 0:  # else the model gave the allowed labels nothing: keep it
                    scores, filtered = probs * weight / (probs * weight).sum(), True
        keep = self._category_mask & (scores >= self._min_score)
        if mask is not None and self.fusion.whitelist == "hard" and filtered:
            keep &= mask
        flags = self._nearby_flags(location, allowed, location_logits)
        ranking = Ranking(scores, keep, self.options.max_results)
        categories = Categories(ranking, self.labels, score=scores, vision_score=vision, geo_score=geo,
                                expected_nearby=flags)
        used = location is not None and self._location_matters
        taxonomy, threshold = self._bundle.taxonomy, self.options.rollup_threshold
        rollup = None if taxonomy is None or threshold is None else taxonomy.rollup(
            np.where(self._category_mask, scores, 0.0), threshold)
        k = self.options.excluded_top_k
        excluded = () if k == 0 else answers.excluded_labels(
            self.labels, probs if vision is None else vision, scores, ranking.first(k), k,
            category_mask=self._category_mask, whitelist=mask, whitelisted_out=filtered, nearby=flags,
            min_score=self._overrides.min_score, score_threshold=self.options.score_threshold)
        return ClassificationResult(categories, used, filtered, self.model_version, location, rollup, excluded,
                                    None if location is None else accuracy_m)

    def _geo_log_scores(self, location) -> np.ndarray:
        """The geo bundle's per-label log scores at a known location (mobile_sdk.geo_scores)."""
        blank = np.zeros((1, *self._geo.input_size, 3), dtype=np.uint8)
        logits = self._geo.model.run(blank, np.array([location], dtype=np.float32))["logits"].reshape(-1)
        return geo_scores.log_scores(logits, self._geo_objective)

    def classify_batch(self, images, locations=None, accuracy_m=None) -> list[ClassificationResult]:
        """Classify many images. `locations`: None, or one (lat, lon) pair or None per image;
        `accuracy_m`: None, one value for all, or one value (or None) per image."""
        if isinstance(images, (str, bytes, os.PathLike)):
            raise InvalidImageError("classify_batch takes a sequence of images; use classify for one")
        try:
            images = list(images)
        except TypeError:
            raise InvalidImageError(f"images must be a sequence of images, got {type(images).__name__}") from None
        try:
            locations = [None] * len(images) if locations is None else list(locations)
        except TypeError:
            raise InvalidLocationError(f"locations must be a sequence of (lat, lon) pairs or None, "
                                       f"got {type(locations).__name__}") from None
        if len(locations) != len(images):
            raise InvalidLocationError(f"{len(images)} images but {len(locations)} locations")
        accuracies = list(accuracy_m) if isinstance(accuracy_m, (list, tuple)) else [accuracy_m] * len(images)
        if len(accuracies) != len(images):
            raise InvalidLocationError(f"{len(images)} images but {len(accuracies)} accuracies")
        results = []
        for image, location, accuracy in zip(images, locations, accuracies):
            if location is None:
                results.append(self.classify(image, accuracy_m=accuracy))
                continue
            try:
                lat, lon = location
            except (TypeError, ValueError):
                raise InvalidLocationError(f"each location must be a (lat, lon) pair or None, got {location!r}") from None
            results.append(self.classify(image, lat, lon, accuracy))
        return results

    def _geo_logits(self, location) -> np.ndarray | None:
        """The geo bundle's log scores, or the post-processing model's geo logits at a point. These do
        not depend on the image (they are added to the image logits), so the single model gives them
        from a blank image."""
        if self._geo is not None:
            return self._geo_log_scores(location)
        if not self._has_parts:
            return None
        if self._split is not None:
            return self._split.geo_logits(location)
        blank = np.zeros((1, *self._bundle.input_size, 3), dtype=np.uint8)
        return self._bundle.model.run(blank, np.array([location], dtype=np.float32))["geo_logits"].reshape(-1)

    def species_near(self, lat, lon, max_results: int | None = None, accuracy_m=None) -> NearbySpecies:
        """The labels expected nearby at this location (nearby.py: the geo network's per-label
        thresholds, or the whitelist), ranked by the geo network's score where there is a separable
        one: a geo bundle (alone or beside an image bundle) answers with its scores (P(label |
        location), or presence probabilities: mobile_sdk.geo_scores), a post-processing model with
        sigmoid of its geo logits. Without thresholds or table data here, every label is ranked by
        the geo network; without one, the whitelist alone answers."""
        self._check_open()
        location = validate_location(lat, lon)
        if location is None:
            raise InvalidLocationError("species_near needs a location: lat and lon are both None")
        accuracy_m = validate_accuracy_m(accuracy_m)
        max_results = _positive_int("max_results", max_results)
        # The table answers "what lives here" whatever the fusion, unless the options turned it off.
        allowed = self._whitelist_allowed(location, accuracy_m, off=self.options.use_whitelist is False)
        mask = self._whitelist_mask(allowed)
        covered = mask is not None
        geo = self._geo_logits(location)
        flags = self._nearby_flags(location, allowed, geo)
        if geo is None:
            scores = None
        else:  # the geo bundle's log scores, or the post-processing model's geo logits
            scores = np.exp(geo) if self._geo is not None else 1.0 / (1.0 + np.exp(-geo.astype(np.float64)))
        if self._nearby_thresholds is not None and geo is not None:
            listed = flags == True  # noqa: E712 -- elementwise over an object array of True/False/None
        else:
            listed = mask if covered else np.full(len(self.labels), scores is not None)
        ranking = _ranked(np.zeros(len(self.labels)) if scores is None else scores, listed & self._category_mask,
                          max_results)
        categories = Categories(ranking, self.labels, score=np.ones(len(self.labels)) if scores is None else scores,
                                geo_score=None if scores is None else geo, expected_nearby=flags)
        return NearbySpecies(categories, covered, scores is not None, location, accuracy_m)
