"""converters: TFLite export, quantization, bundles and their verification.

Tiny MobileNet V2 models (32 px, alpha 0.35) on the `tiny` world; each (kind, mode) bundle is
exported once per session and shared by the tests that inspect it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from converters import export as export_mod  # noqa: E402
from converters.export import ExportError, convert_model, export_bundle  # noqa: E402
from converters.quantization import MODES, QuantizationConfig, QuantizationError  # noqa: E402
from converters.verify import (ExpectedSignature, SignatureError, VerificationError,  # noqa: E402
                               check_location_float,
                               check_signature, expected_signature, load_samples, run_keras, run_tflite,
                               verify_bundle)
from mobile_sdk.bundle import MANIFEST_FILE, open_bundle  # noqa: E402
from mobile_sdk.errors import ReplaceRefusedError  # noqa: E402
from mobile_sdk.fileio import staged_folder  # noqa: E402
from mobile_sdk.runtime import TFLiteModel  # noqa: E402
from trainer.data.readers import load_split  # noqa: E402
from trainer.model import networks  # noqa: E402
from harness import EXPORT_SAMPLES, IMAGE_MODEL_KINDS, SIZE, assert_close, check_litert_export, randomize_geo_weights  # noqa: E402

GEO_KINDS = tuple(kind for kind in IMAGE_MODEL_KINDS if kind != "image")
# Every quantization mode for the image-only model, float32 and int8 for the geo kinds.
EXPORTS = [("image", mode) for mode in MODES] + [(kind, mode) for kind in GEO_KINDS for mode in ("float32", "int8")]


def _param(kind, mode):
    # The default suite exports three bundles; the rest of the matrix runs with -m slow.
    fast = {("postprocess", "float32"), ("postprocess", "int8"), ("featuremod", "int8")}
    return pytest.param(kind, mode, id=f"{kind}-{mode}", marks=() if (kind, mode) in fast else pytest.mark.slow)


ALL = [_param(k, m) for k, m in EXPORTS]
GEO = [_param(k, m) for k, m in EXPORTS if k in GEO_KINDS]


def _val_samples(tiny_world, n=24):
    return load_samples(load_split(tiny_world, "val"), SIZE, n, seed=1)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tree(folder):
    return {p.name: _sha256(p) for p in Path(folder).iterdir()}


# ------------------------------------------------------------------ the exported model's interface

@pytest.mark.parametrize("kind, mode", ALL)
def test_signature_and_parity_with_keras(tiny_bundles, random_runs, tiny_world, kind, mode):
    out, manifest = tiny_bundles(kind, mode)
    images, locations, _ = _val_samples(tiny_world)
    check_litert_export((out / "model.tflite").read_bytes(), random_runs[kind].model, images, locations, mode,
                        f"{kind} {mode}")
    # The export's own verification measured the same thing on its samples and passed its gate.
    check = manifest["metrics"]["verification"]
    assert check["samples"] == EXPORT_SAMPLES["verify_samples"] and check["quantization"] == mode
    if mode == "float32":
        assert check["located"]["top1_agreement"] >= 0.995
        assert check["unknown_location"]["top1_agreement"] >= 0.995


@pytest.mark.parametrize("kind, mode", GEO)
def test_unknown_location_matches_keras(tiny_bundles, random_runs, tiny_world, kind, mode):
    out, _ = tiny_bundles(kind, mode)
    content = (out / "model.tflite").read_bytes()
    images, locations, _ = _val_samples(tiny_world, 8)
    known = ~np.isnan(locations).any(axis=1)
    images, locations = images[known], locations[known]
    nan = np.full_like(locations, np.nan)
    lite_nan = run_tflite(content, images, nan)
    keras_nan = run_keras(random_runs[kind].model, images, nan)
    assert_close(lite_nan, keras_nan, mode, f"{kind} {mode} unknown location")
    # Invalid rows are unknown inside the graph too (the SDK raises before it gets there).
    invalid = np.tile(np.array([[95.0, 10.0]], np.float32), (len(images), 1))
    invalid[::2] = [0.0, np.inf]
    lite_invalid = run_tflite(content, images, invalid)
    np.testing.assert_array_equal(lite_invalid["probabilities"], lite_nan["probabilities"])
    if kind == "postprocess":
        assert np.all(lite_nan["geo_logits"] == 0.0)
        if mode != "int8":  # int8 requantizes the sum to another scale
            np.testing.assert_array_equal(lite_nan["logits"], lite_nan["vision_logits"])
    # ...and the location does matter when known, in LiteRT as in Keras.
    lite_known = run_tflite(content, images, locations)
    assert np.abs(lite_known["probabilities"] - lite_nan["probabilities"]).max() > 1e-3


@pytest.mark.parametrize("kind, mode", [_param("postprocess", "int8")])
def test_int8_keeps_location_precision(tiny_bundles, random_runs, kind, mode):
    """Plain int8 would round raw degrees to ~1 degree steps; the export keeps them float."""
    out, _ = tiny_bundles(kind, mode)
    content = (out / "model.tflite").read_bytes()
    check_location_float(content)
    images = np.repeat(_val_samples(random_runs[kind].config.data, 1)[0], 30, axis=0)
    locations = np.stack([40.0 + 0.05 * np.arange(30), np.full(30, -100.0)], axis=1).astype(np.float32)
    lite = run_tflite(content, images, locations)["geo_logits"]
    ref = run_keras(random_runs[kind].model, images, locations)["geo_logits"]
    assert len(np.unique(lite.round(6), axis=0)) >= 20  # 0.05 degree steps stay distinguishable
    assert np.abs(lite - ref).max() <= 0.1 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")  # TF's own calibrator
def test_plain_int8_quantizes_location_and_the_check_catches_it(random_runs):
    """The trap the selective quantization avoids, and proof the check can fail."""
    run = random_runs["postprocess"]
    images, locations, _ = load_samples(load_split(run.config.data, "train"), SIZE, 8)
    config = QuantizationConfig.for_int8(export_mod.representative_data(images, locations))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(QuantizationConfig, "convert", lambda self, converter: bytes(self.apply(converter).convert()))
        with pytest.raises(VerificationError, match="location path is quantized"):
            convert_model(run.model, config)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["paper", "fourier"])
def test_int8_other_encodings_keep_location_float(random_runs, tiny_world, encoding):
    """The other location encodings through the same int8 path: `paper` ([lat/90, lon/180], no
    SIN/COS) and `fourier` (unit vector, then SIN/COS up to ~100 km wavelengths, which int8 would
    turn into noise): the converter's float front end must catch every op of each."""
    labels = random_runs["image"].labels
    geo_head = networks.build_geo_head(len(labels), encoding=encoding)
    randomize_geo_weights(geo_head, 3, scale=0.3)
    model = networks.build_postprocess_model(random_runs["image"].model, geo_head)
    images, locations, _ = load_samples(load_split(tiny_world, "train"), SIZE, 8)
    content = convert_model(model, QuantizationConfig.for_int8(export_mod.representative_data(images, locations)))
    check_location_float(content)
    sweep = np.stack([40.0 + 0.05 * np.arange(30), np.full(30, -100.0)], axis=1).astype(np.float32)
    sweep_images = np.repeat(images[:1], 30, axis=0)
    geo = run_tflite(content, sweep_images, sweep)["geo_logits"]
    assert len(np.unique(geo.round(6), axis=0)) >= 20
    ref = run_keras(model, sweep_images, sweep)["geo_logits"]
    assert np.abs(geo - ref).max() <= 0.1 * np.abs(ref).max()
    unknown = run_tflite(content, images[:2], np.full((2, 2), np.nan, np.float32))["geo_logits"]
    assert np.all(unknown == 0.0)


def test_int8_is_smaller_than_float32(tiny_bundles):
    int8 = (tiny_bundles("postprocess", "int8")[0] / "model.tflite").stat().st_size
    f32 = (tiny_bundles("postprocess", "float32")[0] / "model.tflite").stat().st_size
    assert int8 < 0.5 * f32


# ------------------------------------------------------------------------------ signature checks

def test_check_signature_names_the_problem(tiny_bundles, random_runs):
    out, _ = tiny_bundles("postprocess", "int8")
    content = (out / "model.tflite").read_bytes()
    good = expected_signature(random_runs["postprocess"].model)
    check_signature(content, good)
    with pytest.raises(SignatureError, match=r"input 'image' is \[32, 32\] pixels.*\[64, 64\]"):
        check_signature(content, ExpectedSignature((64, 64), good.outputs, good.num_labels))
    with pytest.raises(SignatureError, match="signature outputs must be"):
        check_signature(content, ExpectedSignature(good.image_size, ("logits", "probabilities"), good.num_labels))
    with pytest.raises(SignatureError, match=r"must have shape \[1, 9\]"):
        check_signature(content, ExpectedSignature(good.image_size, good.outputs, 9))


def test_check_signature_rejects_wrong_inputs(tmp_path):
    inputs = {"image": keras.Input((8, 8, 3), dtype="float32", name="image"),
              "loc": keras.Input((2,), dtype="float32", name="loc")}
    x = keras.layers.Flatten()(inputs["image"])
    logits = keras.layers.Dense(3)(keras.layers.Concatenate()([x, inputs["loc"]]))
    model = keras.Model(inputs, {"probabilities": keras.layers.Softmax()(logits), "logits": logits})
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert()
    expected = ExpectedSignature((8, 8), ("logits", "probabilities"), 3)
    with pytest.raises(SignatureError, match=r"inputs \['image', 'loc'\]"):
        check_signature(content, expected)
    with pytest.raises(SignatureError, match="LiteRT cannot load"):
        check_signature(b"not a model", expected)


# ------------------------------------------------------------------------------------ the bundle

@pytest.mark.parametrize("kind, mode", ALL)
def test_manifest_hashes_and_fields(tiny_bundles, random_runs, kind, mode):
    out, manifest = tiny_bundles(kind, mode)
    on_disk = json.loads((out / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    files = ["labels.txt", "model.tflite", "taxonomy.json", "whitelist.gwl"]  # the world has a taxonomy
    if kind == "postprocess":  # its two parts, and expected-nearby thresholds from the geo part
        files += ["expected_nearby.json", "geo.tflite", "vision.tflite"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files + ["manifest.json"])
    assert manifest["files"] == {name: _sha256(out / name) for name in files}
    assert manifest["taxonomy"] == {"file": "taxonomy.json", "ranks": ["supercategory", "genus"]}
    nearby = manifest["expected_nearby"]
    assert nearby["method"] == ("lpt_r" if kind == "postprocess" else "whitelist")
    assert 0.0 <= nearby["validation"]["recall"] <= 1.0 and nearby["validation"]["rows"] > 0
    assert (manifest["model_kind"], manifest["quantization"], manifest["input_size"]) == (kind, mode, [SIZE, SIZE])
    assert manifest["num_labels"] == 8 and (out / "labels.txt").read_text().splitlines() == random_runs[kind].labels
    assert manifest["whitelist"] == {"file": "whitelist.gwl", "radius_miles": 100.0, "precision": 4}
    assert manifest["training"]["data"] == random_runs[kind].config.data and manifest["training"]["model"] == kind
    assert manifest["metrics"]["validation"] == {"top1": 0.5}
    assert manifest["metrics"]["verification"]["file_bytes"] == (out / "model.tflite").stat().st_size
    bundle = open_bundle(out)  # the SDK reads what the export wrote
    assert bundle.labels == random_runs[kind].labels and bundle.whitelist is not None and bundle.taxonomy is not None


@pytest.mark.parametrize("kind, mode", [_param("postprocess", "float32")])
def test_split_parts_reproduce_the_single_model(tiny_bundles, tiny_world, kind, mode):
    """geo.tflite + vision.tflite, fused as the SDK fuses them, give model.tflite's probabilities."""
    from mobile_sdk.split_runner import SplitModels
    out, manifest = tiny_bundles(kind, mode)
    split = manifest["split_models"]
    assert split["recommended"] is False and split["verification"]["located"]["top1_agreement"] == 1.0
    assert split["verification"]["located"]["max_probability_diff"] < 1e-5
    images, locations, _ = _val_samples(tiny_world, 8)
    parts, single = SplitModels(out), TFLiteModel(out / "model.tflite")
    for i in range(len(images)):
        location = tuple(float(v) for v in locations[i])
        expected = single.run(images[i:i + 1], locations[i:i + 1])
        got = parts.run(images[i:i + 1], location)
        assert np.abs(got["probabilities"] - expected["probabilities"]).max() < 1e-5
        assert np.abs(got["geo_logits"] - expected["geo_logits"]).max() < 1e-5


@pytest.mark.parametrize("kind, mode", [_param("image", "float32"), _param("postprocess", "float32")])
def test_evaluation_reports_expected_nearby_by_the_exports_method(tiny_bundles, random_runs, tiny_world, kind, mode):
    """trainer.evaluate's expected-nearby method is the bundle's: the same LPT-R thresholds (from the
    Keras geo head there, geo.tflite here) or the same whitelist table, so on the validation rows
    it reports the manifest's recall and mean labels flagged."""
    from mobile_sdk.nearby import read_thresholds
    from trainer.evaluation.nearby import evaluation_section, methods_for

    out, manifest = tiny_bundles(kind, mode)
    run = random_runs[kind]
    train = load_split(tiny_world, "train", label_names=run.labels)
    val = load_split(tiny_world, "val", label_names=run.labels)
    method = methods_for({kind: run}, train)[kind]
    assert method.name == manifest["expected_nearby"]["method"]
    if kind == "postprocess":
        exported = read_thresholds(out / "expected_nearby.json", len(run.labels))
        ours = np.array([np.nan if t is None else t for t in method.thresholds])
        np.testing.assert_allclose(ours, exported, atol=1e-5)
        assert np.isfinite(ours).sum() > len(run.labels) // 2
    report = evaluation_section({kind: method}, val)["models"][kind]
    assert report == {"method": method.name, **{k: pytest.approx(v, abs=1e-9) for k, v in
                                               manifest["expected_nearby"]["validation"].items()}}


@pytest.mark.parametrize("kind, mode", ALL)
def test_recommended_fusion_is_the_best_measured_on_tuning_images(tiny_bundles, random_runs, tiny_world, kind, mode):
    """Every candidate was measured through the SDK on the tuning part of val (never the reported
    part), and the best (first on ties) is what the manifest recommends and GeoClassifier applies."""
    from converters.fusion import CANDIDATES, candidate_name, evaluation_rows, measure_fusions
    from mobile_sdk import GeoClassifier

    out, manifest = tiny_bundles(kind, mode)
    fusion = manifest["recommended_fusion"]
    tune, _ = evaluation_rows(load_split(tiny_world, "val", label_names=random_runs[kind].labels))
    assert fusion["tune_top1"] == pytest.approx(measure_fusions(out, tune), abs=1e-6)
    assert fusion["chosen_on"].startswith(f"{len(tune)} tuning images")
    names = [candidate_name(*c) for c in CANDIDATES]
    best = max(fusion["tune_top1"].values())
    first_best = next(n for n in names if fusion["tune_top1"][n] == pytest.approx(best, abs=1e-6))
    assert candidate_name(fusion["whitelist"], fusion["floor"]) == first_best
    with GeoClassifier.from_bundle(out) as classifier:
        assert (classifier.fusion.whitelist, classifier.fusion.floor) == (fusion["whitelist"], fusion["floor"])
    # The temperature was fitted on the same tuning images and kept only where it lowered their ECE.
    calibration = manifest["calibration"]
    assert calibration["chosen_on"] == fusion["chosen_on"]
    kept = calibration["ece_tune_after"] < calibration["ece_tune_before"]
    assert calibration["temperature"] == (calibration["fitted_temperature"] if kept else 1.0)


def _fast_export(monkeypatch, tiny_bundles, out, **kwargs):
    """export_bundle with the conversion replaced by an already exported model: these tests are
    about the folder, not the converter."""
    source, _ = tiny_bundles("postprocess", "int8")
    monkeypatch.setattr(export_mod, "convert_model", lambda model, config: (source / "model.tflite").read_bytes())
    monkeypatch.setattr(export_mod, "write_extras", lambda *args: {})
    return export_bundle(kwargs.pop("run"), out, "int8", **EXPORT_SAMPLES, **kwargs)


def test_interrupted_export_leaves_no_bundle(tiny_bundles, random_runs, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("simulated: disk full while writing the whitelist")
    monkeypatch.setattr(export_mod, "write_whitelist", fail)
    with pytest.raises(OSError, match="disk full"):
        _fast_export(monkeypatch, tiny_bundles, tmp_path / "bundle", run=random_runs["postprocess"])
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary folder


def test_interrupted_export_keeps_the_existing_bundle(tiny_bundles, random_runs, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundles("postprocess", "float32")[0], out)
    before = _tree(out)
    monkeypatch.setattr(export_mod, "write_manifest", lambda *a: (_ for _ in ()).throw(OSError("simulated crash")))
    with pytest.raises(OSError, match="simulated crash"):
        _fast_export(monkeypatch, tiny_bundles, out, run=random_runs["postprocess"], force=True)
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_force_semantics(tiny_bundles, random_runs, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundles("postprocess", "float32")[0], out)
    before = _tree(out)
    tiny_bundles("postprocess", "int8")  # _fast_export's source, built now: the session fixture converts lazily
    monkeypatch.setattr(export_mod, "convert_model", lambda *a: pytest.fail("must refuse before converting"))
    with pytest.raises(ReplaceRefusedError, match="already exists; pass --force"):
        export_bundle(random_runs["postprocess"], out, "int8")
    assert _tree(out) == before
    manifest = _fast_export(monkeypatch, tiny_bundles, out, run=random_runs["postprocess"], force=True)
    assert json.loads((out / MANIFEST_FILE).read_text()) == manifest and manifest["quantization"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # the old bundle is gone, not parked
    # --force replaces tiny_bundles only, never an arbitrary folder or file.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ReplaceRefusedError, match="has no manifest.json, so it was not written by converters.export"):
        export_bundle(random_runs["postprocess"], other, "int8", force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReplaceRefusedError, match="is not a folder written by converters.export"):
        export_bundle(random_runs["postprocess"], tmp_path / "file", "int8", force=True)


def test_staged_folder_renames_only_on_success(tmp_path):
    with staged_folder(tmp_path / "b") as tmp:
        (tmp / "manifest.json").write_text("{}")
        assert not (tmp_path / "b").exists()
    assert (tmp_path / "b" / "manifest.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's owner-only 0700
    assert (tmp_path / "b" / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "c"):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_export_rejects_bad_arguments(random_runs, tmp_path):
    with pytest.raises(ExportError, match="unknown --quantize 'int4'"):
        export_bundle(random_runs["image"], tmp_path / "b", "int4")
    with pytest.raises(ExportError, match="verify_samples must be >= 1"):
        export_bundle(random_runs["image"], tmp_path / "b", "float32", verify_samples=0)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- quantization

def test_quantization_config_constructors_and_validation():
    data = [{"image": np.zeros((1, 4, 4, 3), np.uint8), "location": np.zeros((1, 2), np.float32)}]
    assert QuantizationConfig.for_float32().mode == "float32"
    assert QuantizationConfig.for_float16().mode == "float16"
    assert QuantizationConfig.for_dynamic().mode == "dynamic"
    int8 = QuantizationConfig.for_int8(data)
    assert int8.mode == "int8" and list(int8.representative_data()) == data
    with pytest.raises(QuantizationError, match="int8 quantization needs representative_data"):
        QuantizationConfig("int8")
    with pytest.raises(QuantizationError, match="non-empty"):
        QuantizationConfig.for_int8([])
    with pytest.raises(QuantizationError, match="float16 takes no representative_data"):
        QuantizationConfig("float16", data)
    with pytest.raises(QuantizationError, match="unknown quantization 'int4'"):
        QuantizationConfig.from_mode("int4")
    with pytest.raises(AttributeError):
        int8.mode = "float32"


def test_apply_leaves_input_types_alone():
    """inference_input_type applies to every input: setting it would quantize the location."""
    for config in (QuantizationConfig.for_float16(), QuantizationConfig.for_dynamic(),
                   QuantizationConfig.for_int8(lambda: iter(()))):
        converter = config.apply(tf.lite.TFLiteConverter.from_concrete_functions([], None))
        assert converter.inference_input_type == tf.float32 and converter.inference_output_type == tf.float32
        assert converter.optimizations == [tf.lite.Optimize.DEFAULT]
    assert set(converter.target_spec.supported_ops) == {tf.lite.OpsSet.TFLITE_BUILTINS_INT8}
    assert converter.representative_dataset is not None


def test_load_samples_are_real_rows(tiny_world):
    ds = load_split(tiny_world, "train")
    images, locations, labels = load_samples(ds, SIZE, 16, seed=3)
    assert images.dtype == np.uint8 and images.shape == (16, SIZE, SIZE, 3)
    assert locations.dtype == np.float32 and labels.dtype == np.int32
    rows = np.sort(np.random.default_rng(3).choice(len(ds), 16, replace=False))
    np.testing.assert_array_equal(labels, ds.labels[rows])
    np.testing.assert_allclose(locations, ds.locations[rows].astype(np.float32))


# --------------------------------------------------------------------------------------- the CLIs

def test_verify_cli_passes_and_detects_tampering(tiny_bundles, random_runs, tmp_path, capsys):
    from converters.verify import main as verify_main

    out, _ = tiny_bundles("postprocess", "int8")
    assert verify_main([str(out), "--model", str(random_runs["postprocess"].path), "--samples", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 8 and report["quantization"] == "int8"
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    (tampered / "labels.txt").write_text((tampered / "labels.txt").read_text().upper())
    assert verify_main([str(tampered), "--model", str(random_runs["postprocess"].path), "--samples", "8"]) == 1
    assert "sha256" in capsys.readouterr().err


def test_export_cli_refuses_existing_bundle(tiny_bundles, random_runs, capsys):
    from converters.export import main as export_main

    out, _ = tiny_bundles("postprocess", "int8")
    code = export_main(["--model", str(random_runs["postprocess"].path), "--out", str(out), "--quantize", "int8"])
    assert code == 1 and "already exists; pass --force" in capsys.readouterr().err


def test_export_cli_writes_a_bundle(tiny_bundles, random_runs, tmp_path, monkeypatch, capsys):
    from converters.export import main as export_main

    source, _ = tiny_bundles("postprocess", "int8")
    monkeypatch.setattr(export_mod, "convert_model", lambda model, config: (source / "model.tflite").read_bytes())
    monkeypatch.setattr(export_mod, "write_extras", lambda *args: {})
    args = ["--model", str(random_runs["postprocess"].path), "--out", str(tmp_path / "b"), "--quantize", "int8",
            "--calibration-samples", "4", "--verify-samples", "4", "--whitelist-radius", "50",
            "--whitelist-precision", "3"]
    assert export_main(args) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    manifest = open_bundle(tmp_path / "b").manifest
    assert manifest["whitelist"] == {"file": "whitelist.gwl", "radius_miles": 50.0, "precision": 3}
    assert manifest["metrics"]["verification"]["samples"] == 4


def test_fusion_cli_ends_with_which_model_to_ship(tiny_bundles, tiny_world, tmp_path, capsys):
    """converters.fusion --report: the bundle's measured fusions and file size beside
    trainer.evaluate's accuracy rows, one row per bundle; a report that is not JSON is a clear error."""
    from converters import fusion

    out, manifest = tiny_bundles("postprocess", "int8")
    from trainer.evaluation.report import NAMES, UNKNOWN

    post = NAMES["postprocess"]
    report = {"primary": {"methods": {post: {"top1": 0.5, "head": {"top1": 0.75}, "tail": {"top1": 0.25}},
                                      post + UNKNOWN: {"top1": 0.125}}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert fusion.main(["--bundle", str(out), "--data", tiny_world, "--report", str(tmp_path / "report.json"),
                        "--out", str(tmp_path / "fusion.json")]) == 0
    printed = capsys.readouterr().out.split("Which model to ship:")[1]
    measured = json.loads((tmp_path / "fusion.json").read_text())["postprocess"]
    row = next(line for line in printed.splitlines() if line.startswith(f"| {post} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:5] == ["50.0%", "12.5%", "75.0%", "25.0%"]
    assert cells[5] == f"{measured['model_bytes'] / 1024:.0f} KiB" and cells[7].startswith(f"whitelist {measured['recommended']}")
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(SystemExit):
        fusion.main(["--bundle", str(out), "--data", tiny_world, "--report", str(tmp_path / "bad.json")])
    assert "not a trainer.evaluate report.json" in capsys.readouterr().err
