"""mobile_sdk end to end on tiny bundles built here: classify, whitelist modes, species_near,
options, typed errors, bundle integrity, thread safety, CLI, and no TensorFlow in the SDK process."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from mobile_sdk import GeoClassifier, GeoClassifierOptions
from mobile_sdk import bundle as bundle_mod
from mobile_sdk.__main__ import main as cli_main
from mobile_sdk.errors import (BundleError, BundleIntegrityError, GeoAwareError, InvalidImageError,
                               InvalidLocationError, LabelSetMismatchError, ModelError, WhitelistTableError)
from mobile_sdk.fileio import sha256_file
from mobile_sdk.runtime import TFLiteModel
from mobile_sdk.whitelist.builder import write_whitelist

REPO = Path(__file__).resolve().parents[1]
LABELS = ["paris_a", "sydney_b", "both_c", "newyork_d"]
SIZE = (32, 32)
PARIS, SYDNEY, NEW_YORK, PACIFIC = (48.85, 2.35), (-33.87, 151.21), (40.71, -74.0), (-40.0, -140.0)
OUTPUTS = ["probabilities", "logits", "vision_logits", "geo_logits"]


def _tiny_keras(kind, input_names=("image", "location")):
    """A tiny Keras model with the contract signature.
    kind "postprocess": vision + geo logits (geo gated by the known flag); "image": image only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    from keras import layers, ops
    keras.utils.set_random_seed(0)
    image = keras.Input((*SIZE, 3), dtype="uint8", name=input_names[0])
    location = keras.Input((2,), dtype="float32", name=input_names[1])
    x = layers.Rescaling(1 / 127.5, -1)(ops.cast(image, "float32"))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, strides=4, activation="relu")(x))
    vision = layers.Dense(len(LABELS), name="vision_logits")(x)
    outputs = {}
    if kind == "postprocess":
        lat, lon = location[:, 0:1], location[:, 1:2]
        known = ops.cast(ops.logical_and(ops.abs(lat) <= 90.0, ops.abs(lon) <= 3.4e38), "float32")
        lat, lon = ops.where(known > 0, lat, 0.0) * (np.pi / 180), ops.where(known > 0, lon, 0.0) * (np.pi / 180)
        features = ops.concatenate([ops.sin(lat), ops.cos(lat), ops.sin(lon), ops.cos(lon)], axis=-1) * known
        geo = layers.Dense(len(LABELS))(layers.Dense(8, activation="relu")(features)) * known
        logits = vision + geo
        outputs.update(vision_logits=vision, geo_logits=geo)
    else:
        logits = vision
    outputs.update(probabilities=ops.softmax(logits), logits=logits)
    return keras.Model({input_names[0]: image, input_names[1]: location}, outputs)


def _tiny_tflite(out_path, kind, input_names=("image", "location")):
    """_tiny_keras exported by the GUIDE's path."""
    tf = pytest.importorskip("tensorflow")
    model = _tiny_keras(kind, input_names)
    with tempfile.TemporaryDirectory() as tmp:
        model.export(f"{tmp}/saved", format="tf_saved_model", verbose=False)
        Path(out_path).write_bytes(tf.lite.TFLiteConverter.from_saved_model(f"{tmp}/saved").convert())
    return out_path


def _write_bundle(folder, model_file, kind, labels=LABELS, files=None, sections=None):
    """`files`: {name: bytes} of optional files, described by the manifest `sections`."""
    folder.mkdir(parents=True)
    shutil.copy(model_file, folder / bundle_mod.MODEL_FILE)
    for name, content in (files or {}).items():
        (folder / name).write_bytes(content)
    bundle_mod.write_labels(folder, labels)
    rng = np.random.default_rng(0)
    centres = {0: [PARIS], 1: [SYDNEY], 2: [PARIS, SYDNEY], 3: [NEW_YORK]}
    lat, lon, lab = [], [], []
    for label, places in centres.items():
        for la, lo in places:
            lat += list(la + rng.normal(0, 0.3, 30))
            lon += list(lo + rng.normal(0, 0.3, 30))
            lab += [label] * 30
    write_whitelist(folder / bundle_mod.WHITELIST_FILE, lat, lon, lab, len(labels), 100.0, 4, labels)
    manifest = bundle_mod.manifest_for(
        folder, model_kind=kind, backbone="tiny", input_size=SIZE, num_labels=len(labels), quantization="float32",
        location_encoding="sincos", outputs=OUTPUTS if kind == "postprocess" else ["probabilities", "logits"],
        whitelist_radius_miles=100.0, whitelist_precision=4, training={"epochs": 0}, metrics={"top1": 0.25},
        sections=sections)
    bundle_mod.write_manifest(folder, manifest)
    return folder


@pytest.fixture(scope="session")
def models(toy_tflite):
    return {kind: toy_tflite(kind) for kind in ("postprocess", "image")}


@pytest.fixture(scope="session")
def geo_bundle(models, tmp_path_factory):
    return _write_bundle(tmp_path_factory.mktemp("b") / "geo", models["postprocess"], "postprocess")


@pytest.fixture(scope="session")
def image_bundle(models, tmp_path_factory):
    return _write_bundle(tmp_path_factory.mktemp("b") / "image", models["image"], "image")


@pytest.fixture()
def broken(geo_bundle, tmp_path):
    """A fresh copy of the bundle to damage; `rehash()` makes the manifest agree with the damage."""
    copy = tmp_path / "bundle"
    shutil.copytree(geo_bundle, copy)

    def rehash():
        manifest = json.loads((copy / bundle_mod.MANIFEST_FILE).read_text())
        manifest["files"] = {f: sha256_file(copy / f) for f in manifest["files"]}
        (copy / bundle_mod.MANIFEST_FILE).write_text(json.dumps(manifest))
    return copy, rehash


IMAGE = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)


def _raw(bundle_dir, location):
    """The bare model output for IMAGE (the reference the SDK's results are checked against)."""
    from mobile_sdk.preprocess import prepare_image
    model = TFLiteModel(Path(bundle_dir) / bundle_mod.MODEL_FILE)
    loc = np.array([location if location else (np.nan, np.nan)], dtype=np.float32)
    return model.run(prepare_image(IMAGE, SIZE), loc)


# -- classify ------------------------------------------------------------------------------------

def test_without_location_is_vision_only_and_says_so(geo_bundle):
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        result = clf.classify(IMAGE)
    raw = _raw(geo_bundle, None)
    assert not result.location_used and not result.whitelist_filtered and result.location is None
    assert [c.index for c in result.categories] == np.argsort(-raw["probabilities"][0]).tolist()
    assert all(c.geo_score == 0.0 for c in result.categories)  # the geo part is gated off
    for c in result.categories:
        assert c.score == pytest.approx(raw["probabilities"][0, c.index], rel=1e-5)
        assert c.vision_score == pytest.approx(c.score, rel=1e-4)  # no location: fused == vision
    assert result.model_version == json.loads((geo_bundle / "manifest.json").read_text())["model_version"]


def test_hard_whitelist_removes_labels_without_nearby_observations(geo_bundle):
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        result = clf.classify(IMAGE, *PARIS)
    probs = _raw(geo_bundle, PARIS)["probabilities"][0].astype(np.float64)
    assert result.location_used and result.whitelist_filtered
    assert sorted(c.index for c in result.categories) == [0, 2]  # Paris labels only
    kept = probs[[0, 2]] / probs[[0, 2]].sum()
    assert {c.index: c.score for c in result.categories} == pytest.approx({0: kept[0], 2: kept[1]}, rel=1e-5)
    assert [c.score for c in result.categories] == sorted((c.score for c in result.categories), reverse=True)
    assert all(c.vision_score is not None and c.geo_score is not None for c in result.categories)


def test_soft_whitelist_downweights_with_a_floor(geo_bundle):
    options = GeoClassifierOptions(whitelist_mode="soft", whitelist_floor=0.1)
    with GeoClassifier.from_bundle(geo_bundle, options) as clf:
        result = clf.classify(IMAGE, *SYDNEY)
    probs = _raw(geo_bundle, SYDNEY)["probabilities"][0].astype(np.float64)
    weighted = probs * np.array([0.1, 1.0, 1.0, 0.1])
    expected = weighted / weighted.sum()
    assert result.whitelist_filtered and len(result.categories) == 4
    assert {c.index: c.score for c in result.categories} == pytest.approx(dict(enumerate(expected)), rel=1e-5)


def test_whitelist_off_and_no_data_nearby_do_not_filter(geo_bundle):
    probs = _raw(geo_bundle, PARIS)["probabilities"][0]
    with GeoClassifier.from_bundle(geo_bundle, GeoClassifierOptions(use_whitelist=False)) as clf:
        off = clf.classify(IMAGE, *PARIS)
    assert not off.whitelist_filtered and len(off.categories) == 4
    assert {c.index: c.score for c in off.categories} == pytest.approx(dict(enumerate(probs)), rel=1e-5)
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        pacific = clf.classify(IMAGE, *PACIFIC)
    assert pacific.location_used and not pacific.whitelist_filtered and len(pacific.categories) == 4


def test_categories_are_dataclasses_built_for_what_is_read(geo_bundle):
    """`categories` reads like a tuple of Category; each is built on first read and then kept."""
    import pickle

    from mobile_sdk.results import Categories, Category
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        result = clf.classify(IMAGE)
        top2 = clf.classify(IMAGE, *PARIS)
        capped = GeoClassifier.from_bundle(geo_bundle, GeoClassifierOptions(max_results=2)).classify(IMAGE)
    cats = result.categories
    assert isinstance(cats, Categories) and len(cats) == 4
    first = cats[0]
    assert dataclasses.is_dataclass(first) and isinstance(first, Category) and cats[0] is first
    assert isinstance(first.score, float) and isinstance(first.vision_score, float) and type(first.index) is int
    eager = tuple(cats)
    assert cats[-1] is eager[3] and cats[1:3] == eager[1:3] and cats == eager and eager == tuple(cats)
    assert capped.categories == eager[:2] and hash(capped.categories) == hash(eager[:2])
    with pytest.raises(IndexError):
        cats[4]
    assert pickle.loads(pickle.dumps(result)).categories == eager
    assert result.to_dict()["categories"] == tuple(dataclasses.asdict(c) for c in eager)
    assert sorted(c.index for c in top2.categories) == [0, 2] and top2.categories != cats


def test_ranking_sorts_only_what_is_read_and_equals_the_stable_argsort():
    """best_first / Ranking give exactly the stable descending argsort's prefix (ties in index order,
    NaN last), for many sizes, heavy ties and NaN, read a little or all the way."""
    from mobile_sdk.ranking import Ranking, best_first
    rng = np.random.default_rng(0)
    for trial in range(300):
        size = int(rng.integers(0, 600))
        values = rng.integers(0, int(rng.integers(1, 50)), size).astype(np.float64)  # many ties
        if trial % 3 == 0 and size:
            values[rng.random(size) < 0.05] = np.nan
        full = np.argsort(-values, kind="stable")
        for n in (1, int(rng.integers(2, 12))):  # 1: the top answer's own path
            prefix = best_first(values, n)
            assert len(prefix) >= min(n, size) and np.array_equal(prefix, full[:len(prefix)])
        keep = rng.random(size) < 0.7
        limit = None if trial % 2 else int(rng.integers(1, 20))
        expected = np.flatnonzero(keep)[np.argsort(-values[keep], kind="stable")][:limit]
        assert np.array_equal(Ranking(values, keep, limit).first(1)[:len(expected)], expected[:1])
        ranking = Ranking(values, keep, limit)
        assert ranking.size == len(expected)
        assert np.array_equal(ranking.first(n)[:len(expected)], expected[:n])
        assert np.array_equal(ranking.first(ranking.size), expected)


def test_longitude_wraps(geo_bundle):
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        a = clf.classify(IMAGE, PARIS[0], PARIS[1] + 360.0)
        b = clf.classify(IMAGE, *PARIS)
    assert a.location == pytest.approx(b.location)
    assert [(c.index, round(c.score, 5)) for c in a.categories] == [(c.index, round(c.score, 5)) for c in b.categories]


def test_options_filter_categories(geo_bundle):
    cases = [
        (GeoClassifierOptions(max_results=2, use_whitelist=False), lambda r: len(r.categories) == 2),
        (GeoClassifierOptions(category_allowlist=["sydney_b", "newyork_d"], use_whitelist=False),
         lambda r: sorted(c.label for c in r.categories) == ["newyork_d", "sydney_b"]),
        (GeoClassifierOptions(category_denylist=("paris_a",), use_whitelist=False),
         lambda r: "paris_a" not in [c.label for c in r.categories] and len(r.categories) == 3),
        (GeoClassifierOptions(score_threshold=0.3, use_whitelist=False),
         lambda r: all(c.score >= 0.3 for c in r.categories)),
    ]
    probs = _raw(geo_bundle, None)["probabilities"][0]
    for options, check in cases:
        with GeoClassifier.from_bundle(geo_bundle, options) as clf:
            assert check(clf.classify(IMAGE)), options
    with GeoClassifier.from_bundle(geo_bundle, GeoClassifierOptions(score_threshold=0.3)) as clf:
        assert len(clf.classify(IMAGE).categories) == int((probs >= 0.3).sum())
    with pytest.raises(ValueError, match="not in this bundle"):
        GeoClassifier.from_bundle(geo_bundle, GeoClassifierOptions(category_allowlist=["nope"]))


@pytest.mark.parametrize("kwargs", [
    dict(max_results=0), dict(max_results=2.0), dict(max_results=True), dict(score_threshold=1.5),
    dict(score_threshold=-0.1), dict(score_threshold="0.2"), dict(category_allowlist="abc"),
    dict(category_allowlist=["a"], category_denylist=["b"]), dict(category_denylist=[1]), dict(num_threads=0),
    dict(use_whitelist="yes"), dict(whitelist_mode="medium"), dict(whitelist_mode="off"), dict(whitelist_floor=0.0),
    dict(whitelist_floor=2.0), dict(bundle_path=3),
])
def test_options_are_validated(kwargs):
    with pytest.raises(ValueError):
        GeoClassifierOptions(**kwargs)


def test_options_are_frozen_and_create_from_options(geo_bundle):
    options = GeoClassifierOptions(bundle_path=str(geo_bundle), max_results=1, num_threads=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_results = 3
    with GeoClassifier.create_from_options(options) as clf:
        assert len(clf.classify(IMAGE).categories) == 1
    with pytest.raises(ValueError, match="bundle_path"):
        GeoClassifier.create_from_options(GeoClassifierOptions())


@pytest.mark.parametrize("lat,lon,match", [
    (48.0, None, "lon is missing"), (None, 2.0, "lat is missing"), (float("nan"), 2.0, "finite"),
    (48.0, float("inf"), "finite"), (91.0, 2.0, "outside"), (-90.5, 2.0, "outside"), ("48", 2.0, "real number"),
    (48.0, [2.0], "real number"), (True, 2.0, "real number"),
])
def test_bad_locations_are_typed_errors(geo_bundle, lat, lon, match):
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        with pytest.raises(InvalidLocationError, match=match):
            clf.classify(IMAGE, lat, lon)


@pytest.mark.parametrize("image", [np.zeros((4, 4, 2), np.uint8), np.zeros((0, 5, 3), np.uint8), b"garbage",
                                   np.zeros((4, 4, 3), np.int64), np.full((4, 4, 3), 3.0)])
def test_bad_images_are_typed_errors(geo_bundle, image):
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        with pytest.raises(InvalidImageError):
            clf.classify(image, *PARIS)


def test_classify_batch_equals_single_calls(geo_bundle):
    images = [IMAGE, IMAGE[::-1].copy(), IMAGE[:, ::-1].copy()]
    locations = [PARIS, None, SYDNEY]
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        batch = clf.classify_batch(images, locations)
        single = [clf.classify(im, *(loc or (None, None))) for im, loc in zip(images, locations)]
        assert batch == single
        assert clf.classify_batch(images) == [clf.classify(im) for im in images]
        with pytest.raises(InvalidLocationError, match="3 images but 2 locations"):
            clf.classify_batch(images, locations[:2])
        with pytest.raises(InvalidLocationError, match="pair"):
            clf.classify_batch([IMAGE], [48.0])


def test_concurrent_classify_matches_serial(geo_bundle):
    rng = np.random.default_rng(7)
    jobs = [(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), [PARIS, SYDNEY, None, PACIFIC][i % 4])
            for i in range(24)]
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        serial = [clf.classify(im, *(loc or (None, None))) for im, loc in jobs]
        parallel = [None] * len(jobs)
        errors = []

        def worker(start):
            try:
                for i in range(start, len(jobs), 4):
                    im, loc = jobs[i]
                    parallel[i] = clf.classify(im, *(loc or (None, None)))
            except Exception as exc:  # surfaced below
                errors.append(exc)
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and parallel == serial


def test_closed_classifier_refuses(geo_bundle):
    clf = GeoClassifier.from_bundle(geo_bundle)
    with clf:
        clf.classify(IMAGE)
    with pytest.raises(GeoAwareError, match="closed"):
        clf.classify(IMAGE)


# -- species_near --------------------------------------------------------------------------------

def test_species_near_ranks_whitelist_by_geo_network(geo_bundle):
    geo = _raw(geo_bundle, PARIS)["geo_logits"][0]
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        near = clf.species_near(*PARIS)
        far = clf.species_near(*PACIFIC)
        with pytest.raises(InvalidLocationError):
            clf.species_near(None, None)
        with pytest.raises(InvalidLocationError):
            clf.species_near(95.0, 0.0)
    assert near.whitelist_covered and near.geo_scored
    assert sorted(c.index for c in near.categories) == [0, 2]
    for c in near.categories:
        assert c.geo_score == pytest.approx(geo[c.index], abs=1e-6)  # independent of the image
        assert c.score == pytest.approx(1 / (1 + np.exp(-geo[c.index])), rel=1e-6)
    assert [c.score for c in near.categories] == sorted((c.score for c in near.categories), reverse=True)
    assert not far.whitelist_covered and len(far.categories) == 4  # no table data: the geo net alone


def test_species_near_without_geo_network_uses_whitelist(image_bundle):
    with GeoClassifier.from_bundle(image_bundle) as clf:
        near = clf.species_near(*SYDNEY)
        far = clf.species_near(*PACIFIC)
        result = clf.classify(IMAGE, *SYDNEY)
    assert not near.geo_scored and [c.index for c in near.categories] == [1, 2]
    assert all(c.score == 1.0 and c.geo_score is None for c in near.categories)
    assert not far.whitelist_covered and far.categories == ()
    assert sorted(c.index for c in result.categories) == [1, 2] and result.location_used
    assert all(c.vision_score is None and c.geo_score is None for c in result.categories)
    with GeoClassifier.from_bundle(image_bundle, GeoClassifierOptions(use_whitelist=False)) as clf:
        ignored = clf.classify(IMAGE, *SYDNEY)
    assert not ignored.location_used and len(ignored.categories) == 4  # nothing looked at the location


# -- bundles -------------------------------------------------------------------------------------

def test_open_bundle_checks_everything(geo_bundle):
    b = bundle_mod.open_bundle(geo_bundle)
    assert b.labels == LABELS and b.input_size == SIZE and b.whitelist.num_labels == 4
    manifest = b.manifest
    assert manifest["files"].keys() == {"model.tflite", "labels.txt", "whitelist.gwl"}
    assert manifest["whitelist"] == {"file": "whitelist.gwl", "radius_miles": 100.0, "precision": 4}
    for key in ("format_version", "model_kind", "backbone", "input_size", "num_labels", "quantization",
                "location_encoding", "training", "metrics", "model_version"):
        assert key in manifest


def test_modified_file_fails_hash_check(broken):
    copy, _ = broken
    with open(copy / "labels.txt", "a") as f:
        f.write("extra\n")
    with pytest.raises(BundleIntegrityError, match="labels.txt"):
        GeoClassifier.from_bundle(copy)


def test_truncated_model_is_a_model_error(broken):
    copy, rehash = broken
    data = (copy / "model.tflite").read_bytes()
    (copy / "model.tflite").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleIntegrityError, match="model.tflite"):
        bundle_mod.open_bundle(copy)
    rehash()
    with pytest.raises(ModelError):
        bundle_mod.open_bundle(copy)
    (copy / "model.tflite").write_bytes(b"")
    rehash()
    with pytest.raises(ModelError, match="empty"):
        bundle_mod.open_bundle(copy)


def test_corrupted_whitelist_is_a_table_error(broken):
    copy, rehash = broken
    data = bytearray((copy / "whitelist.gwl").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "whitelist.gwl").write_bytes(bytes(data))
    rehash()
    with pytest.raises(WhitelistTableError, match="checksum"):
        bundle_mod.open_bundle(copy)


def test_whitelist_for_another_label_set(broken):
    copy, rehash = broken
    write_whitelist(copy / "whitelist.gwl", [0.0], [0.0], [0], 4, 100.0, 4, ["w", "x", "y", "z"])
    rehash()
    with pytest.raises(LabelSetMismatchError, match="another label set"):
        bundle_mod.open_bundle(copy)


@pytest.mark.parametrize("damage,error,match", [
    (lambda c: (c / "manifest.json").unlink(), BundleError, "no manifest.json"),
    (lambda c: (c / "manifest.json").write_text("{not json"), BundleError, "unreadable"),
    (lambda c: (c / "whitelist.gwl").unlink(), BundleError, "missing"),
    (lambda c: _edit_manifest(c, format_version=99), BundleError, "format_version"),
    (lambda c: _edit_manifest(c, num_labels=5), BundleError, "5"),
    (lambda c: _edit_manifest(c, input_size=[64, 64]), BundleError, "input size"),
    (lambda c: _edit_manifest(c, quantization="int4"), BundleError, "int4"),
])
def test_bundle_damage_is_typed(broken, damage, error, match):
    copy, _ = broken
    damage(copy)
    with pytest.raises(error, match=match):
        bundle_mod.open_bundle(copy)


def _edit_manifest(copy, **changes):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))


def test_wrong_signature_is_a_model_error(tmp_path):
    path = _tiny_tflite(tmp_path / "bad.tflite", "image", input_names=("img", "loc"))
    with pytest.raises(ModelError, match="inputs"):
        TFLiteModel(path)
    with pytest.raises(ModelError, match="cannot read"):
        TFLiteModel(tmp_path / "missing.tflite")


def test_manifest_writer_validates(tmp_path, models):
    (tmp_path / "model.tflite").write_bytes(Path(models["image"]).read_bytes())
    common = dict(model_kind="image", backbone="tiny", input_size=SIZE, num_labels=4, quantization="float32",
                  location_encoding="sincos", outputs=["probabilities"])
    with pytest.raises(ValueError, match="missing"):
        bundle_mod.manifest_for(tmp_path, **common)
    bundle_mod.write_labels(tmp_path, LABELS)
    for bad in (dict(model_kind="cnn"), dict(quantization="int4"), dict(location_encoding="xyz"),
                dict(input_size=(32,)), dict(outputs=["logits"]), dict(num_labels=0)):
        with pytest.raises(ValueError):
            bundle_mod.manifest_for(tmp_path, **{**common, **bad})
    # geo_objective: a geo bundle's, one of mobile_sdk.geo_scores.GEO_OBJECTIVES (the reader's rule too)
    for bad in (dict(geo_objective="softmax"), dict(model_kind="geoprior", geo_objective="hinge")):
        with pytest.raises(BundleError, match="geo_objective"):
            bundle_mod.manifest_for(tmp_path, **{**common, **bad})
    assert bundle_mod.manifest_for(tmp_path, **{**common, "model_kind": "geoprior",
                                                "geo_objective": "softmax"})["geo_objective"] == "softmax"
    manifest = bundle_mod.manifest_for(tmp_path, **common)
    assert manifest["whitelist"] is None and manifest["model_version"] == manifest["files"]["model.tflite"][:12]
    bundle_mod.write_manifest(tmp_path, manifest)
    assert bundle_mod.open_bundle(tmp_path).whitelist is None
    with pytest.raises(ValueError, match="single-line"):
        bundle_mod.write_labels(tmp_path, ["a", "b\nc"])


# -- CLI and imports -----------------------------------------------------------------------------

def test_cli_text_json_and_errors(geo_bundle, tmp_path, capsys):
    from PIL import Image
    image_path = tmp_path / "x.png"
    Image.fromarray(IMAGE).save(image_path)
    assert cli_main([str(geo_bundle), str(image_path), "--lat", "48.85", "--lon", "2.35", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "whitelist filtered" in text and "paris_a" in text and "newyork_d" not in text
    assert cli_main([str(geo_bundle), str(image_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["location_used"] is False and len(result["categories"]) == 4
    assert {"index", "label", "score", "vision_score", "geo_score"} <= result["categories"][0].keys()
    assert cli_main([str(geo_bundle), str(image_path), "--lat", "48.85"]) == 2
    assert "lon is missing" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "nope"), str(image_path)]) == 2


def test_sdk_never_imports_tensorflow(geo_bundle):
    code = (
        "import sys, numpy as np\n"
        "import mobile_sdk, mobile_sdk.__main__\n"
        "from mobile_sdk import GeoClassifier\n"
        f"with GeoClassifier.from_bundle({str(geo_bundle)!r}) as clf:\n"
        "    r = clf.classify(np.zeros((20, 20, 3), np.uint8), 48.85, 2.35)\n"
        "    clf.species_near(48.85, 2.35)\n"
        "assert r.categories\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'scipy'))\n"
        "print('LOADED', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED []" in proc.stdout


def test_sdk_calls_print_no_runtime_info_line_unless_verbose(geo_bundle):
    """LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU." INFO line (printed once per
    process by a float model's first run) is filtered; GEOAWARE_VERBOSE=1 shows it again."""
    code = ("import numpy as np\nfrom mobile_sdk import GeoClassifier\n"
            f"with GeoClassifier.from_bundle({str(geo_bundle)!r}) as clf:\n"
            "    print(clf.classify(np.zeros((20, 20, 3), np.uint8), 48.85, 2.35).categories[0].label)\n")
    quiet, verbose = (subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                     timeout=120, env={**os.environ, "GEOAWARE_VERBOSE": flag})
                      for flag in ("0", "1"))
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stdout == verbose.stdout and quiet.stderr == ""
    assert "XNNPACK" in verbose.stderr  # the line exists, so the quiet run really filtered it


def test_filtered_native_stderr_keeps_every_other_line(capfd):
    from mobile_sdk.quiet import drop_lines_with, filtered_native_stderr

    with filtered_native_stderr(drop_lines_with("noise")):
        os.write(2, b"INFO: some noise\nERROR: a real problem\n")
    assert capfd.readouterr().err == "ERROR: a real problem\n"


def test_runtime_falls_back_to_tflite_runtime_and_explains_when_none(geo_bundle):
    """With ai_edge_litert absent, a `tflite_runtime` install is used (simulated here by exposing
    LiteRT's Interpreter under that name); with neither, the error says what to install."""
    code = (
        "import sys, types, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "for name in [m for m in sys.modules if m.startswith('ai_edge_litert')]:\n"
        "    del sys.modules[name]\n"
        "sys.modules['ai_edge_litert'] = None\n"
        "if sys.argv[1] == 'tflite_runtime':\n"
        "    pkg, mod = types.ModuleType('tflite_runtime'), types.ModuleType('tflite_runtime.interpreter')\n"
        "    mod.Interpreter = Interpreter\n"
        "    sys.modules.update({'tflite_runtime': pkg, 'tflite_runtime.interpreter': mod})\n"
        "else:\n"
        "    sys.modules['tflite_runtime'] = None\n"
        "from mobile_sdk import runtime, GeoClassifier, ModelError\n"
        "print('RUNTIME', runtime.RUNTIME_NAME)\n"
        "try:\n"
        f"    with GeoClassifier.from_bundle({str(geo_bundle)!r}) as clf:\n"
        "        print('TOP', clf.classify(np.zeros((8, 8, 3), np.uint8), 48.85, 2.35).categories[0].label)\n"
        "except ModelError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    fallback = subprocess.run([sys.executable, "-c", code, "tflite_runtime"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    assert "RUNTIME tflite_runtime" in fallback.stdout and "TOP " in fallback.stdout, fallback.stderr
    missing = subprocess.run([sys.executable, "-c", code, "none"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert "RUNTIME None" in missing.stdout and "pip install ai-edge-litert" in missing.stdout, missing.stderr


def test_whitelist_without_logits_output_renormalises_probabilities(geo_bundle, monkeypatch):
    """Models are meant to output logits too; for one that does not, the whitelist reweights the
    probabilities (same maths) instead."""
    with GeoClassifier.from_bundle(geo_bundle, GeoClassifierOptions(whitelist_mode="soft", whitelist_floor=0.5)) as clf:
        with_logits = clf.classify(IMAGE, *PARIS)
        run = clf._bundle.model.run
        monkeypatch.setattr(clf._bundle.model, "run",
                            lambda *a: {k: v for k, v in run(*a).items() if k != "logits"})
        without = clf.classify(IMAGE, *PARIS)
    probs = _raw(geo_bundle, PARIS)["probabilities"][0].astype(np.float64) * np.array([1, 0.5, 1, 0.5])
    assert without.whitelist_filtered and with_logits.whitelist_filtered
    assert {c.index: c.score for c in without.categories} == pytest.approx(dict(enumerate(probs / probs.sum())),
                                                                           rel=1e-5)
    assert {c.index: c.score for c in with_logits.categories} == pytest.approx(
        {c.index: c.score for c in without.categories}, rel=1e-4)


# -- the bundle's recommended fusion -------------------------------------------------------------

def _with_fusion(bundle, tmp_path, fusion, key="recommended_fusion"):
    copy = tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / bundle_mod.MANIFEST_FILE).read_text())
    manifest[key] = fusion
    bundle_mod.write_manifest(copy, manifest)
    return copy


@pytest.mark.parametrize("fusion, explicit", [
    ({"whitelist": "off", "floor": None}, GeoClassifierOptions(use_whitelist=False)),
    ({"whitelist": "soft", "floor": 0.3}, GeoClassifierOptions(whitelist_mode="soft", whitelist_floor=0.3)),
    ({"whitelist": "hard", "floor": None}, GeoClassifierOptions(whitelist_mode="hard")),
])
def test_the_recommended_fusion_is_the_default_and_options_override_it(geo_bundle, tmp_path, fusion, explicit):
    bundle = _with_fusion(geo_bundle, tmp_path, fusion)
    scores = lambda r: {c.index: c.score for c in r.categories}  # noqa: E731
    with GeoClassifier.from_bundle(bundle) as default, GeoClassifier.from_bundle(geo_bundle, explicit) as chosen:
        assert (default.fusion.whitelist, default.fusion.floor, default.fusion.source) == \
            (fusion["whitelist"], fusion["floor"], "bundle")
        for place in (PARIS, SYDNEY):
            assert scores(default.classify(IMAGE, *place)) == pytest.approx(scores(chosen.classify(IMAGE, *place)))
    # Options win: each other mode, set explicitly, is what applies on this bundle.
    for other in (GeoClassifierOptions(use_whitelist=False), GeoClassifierOptions(whitelist_mode="hard"),
                  GeoClassifierOptions(whitelist_mode="soft", whitelist_floor=0.05)):
        with GeoClassifier.from_bundle(bundle, other) as overridden, \
                GeoClassifier.from_bundle(geo_bundle, other) as reference:
            assert overridden.fusion.source == "options"
            assert scores(overridden.classify(IMAGE, *PARIS)) == pytest.approx(scores(reference.classify(IMAGE, *PARIS)))


def test_a_bundle_without_a_recommendation_keeps_the_hard_whitelist(geo_bundle):
    with GeoClassifier.from_bundle(geo_bundle) as clf:
        assert (clf.fusion.whitelist, clf.fusion.source) == ("hard", "default")
        assert len(clf.classify(IMAGE, *PARIS).categories) < 4


@pytest.mark.parametrize("fusion", [{"whitelist": "medium", "floor": None}, {"whitelist": "soft", "floor": None},
                                    {"whitelist": "hard", "floor": 0.1}, {"whitelist": "soft", "floor": 2.0}, "off"])
def test_a_malformed_recommended_fusion_is_a_bundle_error(geo_bundle, tmp_path, fusion):
    manifest = json.loads((geo_bundle / bundle_mod.MANIFEST_FILE).read_text())
    with pytest.raises(BundleError, match="recommended_fusion"):
        bundle_mod.write_manifest(geo_bundle, {**manifest, "recommended_fusion": fusion})


def test_cli_says_when_the_whitelist_is_off(geo_bundle, tmp_path, capsys):
    from PIL import Image
    image_path = tmp_path / "x.png"
    Image.fromarray(IMAGE).save(image_path)
    assert cli_main([str(geo_bundle), str(image_path), "--lat", "48.85", "--lon", "2.35", "--no-whitelist"]) == 0
    assert "whitelist off (your option)" in capsys.readouterr().out
    off = _with_fusion(geo_bundle, tmp_path, {"whitelist": "off", "floor": None})
    assert cli_main([str(off), str(image_path), "--lat", "48.85", "--lon", "2.35"]) == 0
    assert "whitelist off (the bundle's recommendation)" in capsys.readouterr().out


def test_the_bundle_temperature_divides_the_logits(geo_bundle, tmp_path):
    tempered = _with_fusion(geo_bundle, tmp_path, {"temperature": 2.0}, key="calibration")
    logits = _raw(geo_bundle, PARIS)["logits"][0].astype(np.float64)
    with GeoClassifier.from_bundle(tempered, GeoClassifierOptions(use_whitelist=False)) as clf:
        result = clf.classify(IMAGE, *PARIS)
    expected = np.exp(logits / 2 - (logits / 2).max())
    assert {c.index: c.score for c in result.categories} == pytest.approx(dict(enumerate(expected / expected.sum())),
                                                                          rel=1e-5)
    with GeoClassifier.from_bundle(tempered) as clf, GeoClassifier.from_bundle(geo_bundle) as plain:  # hard whitelist
        assert [c.index for c in clf.classify(IMAGE, *PARIS).categories] == \
            [c.index for c in plain.classify(IMAGE, *PARIS).categories]  # the ranking does not move
    for bad in ({"temperature": 0.0}, {"temperature": "2"}, {}):
        manifest = json.loads((geo_bundle / bundle_mod.MANIFEST_FILE).read_text())
        with pytest.raises(BundleError, match="calibration"):
            bundle_mod.write_manifest(geo_bundle, {**manifest, "calibration": bad})


def test_sdk_classifies_through_a_real_export(tiny_bundle, tiny_world):
    """The shared int8 bundle of a MobileNet V2 post-processing run (tests/conftest.py), through
    the SDK with a validation image of the world it came from."""
    from trainer.data.readers import load_split

    val = load_split(tiny_world, "val")
    row = int(np.flatnonzero(val.has_location)[0])
    with GeoClassifier.from_bundle(tiny_bundle, GeoClassifierOptions(max_results=None)) as clf:
        blind = clf.classify(val.paths[row])
        located = clf.classify(val.paths[row], float(val.lat[row]), float(val.lon[row]))
    assert [c.label for c in sorted(blind.categories, key=lambda c: c.index)] == list(val.label_names)
    assert located.location_used and not blind.location_used
    assert all(c.geo_score is not None for c in located.categories)
