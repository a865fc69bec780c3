"""trainer.training.geoprior: presence-only geo models from observations alone, and where they plug in."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from mobile_sdk.geo_scores import GEO_OBJECTIVES, log_scores  # noqa: E402
from trainer.model import networks  # noqa: E402
from trainer.training import geoprior  # noqa: E402
from trainer.training.config import OptimizerConfig, TrainConfig  # noqa: E402

CENTRES = {"alpha": (45.0, 10.0), "beta": (-30.0, 140.0)}  # two disjoint ranges, ~15,000 km apart


def _toy_observations(n=300, seed=0):
    rng = np.random.default_rng(seed)
    locs, labels = [], []
    for i, (lat, lon) in enumerate(CENTRES.values()):
        locs.append(np.stack([lat + rng.normal(0, 1.5, n), lon + rng.normal(0, 1.5, n)], axis=1))
        labels.append(np.full(n, i))
    return geoprior.Observations(np.concatenate(locs), np.concatenate(labels).astype(np.int32), list(CENTRES))


def _toy_config(**changes):
    values = dict(data="toy", model="geoprior", encoding="fourier", pos_weight=4.0, batch_size=64, epochs=6,
                  optimizer=OptimizerConfig(name="adam", learning_rate=3e-3), seed=0)
    return TrainConfig(**{**values, **changes})


def _scores(model, latlon):
    return 1.0 / (1.0 + np.exp(-geoprior.predict_logits(model, np.array(latlon, np.float32))))


@pytest.mark.parametrize("geo_net", ["paper", pytest.param("residual", marks=pytest.mark.slow)])
def test_presence_only_loss_learns_two_disjoint_ranges(geo_net):
    model, history = geoprior.fit(_toy_observations(), _toy_config(geo_net=geo_net), log=lambda _: None)
    assert history[-1]["loss"] < history[0]["loss"]
    inside = _scores(model, list(CENTRES.values()))
    assert inside[0, 0] > 0.5 and inside[1, 1] > 0.5  # each label high inside its own range
    assert inside[0, 1] < 0.1 and inside[1, 0] < 0.1  # and low inside the other's
    far = _scores(model, [[0.0, -60.0], [60.0, -100.0], [-70.0, 0.0], [10.0, 80.0]])
    assert far.max() < 0.1  # background points teach "absent where never observed"


def test_softmax_objective_learns_two_disjoint_ranges():
    model, history = geoprior.fit(_toy_observations(), _toy_config(geo_objective="softmax"), log=lambda _: None)
    assert history[-1]["loss"] < history[0]["loss"]
    probs = geoprior.label_probs(geoprior.predict_logits(model, np.array(list(CENTRES.values()), np.float32)), "softmax")
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9  # P(label | location): each range's own label


@pytest.mark.parametrize("objective", GEO_OBJECTIVES)
def test_model_probabilities_are_the_sdk_scores_of_its_logits(objective):
    """The Keras model's `probabilities` output and mobile_sdk.geo_scores agree (parity), and
    label_probs renormalises them: softmax(f) as is, sigmoid(f) divided by its sum."""
    model = networks.build_geo_model(5, "fourier", "paper", objective=objective)
    _randomize(model)
    out = model({"image": np.zeros((3, 1, 1, 3), np.uint8),
                 "location": np.array([[10.0, 20.0], [-40.0, 170.0], [89.0, -179.0]], np.float32)})
    logits, probs = out["logits"].numpy(), out["probabilities"].numpy()
    np.testing.assert_allclose(np.exp(log_scores(logits, objective)), probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(geoprior.label_probs(logits, objective), probs / probs.sum(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    if objective == "softmax":
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_log_scores_by_hand_and_unknown_objective():
    z = np.array([[0.0, np.log(3.0)], [800.0, -800.0]])
    np.testing.assert_allclose(log_scores(z, "softmax")[0], np.log([0.25, 0.75]))
    np.testing.assert_allclose(log_scores(z, "presence")[0], np.log([0.5, 0.75]))
    assert np.isfinite(log_scores(z, "presence")).all() and np.isfinite(log_scores(z, "softmax")).all()
    with pytest.raises(ValueError, match="geo objective"):
        log_scores(z, "hinge")
    with pytest.raises(ValueError, match="geo_objective"):
        _toy_config(geo_objective="hinge")


def test_assume_negative_loss_terms():
    logits = tf.constant([[2.0, -1.0]])
    loss = geoprior.assume_negative_loss(logits, tf.constant([0]), tf.constant([[0.5, -3.0]]), 5.0)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    expected = (5.0 * softplus(-2.0) + softplus(-1.0)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_background_points_are_uniform_on_the_sphere():
    generator = tf.random.Generator.from_seed(0)
    points = geoprior.random_sphere_points(20000, generator.uniform).numpy()
    assert np.abs(points[:, 0]).max() <= 90 and np.abs(points[:, 1]).max() <= 180
    # Uniform on the sphere: sin(lat) is uniform, so a quarter of the points have |lat| > 48.6°.
    assert 0.24 < np.mean(np.abs(points[:, 0]) > 48.59) < 0.26


def test_unknown_location_gives_zero_logits():
    model = networks.build_geo_model(3, "fourier", "residual")
    _randomize(model)
    out = model({"image": np.zeros((2, 1, 1, 3), np.uint8), "location": np.array([[np.nan, np.nan], [10.0, 20.0]], np.float32)})
    assert np.all(out["logits"].numpy()[0] == 0.0) and np.any(out["logits"].numpy()[1] != 0.0)


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])


@pytest.mark.parametrize("geo_net", networks.GEO_NETS)
def test_post_processing_head_starts_from_a_geo_model(geo_net):
    geo = networks.build_geo_model(4, "fourier", geo_net)
    _randomize(geo)
    head = networks.build_geo_head(4, "fourier", geo_net=geo_net)
    networks.init_geo_from(head, geo)
    locs = np.array([[10.0, 20.0], [-40.0, 170.0], [np.nan, np.nan]], np.float32)
    out = head({"vision_logits": np.zeros((3, 4), np.float32), "location": locs})
    np.testing.assert_allclose(out["geo_logits"].numpy(), geoprior.predict_logits(geo, locs), atol=1e-6)
    with pytest.raises(ValueError, match="another encoding, geo net or label count"):
        networks.init_geo_from(networks.build_geo_head(4, "sincos", geo_net=geo_net), geo)


def test_reads_npz_csv_and_names_bad_files(tmp_path):
    npz = tmp_path / "obs.npz"
    np.savez(npz, train_locs=np.array([[10.0, 20.0], [-5.0, 170.0], [np.nan, np.nan]], np.float32),
             train_ids=np.array([7, 3, 3]), taxon_ids=np.array([3, 7]), taxon_names=np.array(["c", "g"]))
    obs = geoprior.load_observations(str(npz))
    assert obs.label_names == ["c", "g"] and obs.labels.tolist() == [1, 0] and len(obs) == 2  # NaN row skipped
    np.testing.assert_allclose(obs.latlon, [[10.0, 20.0], [-5.0, 170.0]], atol=1e-5)
    csv_file = tmp_path / "obs.csv"
    csv_file.write_text("label,lat,lon\nb,1.5,2\na,-3,190\nb,,\n")
    obs = geoprior.load_observations(str(csv_file))
    assert obs.label_names == ["a", "b"] and obs.labels.tolist() == [1, 0]
    np.testing.assert_allclose(obs.latlon, [[1.5, 2.0], [-3.0, -170.0]])  # longitudes wrap
    bad = tmp_path / "bad.csv"
    bad.write_text("name,lat,lon\nb,1,2\n")
    with pytest.raises(geoprior.ObservationError, match="label, lat, lon"):
        geoprior.load_observations(str(bad))
    bad.write_text("label,lat,lon\nb,95,2\n")
    with pytest.raises(geoprior.ObservationError, match="bad.csv"):
        geoprior.load_observations(str(bad))


@pytest.mark.parametrize("objective", ["softmax", pytest.param("presence", marks=pytest.mark.slow)])
def test_a_geoprior_run_exports_and_geoclassifier_uses_it(tmp_path, objective, toy_tflite):
    """`trainer.train --model geoprior` on a CSV of observations -> int8 geo bundle (location kept
    float, the objective and expected-nearby thresholds on its scores in the bundle) ->
    GeoClassifier: species_near alone, and vision x geo beside an image-only bundle."""
    from converters.export import export_bundle
    from converters.verify import check_location_float
    from mobile_sdk import GeoClassifier, GeoClassifierOptions
    from mobile_sdk.errors import GeoAwareError
    from test_sdk import LABELS, NEW_YORK, PARIS, SIZE, SYDNEY, _write_bundle
    from trainer.train import main as train_main

    rng = np.random.default_rng(0)
    places = {"paris_a": [PARIS], "sydney_b": [SYDNEY], "both_c": [PARIS, SYDNEY], "newyork_d": [NEW_YORK]}
    rows = [f"{label},{la + rng.normal(0, 1.0):.4f},{lo + rng.normal(0, 1.0):.4f}"
            for label, centres in places.items() for la, lo in centres for _ in range(150)]
    observations = tmp_path / "obs.csv"
    observations.write_text("label,lat,lon\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    chosen = [] if objective == "softmax" else ["--objective", objective, "--pos-weight", "4"]  # softmax: the default
    assert train_main(["--model", "geoprior", "--observations", str(observations), "--out", str(run),
                       "--epochs", "6", "--batch-size", "64", "--lr", "3e-3", *chosen]) == 0
    manifest = export_bundle(run, tmp_path / "geo_bundle", "int8", calibration_samples=50, verify_samples=40)
    assert manifest["model_kind"] == "geoprior" and manifest["location_encoding"] == "fourier"
    assert manifest["geo_objective"] == objective and manifest["training"]["geo_net"] == "paper"
    check_location_float((tmp_path / "geo_bundle" / "model.tflite").read_bytes())
    located = manifest["metrics"]["verification"]["located"]
    # Paris holds two labels with near-equal scores: int8 may flip that tie, nothing else.
    assert located["top1_agreement"] >= 0.8 and located["max_probability_diff"] < 0.15
    # Expected nearby from the geo model's own log scores (LPT-R over each label's training cells).
    nearby = manifest["expected_nearby"]
    assert nearby["method"] == "lpt_r" and (tmp_path / "geo_bundle" / nearby["file"]).is_file()
    assert nearby["validation"]["rows"] > 0 and nearby["validation"]["recall"] >= 0.8

    with GeoClassifier.from_bundle(tmp_path / "geo_bundle") as geo_only:
        near = geo_only.species_near(*SYDNEY)
        assert near.geo_scored and {c.label for c in near.categories} == {"sydney_b", "both_c"}  # the flagged labels
        assert all(c.expected_nearby for c in near.categories)
        assert near.categories[0].score > (0.3 if objective == "softmax" else 0.5)
        if objective == "softmax":  # P(label | location): Sydney's two labels hold nearly all of it
            assert sum(c.score for c in near.categories) > 0.9
        with pytest.raises(GeoAwareError, match="geo model"):
            geo_only.classify(np.zeros((*SIZE, 3), np.uint8), *SYDNEY)

    labels = sorted(LABELS)  # the CSV reader orders labels by name
    image_bundle = _write_bundle(tmp_path / "image_bundle", toy_tflite("image"), "image",
                                 labels=labels)
    photo = np.random.default_rng(1).integers(0, 255, (*SIZE, 3), dtype=np.uint8)
    options = GeoClassifierOptions(geo_bundle_path=str(tmp_path / "geo_bundle"), use_whitelist=False)
    with GeoClassifier.from_bundle(image_bundle, options) as fused, \
            GeoClassifier.from_bundle(image_bundle, GeoClassifierOptions(use_whitelist=False)) as plain:
        assert fused.labels == labels
        at_new_york = fused.classify(photo, *NEW_YORK)
        assert at_new_york.location_used and at_new_york.categories[0].label == "newyork_d"
        top = at_new_york.categories[0]
        # vision x geo: log P(vision) + the geo bundle's log score, renormalised.
        assert top.geo_score < 0 and top.vision_score is not None
        # The geo bundle's thresholds flag the labels, whitelist off or not.
        flags = {c.label: c.expected_nearby for c in at_new_york.categories}
        assert flags == {"newyork_d": True, "paris_a": False, "sydney_b": False, "both_c": False}
        by_label = {c.label: c for c in at_new_york.categories}
        fused_by_hand = np.array([np.log(by_label[n].vision_score) + by_label[n].geo_score for n in by_label])
        np.testing.assert_allclose([c.score for c in by_label.values()],
                                   np.exp(fused_by_hand) / np.exp(fused_by_hand).sum(), rtol=1e-6)
        unknown, image_only = fused.classify(photo), plain.classify(photo)
        assert [(c.label, round(c.score, 6)) for c in unknown.categories] == \
               [(c.label, round(c.score, 6)) for c in image_only.categories]
        assert fused.species_near(*PARIS).categories[0].label in ("paris_a", "both_c")
    with pytest.raises(ValueError, match="image-only"):
        GeoClassifier.from_bundle(tmp_path / "geo_bundle", options)
