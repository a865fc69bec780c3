"""A model over a dataset, batch by batch, cached on disk: the evaluation's probabilities of a run
and the post-processing trainer's logits of its frozen image model come from here; and an exported
bundle over a dataset through the SDK (`sdk_scores`), as an app would see it.

A cache file is named by a key of everything its arrays depend on (the model file's sha256 and the
rows), written atomically, and read back only when its shapes match, so a retrained model or another
dataset is never served stale arrays.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from mobile_sdk import GeoClassifier, GeoClassifierOptions
from mobile_sdk.fileio import atomic_write_bytes, sha256_file
from mobile_sdk.preprocess import load_image
from trainer.data.dataset import GeoDataset

logger = logging.getLogger(__name__)


def cached_arrays(path: Path | None, compute: Callable[[], dict], expected_shapes: dict | None = None,
                  desc: str = "") -> dict[str, np.ndarray]:
    """`compute()`'s arrays, saved to `path` (npz, atomically) and loaded from it next time; a cached
    file whose shapes differ from `expected_shapes` (name -> shape) is recomputed."""
    if path is not None and Path(path).is_file():
        with np.load(path) as cached:
            arrays = {k: cached[k] for k in cached.files}
        if all(arrays.get(k) is not None and arrays[k].shape == tuple(s) for k, s in (expected_shapes or {}).items()):
            logger.info("%s: cached %s", desc, path)
            return arrays
    arrays = compute()
    if path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
    return arrays


def dataset_fingerprint(ds: GeoDataset) -> str:
    """sha256 of the rows' image paths, EXIF orientations and locations (what a prediction depends
    on besides the model)."""
    digest = hashlib.sha256()
    digest.update("\n".join(ds.paths.tolist()).encode())
    digest.update(np.ascontiguousarray(ds.orientations, np.int32).tobytes())
    digest.update(np.ascontiguousarray(ds.lat).tobytes() + np.ascontiguousarray(ds.lon).tobytes())
    return digest.hexdigest()


def predict(run, run_dir, ds: GeoDataset, *, batch_size: int = 64, cache_dir: Path | None = None,
            desc: str = "predict") -> np.ndarray:
    """float32 [N, L] probabilities of a loaded run on `ds` (row order kept), cached in `cache_dir`
    under a key of the model file's sha256, the image size and the rows' paths and locations."""
    image_size = getattr(run.config, "image_size", None)
    if image_size is None:
        raise ValueError(f"run config {type(run.config).__name__} has no image_size")
    expected = (len(ds), len(run.labels))
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(
            f"{sha256_file(Path(run_dir) / 'model.keras')}|{image_size}|{dataset_fingerprint(ds)}".encode()
        ).hexdigest()[:24]
        cache_file = Path(cache_dir) / f"{Path(run_dir).name}-{key}.npz"

    def compute():
        from tqdm import tqdm

        from trainer.data.pipeline import make_dataset

        batches = make_dataset(ds, image_size, batch_size, training=False)
        chunks = [np.asarray(run.model(inputs, training=False)["probabilities"], dtype=np.float32)
                  for inputs, _ in tqdm(batches, total=math.ceil(len(ds) / batch_size), desc=desc, unit="batch")]
        probs = np.concatenate(chunks)
        if probs.shape != expected:
            raise ValueError(f"{desc}: predictions have shape {probs.shape}, expected {expected}")
        return {"probabilities": probs}

    return cached_arrays(cache_file, compute, {"probabilities": expected}, desc)["probabilities"]


def cached_logits(image_model, dataset, cache_path: Path | None, desc: str) -> dict[str, np.ndarray]:
    """Run a frozen image model once over a batched (inputs, label) `dataset`; keep
    (vision_logits, location, label), cached in `cache_path` (the caller keys it by the model file)."""

    def compute():
        import tensorflow as tf
        from tqdm import tqdm

        infer = tf.function(lambda x: image_model(x, training=False)["logits"])
        parts = {"vision_logits": [], "location": [], "label": []}
        for x, y in tqdm(dataset, desc=desc, unit="batch", file=sys.stdout):
            parts["vision_logits"].append(infer(x).numpy())
            parts["location"].append(x["location"].numpy())
            parts["label"].append(y.numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    return cached_arrays(cache_path, compute, desc=desc)


def sdk_scores(bundle_dir, ds: GeoDataset, options=None) -> np.ndarray:
    """float64 [N, L]: each row's category scores from mobile_sdk's GeoClassifier on an exported
    bundle (default options: the bundle's calibration temperature and recommended fusion, what an
    app gets), the image with its location where it has one; labels the SDK drops score 0."""
    scores = np.zeros((len(ds), ds.num_labels))
    with GeoClassifier.from_bundle(bundle_dir, options or GeoClassifierOptions()) as classifier:
        for row, (path, lat, lon, known) in enumerate(zip(ds.paths, ds.lat, ds.lon, ds.has_location)):
            location = (float(lat), float(lon)) if known else (None, None)
            for c in classifier.classify(load_image(path), *location).categories:
                scores[row, c.index] = c.score
    return scores
