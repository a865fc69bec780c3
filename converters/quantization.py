"""Quantization as a config with named constructors and one method that applies it to a converter
(the MediaPipe Model Maker pattern), plus the int8 conversion that keeps the location float.

    config = QuantizationConfig.for_int8(representative_data)
    tflite_bytes = config.convert(tf.lite.TFLiteConverter.from_saved_model(saved_model_dir))

Every mode leaves `inference_input_type` at its default: it applies to *all* inputs, so setting it
would quantize the location too. The image input is uint8 anyway (the model casts it inside).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MODES = ("float32", "float16", "dynamic", "int8")


class QuantizationError(ValueError):
    """A quantization config that cannot work, or a conversion that failed."""


def _as_generator_fn(data) -> Callable[[], Iterable[dict]]:
    """Accept a generator function or a re-iterable collection of {"image", "location"} dicts."""
    if callable(data):
        return data
    if isinstance(data, (list, tuple)):
        if not data:
            raise QuantizationError("int8 needs a non-empty representative dataset")
        return lambda: iter(data)
    raise QuantizationError(
        f"representative_data must be a generator function or a list of input dicts, got {type(data).__name__}")


@dataclass(frozen=True)
class QuantizationConfig:
    mode: str
    # Yields {"image": uint8 [1,H,W,3], "location": float32 [1,2]} from real training samples.
    representative_data: Callable[[], Iterable[dict]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise QuantizationError(f"unknown quantization {self.mode!r}; choose one of {MODES}")
        if self.mode == "int8":
            if self.representative_data is None:
                raise QuantizationError("int8 quantization needs representative_data (real training samples)")
            object.__setattr__(self, "representative_data", _as_generator_fn(self.representative_data))
        elif self.representative_data is not None:
            raise QuantizationError(f"{self.mode} takes no representative_data; only int8 is calibrated")

    @classmethod
    def for_float32(cls) -> QuantizationConfig:
        return cls("float32")

    @classmethod
    def for_float16(cls) -> QuantizationConfig:
        """Weights stored as float16 (half the size); computation stays float."""
        return cls("float16")

    @classmethod
    def for_dynamic(cls) -> QuantizationConfig:
        """int8 weights, float activations quantized on the fly (no calibration)."""
        return cls("dynamic")

    @classmethod
    def for_int8(cls, representative_data) -> QuantizationConfig:
        """Full-integer weights and activations, calibrated on `representative_data`."""
        return cls("int8", representative_data)

    @classmethod
    def from_mode(cls, mode: str, representative_data=None) -> QuantizationConfig:
        return cls(mode, representative_data)

    def apply(self, converter):
        """Set this mode's options on a tf.lite.TFLiteConverter; returns it."""
        import tensorflow as tf

        if self.mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if self.mode == "int8":
            converter.representative_dataset = self.representative_data
            # No TFLITE_BUILTINS fallback is needed: ops without int8 kernels (SIN, COS in the
            # location encoding) stay float32 between DEQUANTIZE/QUANTIZE in this mode.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter

    def convert(self, converter) -> bytes:
        """Apply the config and convert. int8 keeps the location front end float (docs/export.md)."""
        self.apply(converter)
        try:
            if self.mode != "int8":
                return bytes(converter.convert())
            return _int8_with_float_location(converter, self.representative_data)
        except QuantizationError:
            raise
        except Exception as exc:  # the converter raises bare Exceptions (ConverterError, RuntimeError)
            raise QuantizationError(f"{self.mode} conversion failed: {exc}") from exc


def _int8_with_float_location(converter, representative_data) -> bytes:
    """Calibrate, then quantize everything except the location front end (selective quantization).

    Plain int8 conversion quantizes the raw degrees at the input (steps of ~1 degree, wider than
    the whitelist radius), quantizes the |lon| <= 3.4e38 constant out of range, and maps NaN to a
    finite number, so every location reads as unknown or as the wrong place. The quantization
    debugger's denylist keeps those ops float; the names come from the calibrated graph itself.
    """
    import tensorflow as tf

    from .verify import location_front_end

    with warnings.catch_warnings():  # the debugger builds a tf.lite.Interpreter internally
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative_data)
        front = location_front_end(debugger.calibrated_model)
        names = sorted({op["tensors"][i]["name"] for op in front for i in op["outputs"]})
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names)
        return bytes(debugger.get_nondebug_quantized_model())
