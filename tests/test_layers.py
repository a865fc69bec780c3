"""trainer.model.layers: parity with the numpy encodings, validation in-graph, modulation maths, get_config."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from mobile_sdk.encoding import FOURIER_SCALES, ENCODINGS, encode_locations, encoded_dim  # noqa: E402
from trainer.model.layers import (VARIANTS, FeatureModulation, GateByKnown, KnownFlag,  # noqa: E402
                                  LocationDropout, LocationEncoder, PixelScaling)


def _random_locations(n, seed=0):
    rng = np.random.default_rng(seed)
    locs = np.stack([rng.uniform(-90, 90, n), rng.uniform(-540, 540, n)], axis=1)
    locs[::7] = np.nan  # unknown rows
    locs[1] = [90.0, 180.0]  # edges: the pole, and 180 wraps to -180
    locs[2] = [-90.0, -180.0]
    return locs.astype(np.float32)


@pytest.mark.parametrize("kind", ENCODINGS)
def test_location_encoder_matches_numpy(kind):
    locs = _random_locations(200)
    keras_out = LocationEncoder(kind)(locs).numpy()
    assert keras_out.shape == (200, encoded_dim(kind))
    # float32 in the graph vs float64 in numpy: the phase error grows with the highest frequency.
    atol = 2e-6 * (2.0 ** (FOURIER_SCALES + 2) if kind == "fourier" else 1.0)
    np.testing.assert_allclose(keras_out, encode_locations(locs, kind), atol=atol)


@pytest.mark.parametrize("kind", ENCODINGS)
def test_location_encoder_same_inside_tf_data(kind):
    locs = _random_locations(40, seed=1)
    layer = LocationEncoder(kind)
    mapped = np.concatenate(list(tf.data.Dataset.from_tensor_slices(locs).batch(8).map(layer).as_numpy_iterator()))
    np.testing.assert_array_equal(mapped, layer(locs).numpy())


@pytest.mark.parametrize("kind", ENCODINGS)
def test_invalid_rows_become_unknown_and_unknown_is_not_zero_zero(kind):
    bad = np.array([[np.nan, np.nan], [91.0, 0.0], [-90.5, 10.0], [0.0, np.inf], [np.inf, 0.0],
                    [0.0, -np.inf], [np.nan, 5.0], [5.0, np.nan]], np.float32)
    np.testing.assert_array_equal(LocationEncoder(kind)(bad).numpy(), 0.0)
    zero_zero = LocationEncoder(kind)(np.zeros((1, 2), np.float32)).numpy()
    assert zero_zero[0, -1] == 1.0  # (0, 0) is a known place, distinguishable from unknown


def _max_jump(kind, a, b):
    """Largest feature difference between two locations, in the graph and in numpy."""
    locs = np.array([a, b], np.float32)
    return max(np.abs(np.diff(LocationEncoder(kind)(locs).numpy(), axis=0)).max(),
               np.abs(np.diff(encode_locations(locs, kind), axis=0)).max())


# ~85 m apart across the antimeridian; ~100 m apart across a pole, or the pole itself reached along
# opposite meridians. The finest `fourier` scale changes by ~0.06 per km, so 0.02 means "no jump".
ANTIMERIDIAN = ([40.0, 179.9995], [40.0, -179.9995])
POLES = [([89.9995, 0.0], [89.9995, 180.0]), ([-89.9995, 45.0], [-89.9995, -135.0]), ([90.0, 10.0], [90.0, -170.0])]


@pytest.mark.parametrize("kind", ["sincos", "fourier"])
def test_encoding_is_continuous_across_the_antimeridian(kind):
    assert _max_jump(kind, *ANTIMERIDIAN) < 0.02


def test_paper_encoding_jumps_at_the_antimeridian():
    assert _max_jump("paper", *ANTIMERIDIAN) > 1.9


def test_fourier_is_continuous_at_the_poles_where_sincos_is_not():
    for a, b in POLES:
        assert _max_jump("fourier", a, b) < 0.02
        assert _max_jump("sincos", a, b) > 1.0  # sin/cos of the longitude differ at the same point


def test_fourier_resolves_about_100_km():
    """Points 100 km apart differ by far more than in sincos: the ladder can draw a small range."""
    north = [35.0, 139.0]
    south = [35.0 - 100.0 / 111.2, 139.0]
    assert _max_jump("fourier", north, south) > 0.5
    assert _max_jump("sincos", north, south) < 0.02


def test_location_encoder_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown location encoding"):
        LocationEncoder("geohash")


def test_pixel_scaling():
    out = PixelScaling()(np.array([[[[0, 255, 127]]]], np.uint8)).numpy()
    np.testing.assert_allclose(out, [[[[-1.0, 1.0, 127 / 127.5 - 1]]]], atol=1e-7)
    assert out.dtype == np.float32


def test_location_dropout_drops_whole_rows_in_training_only():
    locs = np.tile(np.array([[10.0, 20.0]], np.float32), (2000, 1))
    layer = LocationDropout(0.3, seed=1)
    out = layer(locs, training=True).numpy()
    nan_rows = np.isnan(out).any(axis=1)
    assert (np.isnan(out).all(axis=1) == nan_rows).all()  # never half a row
    assert 0.25 < nan_rows.mean() < 0.35
    np.testing.assert_array_equal(out[~nan_rows], locs[~nan_rows])
    np.testing.assert_array_equal(layer(locs, training=False).numpy(), locs)
    assert np.isnan(LocationDropout(1.0, seed=1)(locs, training=True).numpy()).all()  # the image control
    with pytest.raises(ValueError, match="rate"):
        LocationDropout(1.5)


def test_gate_by_known_is_exactly_zero_for_unknown():
    enc = LocationEncoder()(np.array([[1.0, 2.0], [np.nan, np.nan]], np.float32))
    x = np.array([[3.0, -4.0], [5.0, -6.0]], np.float32)
    out = GateByKnown()([x, KnownFlag()(enc)]).numpy()
    np.testing.assert_array_equal(out, [[3.0, -4.0], [0.0, 0.0]])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


_EXPECTED = {  # variant -> numpy formula of (F, γ pre-activation, β pre-activation)
    "add": lambda f, g, b: f + b,
    "relu_add": lambda f, g, b: f + np.maximum(b, 0),
    "sigmoid_scale": lambda f, g, b: f * _sigmoid(g),
    "sigmoid_scale_relu_add": lambda f, g, b: f * _sigmoid(g) + np.maximum(b, 0),
    "relu_scale_relu_add": lambda f, g, b: f * np.maximum(g, 0) + np.maximum(b, 0),
    "film": lambda f, g, b: f * g + b,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_feature_modulation_maths_and_identity_when_unknown(variant):
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    geo = rng.normal(size=(2, 6)).astype(np.float32)
    known = np.array([[1.0], [0.0]], np.float32)
    layer = FeatureModulation(4, variant)
    layer([feats, geo, known])
    for dense in (layer.gamma, layer.beta):  # random weights, so the test sees each term
        if dense is not None:
            dense.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in dense.get_weights()])
    out = layer([feats, geo, known]).numpy()
    g = geo @ layer.gamma.kernel.numpy() + layer.gamma.bias.numpy() if layer.gamma is not None else None
    b = geo @ layer.beta.kernel.numpy() + layer.beta.bias.numpy() if layer.beta is not None else None
    expected = _EXPECTED[variant](feats[0], None if g is None else g[0], None if b is None else b[0])
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[1], feats[1])  # unknown: γ = 1, β = 0 exactly


def test_feature_modulation_validates():
    with pytest.raises(ValueError, match="variant"):
        FeatureModulation(4, "R(F)*2")
    with pytest.raises(ValueError, match="channels"):
        FeatureModulation(4)([np.zeros((1, 2, 2, 3), np.float32), np.zeros((1, 5), np.float32),
                              np.ones((1, 1), np.float32)])


@pytest.mark.parametrize("layer", [
    LocationEncoder("paper", name="enc"), KnownFlag(), PixelScaling(), GateByKnown(),
    LocationDropout(0.25, seed=7), FeatureModulation(16, "film"), FeatureModulation(8, "sigmoid_scale"),
], ids=lambda layer: type(layer).__name__)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # And through Keras's registry, as load_model does it.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
