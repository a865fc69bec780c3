"""Range maps: valid PNGs, per-label content, clear errors for models without geo scores."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from PIL import Image

from trainer.figures import rangemap


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


# ---- the examples sheet (trainer.figures.examples draws with rangemap's panels) -----------------------

def test_find_corrections_picks_fixed_located_rows_once_per_label():
    from trainer.figures.examples import find_corrections

    labels = np.array([0, 0, 1, 1, 2])
    located = np.array([True, True, True, False, True])
    image = np.array([[.2, .8, 0], [.3, .7, 0], [.9, .1, 0], [.9, .1, 0], [0, 0, 1.]])
    geo = np.array([[.6, .4, 0], [.9, .1, 0], [.1, .9, 0], [.1, .9, 0], [0, 0, 1.]])
    picked = find_corrections(labels, located, image, geo, limit=5)
    # row 1 is the most confident fix of label 0 (row 0 is the same label); row 2 is a fix of
    # label 1; row 3 has no location; row 4 was right without geolocation.
    assert [(c.row, c.true, c.image_guess, c.geo_answer) for c in picked] == [(1, 0, 1, 0), (2, 1, 0, 1)]
    assert picked[0].geo_prob == pytest.approx(0.9) and picked[0].image_prob == pytest.approx(0.7)


def test_examples_sheet_png(tmp_path):
    from trainer.figures.examples import Correction, draw_sheet

    class Val:
        paths = []
        lat = np.array([45.0, -20.0])
        lon = np.array([10.0, 130.0])
        label_names = ["a", "b"]

    for i, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        Val.paths.append(str(tmp_path / f"{i}.png"))
    ranges = lambda latlon: np.stack([latlon[:, 0] > 0, latlon[:, 0] <= 0], axis=1).astype(float)  # noqa: E731
    fixes = [Correction(0, 0, 1, 0.6, 0, 0.8), Correction(1, 1, 0, 0.5, 1, 0.9)]
    out = draw_sheet(tmp_path / "sheet.png", Val, fixes, ranges, "toy ranges")
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape[0] > 300 and sheet.shape[1] > 600
    with pytest.raises(ValueError, match="no corrected"):
        draw_sheet(tmp_path / "empty.png", Val, [], ranges, "toy ranges")
    assert not (tmp_path / "empty.png").exists()


def test_geoprior_run_beside_observations_at_the_scale_of_the_range(tmp_path):
    """A presence-only run's σ(f) panel next to the label's observations, zoomed to their box."""
    from trainer.model.networks import build_geo_model
    from trainer.training.config import TrainConfig
    from trainer.training.runs import atomic_save_model, write_labels

    rng = np.random.default_rng(0)
    obs = tmp_path / "obs.csv"
    rows = [f"small,{35 + rng.normal(0, 0.5):.3f},{139 + rng.normal(0, 0.5):.3f}" for _ in range(50)]
    rows += [f"wide,{rng.uniform(-40, 60):.3f},{rng.uniform(-120, 120):.3f}" for _ in range(50)]
    obs.write_text("label,lat,lon\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(TrainConfig(data=str(obs), model="geoprior", encoding="fourier").to_json())
    write_labels(run, ["small", "wide"])
    atomic_save_model(build_geo_model(2, "fourier"), run / "model.keras")
    out = rangemap.range_map(tmp_path / "map.png", "small", runs=[run], observations=str(obs), zoom=True)
    with Image.open(out) as image:
        assert image.size[0] > image.size[1] * 1.5  # two panels side by side
    grid = rangemap.region_grid(rangemap.observation_points(str(obs), "small"))
    lon0, lon1, lat0, lat1 = grid.extent
    assert 130 < lon0 < 139 < lon1 < 148 and 26 < lat0 < 35 < lat1 < 44  # the range's scale, not the world's
    with pytest.raises(rangemap.RangeMapError, match="--zoom needs"):
        rangemap.range_map(tmp_path / "x.png", "small", runs=[run], zoom=True)
