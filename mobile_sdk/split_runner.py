"""Running a post-processing bundle as its two parts, caching the geo output per location.

The export writes, next to the two-input `model.tflite`, `geo.tflite` (signature `serving_default`:
`location` float32 [1, 2] degrees -> `geo_logits`, float, the same in-graph validation and encoding)
and `vision.tflite` (`image` uint8 [1, H, W, 3] -> `vision_logits`). The post-processing model's
logits are exactly vision_logits + geo_logits, so an app classifying many frames at one place runs
the geo part once per location, as iNaturalist's app does. The single model stays the contract;
`GeoClassifierOptions.split_models` (default: the manifest's `split_models.recommended`) opts in.
"""
from __future__ import annotations

import threading

import numpy as np

from .bundle import GEO_MODEL_FILE, VISION_MODEL_FILE
from .errors import BundleError, InvalidOptionsError, ModelError
from .runtime import IMAGE_INPUT, LOCATION_INPUT, TFLiteModel

_UNKNOWN = np.full((1, 2), np.nan, dtype=np.float32)


class PartModel(TFLiteModel):
    """A one-input part of a bundle's model: the same loading and per-thread runners as TFLiteModel."""

    def __init__(self, path, input_name: str, output_name: str, num_threads: int | None = None):
        self.input_name, self.output_name = input_name, output_name
        super().__init__(path, num_threads=num_threads)

    def _check_signature(self, inputs: dict, outputs: dict) -> None:
        if set(inputs) != {self.input_name} or self.output_name not in outputs:
            raise ModelError(f"{self.source}: expected input {self.input_name!r} and output {self.output_name!r}, "
                             f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}")
        self.output_shapes = {name: tuple(int(d) for d in det["shape"]) for name, det in outputs.items()}
        if self.input_name == IMAGE_INPUT:
            self.input_size = tuple(int(d) for d in inputs[IMAGE_INPUT]["shape"][1:3])

    def run_part(self, value: np.ndarray) -> np.ndarray:
        """One batch-1 input -> the part's output row [L] (a copy)."""
        return self._invoke(**{self.input_name: value})[self.output_name].reshape(-1)


class SplitModels:
    """vision.tflite + geo.tflite, fused as the post-processing graph does (logits = vision + geo,
    probabilities = softmax). The geo output of the last location is cached: `cache_hits` counts
    the calls it answered."""

    def __init__(self, bundle_path, num_threads: int | None = None):
        self.geo = PartModel(bundle_path / GEO_MODEL_FILE, LOCATION_INPUT, "geo_logits", num_threads)
        self.vision = PartModel(bundle_path / VISION_MODEL_FILE, IMAGE_INPUT, "vision_logits", num_threads)
        self._cached: tuple = (object(), None)  # (location key, geo logits): replaced whole, so thread-safe
        self._lock = threading.Lock()
        self.cache_hits = 0

    def geo_logits(self, location) -> np.ndarray:
        """float32 [L] geo logits at (lat, lon), or at an unknown location (None)."""
        key, value = self._cached
        if key == location:
            with self._lock:
                self.cache_hits += 1
            return value
        loc = _UNKNOWN if location is None else np.array([location], dtype=np.float32)
        value = self.geo.run_part(loc)
        self._cached = (location, value)
        return value

    def run(self, pixels: np.ndarray, location) -> dict[str, np.ndarray]:
        """The single model's outputs ([1, L] each) computed from the two parts."""
        vision = self.vision.run_part(pixels)
        geo = self.geo_logits(location)
        logits = (vision + geo).astype(np.float32)
        z = np.exp(logits.astype(np.float64) - logits.max())
        return {"vision_logits": vision[None], "geo_logits": geo[None], "logits": logits[None],
                "probabilities": (z / z.sum()).astype(np.float32)[None]}


def open_split_models(bundle, choice: bool | None, num_threads: int | None = None) -> SplitModels | None:
    """The bundle's split parts when `choice` (None: the manifest's recommendation) asks for them."""
    section = bundle.manifest.get("split_models")
    wanted = bool(section and section.get("recommended")) if choice is None else choice
    if not wanted:
        return None
    if not section:
        raise InvalidOptionsError(f"split_models=True but {bundle.path} has no {GEO_MODEL_FILE}/{VISION_MODEL_FILE} "
                                  "(only post-processing bundles have them)")
    split = SplitModels(bundle.path, num_threads)
    if split.vision.input_size != tuple(bundle.input_size):
        raise BundleError(f"{bundle.path}: {VISION_MODEL_FILE} takes {split.vision.input_size} pixels, "
                          f"{bundle.input_size} expected")
    return split
