"""The benchmark world: reproducible, long-tailed, look-alike genera with distinct ranges, and a true
range density that integrates to 1 and is the one the locations were drawn from."""
import json
from pathlib import Path

import numpy as np
import pytest

from mobile_sdk.errors import InvalidLocationError
from trainer.data import load_split
from trainer.pipeline import make_dataset
from trainer.world import PRESETS, RangeGrid, build_world, load_world, main, write_world

OBSERVATIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "inat500_observations.npz"


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
    assert len(species) >= 200
    assert len(records["train"]) + len(records["val"]) >= 20_000
    counts = np.array([s["train_count"] for s in species])
    assert (counts >= 100).sum() > 0.2 * len(counts) and (counts < 100).sum() > 0.2 * len(counts)
    # demo: sized for the ~15-minute `make demo` on 2 cores.
    _, species, _, _, records = build_world("demo", seed=0)
    assert 40 <= len(species) <= 60 and 6_000 <= len(records["train"]) <= 10_000


def test_genera_are_look_alikes_that_live_apart(tiny):
    world = load_world(tiny)
    info = json.loads((tiny / "world.json").read_text())["species"]
    genera = {}
    for i, sp in enumerate(info):
        genera.setdefault(sp["genus"], []).append(i)
    assert all(len(m) >= 2 for m in genera.values())
    probs = _range_probs(world)
    overlaps = []
    for members in genera.values():
        looks = [info[i]["appearance"] for i in members]
        # Same body plan and pattern type; hues differ by less than the gap between genera's hues.
        assert len({(a["plan"], a["pattern"]) for a in looks}) == 1
        assert all(abs(a["hue"] - looks[0]["hue"]) < 0.15 for a in looks)
        for a in members:
            for b in members:
                if a < b:
                    overlaps.append(np.sqrt(probs[a] * probs[b]).sum())  # Bhattacharyya coefficient
    overlaps = np.array(overlaps)
    assert (overlaps < 0.8).all()  # distinct ranges: location separates look-alikes...
    assert (overlaps > 0.0).any()  # ...but not perfectly: some ranges overlap


def test_density_integrates_to_one_over_the_sphere(tiny):
    world = load_world(tiny)
    grid = world.grid
    # Exact: the density is constant on each cell.
    centres = grid.centres()
    exact = (world.density(centres) * grid.cell_area[:, None]).sum(axis=0)
    np.testing.assert_allclose(exact, 1.0, rtol=1e-9)
    # Monte Carlo over uniform points on the sphere, independent of the grid bookkeeping.
    rng = np.random.default_rng(0)
    n = 400_000
    points = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], axis=1)
    mc = 4 * np.pi * world.density(points).mean(axis=0)
    np.testing.assert_allclose(mc, 1.0, atol=0.06)


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
    import trainer.world as world_module

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


@pytest.mark.skipif(not OBSERVATIONS.exists(), reason="../shared/data/inat500_observations.npz is absent")
def test_ranges_from_real_observations():
    _, species, ranges, grid, records = build_world("tiny", seed=0, observations=OBSERVATIONS)
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
