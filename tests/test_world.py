"""The benchmark world: reproducible, long-tailed, look-alike genera told apart by one mark (hidden in a
set fraction of images), sister ranges that abut or overlap, and a true range density that integrates to 1 and is the one the locations were drawn from."""
import dataclasses
import json

import numpy as np
import pytest

from mobile_sdk.errors import InvalidLocationError
from mobile_sdk.geo import EARTH_RADIUS_KM, to_unit_vectors
from trainer.data.pipeline import make_dataset
from trainer.data.readers import load_split
from trainer.world.__main__ import main
from trainer.world.appearance import render
from trainer.world.build import build_world, write_world
from trainer.world.grid import RangeGrid
from trainer.world.load import load_world
from trainer.world.presets import PRESETS



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("w") / "tiny", "tiny", seed=3, progress=False)


def _range_probs(world):
    """[labels, cells] dense probabilities (fine for the tiny world)."""
    return world._cell_probs.T.toarray()


def test_same_seed_gives_byte_identical_world(tiny, tmp_path):
    again = write_world(tmp_path / "again", "tiny", seed=3, progress=False)
    for name in ("train.json", "val.json", "world.json"):
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    first = json.loads((tiny / "train.json").read_text())["images"]
    for image in first[:: max(1, len(first) // 10)]:
        assert (tiny / image["file_name"]).read_bytes() == (again / image["file_name"]).read_bytes()
    a, b = np.load(tiny / "ranges.npz"), np.load(again / "ranges.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_another_seed_gives_another_world():
    _, sp_a, _, _, rec_a = build_world("tiny", seed=3)
    _, sp_b, _, _, rec_b = build_world("tiny", seed=4)
    assert [r["latitude"] for r in rec_a["train"]] != [r["latitude"] for r in rec_b["train"]]
    assert [s["name"] for s in sp_a] != [s["name"] for s in sp_b]


def test_layout_loads_through_the_inat2021_reader(tiny):
    world = load_world(tiny)
    train = load_split(str(tiny), "train")
    val = load_split(f"inat2021:{tiny}", "val", label_names=train.label_names)
    assert train.label_names == world.label_names
    assert train.skipped == {} and val.skipped == {}
    assert len(set(train.supercategory_names)) == PRESETS["tiny"].supercategories
    info = json.loads((tiny / "world.json").read_text())
    assert train.train_counts().tolist() == [sp["train_count"] for sp in info["species"]]
    assert val.train_counts().tolist() == [sp["val_count"] for sp in info["species"]]
    assert 0 < (~train.has_location).sum() < 0.05 * len(train)  # a few unknown, as in iNat
    assert val.has_location.all()


def test_end_to_end_world_into_tf_data(tiny):
    train = load_split(str(tiny), "train")
    size = PRESETS["tiny"].image_size
    x, y = next(iter(make_dataset(train, size, batch_size=8, training=True)))
    assert x["image"].shape == (8, size, size, 3) and x["image"].dtype.name == "uint8"
    assert x["location"].shape == (8, 2) and y.shape == (8,)
    assert 0 <= int(y.numpy().min()) and int(y.numpy().max()) < train.num_labels


def test_training_counts_are_long_tailed_and_val_is_more_uniform(tiny):
    counts_train = load_split(str(tiny), "train").train_counts()
    counts_val = load_split(str(tiny), "val").train_counts()
    assert counts_train.max() >= 100 and counts_train.min() < 100  # head and tail labels both exist
    assert counts_train.max() / counts_train.min() >= 5
    cv = lambda c: c.std() / c.mean()  # noqa: E731
    assert cv(counts_val) < 0.5 * cv(counts_train)
    assert counts_val.max() / counts_val.min() <= 1.6


def test_bench_and_demo_presets_meet_their_sizes():
    _, species, _, _, records = build_world("bench", seed=0)
    assert len(species) >= 3 * len(build_world("demo", seed=0)[1])  # a harder test than the demo: 144 vs 48 labels
    assert len(records["train"]) + len(records["val"]) >= 20_000
    counts = np.array([s["train_count"] for s in species])
    assert (counts >= 100).sum() > 0.2 * len(counts) and (counts < 100).sum() > 0.2 * len(counts)
    # demo: sized for `make demo` on 2 cores (presets/demo.py has its timings).
    _, species, _, _, records = build_world("demo", seed=0)
    assert 40 <= len(species) <= 60 and 6_000 <= len(records["train"]) <= 10_000


def _bhattacharyya(a, b):
    pa, pb = dict(zip(a["cells"].tolist(), a["probs"])), dict(zip(b["cells"].tolist(), b["probs"]))
    return sum(np.sqrt(p * pb[c]) for c, p in pa.items() if c in pb)


def test_genera_are_look_alikes_told_apart_by_one_mark():
    _, species, _, _, _ = build_world("demo", seed=0)
    genera = {}
    for sp in species:
        genera.setdefault(sp["genus"], []).append(sp["appearance"])
    for looks in genera.values():
        assert len(looks) == PRESETS["demo"].species_per_genus
        # Same body plan and pattern type; hues differ by less than the gap between genera's hues...
        assert len({(a["plan"], a["pattern"]) for a in looks}) == 1
        assert all(abs(a["hue"] - looks[0]["hue"]) < 0.15 for a in looks)
        # ...and the diagnostic marks' hues sit evenly around the colour circle.
        hues = sorted(a["mark_hue"] for a in looks)
        gaps = np.diff(hues + [hues[0] + 1.0])
        np.testing.assert_allclose(gaps, 1.0 / len(looks), atol=1e-9)


def test_sister_ranges_abut_overlap_or_are_sympatric():
    _, species, ranges, grid, _ = build_world("demo", seed=0)
    by_genus = {}
    for sp, r in zip(species, ranges):
        by_genus.setdefault(sp["genus"], []).append(r)
    overlaps, distances = [], []
    for members in by_genus.values():
        means = [to_unit_vectors(*grid.centres(r["cells"]).T).T @ r["probs"] for r in members]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                overlaps.append(_bhattacharyya(members[i], members[j]))
                cos = means[i] @ means[j] / np.linalg.norm(means[i]) / np.linalg.norm(means[j])
                distances.append(EARTH_RADIUS_KM * np.arccos(np.clip(cos, -1, 1)))
    overlaps, distances = np.array(overlaps), np.array(distances)
    assert np.median(distances) < 1000  # neighbours, not other continents (the old world: 12-22 deg apart)
    assert (overlaps > 0.02).mean() > 0.8  # nearly every pair abuts or overlaps...
    assert ((overlaps > 0.02) & (overlaps < 0.8)).mean() > 0.4  # ...most only partly...
    assert (overlaps > 0.8).any()  # ...and some look-alikes are sympatric: location cannot separate them
    assert sum(sp["range"]["sympatric_with_previous"] for sp in species) > 0


def test_the_difficulty_knob_moves_image_only_accuracy():
    """A cheap classifier (softmax regression on a hue x saturation histogram) on the tiny preset:
    hiding every diagnostic mark costs it the look-alikes it could tell apart by colour."""
    accuracy = {hidden: _colour_classifier_accuracy(dataclasses.replace(PRESETS["tiny"], mark_hidden_rate=hidden))
                for hidden in (0.0, 1.0)}
    assert accuracy[0.0] > accuracy[1.0] + 0.15, accuracy


def _hue_histogram(img):
    x = img.reshape(-1, 3).astype(np.float64) / 255.0
    top, low = x.max(axis=1), x.min(axis=1)
    r, g, b = x.T
    span = np.where(top == low, 1.0, top - low)
    hue = np.where(top == r, (g - b) / span % 6, np.where(top == g, (b - r) / span + 2, (r - g) / span + 4)) / 6
    sat = (top - low) / np.where(top == 0, 1.0, top)
    hist, _, _ = np.histogram2d(hue, sat, bins=(24, 3), range=((0, 1), (0, 1)))
    return hist.ravel() / len(x)


def _colour_classifier_accuracy(preset, seed=0, steps=300, lr=0.5):
    _, species, _, _, records = build_world(preset, seed)
    data = {}
    for split, rows in records.items():
        features = [_hue_histogram(render(species[r["label"]]["appearance"], np.random.default_rng(r["seed"]),
                                          preset.image_size, r["mark_hidden"])) for r in rows]
        data[split] = np.stack(features), np.array([r["label"] for r in rows])
    (x, y), (x_val, y_val) = data["train"], data["val"]
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    x, x_val = (x - mean) / std, (x_val - mean) / std
    weights, bias, onehot = np.zeros((x.shape[1], len(species))), np.zeros(len(species)), np.eye(len(species))[y]
    for _ in range(steps):
        z = x @ weights + bias
        p = np.exp(z - z.max(axis=1, keepdims=True))
        grad = (p / p.sum(axis=1, keepdims=True) - onehot) / len(y)
        weights -= lr * (x.T @ grad + 1e-3 * weights)
        bias -= lr * grad.sum(axis=0)
    return float(((x_val @ weights + bias).argmax(axis=1) == y_val).mean())


def test_ideal_image_model_follows_the_knob():
    """The no-training ceiling (trainer.world.ideal): image only ~ (1-h) + h/k, the oracle above it."""
    from trainer.world.ideal import measure

    low = measure(dataclasses.replace(PRESETS["tiny"], mark_hidden_rate=0.2))
    high = measure(dataclasses.replace(PRESETS["tiny"], mark_hidden_rate=0.8))
    assert high["image"] < low["image"] - 15
    assert high["oracle"] >= high["image"] and low["oracle"] >= low["image"]


def test_density_integrates_to_one_over_the_sphere(tiny):
    world = load_world(tiny)
    grid = world.grid
    # Exact: the density is constant on each cell.
    centres = grid.centres()
    exact = (world.density(centres) * grid.cell_area[:, None]).sum(axis=0)
    np.testing.assert_allclose(exact, 1.0, rtol=1e-9)
    # Monte Carlo, independent of the grid's cell areas: points uniform on the sphere inside a
    # lat/lon box around each range (box area from its edges), density averaged times box area.
    rng = np.random.default_rng(0)
    probs = _range_probs(world)
    for label in range(world.num_labels):
        c = grid.centres(np.flatnonzero(probs[label]))
        lat0, lat1 = max(c[:, 0].min() - 1, -90), min(c[:, 0].max() + 1, 90)
        lon0, lon1 = c[:, 1].min() - 1, c[:, 1].max() + 1
        s0, s1 = np.sin(np.radians([lat0, lat1]))
        n = 200_000
        points = np.stack([np.degrees(np.arcsin(rng.uniform(s0, s1, n))), rng.uniform(lon0, lon1, n)], axis=1)
        box = np.radians(lon1 - lon0) * (s1 - s0)
        np.testing.assert_allclose(box * world.density(points)[:, label].mean(), 1.0, atol=0.03)


def test_locations_are_drawn_from_the_recorded_density(tiny):
    from global_land_mask import globe

    world = load_world(tiny)
    train = load_split(str(tiny), "train")
    known = train.subset(train.has_location)
    dens = world.density(known.locations)
    own = dens[np.arange(len(known)), known.labels]
    assert (own > 0).all()
    # Procedural ranges live on land (judged at the cell centre, where the mask was applied).
    centres = world.grid.centres(world.grid.cell_of(known.lat, known.lon))
    assert globe.is_land(centres[:, 0], centres[:, 1]).all()
    # Chi-square-like check for the most common species: cell frequencies follow the probabilities.
    label = int(np.argmax(known.train_counts()))
    probs = _range_probs(world)[label]
    cells = world.grid.cell_of(known.lat[known.labels == label], known.lon[known.labels == label])
    expected_log_p = (probs[probs > 0] * np.log(probs[probs > 0])).sum()
    sample_log_p = np.log(probs[cells]).mean()
    assert abs(sample_log_p - expected_log_p) < 0.5


def test_density_validates_and_wraps_locations(tiny):
    world = load_world(tiny)
    a = world.density([[10.0, 20.0], [np.nan, np.nan]])
    assert a.shape == (2, world.num_labels) and np.isnan(a[1]).all()
    np.testing.assert_array_equal(world.density([[10.0, 380.0]]), a[:1])
    with pytest.raises(InvalidLocationError):
        world.density([[95.0, 0.0]])


def test_grid_samples_stay_in_their_cells():
    grid = RangeGrid(0.5)
    rng = np.random.default_rng(1)
    cells = rng.integers(0, grid.size, 5000)
    points = np.round(grid.sample_in_cells(cells, rng), 6)
    np.testing.assert_array_equal(grid.cell_of(points[:, 0], points[:, 1]), cells)
    np.testing.assert_allclose(grid.cell_area.sum(), 4 * np.pi)


def test_load_world_rejects_other_folders(tmp_path):
    with pytest.raises(ValueError, match="not a world folder"):
        load_world(tmp_path)


def test_cli_refuses_to_overwrite_without_force(tiny):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tiny), "--preset", "tiny"])
    assert exc.value.code == 2


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    import trainer.world.build as world_module

    calls = {"n": 0}
    real = world_module._encode_jpeg

    def flaky(pixels, quality):
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError("disk full")
        return real(pixels, quality)

    monkeypatch.setattr(world_module, "_encode_jpeg", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_world(tmp_path / "w", "tiny", seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ranges_from_real_observations(inat500_observations):
    _, species, ranges, grid, records = build_world("tiny", seed=0, observations=inat500_observations)
    taxa = [s["range"]["taxon"] for s in species]
    assert len(set(taxa)) == len(taxa)
    for r in ranges:
        np.testing.assert_allclose(r["probs"].sum(), 1.0)
    by_genus = {}
    for s, r in zip(species, ranges):
        by_genus.setdefault(s["genus"], []).append(dict(zip(r["cells"].tolist(), r["probs"])))
    for a, b in by_genus.values():
        overlap = sum(np.sqrt(p * b[c]) for c, p in a.items() if c in b)
        assert overlap < 0.8
    # Sampled locations sit in cells of their species' range.
    for row in records["train"][:50]:
        if row["latitude"] is not None:
            cell = grid.cell_of(row["latitude"], row["longitude"])
            assert cell in set(ranges[row["label"]]["cells"].tolist())


def test_ranges_from_an_observations_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["label,latitude,longitude"]
    for t in range(8):  # 8 taxa (the tiny world has 8 species), clustered at different places
        centre = (-40 + 10 * t, -150 + 40 * t)
        for _ in range(40):
            rows.append(f"taxon{t},{centre[0] + rng.normal(0, 2):.4f},{centre[1] + rng.normal(0, 2):.4f}")
    (tmp_path / "obs.csv").write_text("\n".join(rows) + "\n")
    _, species, ranges, grid, _ = build_world("tiny", seed=1, observations=tmp_path / "obs.csv")
    assert sorted(s["range"]["taxon"] for s in species) == [f"taxon{t}" for t in range(8)]
    for s, r in zip(species, ranges):
        t = int(s["range"]["taxon"][5:])
        mean = (grid.centres(r["cells"]) * r["probs"][:, None]).sum(axis=0)
        assert abs(mean[0] - (-40 + 10 * t)) < 2.0  # the range sits where that taxon was observed


def test_bad_observation_files_are_clear_errors(tmp_path):
    (tmp_path / "obs.csv").write_text("name,lat\nx,1\n")
    with pytest.raises(ValueError, match="cannot read observations"):
        build_world("tiny", seed=0, observations=tmp_path / "obs.csv")
    (tmp_path / "bad.csv").write_text("label,latitude,longitude\nx,91,0\n")
    with pytest.raises(InvalidLocationError, match="outside"):
        build_world("tiny", seed=0, observations=tmp_path / "bad.csv")


def test_force_never_replaces_a_folder_the_world_did_not_write(tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("years of work")
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(thesis), "--preset", "tiny", "--force"])
    assert exc.value.code == 2
    assert f"refusing to replace {thesis}" in capsys.readouterr().err
    assert [p.name for p in thesis.iterdir()] == ["thesis.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]
