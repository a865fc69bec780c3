"""The post-processing model's two parts as their own .tflite files (mobile_sdk.split_runner runs them):

    geo.tflite     location float32 [1, 2] degrees -> geo_logits   (float32 always: the location
                   path is never quantized, and the geo net is a few small layers)
    vision.tflite  image uint8 [1, H, W, 3]        -> vision_logits (the bundle's quantization)

Each part is the whole Keras model exported with the other input held constant and only its output
kept: the converter prunes the branch that no longer reaches an output, so the parts run exactly the
layers (and in-graph validation and encoding) of the single model. `verify_split` checks that the
parts, fused in numpy as the SDK fuses them, reproduce model.tflite.
"""
from __future__ import annotations

import tempfile

import numpy as np

from mobile_sdk.split_runner import PartModel
from mobile_sdk.runtime import IMAGE_INPUT, LOCATION_INPUT

from .quantization import QuantizationConfig, QuantizationError
from .verify import MIN_FLOAT32_AGREEMENT, VerificationError, expected_signature, run_tflite

PARTS = {"geo": (LOCATION_INPUT, "geo_logits"), "vision": (IMAGE_INPUT, "vision_logits")}


def has_parts(keras_model) -> bool:
    """Whether the model exposes separable vision and geo logits (the post-processing model)."""
    outputs = keras_model.output
    return isinstance(outputs, dict) and "vision_logits" in outputs and "geo_logits" in outputs


def convert_part(keras_model, part: str, config: QuantizationConfig) -> bytes:
    """One part of a post-processing Keras model -> .tflite bytes (see the module docstring)."""
    import keras
    import tensorflow as tf

    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}")
    input_name, output_name = PARTS[part]
    height, width = expected_signature(keras_model).image_size
    specs = {IMAGE_INPUT: tf.TensorSpec([1, height, width, 3], tf.uint8, name=IMAGE_INPUT),
             LOCATION_INPUT: tf.TensorSpec([1, 2], tf.float32, name=LOCATION_INPUT)}
    constants = {IMAGE_INPUT: lambda: tf.zeros([1, height, width, 3], tf.uint8),
                 LOCATION_INPUT: lambda: tf.fill([1, 2], float("nan"))}

    def endpoint(inputs):
        feeds = {name: inputs[name] if name == input_name else make() for name, make in constants.items()}
        return {output_name: keras_model(feeds, training=False)[output_name]}

    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint("serve", endpoint, input_signature=[{input_name: specs[input_name]}])
    with tempfile.TemporaryDirectory(prefix=f"geoaware-{part}-") as saved:
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if part == "geo":
            config = QuantizationConfig.for_float32()
        if config.mode != "int8":
            return config.convert(converter)
        # int8 vision: calibrate on the images alone (no location front end to keep float here).
        images = [sample[IMAGE_INPUT] for sample in config.representative_data()]
        config.apply(converter)
        converter.representative_dataset = lambda: ({IMAGE_INPUT: image} for image in images)
        try:
            return bytes(converter.convert())
        except Exception as exc:  # the converter raises bare Exceptions
            raise QuantizationError(f"int8 conversion of the vision part failed: {exc}") from exc


def fuse(vision_logits: np.ndarray, geo_logits: np.ndarray) -> np.ndarray:
    """Probabilities [N, L] from the parts' logits, as mobile_sdk.split_runner computes them."""
    logits = (vision_logits + geo_logits).astype(np.float64)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def verify_split(model_content: bytes, geo_content: bytes, vision_content: bytes, images: np.ndarray,
                 locations: np.ndarray, quantization: str) -> dict:
    """The parts fused vs model.tflite on the samples, located and with the location unknown.

    float32 parts must agree with the single model as the export requires of LiteRT vs Keras
    (top-1 on at least MIN_FLOAT32_AGREEMENT of samples) or VerificationError is raised."""
    geo = PartModel(geo_content, *PARTS["geo"])
    vision = PartModel(vision_content, *PARTS["vision"])
    vision_logits = np.stack([vision.run_part(images[i:i + 1]) for i in range(len(images))])
    report = {"samples": int(len(images))}
    for case, locs in (("located", locations), ("unknown_location", np.full_like(locations, np.nan))):
        geo_logits = np.stack([geo.run_part(locs[i:i + 1]) for i in range(len(locs))])
        single = run_tflite(model_content, images, locs, desc=f"single model {case}")["probabilities"]
        split = fuse(vision_logits, geo_logits)
        agreement = float(np.mean(split.argmax(-1) == single.argmax(-1)))
        report[case] = {"top1_agreement": agreement, "max_probability_diff": float(np.abs(split - single).max())}
        if quantization == "float32" and agreement < MIN_FLOAT32_AGREEMENT:
            raise VerificationError(f"{case}: geo.tflite + vision.tflite agree with model.tflite on {agreement:.1%} "
                                    f"of top-1 answers (need >= {MIN_FLOAT32_AGREEMENT:.1%})")
    return report
