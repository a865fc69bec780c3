import numpy as np
import pytest
from scipy.spatial import cKDTree

from mobile_sdk.errors import InvalidLocationError
from mobile_sdk.geo import chord_for_km, great_circle_km, miles_to_km, to_unit_vectors
from trainer.evaluation import priors
from trainer.evaluation.priors import LabelHistogram, bayesian_prior_scores, sweep_prior, whitelist_scores



def brute_force_counts(train_latlon, train_labels, num_labels, query_latlon, radius_miles):
    out = np.zeros((len(query_latlon), num_labels), dtype=np.int64)
    for i, (lat, lon) in enumerate(query_latlon):
        if np.isnan(lat):
            continue
        d = great_circle_km(lat, lon, train_latlon[:, 0], train_latlon[:, 1])
        np.add.at(out[i], train_labels[d <= miles_to_km(radius_miles)], 1)
    return out


def random_points(rng, n, lat_range=(-90, 90), lon_range=(-180, 180)):
    # Uniform in sin(lat) so the sphere is covered evenly, poles included.
    s = rng.uniform(np.sin(np.radians(lat_range[0])), np.sin(np.radians(lat_range[1])), n)
    return np.stack([np.degrees(np.arcsin(s)), rng.uniform(*lon_range, n)], axis=1)


@pytest.mark.parametrize(
    "region, radius",
    [
        ("world", 500),
        ("antimeridian", 100),  # points on both sides of ±180°
        ("north pole", 100),
        ("south pole", 1000),
        ("world", 50),
    ],
)
def test_counts_match_brute_force_great_circle(region, radius):
    rng = np.random.default_rng(len(region) + radius)
    boxes = {
        "world": ((-90, 90), (-180, 180)),
        "antimeridian": ((-10, 10), (170, 190)),  # lon > 180 exercises wrapping, too
        "north pole": ((80, 90), (-180, 180)),
        "south pole": ((-90, -70), (-180, 180)),
    }
    lat_range, lon_range = boxes[region]
    train = random_points(rng, 3000, lat_range, lon_range)
    labels = rng.integers(0, 5, len(train))
    queries = random_points(rng, 200, lat_range, lon_range)
    train_wrapped = train.copy()
    train_wrapped[:, 1] = (train[:, 1] + 180) % 360 - 180
    expected = brute_force_counts(train_wrapped, labels, 5, queries, radius)
    got = LabelHistogram(train, labels, 5).counts(queries, radius)
    assert got.shape == (200, 5) and got.dtype == np.int32
    assert expected.sum() > 10  # the case actually has neighbours to count
    np.testing.assert_array_equal(got, expected)


def one_tree_per_label_counts(train_latlon, train_labels, num_labels, query_latlon, radius_miles):
    """The former implementation (one cKDTree per label, a Python loop over labels): the reference
    the single index must reproduce exactly."""
    points = to_unit_vectors(train_latlon[:, 0], train_latlon[:, 1])
    queries = to_unit_vectors(query_latlon[:, 0], query_latlon[:, 1])
    chord = float(chord_for_km(miles_to_km(radius_miles)))
    out = np.zeros((len(query_latlon), num_labels), dtype=np.int32)
    for label in range(num_labels):
        mine = train_labels == label
        if mine.any():
            out[:, label] = cKDTree(points[mine]).query_ball_point(queries, chord, return_length=True)
    return out


def test_single_index_counts_equal_one_tree_per_label(monkeypatch):
    # Clustered ranges of many labels (cells split deep and are taken whole by their histograms),
    # 300 observations piled on one place (more than a leaf holds at the deepest level), queries on
    # and around them, and query chunks smaller than the query count.
    rng = np.random.default_rng(7)
    centres = random_points(rng, 40)
    which = rng.integers(0, 40, 6000)
    train = centres[which] + rng.normal(0, 3, (6000, 2))
    train[:, 0] = np.clip(train[:, 0], -90, 90)
    train[:300] = [37.5, -122.25]
    labels = (which * 3 + rng.integers(0, 3, 6000)) % 100
    queries = np.concatenate([train[rng.choice(6000, 60)], random_points(rng, 40), [[37.5, -122.25]]])
    monkeypatch.setattr(priors, "_CHUNK_QUERIES", 16)
    hist = LabelHistogram(train, labels, 100)
    for radius in (1, 100, 1000, 13000):
        expected = one_tree_per_label_counts(train, labels, 100, queries, radius)
        np.testing.assert_array_equal(hist.counts(queries, radius), expected)
    assert len(hist._index.levels) > 8  # the case reaches deep cells, not just a brute-force root


def test_counts_across_the_antimeridian_and_over_the_pole_hand_made():
    train = np.array([[0.0, 179.9], [0.0, -179.9], [0.0, 170.0], [89.9, 0.0], [89.9, 180.0]])
    hist = LabelHistogram(train, np.array([0, 1, 2, 3, 3]), 4)
    # 0.2° of longitude at the equator is ~13.9 miles; 10° is ~690 miles.
    assert hist.counts([[0.0, 180.0]], 50).tolist() == [[1, 1, 0, 0]]
    # Two points 0.1° from the North Pole on opposite meridians are ~13.8 miles apart.
    assert hist.counts([[90.0, 77.0]], 50).tolist() == [[0, 0, 0, 2]]
    assert hist.counts([[0.0, 180.0]], 1000).tolist() == [[1, 1, 1, 0]]


def test_unknown_locations_are_dropped_from_training_and_give_empty_query_rows():
    train = np.array([[10.0, 10.0], [np.nan, np.nan], [10.0, 10.1]])
    hist = LabelHistogram(train, np.array([0, 1, 1]), 3)
    assert hist.num_located == 2
    counts = hist.counts([[10.0, 10.0], [np.nan, np.nan]], 100)
    assert counts.tolist() == [[1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "args, error, message",
    [
        (([[0, 0]], [0], 0), ValueError, "num_labels"),
        (([[0, 0]], [0, 1], 2), ValueError, "shape"),
        (([[0, 0]], [2], 2), ValueError, r"\[0, 2\)"),
        (([[0, 0]], [0.5], 2), ValueError, "integer"),
        (([[95, 0]], [0], 2), InvalidLocationError, "outside"),
    ],
)
def test_histogram_rejects_bad_training_data(args, error, message):
    with pytest.raises(error, match=message):
        LabelHistogram(*args)


@pytest.mark.parametrize("radius", [0, -5, float("nan"), float("inf"), "far"])
def test_counts_reject_bad_radius(radius):
    with pytest.raises(ValueError, match="radius_miles"):
        LabelHistogram([[0, 0]], [0], 1).counts([[0, 0]], radius)


def test_counts_reject_bad_query():
    with pytest.raises(InvalidLocationError, match="only one coordinate"):
        LabelHistogram([[0, 0]], [0], 1).counts([[np.nan, 0]], 100)


def test_bayesian_prior_hand_computed():
    probs = np.array([[0.5, 0.3, 0.2]])
    counts = np.array([[1, 3, 0]])
    # P(L|G) = [0.25, 0.75, 0]; products [0.125, 0.225, 0] -> normalised [0.357.., 0.642.., 0].
    np.testing.assert_allclose(bayesian_prior_scores(probs, counts), [[0.125 / 0.35, 0.225 / 0.35, 0.0]])
    # The whitelist ignores how many: [0.5, 0.3, 0] -> [0.625, 0.375, 0]; it keeps label 0 on top.
    np.testing.assert_allclose(whitelist_scores(probs, counts), [[0.625, 0.375, 0.0]])


def test_fallback_to_image_only_with_no_data_in_range_or_unknown_location():
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.6, 0.4, 0.0]])
    train = np.array([[40.0, -100.0], [40.0, -100.0]])
    hist = LabelHistogram(train, np.array([1, 2]), 3)
    queries = np.array([[40.0, -100.0], [-40.0, 100.0], [np.nan, np.nan]])  # in range, far away, unknown
    counts = hist.counts(queries, 100)
    assert counts.sum(axis=1).tolist() == [2, 0, 0]
    for fuse in (bayesian_prior_scores, whitelist_scores):
        scores = fuse(probs, counts)
        np.testing.assert_allclose(scores[0], [0.0, 0.625, 0.375])
        np.testing.assert_array_equal(scores[1:], probs[1:])
    # In range, but the image model gives the in-range labels exactly 0: ranking would be arbitrary.
    np.testing.assert_array_equal(whitelist_scores([[0.6, 0.4, 0.0]], [[0, 0, 5]]), [[0.6, 0.4, 0.0]])


@pytest.mark.parametrize(
    "probs, counts, message",
    [
        ([0.5, 0.5], [1, 1], r"\[N, L\]"),
        ([[0.5, 0.5]], [[1, 1, 1]], "does not match"),
        ([[-1.0, 2.0]], [[1, 1]], "non-negative"),
        ([[0.5, np.nan]], [[1, 1]], "finite"),
        ([[0.5, 0.5]], [[-1, 1]], r"counts \(weights\) must be"),
    ],
)
def test_fusion_rejects_bad_input(probs, counts, message):
    for fuse in (bayesian_prior_scores, whitelist_scores):
        with pytest.raises(ValueError, match=message):
            fuse(np.asarray(probs), np.asarray(counts))


def test_select_radius_takes_best_and_breaks_ties_to_smaller():
    assert priors.select_radius({50: 0.5, 100: 0.7, 500: 0.6}) == 100
    assert priors.select_radius({1000: 0.7, 100: 0.7, 500: 0.6}) == 100
    with pytest.raises(ValueError):
        priors.select_radius({})


def test_radius_is_chosen_on_validation_even_when_test_prefers_another():
    # Label 0's training points sit at the origin, label 1's ~300 miles east at (0, 4.35).
    # Validation: label-0 images ~250 miles west of the origin, the image model slightly prefers
    # label 1. At 100 mi nothing is in range (image-only, wrong); at 500 mi only label 0 is
    # (right). Test: label-1 images at (0, 4.35), the image model slightly prefers label 0. At
    # 100 mi only label 1 is in range (right); at 500 mi both are (image decides, wrong).
    train = np.array([[0.0, 0.0]] * 5 + [[0.0, 4.35]] * 5)
    hist = LabelHistogram(train, np.array([0] * 5 + [1] * 5), 3)
    val_probs = np.repeat([[0.40, 0.45, 0.15]], 4, 0)
    val_latlon = np.array([[0.0, -3.5], [0.5, -3.5], [-0.5, -3.5], [0.0, -4.0]])
    test_probs = np.repeat([[0.45, 0.40, 0.15]], 4, 0)
    test_latlon = np.array([[0.0, 4.35]] * 4)
    sweep = sweep_prior(hist, "whitelist", (val_probs, val_latlon, np.zeros(4, dtype=int)), (test_probs, test_latlon), radii=(100, 500))
    test_top1 = {r: float((s.argmax(1) == 1).mean()) for r, s in sweep.test_scores.items()}
    assert test_top1 == {100.0: 1.0, 500.0: 0.0}  # choosing on test would pick 100 mi
    assert sweep.val_top1 == {100.0: 0.0, 500.0: 1.0}
    assert sweep.chosen_radius == 500.0  # ... the choice follows validation


def test_sweep_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown prior method"):
        sweep_prior(LabelHistogram([[0, 0]], [0], 1), "oracle", (None, None, None), (None, None))


def test_real_observations_sample_matches_brute_force(inat500_observations):
    data = np.load(inat500_observations)
    _, labels = np.unique(data["train_ids"], return_inverse=True)
    locs = data["train_locs"].astype(np.float64)
    rng = np.random.default_rng(0)
    train = rng.choice(len(locs), 20000, replace=False)
    queries = locs[rng.choice(len(locs), 30, replace=False)]
    hist = LabelHistogram(locs[train], labels[train], 500)
    for radius in (50, 1000):
        expected = brute_force_counts(locs[train], labels[train], 500, queries, radius)
        np.testing.assert_array_equal(hist.counts(queries, radius), expected)
