"""Export a training run as an app-ready bundle (docs/export.md):

    python -m converters.export --model RUN_DIR --out BUNDLE_DIR --quantize float32|float16|dynamic|int8
        [--data SPEC] [--force] [--calibration-samples N] [--verify-samples N]
        [--whitelist-radius MILES] [--whitelist-precision P]

Keras model -> SavedModel with one batch-1 signature -> TFLiteConverter (quantized per
converters.quantization) -> signature and location-path checks -> LiteRT vs Keras on validation
samples -> bundle folder (model.tflite, labels.txt, whitelist.gwl, the optional files of
converters.extras, manifest.json last), written in a hidden temporary folder next to BUNDLE_DIR and
renamed into place. The manifest's
`recommended_fusion` (whitelist off / soft / hard) is the best one measured through the SDK on the
tuning part of `val` (converters.fusion); GeoClassifier applies it unless its options say otherwise.
Its `calibration` temperature is fitted on the same images (kept when it lowers their ECE) and
GeoClassifier divides the logits by it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mobile_sdk.bundle import (MANIFEST_FILE, MODEL_FILE, WHITELIST_FILE, manifest_for, write_labels,
                               write_manifest)
from mobile_sdk.fileio import atomic_write_bytes, check_replaceable, owned_temp_folder, staged_folder
from mobile_sdk.whitelist.builder import DEFAULT_PRECISION, DEFAULT_RADIUS_MILES, write_whitelist

from .extras import write_extras
from .fusion import choose_fusion, evaluation_rows, fit_calibration, measure_fusions
from .quantization import MODES, QuantizationConfig
from .verify import check_location_float, check_signature, compare, expected_signature, load_samples

DEFAULT_CALIBRATION_SAMPLES = 200
DEFAULT_VERIFY_SAMPLES = 200
DEFAULT_WHITELIST_RADIUS_MILES, DEFAULT_WHITELIST_PRECISION = DEFAULT_RADIUS_MILES, DEFAULT_PRECISION


class ExportError(ValueError):
    """An export that cannot proceed: bad arguments, or a target folder it must not overwrite."""


def save_serving_model(model, directory) -> None:
    """Keras model -> SavedModel with one endpoint taking batch-1 `image` and `location`.

    model.export(format="tf_saved_model") would do, but leaves the batch dimension dynamic; a
    static batch of 1 is what the contract says and what mobile delegates handle best.
    """
    import keras
    import tensorflow as tf

    height, width = expected_signature(model).image_size
    signature = {"image": tf.TensorSpec([1, height, width, 3], tf.uint8, name="image"),
                 "location": tf.TensorSpec([1, 2], tf.float32, name="location")}
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda inputs: model(inputs, training=False), input_signature=[signature])
    archive.write_out(str(directory), verbose=False)


def convert_model(model, config: QuantizationConfig) -> bytes:
    """Keras model -> checked .tflite bytes (signature as the contract says, location path float)."""
    import tensorflow as tf

    with owned_temp_folder("geoaware-savedmodel-") as saved:  # a killed run's leftover goes next time
        save_serving_model(model, saved)
        content = config.convert(tf.lite.TFLiteConverter.from_saved_model(str(saved)))
    check_signature(content, expected_signature(model))
    check_location_float(content)
    return content


def representative_data(images, locations) -> list[dict]:
    """Calibration inputs in the signature's form: one batch-1 dict per sample."""
    return [{"image": images[i:i + 1], "location": locations[i:i + 1]} for i in range(len(images))]


def _observation_splits(spec: str, run):
    """A geoprior run's observations as (train, val) with .lat/.lon/.labels, split as its training did."""
    from types import SimpleNamespace

    from trainer.training.geoprior import DEFAULT_VAL_FRACTION, load_observations, split_by_observation

    obs = load_observations(spec)
    if obs.label_names != list(run.labels):
        raise ExportError(f"{spec} has other labels than the run ({len(obs.label_names)} vs {len(run.labels)})")
    kept, held = split_by_observation(len(obs), run.metrics.get("val_fraction", DEFAULT_VAL_FRACTION), run.config.seed)
    # Every observation is located; observation files carry no taxonomy.
    return tuple(SimpleNamespace(lat=obs.latlon[i, 0], lon=obs.latlon[i, 1], labels=obs.labels[i],
                                 has_location=np.ones(len(i), bool), num_labels=len(run.labels), taxonomy=None)
                 for i in (kept, held))


def _geo_samples(split, image_size, n: int, seed: int = 0):
    """load_samples for a geo model: n observations' locations, with the blank image it ignores."""
    rows = np.sort(np.random.default_rng(seed).choice(len(split.labels), size=min(n, len(split.labels)), replace=False))
    locations = np.stack([split.lat[rows], split.lon[rows]], axis=1).astype(np.float32)
    return np.zeros((len(rows), *image_size, 3), np.uint8), locations, split.labels[rows]


def _training_summary(run) -> dict:
    config = run.config.to_dict()
    config.pop("tpu", None)  # a machine address, not a property of the model
    return {"run": str(run.path), **config}


def export_bundle(model, out, quantize: str, data: str | None = None, force: bool = False,
                  calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
                  verify_samples: int = DEFAULT_VERIFY_SAMPLES,
                  whitelist_radius: float = DEFAULT_WHITELIST_RADIUS_MILES,
                  whitelist_precision: int = DEFAULT_WHITELIST_PRECISION, seed: int = 0) -> dict:
    """Export a training run (RUN_DIR, or a loaded trainer.training.runs.Run) to a bundle at `out`.

    Returns the manifest, whose metrics["verification"] holds LiteRT-vs-Keras agreement, the
    largest probability difference, the accuracy change and the file size.
    """
    from trainer.data.readers import load_split
    from trainer.training.runs import load_run

    out = Path(out)
    if quantize not in MODES:
        raise ExportError(f"unknown --quantize {quantize!r}; choose one of {MODES}")
    for name, value in (("calibration_samples", calibration_samples), ("verify_samples", verify_samples)):
        if int(value) < 1:
            raise ExportError(f"{name} must be >= 1, got {value}")
    replace = dict(marker=MANIFEST_FILE, force=force, command="converters.export")  # the manifest is written last
    check_replaceable(out, **replace)  # fail before minutes of work, and again at the rename

    stages = tqdm(total=5, desc="export", unit="step")
    try:
        stages.set_postfix_str("loading run and data")
        run = load_run(model) if isinstance(model, (str, os.PathLike)) else model
        spec = data or run.config.data
        if run.config.model == "geoprior":
            train, val = _observation_splits(spec, run)
            samples = _geo_samples
        else:
            train = load_split(spec, "train", label_names=run.labels)
            val = load_split(spec, "val", label_names=run.labels)
            samples = load_samples
        expected = expected_signature(run.model)
        stages.update()

        stages.set_postfix_str(f"converting ({quantize})")
        if quantize == "int8":
            images, locations, _ = samples(train, expected.image_size, calibration_samples, seed)
            config = QuantizationConfig.for_int8(representative_data(images, locations))
        else:
            config = QuantizationConfig.from_mode(quantize)
        content = convert_model(run.model, config)
        stages.update()

        stages.set_postfix_str("verifying against Keras")
        images, locations, labels = samples(val, expected.image_size, verify_samples, seed)
        verification = {**compare(content, run.model, images, locations, labels, quantize),
                        "file_bytes": len(content)}
        stages.update()

        stages.set_postfix_str("writing bundle")
        with staged_folder(out, **replace) as tmp:
            atomic_write_bytes(tmp / MODEL_FILE, content)
            write_labels(tmp, run.labels)
            stages.update()
            write_whitelist(tmp / WHITELIST_FILE, train.lat, train.lon, train.labels, len(run.labels),
                            whitelist_radius, whitelist_precision, label_names=run.labels)
            sections = write_extras(tmp, run, train, val, content, config, (images, locations))

            def manifest_with(recommended_fusion, calibration=None):
                return manifest_for(
                    tmp, model_kind=run.config.model, backbone=run.config.backbone, input_size=expected.image_size,
                    num_labels=len(run.labels), quantization=quantize, location_encoding=run.config.encoding,
                    outputs=expected.outputs, whitelist_radius_miles=whitelist_radius,
                    whitelist_precision=whitelist_precision, training=_training_summary(run),
                    metrics={"validation": run.metrics, "verification": verification},
                    recommended_fusion=recommended_fusion, calibration=calibration, sections=sections,
                    geo_objective=run.config.geo_objective if run.config.model == "geoprior" else None)

            # Calibration and fusion are measured through the SDK on this very bundle, so
            # provisional manifests go in first; the final one (with both) replaces them, still last.
            manifest = manifest_with(None)
            write_manifest(tmp, manifest)
            if run.config.model != "geoprior":  # a geo bundle classifies no image: nothing to fuse or calibrate
                stages.set_postfix_str("calibration and whitelist fusion on tuning images")
                tune, _ = evaluation_rows(val, seed)
                calibration = fit_calibration(tmp, tune)
                write_manifest(tmp, manifest_with(None, calibration))  # the fusions are measured tempered
                manifest = manifest_with(choose_fusion(measure_fusions(tmp, tune), len(tune)), calibration)
                write_manifest(tmp, manifest)  # last: a folder without it is not a bundle
        stages.update()
    finally:
        stages.close()
    return manifest


def _summary(out, manifest: dict) -> str:
    v = manifest["metrics"]["verification"]
    located, unknown = v["located"], v["unknown_location"]
    return (f"wrote {out} ({manifest['quantization']}, {v['file_bytes'] / 1024:.0f} KiB model)\n"
            f"  LiteRT vs Keras on {v['samples']} validation samples: top-1 agreement "
            f"{located['top1_agreement']:.1%} (unknown location {unknown['top1_agreement']:.1%}), "
            f"max probability difference {located['max_probability_diff']:.2g}, "
            f"top-1 accuracy {located['tflite_top1_accuracy']:.1%} vs Keras {located['keras_top1_accuracy']:.1%} "
            f"({100 * located['accuracy_change']:+.1f} points)"
            + ("" if manifest.get("recommended_fusion") is None else
               f"\n  recommended fusion: whitelist {_fusion_text(manifest['recommended_fusion'])}\n"
               f"  calibration: temperature {manifest['calibration']['temperature']:.2f} (fitted "
               f"{manifest['calibration']['fitted_temperature']:.2f}; tuning ECE "
               f"{manifest['calibration']['ece_tune_before']:.3f} -> {manifest['calibration']['ece_tune_after']:.3f}; "
               "kept only if lower)"))


def _fusion_text(fusion: dict) -> str:
    from .fusion import candidate_name

    scores = ", ".join(f"{name} {100 * v:.1f}%" for name, v in fusion["tune_top1"].items())
    return f"{candidate_name(fusion['whitelist'], fusion['floor'])} (top-1 on {fusion['chosen_on']}: {scores})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="training run folder (trainer.train --out)")
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle folder to write")
    parser.add_argument("--quantize", required=True, choices=MODES)
    parser.add_argument("--data", metavar="SPEC", help="data SPEC for calibration, whitelist and verification "
                        "(default: the run's training data)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    parser.add_argument("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES,
                        help="training images with their locations for int8 calibration")
    parser.add_argument("--verify-samples", type=int, default=DEFAULT_VERIFY_SAMPLES,
                        help="validation images compared between LiteRT and Keras")
    parser.add_argument("--whitelist-radius", type=float, default=DEFAULT_WHITELIST_RADIUS_MILES, metavar="MILES")
    parser.add_argument("--whitelist-precision", type=int, default=DEFAULT_WHITELIST_PRECISION, metavar="P",
                        help="geohash precision of the whitelist table cells")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the samples and of the tuning split (trainer.evaluate --seed)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    try:
        manifest = export_bundle(args.model, args.out, args.quantize, args.data, args.force,
                                 args.calibration_samples, args.verify_samples,
                                 args.whitelist_radius, args.whitelist_precision, args.seed)
    except (ValueError, OSError) as exc:
        print(f"export FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(manifest, indent=2) if args.json else _summary(args.out, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
