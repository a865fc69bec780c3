"""Running a bundle's .tflite: LiteRT (`ai_edge_litert`) when installed, else `tflite_runtime`.

LiteRT interpreters are not safe to share between threads, so each thread gets its own interpreter
over the same model bytes (created on first use); calls from many threads then run in parallel.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np

from .errors import ModelError
from .quiet import drop_lines_with, filtered_native_stderr

try:
    from ai_edge_litert.interpreter import Interpreter as _Interpreter
    RUNTIME_NAME = "ai_edge_litert"
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter
        RUNTIME_NAME = "tflite_runtime"
    except ImportError:
        _Interpreter = None
        RUNTIME_NAME = None

SIGNATURE_KEY = "serving_default"
IMAGE_INPUT = "image"
LOCATION_INPUT = "location"
_XNNPACK_NOTICE = drop_lines_with("Created TensorFlow Lite XNNPACK delegate")


def _require_runtime():
    if _Interpreter is None:
        raise ModelError("no TFLite runtime installed: `pip install ai-edge-litert` (or tflite-runtime)")
    return _Interpreter


class TFLiteModel:
    """One exported model: checks the contract signature once, then runs it thread-safely.

    The contract (docs/CONTRACTS.md): signature `serving_default`, inputs `image` uint8 [1, H, W, 3]
    and `location` float32 [1, 2]; outputs are named (always `probabilities`).
    """

    def __init__(self, model, num_threads: int | None = None, source: str | None = None):
        if isinstance(model, (str, Path)):
            source = source or str(model)
            try:
                model = Path(model).read_bytes()
            except OSError as exc:
                raise ModelError(f"cannot read model {source}: {exc.strerror or exc}") from None
        self.source = source or "<bytes>"
        self._content = bytes(model)
        if not self._content:
            raise ModelError(f"{self.source}: model file is empty")
        self._num_threads = num_threads
        self._local = threading.local()
        self._check_signature(*self._bound()[1:3])  # the first thread's interpreter validates the file

    def _check_signature(self, inputs: dict, outputs: dict) -> None:
        if set(inputs) != {IMAGE_INPUT, LOCATION_INPUT}:
            raise ModelError(f"{self.source}: signature {SIGNATURE_KEY!r} has inputs {sorted(inputs)}, "
                             f"expected {[IMAGE_INPUT, LOCATION_INPUT]}")
        image, location = inputs[IMAGE_INPUT], inputs[LOCATION_INPUT]
        shape = tuple(int(d) for d in image["shape"])
        if image["dtype"] != np.uint8 or len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ModelError(f"{self.source}: input 'image' must be uint8 [1, H, W, 3], got "
                             f"{np.dtype(image['dtype']).name} {list(shape)}")
        if location["dtype"] != np.float32 or tuple(int(d) for d in location["shape"]) != (1, 2):
            raise ModelError(f"{self.source}: input 'location' must be float32 [1, 2], got "
                             f"{np.dtype(location['dtype']).name} {list(location['shape'])}")
        self.input_size = (shape[1], shape[2])
        self.output_shapes = {name: tuple(int(d) for d in det["shape"])
                              for name, det in outputs.items()}
        if "probabilities" not in self.output_shapes:
            raise ModelError(f"{self.source}: outputs {sorted(self.output_shapes)} lack 'probabilities'")

    def _bound(self):
        """This thread's (interpreter, signature inputs, signature outputs, tensors): `tensors` is
        ({input name: index}, {output name: index}) with the tensors allocated once, so that
        set_tensor/invoke/get_tensor skip what a signature runner redoes on every call (resize and
        re-allocate each input: ~0.08 ms a call at 64 px); or a signature runner when the signature's
        tensors are not the interpreter's own (a model with several subgraphs)."""
        bound = getattr(self._local, "bound", None)
        if bound is None:
            interpreter_cls = _require_runtime()
            try:
                interpreter = interpreter_cls(model_content=self._content, num_threads=self._num_threads)
                signatures = interpreter.get_signature_list()
                if SIGNATURE_KEY not in signatures:
                    raise ModelError(f"{self.source}: no {SIGNATURE_KEY!r} signature (has {sorted(signatures)})")
                runner = interpreter.get_signature_runner(SIGNATURE_KEY)
                inputs, outputs = runner.get_input_details(), runner.get_output_details()
                own = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
                if own.issuperset(d["index"] for d in (*inputs.values(), *outputs.values())):
                    del runner  # it holds the interpreter's internals: invoke() refuses to run while it lives
                    with filtered_native_stderr(_XNNPACK_NOTICE):  # a float model's delegate prints an INFO line
                        interpreter.allocate_tensors()
                    tensors = ({name: d["index"] for name, d in inputs.items()},
                               {name: d["index"] for name, d in outputs.items()})
                else:
                    tensors = runner
            except ModelError:
                raise
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"{self.source}: not a valid TFLite model (truncated or corrupted?): {exc}") from None
            bound = self._local.bound = (interpreter, inputs, outputs, tensors)
        return bound

    def _invoke(self, **values: np.ndarray) -> dict[str, np.ndarray]:
        """One inference on this thread's interpreter: input name -> array; output name -> a copy."""
        interpreter, _, _, tensors = self._bound()
        first = not getattr(self._local, "ran", False)
        try:
            # a float model's first run prints LiteRT's "Created ... XNNPACK delegate" INFO line
            with filtered_native_stderr(_XNNPACK_NOTICE) if first else contextlib.nullcontext():
                if not isinstance(tensors, tuple):  # the signature runner
                    out = dict(tensors(**values))  # GetTensor returns copies
                else:
                    inputs, outputs = tensors
                    for name, value in values.items():
                        interpreter.set_tensor(inputs[name], value)
                    interpreter.invoke()
                    out = {name: interpreter.get_tensor(index) for name, index in outputs.items()}  # copies
            self._local.ran = True
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"{self.source}: inference failed: {exc}") from None
        return out

    def run(self, image: np.ndarray, location: np.ndarray) -> dict[str, np.ndarray]:
        """image uint8 [1, H, W, 3]; location float32 [1, 2] (NaN = unknown). Returns output copies."""
        return self._invoke(image=image, location=location)
