"""GeoClassifier: what an app does with a bundle, modelled on MediaPipe Tasks' ImageClassifier.

    with GeoClassifier.from_bundle("bundle/") as clf:
        result = clf.classify("photo.jpg", lat=37.77, lon=-122.42)
        print(result.categories[0].label, result.location_used)

It opens the bundle (and a geo bundle beside an image-only one), runs the model on a prepared
image and location, fuses the scores (mobile_sdk.fusion) and builds the answer (mobile_sdk.results),
with the explanations and per-label overrides of mobile_sdk.answers. Its options are
mobile_sdk.options.GeoClassifierOptions.
"""
from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np

from . import answers, geo_scores, nearby
from .accuracy import validate_accuracy_m, widened_whitelist
from .bundle import Bundle, open_bundle
from .errors import GeoAwareError, InvalidImageError, InvalidLocationError, InvalidOptionsError
from .fusion import Fusion, softmax, tempered
from .geo import validate_location
from .options import GeoClassifierOptions, positive_int
from .preprocess import prepare_image
from .ranking import Ranking
from .results import Categories, ClassificationResult, Deferred, DeferredTuple, NearbySpecies, PerLabel, resolved
from .split_runner import open_split_models

GEO_MODEL_KIND = "geoprior"
_UNKNOWN_LOCATION = np.full((1, 2), np.nan, dtype=np.float32)  # the contract: NaN = unknown, never (0, 0)


def _holds(sorted_values: np.ndarray, value) -> bool:
    at = int(sorted_values.searchsorted(value))
    return at < sorted_values.size and bool(sorted_values[at] == value)


def _ranked(scores: np.ndarray, keep: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the kept labels by descending score (ties: lower index first), at most `limit`."""
    ranking = Ranking(scores, keep, limit)
    return ranking.first(ranking.size)


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
        # no list, no threshold (the usual options): what is kept is scores >= 0, one numpy call a classify
        self._keeps_all = bool(self._category_mask.all() and not self._min_score.any())
        self._split = open_split_models(bundle, options.split_models, options.num_threads)
        # A geo bundle's expected-nearby thresholds are on its own scores: they answer where it is present.
        self._nearby = nearby.open_thresholds(bundle if self._geo is None else self._geo)
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

    def _nearby_flags(self, location, allowed, location_logits) -> np.ndarray | None:
        """object [L] expected-nearby flags (True/False/None), or None without a location;
        `location_logits`: the geo logits of a post-processing model, the geo bundle's logits f."""
        if location is None:
            return None
        if self._nearby is not None and location_logits is not None:
            return self._nearby.flags(location_logits)
        return nearby.flags_from_whitelist(allowed, len(self.labels))

    def _deferred_flags(self, location, allowed, location_logits) -> PerLabel:
        """`_nearby_flags` at a known location, built when `excluded` reads them all; a Category
        reads its own label's flag by the same rule."""
        thresholds = self._nearby
        if thresholds is not None and location_logits is not None:  # nearby.BundleThresholds, one label
            scores = Deferred(lambda: thresholds.scores(location_logits))  # log scores: one pass over the labels
            one = lambda i: thresholds.flag(scores[i], i)  # noqa: E731
        else:  # nearby.flags_from_whitelist, one label
            one = lambda i: None if allowed is None else _holds(allowed, i)  # noqa: E731
        return PerLabel(lambda: self._nearby_flags(location, allowed, location_logits), one)

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
            out = tempered(out, self._temperature)
        probs = out["probabilities"].reshape(-1).astype(np.float64)
        vision = geo = location_logits = None  # location_logits: what the expected-nearby flags read
        if self._has_parts:  # the image-only probabilities: only a read Category or `excluded` needs them
            vision_logits = out["vision_logits"].reshape(-1)
            vision = Deferred(lambda: softmax(vision_logits))
            geo = location_logits = out["geo_logits"].reshape(-1).astype(np.float64)
        elif self._geo is not None and location is not None:
            # vision x geo: log softmax(vision logits) + the geo model's log score, renormalised.
            vision_logits = out["logits"].reshape(-1).astype(np.float64)
            vision = softmax(vision_logits)
            location_logits = self._geo_bundle_logits(location)
            geo = geo_scores.log_scores(location_logits, self._geo_objective)
            out["logits"] = np.log(np.maximum(vision, 1e-300)) + geo
            probs = softmax(out["logits"])

        # One table lookup: what lives here (for expected_nearby, unless the options turned the table
        # off) is also what the fusion filters by, unless the fusion is off.
        allowed = self._whitelist_allowed(location, accuracy_m, off=self.options.use_whitelist is False)
        mask = None if self.fusion.whitelist == "off" else self._whitelist_mask(allowed)
        scores, filtered = self.fusion.apply(probs, out["logits"].reshape(-1) if "logits" in out else None, mask)
        keep = scores >= 0.0 if self._keeps_all else self._category_mask & (scores >= self._min_score)
        if mask is not None and self.fusion.whitelist == "hard" and filtered:
            keep &= mask
        flags = None if location is None else self._deferred_flags(location, allowed, location_logits)
        ranking = Ranking(scores, keep, self.options.max_results)
        categories = Categories(ranking, self.labels, score=scores, vision_score=vision, geo_score=geo,
                                expected_nearby=flags)
        used = location is not None and self._location_matters
        taxonomy, threshold = self._bundle.taxonomy, self.options.rollup_threshold
        rollup = None if taxonomy is None or threshold is None else taxonomy.rollup(
            np.where(self._category_mask, scores, 0.0), threshold)
        k = self.options.excluded_top_k
        excluded = () if k == 0 else DeferredTuple(lambda: answers.excluded_labels(
            self.labels, probs if vision is None else resolved(vision), scores, ranking.first(k), k,
            category_mask=self._category_mask, whitelist=mask, whitelisted_out=filtered, nearby=resolved(flags),
            min_score=self._overrides.min_score, score_threshold=self.options.score_threshold))
        return ClassificationResult(categories, used, filtered, self.model_version, location, rollup, excluded,
                                    None if location is None else accuracy_m)

    def _geo_bundle_logits(self, location) -> np.ndarray:
        """The geo bundle's per-label logits f at a known location (their log scores:
        mobile_sdk.geo_scores)."""
        blank = np.zeros((1, *self._geo.input_size, 3), dtype=np.uint8)
        return self._geo.model.run(blank, np.array([location], dtype=np.float32))["logits"].reshape(-1)

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

    def _location_logits(self, location) -> np.ndarray | None:
        """The geo bundle's logits f, or the post-processing model's geo logits at a point. These do
        not depend on the image (they are added to the image logits), so the single model gives them
        from a blank image."""
        if self._geo is not None:
            return self._geo_bundle_logits(location)
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
        max_results = positive_int("max_results", max_results)
        # The table answers "what lives here" whatever the fusion, unless the options turned it off.
        allowed = self._whitelist_allowed(location, accuracy_m, off=self.options.use_whitelist is False)
        mask = self._whitelist_mask(allowed)
        covered = mask is not None
        geo = self._location_logits(location)
        flags = self._nearby_flags(location, allowed, geo)
        if geo is not None and self._geo is not None:  # the geo bundle's log scores
            geo = geo_scores.log_scores(geo, self._geo_objective)
        if geo is None:
            scores = None
        else:  # the geo bundle's score, or sigmoid of the post-processing model's geo logits
            scores = np.exp(geo) if self._geo is not None else 1.0 / (1.0 + np.exp(-geo.astype(np.float64)))
        if self._nearby is not None and geo is not None:
            listed = flags == True  # noqa: E712 -- elementwise over an object array of True/False/None
        else:
            listed = mask if covered else np.full(len(self.labels), scores is not None)
        ranking = _ranked(np.zeros(len(self.labels)) if scores is None else scores, listed & self._category_mask,
                          max_results)
        categories = Categories(ranking, self.labels, score=np.ones(len(self.labels)) if scores is None else scores,
                                geo_score=None if scores is None else geo, expected_nearby=flags)
        return NearbySpecies(categories, covered, scores is not None, location, accuracy_m)
