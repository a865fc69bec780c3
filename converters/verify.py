"""Checks that an exported .tflite model is what the app expects and computes what Keras computes.

`python -m converters.verify BUNDLE_DIR --model RUN_DIR [--data SPEC] [--samples N]` re-verifies an
existing bundle: file hashes, the signature, and LiteRT vs Keras on validation samples.

Every check raises a ValueError subclass naming the problem; `compare` returns the numbers that
go into the manifest.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tqdm import tqdm

from mobile_sdk.bundle import MODEL_FILE, open_bundle
from mobile_sdk.errors import ModelError
from mobile_sdk.runtime import SIGNATURE_KEY as SIGNATURE
from mobile_sdk.runtime import TFLiteModel

# float32 must agree with Keras on (almost) every sample; quantized modes are reported, not gated.
MIN_FLOAT32_AGREEMENT = 0.995
# Ops whose weights make them the end of the location front end (see location_front_end).
_WEIGHTED_OPS = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL"}
_UNQUANTIZED = {np.dtype(np.float32), np.dtype(np.bool_)}


class VerificationError(ValueError):
    """An exported model that does not compute what the Keras model computes."""


class SignatureError(VerificationError):
    """An exported model whose signature is not the contract's (docs/CONTRACTS.md)."""


@dataclass(frozen=True)
class ExpectedSignature:
    """What the app codes against: image uint8 [1,H,W,3], location float32 [1,2], named [1,L] outputs."""

    image_size: tuple[int, int]
    outputs: tuple[str, ...]
    num_labels: int


def interpreter(model_content: bytes, delegates: bool = True) -> Interpreter:
    """A LiteRT interpreter; delegates=False keeps every op visible (XNNPACK hides them)."""
    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        return Interpreter(model_content=bytes(model_content), experimental_op_resolver_type=resolver)
    except (ValueError, RuntimeError) as exc:
        raise SignatureError(f"LiteRT cannot load the model: {exc}") from exc


def check_signature(model_content: bytes, expected: ExpectedSignature) -> None:
    """Raise SignatureError naming the first difference from the contract's signature.

    The SDK's loader (mobile_sdk.runtime.TFLiteModel) checks the inputs the app relies on; on top
    the export requires exactly one signature, a static batch of 1, the run's image size, and the
    Keras model's output names and label count.
    """
    interp = interpreter(model_content)
    signatures = interp.get_signature_list()
    if list(signatures) != [SIGNATURE]:
        raise SignatureError(f"expected exactly one signature {SIGNATURE!r}, found {sorted(signatures)}")
    try:
        model = TFLiteModel(model_content, source="exported model")
    except ModelError as exc:
        raise SignatureError(str(exc)) from None
    if tuple(model.input_size) != tuple(expected.image_size):
        raise SignatureError(f"input 'image' is {list(model.input_size)} pixels, the Keras model takes "
                             f"{list(expected.image_size)}")
    runner = interp.get_signature_runner(SIGNATURE)
    for name, detail in runner.get_input_details().items():
        if detail["shape_signature"][0] != 1:
            raise SignatureError(f"input {name!r} must have a static batch of 1, found shape "
                                 f"{list(detail['shape_signature'])}")
    outputs = runner.get_output_details()
    if sorted(outputs) != sorted(expected.outputs):
        raise SignatureError(f"signature outputs must be {sorted(expected.outputs)}, found {sorted(outputs)}")
    for name, detail in outputs.items():
        if np.dtype(detail["dtype"]) != np.float32:
            raise SignatureError(f"output {name!r} must be float32, found {np.dtype(detail['dtype']).name}")
        if list(detail["shape"]) != [1, expected.num_labels]:
            raise SignatureError(f"output {name!r} must have shape [1, {expected.num_labels}], "
                                 f"found {list(detail['shape'])}")


def _graph(model_content: bytes):
    interp = interpreter(model_content, delegates=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 -- the only op-level view LiteRT offers
    location = interp.get_signature_runner(SIGNATURE).get_input_details()["location"]["index"]
    return ops, tensors, location


def location_front_end(model_content: bytes) -> list[dict]:
    """The ops computed from the location input alone, in execution order, up to and including the
    first weighted layer on each path (the location encoding and the geo net's first layer).

    This is the part that must stay float32 in every mode: int8 would quantize raw degrees in
    ~1 degree steps (wider than the whitelist radius) and turn NaN (unknown) into a finite number.
    """
    ops, tensors, location = _graph(model_content)
    produced = {i for op in ops for i in op["outputs"]}
    derived = {location}  # tensors computed from the location alone
    front = []
    for op in ops:  # TFLite stores operators in execution order
        activations = [i for i in op["inputs"] if i >= 0 and (i in produced or i == location)]
        if activations and all(i in derived for i in activations):
            front.append({**op, "tensors": tensors})
            if op["op_name"] not in _WEIGHTED_OPS:
                derived.update(op["outputs"])
    return front


def check_location_float(model_content: bytes) -> None:
    """Raise VerificationError when any activation of the location front end is quantized."""
    # Every activation of the front end is the output of a front-end op (or the float32 input).
    # A QUANTIZE is fine only as an exit, feeding the quantized body (e.g. the known flag into an
    # int8 gate); feeding the front end itself it would round the location.
    front = location_front_end(model_content)
    consumed = {i for op in front for i in op["inputs"]}
    for op in front:
        for index in op["outputs"]:
            tensor = op["tensors"][index]
            quantized = np.dtype(tensor["dtype"]) not in _UNQUANTIZED
            if (index in consumed) if op["op_name"] == "QUANTIZE" else quantized:
                raise VerificationError(
                    f"the location path is quantized: op {op['op_name']} outputs {tensor['name']!r} "
                    f"({np.dtype(tensor['dtype']).name}) into the location encoding, which must stay "
                    "float32 (docs/export.md, 'The location stays float')")


def run_tflite(model_content: bytes, images: np.ndarray, locations: np.ndarray, desc: str = "LiteRT") -> dict:
    """Run the model as the SDK does, one sample at a time (batch 1) -> {output name: [N, L]}."""
    model = TFLiteModel(model_content, source="exported model")
    rows = [model.run(images[i:i + 1], locations[i:i + 1])
            for i in tqdm(range(len(images)), desc=desc, leave=False, disable=len(images) < 50)]
    return {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}


def run_keras(model, images: np.ndarray, locations: np.ndarray, batch_size: int = 64) -> dict:
    chunks = [model({"image": images[i:i + batch_size], "location": locations[i:i + batch_size]}, training=False)
              for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([np.asarray(c[name]) for c in chunks]) for name in chunks[0]}


def compare(model_content: bytes, keras_model, images: np.ndarray, locations: np.ndarray, labels: np.ndarray,
            quantization: str) -> dict:
    """LiteRT vs Keras on the samples, with their locations and with the location unknown (NaN).

    Raises VerificationError when float32 agrees on fewer than 99.5% of top-1 answers, or when an
    unknown location does not give exactly zero geo logits.
    """
    if len(images) == 0:
        raise VerificationError("no verification samples: the validation split is empty")
    unknown = np.full_like(locations, np.nan)
    report = {"samples": int(len(images)), "quantization": quantization}
    for case, locs in (("located", locations), ("unknown_location", unknown)):
        lite = run_tflite(model_content, images, locs, desc=f"LiteRT {case}")
        keras_out = run_keras(keras_model, images, locs)
        lite_top1 = lite["probabilities"].argmax(-1)
        keras_top1 = keras_out["probabilities"].argmax(-1)
        agreement = float(np.mean(lite_top1 == keras_top1))
        if not np.isfinite(lite["probabilities"]).all():
            raise VerificationError(f"{case}: the exported model outputs non-finite probabilities")
        report[case] = {
            "top1_agreement": agreement,
            "max_probability_diff": float(np.abs(lite["probabilities"] - keras_out["probabilities"]).max()),
            "tflite_top1_accuracy": float(np.mean(lite_top1 == labels)),
            "keras_top1_accuracy": float(np.mean(keras_top1 == labels)),
        }
        report[case]["accuracy_change"] = report[case]["tflite_top1_accuracy"] - report[case]["keras_top1_accuracy"]
        if quantization == "float32" and agreement < MIN_FLOAT32_AGREEMENT:
            raise VerificationError(
                f"{case}: float32 LiteRT agrees with Keras on {agreement:.1%} of top-1 answers "
                f"(need >= {MIN_FLOAT32_AGREEMENT:.1%}); largest probability difference "
                f"{report[case]['max_probability_diff']:.3g}")
        if case == "unknown_location" and "geo_logits" in lite and np.any(lite["geo_logits"] != 0):
            raise VerificationError("unknown location (NaN) must give geo_logits exactly 0, found "
                                    f"max |geo_logits| = {np.abs(lite['geo_logits']).max():.3g}")
    return report


def load_samples(ds, image_size, n: int, seed: int = 0):
    """n rows of a GeoDataset (seeded random choice) through the eval pipeline ->
    (images uint8 [n,H,W,3], locations float32 [n,2] with NaN = unknown, labels int32 [n])."""
    from trainer.data.pipeline import make_dataset  # TensorFlow: only when data is actually needed

    if n < 1:
        raise ValueError(f"sample count must be >= 1, got {n}")
    if len(ds) == 0:
        raise VerificationError("cannot draw samples from an empty dataset")
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    features, labels = next(iter(make_dataset(ds.subset(rows), image_size, batch_size=len(rows), training=False)))
    return features["image"].numpy(), features["location"].numpy(), labels.numpy()


def expected_signature(keras_model) -> ExpectedSignature:
    """The signature a Keras model of the contract (dict inputs, dict outputs) must export to."""
    image = keras_model.input["image"]
    outputs = keras_model.output
    if not isinstance(outputs, dict) or "probabilities" not in outputs:
        raise SignatureError("the Keras model must have dict outputs including 'probabilities' (docs/CONTRACTS.md)")
    return ExpectedSignature(image_size=(int(image.shape[1]), int(image.shape[2])), outputs=tuple(sorted(outputs)),
                             num_labels=int(outputs["probabilities"].shape[-1]))


def verify_bundle(bundle_dir, run, data_spec: str | None = None, samples: int = 200) -> dict:
    """Re-verify a bundle against its training run: hashes, signature, location path, parity."""
    from trainer.data.readers import load_split

    bundle = open_bundle(bundle_dir)  # checks every file's sha256, the labels and the table
    content = (Path(bundle_dir) / MODEL_FILE).read_bytes()  # hash-checked by open_bundle
    expected = expected_signature(run.model)
    check_signature(content, expected)
    check_location_float(content)
    if bundle.labels != list(run.labels):
        raise VerificationError("the bundle's labels.txt differs from the run's labels")
    val = load_split(data_spec or run.config.data, "val", label_names=list(run.labels))
    images, locations, truth = load_samples(val, expected.image_size, samples)
    return compare(content, run.model, images, locations, truth, bundle.manifest["quantization"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.verify", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle folder written by converters.export")
    parser.add_argument("--model", required=True, help="the training run folder the bundle was exported from")
    parser.add_argument("--data", help="data SPEC for validation samples (default: the run's)")
    parser.add_argument("--samples", type=int, default=200, help="validation samples to compare (default 200)")
    args = parser.parse_args(argv)
    from trainer.training.runs import load_run

    try:
        report = verify_bundle(args.bundle, load_run(args.model), args.data, args.samples)
    except (ValueError, OSError) as exc:
        print(f"verification FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
