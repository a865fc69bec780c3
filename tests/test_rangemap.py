"""Range maps: valid PNGs, per-label content, clear errors for models without geo scores."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from PIL import Image

from trainer import rangemap


def contract_model(num_labels=3, postprocess=True):
    """A tiny model with the contract's inputs/outputs; its geo logits differ per label."""
    import keras

    image = keras.Input((8, 8, 3), dtype="uint8", name="image")
    location = keras.Input((2,), dtype="float32", name="location")
    vision = keras.layers.Dense(num_labels)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(image)))
    outputs = {"logits": vision, "probabilities": keras.layers.Softmax()(vision)}
    if postprocess:
        # label 0 likes the north, label 1 the east: their maps must differ.
        scaled = keras.layers.Rescaling(1 / 90)(location)
        geo = keras.layers.Dense(num_labels, name="geo_logits_dense")(scaled)
        logits = keras.layers.Add()([vision, geo])
        outputs = {"logits": logits, "probabilities": keras.layers.Softmax()(logits),
                   "vision_logits": vision, "geo_logits": geo}
    model = keras.Model({"image": image, "location": location}, outputs)
    if postprocess:
        kernel = np.zeros((2, num_labels), np.float32)
        kernel[0, 0], kernel[1, 1] = 3.0, 3.0
        model.get_layer("geo_logits_dense").set_weights([kernel, np.zeros(num_labels, np.float32)])
    return model


def test_world_grid_covers_globe_and_rejects_bad_step():
    grid = rangemap.world_grid(10.0)
    assert grid.shape == (18, 36)
    assert grid.latlon.shape == (18 * 36, 2)
    assert grid.latlon[:, 0].min() == -85 and grid.latlon[:, 1].max() == 175
    with pytest.raises(rangemap.RangeMapError, match="grid step"):
        rangemap.world_grid(0.0)


def test_label_index_names_the_problem():
    labels = ["Picus viridis", "Picus canus", "Pica pica"]
    assert rangemap.label_index(labels, "Pica pica") == 2
    assert rangemap.label_index(labels, "1") == 1
    with pytest.raises(rangemap.RangeMapError, match="did you mean.*Picus viridis"):
        rangemap.label_index(labels, "viridis")


def test_png_pixels_differ_between_labels(tmp_path):
    model = contract_model()
    labels = ["north", "east", "other"]
    grid = rangemap.world_grid(5.0)
    pngs = []
    for label in ("north", "east"):
        panel = rangemap.geo_panel(model, labels, label, grid)
        pngs.append(rangemap.write_map(tmp_path / f"{label}.png", grid, [panel]))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
    assert images[0].shape == images[1].shape and images[0].shape[0] > 100
    assert (images[0] != images[1]).any(axis=-1).mean() > 0.05
    # The geo logit of label 0 is 3*lat/90: the sub-model really is the geo network.
    scores = rangemap.geo_logits_fn(model)(np.array([[45.0, 10.0], [-90.0, 0.0]], np.float32))
    np.testing.assert_allclose(scores[:, 0], [1.5, -3.0], atol=1e-5)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_featuremod_like_model_is_a_clear_error():
    with pytest.raises(rangemap.RangeMapError, match="--prior"):
        rangemap.geo_logits_fn(contract_model(postprocess=False))


def test_prior_panel_is_a_normalised_histogram():
    class Train:  # the GeoDataset columns the prior reads
        lat = np.array([10.0, 10.0, 10.2, -40.0])
        lon = np.array([20.0, 20.0, 20.0, 150.0])
        labels = np.array([0, 1, 1, 0], np.int32)
        label_names = ["a", "b"]

    probe = np.array([[10.0, 20.0], [-40.0, 150.0], [60.0, -100.0]], np.float32)
    p_b = rangemap.prior_scores(Train, 1, probe, radius_miles=100)
    np.testing.assert_allclose(p_b[:2], [2 / 3, 0.0])
    assert np.isnan(p_b[2])  # no training data within r: the prior is undefined, not 0


def test_cli_without_sources_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rangemap.main(["--label", "x", "--out", str(tmp_path / "m.png")])
    assert "nothing to draw" in capsys.readouterr().err
