"""trainer.model.networks: interfaces, the unknown-location paths, where feature modulation goes, save/load."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from harness import IMAGE_MODEL_KINDS  # noqa: E402
from trainer.model import networks  # noqa: E402
from trainer.model.layers import VARIANTS, FeatureModulation  # noqa: E402

SIZE, CLASSES = 32, 4


@pytest.fixture(scope="module")
def image_model():
    keras.utils.set_random_seed(0)
    return networks.build_image_model(CLASSES, image_size=SIZE, alpha=0.35)


def _batch(n=3, known=True, seed=0):
    rng = np.random.default_rng(seed)
    loc = np.stack([rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)], 1).astype(np.float32)
    if not known:
        loc[:] = np.nan
    return {"image": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), "location": loc}


def _randomize(layers, seed=0):
    rng = np.random.default_rng(seed)
    for layer in layers:
        layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()])


def test_image_model_interface(image_model):
    assert set(image_model.input) == {"image", "location"}
    assert image_model.input["image"].dtype == "uint8" and image_model.input["location"].dtype == "float32"
    out = image_model(_batch())
    assert set(out) == {"probabilities", "logits"}
    assert out["logits"].shape == (3, CLASSES) and np.isfinite(out["logits"].numpy()).all()
    np.testing.assert_allclose(out["probabilities"].numpy().sum(1), 1.0, rtol=1e-5)
    # The location is accepted and ignored.
    np.testing.assert_array_equal(image_model(_batch(known=False))["logits"].numpy(), out["logits"].numpy())


def test_postprocess_unknown_location_equals_image_only_exactly(image_model):
    head = networks.build_geo_head(CLASSES)
    _randomize([layer for layer in head.layers if layer.weights], seed=1)  # a "trained" geo net
    model = networks.build_postprocess_model(image_model, head)
    assert set(model.output) == {"probabilities", "logits", "vision_logits", "geo_logits"}
    unknown, known = _batch(known=False), _batch(known=True)
    out = model(unknown)
    image_out = image_model(unknown)
    np.testing.assert_array_equal(out["geo_logits"].numpy(), 0.0)
    np.testing.assert_array_equal(out["logits"].numpy(), image_out["logits"].numpy())
    np.testing.assert_array_equal(out["probabilities"].numpy(), image_out["probabilities"].numpy())
    with_loc = model(known)
    assert np.abs(with_loc["geo_logits"].numpy()).max() > 0  # the geo net does act when known
    np.testing.assert_allclose(with_loc["logits"].numpy(),
                               with_loc["vision_logits"].numpy() + with_loc["geo_logits"].numpy(), rtol=1e-6)
    assert not any(w.trainable for w in image_model.weights) and model.trainable_weights


def test_featuremod_adds_beta_of_the_block_shape_only_to_chosen_blocks(image_model):
    chosen = ("block_3_depthwise_relu", "block_13_depthwise_relu")
    model = networks.build_featuremod_model(image_model, modulated_layers=chosen)
    mods = networks.modulation_layers(model)
    assert sorted(mods) == sorted(chosen)
    backbone = image_model.get_layer("backbone")
    _randomize([d for m in mods.values() for d in (m.beta,)] + [model.get_layer(f"fm_fc{i}") for i in (1, 2)])
    batch = _batch()
    for name, mod in mods.items():
        channels = backbone.get_layer(name).output.shape[-1]
        assert mod.beta.kernel.shape == (256, channels) and mod.gamma is None
        # Inside the featuremod graph: modulated - unmodulated = β, shaped [B, 1, 1, C].
        probe = keras.Model(model.input, [mod.input[0], mod.output])
        before, after = (t.numpy() for t in probe(batch))
        beta = after - before
        assert beta.shape[1:] == before.shape[1:] and before.shape[-1] == channels
        np.testing.assert_allclose(beta, np.broadcast_to(beta[:, :1, :1, :], beta.shape), atol=1e-5)
        assert np.abs(beta).max() > 0
    # Nothing else changed: with an unknown location the model is exactly the image model.
    unknown = _batch(known=False)
    np.testing.assert_array_equal(model(unknown)["logits"].numpy(), image_model(unknown)["logits"].numpy())
    assert sum(isinstance(layer, FeatureModulation) for layer in model.layers) == len(chosen)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_featuremod_variants_start_from_image_model_and_ignore_unknown(image_model, variant):
    model = networks.build_featuremod_model(image_model, variant=variant)
    assert sorted(networks.modulation_layers(model)) == sorted(networks.default_modulated_layers("mobilenet_v2"))
    unknown = _batch(known=False)
    np.testing.assert_array_equal(model(unknown)["logits"].numpy(), image_model(unknown)["logits"].numpy())
    if variant in ("add", "relu_add", "relu_scale_relu_add", "film"):  # exact identity at initialisation
        known = _batch()
        np.testing.assert_allclose(model(known)["logits"].numpy(), image_model(known)["logits"].numpy(), atol=1e-5)


def test_hybrid_featuremod_starts_at_its_postprocessing_model_exactly(image_model):
    """featuremod with a post-processing run's geo head: identical to that model until trained,
    and one location dropout reaches both the modulation and the added geo logits."""
    head = networks.build_geo_head(CLASSES)
    _randomize([layer for layer in head.layers if layer.weights], seed=2)  # a "trained" geo head
    postprocess = networks.build_postprocess_model(image_model, head)
    hybrid = networks.build_featuremod_model(image_model, geo_head=head, location_dropout=1.0)
    image_model.trainable = True  # build_postprocess_model froze it; the hybrid trains it end to end
    assert set(hybrid.output) == {"probabilities", "logits"}
    for batch in (_batch(), _batch(known=False)):
        np.testing.assert_allclose(hybrid(batch)["logits"].numpy(), postprocess(batch)["logits"].numpy(), atol=1e-5)
    assert np.abs(postprocess(_batch())["geo_logits"].numpy()).max() > 0  # the geo logits do take part
    # Training with every location dropped is exactly the image model, geo logits included (no
    # head dropout here, so training-mode outputs are deterministic).
    plain = networks.build_image_model(CLASSES, image_size=SIZE, alpha=0.35, dropout=0.0)
    hybrid = networks.build_featuremod_model(plain, geo_head=head, location_dropout=1.0)
    known = _batch()
    np.testing.assert_allclose(hybrid(known, training=True)["logits"].numpy(),
                               plain(known, training=True)["logits"].numpy(), atol=1e-6)
    assert np.abs(postprocess(known)["logits"].numpy() - image_model(known)["logits"].numpy()).max() > 1e-3


def test_featuremod_shares_image_weights(image_model):
    model = networks.build_featuremod_model(image_model)
    image_ids = {id(w) for w in image_model.weights}
    assert image_ids <= {id(w) for w in model.weights}


@pytest.mark.parametrize("kind", IMAGE_MODEL_KINDS)
def test_save_load_round_trip(tmp_path, image_model, kind):
    if kind == "image":
        model = image_model
    elif kind == "postprocess":
        model = networks.build_postprocess_model(image_model, networks.build_geo_head(CLASSES, encoding="paper"))
    else:
        model = networks.build_featuremod_model(image_model, variant="film")
    model.save(tmp_path / "m.keras")
    import trainer.model.layers  # noqa: F401  (what load_run relies on)
    loaded = keras.models.load_model(tmp_path / "m.keras")
    batch = _batch()
    for key, value in model(batch).items():
        np.testing.assert_allclose(loaded(batch)[key].numpy(), value.numpy(), atol=1e-6)


def test_bad_arguments_raise_clear_errors(image_model, tmp_path):
    with pytest.raises(ValueError, match="backbone"):
        networks.build_image_model(3, backbone="resnet", image_size=SIZE)
    with pytest.raises(ValueError, match="minimum"):
        networks.build_image_model(3, image_size=16, alpha=0.35)
    with pytest.raises(ValueError, match="weights"):
        networks.build_image_model(3, image_size=SIZE, alpha=0.35, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="not in the backbone"):
        networks.build_featuremod_model(image_model, modulated_layers=("block_99_depthwise_relu",))
    with pytest.raises(ValueError, match="num_classes"):
        networks.build_image_model(1, image_size=SIZE, alpha=0.35)


def test_inception_v3_modulates_every_inception_module():
    image = networks.build_image_model(3, backbone="inception_v3", image_size=75)
    model = networks.build_featuremod_model(image)
    mods = networks.modulation_layers(model)
    assert sorted(mods) == sorted(f"mixed{i}" for i in range(11))
    backbone = image.get_layer("backbone")
    for name, mod in mods.items():
        assert mod.channels == backbone.get_layer(name).output.shape[-1]
    batch = {"image": np.zeros((1, 75, 75, 3), np.uint8), "location": np.full((1, 2), np.nan, np.float32)}
    np.testing.assert_array_equal(model(batch)["logits"].numpy(), image(batch)["logits"].numpy())


def test_imagenet_weights_offline_is_one_clear_error(monkeypatch, capsys, tmp_path, tiny_world):
    """Without internet Keras raises a bare "URL fetch failure"; the CLI says what to do instead."""
    from keras.src.utils import file_utils

    from trainer import train

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] "
                        "Temporary failure in name resolution")
    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(networks.WeightsUnavailableError, match="--weights PATH"):
        networks.build_backbone(image_size=32, alpha=0.35, weights="imagenet")
    capsys.readouterr()
    code = train.main(["--data", tiny_world, "--model", "image", "--out", str(tmp_path / "run"),
                       "--image-size", "32", "--alpha", "0.35", "--weights", "imagenet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: could not download the ImageNet weights") and "\n" not in err
