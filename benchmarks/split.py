"""Per-frame latency of a post-processing bundle run as its two parts (geo output cached for a fixed
location, mobile_sdk.split_runner) against the single two-input model.tflite, at the demo size.

    python -m benchmarks.run --only split

The models are untrained (latency does not depend on the weights' values), int8 like the demo
bundle, with the geo part float32 as the export writes it; LiteRT, 1 thread, batch 1, interleaved.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Section, Target, interleaved, ratio_target
from trainer.evaluation.metrics import markdown_table

DEMO_SIZE = (64, 0.35)  # image size, alpha of `make demo`
NUM_CLASSES = 200
PLACE = (47.4, 8.5)


def bundle_parts(folder: Path, image_size: int, alpha: float, num_classes: int, seed: int = 0) -> None:
    """Untrained post-processing model.tflite, geo.tflite and vision.tflite into `folder` (int8)."""
    import keras

    from converters.export import convert_model, representative_data
    from converters.geo_parts import convert_part
    from converters.quantization import QuantizationConfig
    from mobile_sdk.bundle import GEO_MODEL_FILE, MODEL_FILE, VISION_MODEL_FILE
    from trainer.model import networks

    keras.utils.set_random_seed(seed)
    model = networks.build_postprocess_model(networks.build_image_model(num_classes, image_size=image_size, alpha=alpha),
                                           networks.build_geo_head(num_classes, seed=seed))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (8, image_size, image_size, 3), dtype=np.uint8)
    locations = np.stack([rng.uniform(-60, 70, 8), rng.uniform(-180, 180, 8)], axis=1).astype(np.float32)
    config = QuantizationConfig.for_int8(representative_data(images, locations))
    (folder / MODEL_FILE).write_bytes(convert_model(model, config))
    (folder / GEO_MODEL_FILE).write_bytes(convert_part(model, "geo", config))
    (folder / VISION_MODEL_FILE).write_bytes(convert_part(model, "vision", config))


def run(repeats: int = 200, quick: bool = False) -> Section:
    from mobile_sdk.bundle import MODEL_FILE
    from mobile_sdk.runtime import TFLiteModel
    from mobile_sdk.split_runner import SplitModels

    begin = time.monotonic()
    image_size, alpha = DEMO_SIZE
    with tempfile.TemporaryDirectory(prefix="geoaware-split-") as tmp:
        folder = Path(tmp)
        bundle_parts(folder, image_size, alpha, NUM_CLASSES)
        single, split = TFLiteModel(folder / MODEL_FILE, num_threads=1), SplitModels(folder, num_threads=1)
        pixels = np.random.default_rng(0).integers(0, 256, (1, image_size, image_size, 3), dtype=np.uint8)
        location = np.array([PLACE], np.float32)
        moving = iter(np.random.default_rng(1).uniform(-50, 50, (10 ** 7, 2)))
        calls = {"single model.tflite": lambda: single.run(pixels, location),
                 "split, same place (geo cached)": lambda: split.run(pixels, PLACE),
                 "split, new place every frame": lambda: split.run(pixels, tuple(float(v) for v in next(moving)))}
        timings = interleaved(calls, repeats=20 if quick else repeats, warmup=5)
    base = timings["single model.tflite"].median
    rows = [[name, t.ms(), f"{t.median / base:.3f}x"] for name, t in timings.items()]
    body = "\n".join([
        f"Post-processing MobileNet V2 at {image_size} px, alpha {alpha}, {NUM_CLASSES} labels, int8 (geo part "
        "float32), untrained weights; LiteRT, 1 thread, batch 1; the three calls interleaved. The split path "
        "includes the numpy fusion (add, softmax) the SDK does.", "",
        markdown_table(["per frame", "median latency", "vs single"], rows)])
    target: Target = ratio_target(
        "split models (geo cached) ≤ 1.0x single model per frame at a fixed location",
        timings["split, same place (geo cached)"].median, base, 1.0, "split/single per-frame latency",
        "the geo MLP saved per frame is smaller than the cost of a second interpreter call and the numpy fusion",
        key="split_vs_single_frame_latency")
    return Section("SDK: split geo/vision models vs the single model", body, [target], time.monotonic() - begin)
