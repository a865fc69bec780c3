"""The answers beyond the ranking: taxonomy and roll-up, expected nearby, excluded labels with
reasons, location accuracy, per-label overrides, and the split geo/vision models with a geo cache.
Tiny bundles built here (the same tiny Keras model as tests/test_sdk.py)."""
import json
import shutil

import numpy as np
import pytest

from mobile_sdk import GeoClassifier, GeoClassifierOptions
from mobile_sdk import bundle as bundle_mod
from mobile_sdk import nearby
from mobile_sdk.__main__ import main as cli_main
from mobile_sdk.accuracy import disc_cells, validate_accuracy_m
from mobile_sdk.errors import BundleError, InvalidLocationError, InvalidOptionsError
from mobile_sdk.fileio import sha256_file
from mobile_sdk.geo import great_circle_km
from mobile_sdk.split_runner import PartModel
from mobile_sdk.taxonomy import Taxon, Taxonomy
from mobile_sdk.whitelist.builder import write_whitelist

from test_sdk import IMAGE, LABELS, OUTPUTS, PACIFIC, PARIS, SIZE, SYDNEY, _raw, _tiny_keras, _write_bundle

TAXONOMY = {"format": 1, "ranks": ["family", "genus"],
            "labels": {"paris_a": {"family": "F", "genus": "A"}, "sydney_b": {"family": "F", "genus": "A"},
                       "both_c": {"family": "F", "genus": "C"}, "newyork_d": {"family": "G"}}}


def _softmax(x):
    z = np.exp(np.asarray(x, np.float64) - np.max(x))
    return z / z.sum()


# -- taxonomy and roll-up (by hand) ----------------------------------------------------------------

def test_rollup_on_a_small_taxonomy_known_by_hand():
    tax = Taxonomy(TAXONOMY, LABELS)
    scores = [0.3, 0.25, 0.2, 0.25]
    assert tax.rollup(scores, 0.3) is None  # the top label alone reaches it
    assert tax.rollup(scores, 0.5) == Taxon("genus", "A", pytest.approx(0.55))
    assert tax.rollup(scores, 0.7) == Taxon("family", "F", pytest.approx(0.75))
    assert tax.rollup(scores, 0.9) is None  # no taxon reaches it
    # newyork_d has no genus: its group there is unnamed and never answers
    assert tax.rollup([0.0, 0.0, 0.45, 0.55], 0.56) is None
    assert tax.contains(Taxon("genus", "A", 0.5), 1) and not tax.contains(Taxon("genus", "A", 0.5), 2)
    assert tax.name_of(3, "genus") is None and tax.name_of(3, "species") == "newyork_d"


@pytest.mark.parametrize("doc, match", [
    ({"format": 2, "ranks": ["genus"], "labels": {}}, "format"),
    ({"format": 1, "ranks": ["genus", "genus"], "labels": {}}, "distinct"),
    ({"format": 1, "ranks": ["species"], "labels": {}}, "species"),
    ({"format": 1, "ranks": ["genus"], "labels": {"nope": {"genus": "X"}}}, "not in the label list"),
    ({"format": 1, "ranks": ["genus"], "labels": {"paris_a": {"genus": 3}}}, "non-empty string"),
])
def test_malformed_taxonomy_is_a_bundle_error(doc, match):
    with pytest.raises(BundleError, match=match):
        Taxonomy(doc, LABELS)


# -- bundles with every optional file ------------------------------------------------------------

@pytest.fixture(scope="session")
def parts(toy_tflite):
    """model.tflite, geo.tflite and vision.tflite of the tiny post-processing model."""
    pytest.importorskip("tensorflow")
    from converters.geo_parts import convert_part
    from converters.quantization import QuantizationConfig
    model = _tiny_keras("postprocess")  # seeded: the weights of toy_tflite("postprocess")
    out = {part: convert_part(model, part, QuantizationConfig.for_float32()) for part in ("geo", "vision")}
    out["model_path"] = toy_tflite("postprocess")
    return out


def _thresholds(parts, objective="softmax"):
    """LPT-R thresholds on the geo part's log scores (objective None: on its raw geo logits, as
    format 1 files of post-processing bundles hold them)."""
    geo = PartModel(parts["geo"], "location", "geo_logits")
    places = np.array([PARIS, SYDNEY, PARIS, SYDNEY, (40.71, -74.0)])
    labels = np.array([0, 1, 2, 2, 3])
    fn = lambda ll: np.stack([geo.run_part(ll[i:i + 1]) for i in range(len(ll))])  # noqa: E731
    if objective is None:
        return nearby.lpt_r_thresholds(fn, places[:, 0], places[:, 1], labels, len(LABELS))
    return list(nearby.lpt_r_method(fn, objective, places[:, 0], places[:, 1], labels, len(LABELS)).thresholds)


def _full_bundle(path, parts, thresholds_format=nearby.NEARBY_FORMAT):
    thresholds = _thresholds(parts, "softmax" if thresholds_format >= 2 else None)
    doc = {"format": thresholds_format, "method": "lpt_r", "percentile": 5.0, "cell_precision": 4,
           "thresholds": thresholds}
    files = {bundle_mod.TAXONOMY_FILE: json.dumps(TAXONOMY).encode(), bundle_mod.NEARBY_FILE: json.dumps(doc).encode(),
             bundle_mod.GEO_MODEL_FILE: parts["geo"], bundle_mod.VISION_MODEL_FILE: parts["vision"]}
    sections = {"taxonomy": {"file": bundle_mod.TAXONOMY_FILE, "ranks": TAXONOMY["ranks"]},
                "expected_nearby": {"method": "lpt_r", "file": bundle_mod.NEARBY_FILE, "percentile": 5.0},
                "split_models": {"geo": bundle_mod.GEO_MODEL_FILE, "vision": bundle_mod.VISION_MODEL_FILE,
                                 "recommended": False}}
    return _write_bundle(path, parts["model_path"], "postprocess", files=files, sections=sections)


@pytest.fixture(scope="session")
def full_bundle(parts, tmp_path_factory):
    return _full_bundle(tmp_path_factory.mktemp("full") / "bundle", parts)


def test_open_bundle_reads_the_optional_files(full_bundle, tmp_path):
    b = bundle_mod.open_bundle(full_bundle)
    assert b.taxonomy.ranks == ["family", "genus"]
    assert set(b.manifest["files"]) >= {"taxonomy.json", "expected_nearby.json", "geo.tflite", "vision.tflite"}
    copy = tmp_path / "b"
    shutil.copytree(full_bundle, copy)
    (copy / "geo.tflite").write_bytes(b"x")
    with pytest.raises(BundleError, match="geo.tflite"):
        bundle_mod.open_bundle(copy)


def test_classify_rolls_up_on_the_result_scores(full_bundle):
    with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(use_whitelist=False)) as clf:
        plain = clf.classify(IMAGE)
        top = plain.categories[0].score
        scores = np.zeros(len(LABELS))
        scores[[c.index for c in plain.categories]] = [c.score for c in plain.categories]
        tax = Taxonomy(TAXONOMY, LABELS)
    for threshold in (top, min(top + 0.05, 1.0), 0.99):
        with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(use_whitelist=False,
                                                                         rollup_threshold=threshold)) as clf:
            assert clf.classify(IMAGE).rollup == tax.rollup(scores, threshold)
    with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(rollup_threshold=None)) as clf:
        assert clf.classify(IMAGE).rollup is None


# -- options and overrides -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"rollup_threshold": 0.0}, {"rollup_threshold": 1.5}, {"rollup_threshold": "high"},
    {"excluded_top_k": -1}, {"excluded_top_k": 2.0}, {"always_allow": "paris_a"}, {"always_allow": [1]},
    {"label_thresholds": ["paris_a"]}, {"label_thresholds": {"paris_a": 1.5}},
    {"label_thresholds": {"paris_a": float("nan")}}, {"split_models": "yes"},
])
def test_answer_options_are_typed_errors(kwargs):
    with pytest.raises(InvalidOptionsError):
        GeoClassifierOptions(**kwargs)


def test_overrides_naming_unknown_labels_fail_at_construction(full_bundle):
    for options in (GeoClassifierOptions(always_allow=("nope",)), GeoClassifierOptions(label_thresholds={"x": 0.1})):
        with pytest.raises(InvalidOptionsError, match="not in this bundle"):
            GeoClassifier.from_bundle(full_bundle, options)


def test_excluded_names_exactly_the_removed_labels_with_reasons(full_bundle):
    vision = _softmax(_raw(full_bundle, SYDNEY)["vision_logits"][0])
    with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(excluded_top_k=4)) as clf:
        result = clf.classify(IMAGE, *SYDNEY)
        nothing = clf.classify(IMAGE)  # no location: the ranking is the vision part's
    assert sorted(c.index for c in result.categories) == [1, 2]
    assert {(e.index, e.reason) for e in result.excluded} == {(0, "no_observation_within_radius"),
                                                              (3, "no_observation_within_radius")}
    for e in result.excluded:
        assert e.label == LABELS[e.index] and e.vision_score == pytest.approx(vision[e.index], rel=1e-5)
    assert nothing.excluded == ()
    options = GeoClassifierOptions(excluded_top_k=4, always_allow=("paris_a",), category_denylist=("sydney_b",),
                                   label_thresholds={"both_c": 1.0})
    with GeoClassifier.from_bundle(full_bundle, options) as clf:
        result = clf.classify(IMAGE, *SYDNEY)
    assert [c.index for c in result.categories] == [0]  # paris_a let through, the others removed by rules
    assert {(e.index, e.reason) for e in result.excluded} == {
        (1, "denylist"), (2, "below_label_threshold"), (3, "no_observation_within_radius")}


def test_soft_whitelist_downweighting_is_a_reason_too(full_bundle):
    with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(whitelist_mode="soft", excluded_top_k=2,
                                                                     whitelist_floor=1e-6)) as clf:
        result = clf.classify(IMAGE, *SYDNEY)
    vision_top2 = set(np.argsort(-_softmax(_raw(full_bundle, SYDNEY)["vision_logits"][0]))[:2].tolist())
    removed = vision_top2 - {1, 2}
    assert {e.index for e in result.excluded} == removed
    assert all(e.reason == "no_observation_within_radius" for e in result.excluded)


# -- expected nearby -----------------------------------------------------------------------------

def test_lpt_r_threshold_is_the_percentile_over_observed_cells():
    # geo logit of label l at a point = its latitude * (l + 1): the threshold is known by hand
    fn = lambda ll: ll[:, :1].astype(np.float64) * np.arange(1, 4)  # noqa: E731
    lat = np.array([10.0, 10.01, 20.0, 30.0, 40.0, np.nan])  # the first two share a cell: counted once
    lon = np.array([5.0, 5.0, 5.0, 5.0, 5.0, np.nan])
    labels = np.array([0, 0, 0, 0, 1, 1])
    thresholds = nearby.lpt_r_thresholds(fn, lat, lon, labels, 3, percentile=50.0)
    cell_lat = lambda la: float(nearby.observed_cells([la], [5.0], [0])[1][0])  # noqa: E731
    assert thresholds[0] == pytest.approx(cell_lat(20.0))  # median of three cells
    assert thresholds[1] == pytest.approx(2 * cell_lat(40.0))
    assert thresholds[2] is None  # never observed with a location


def _log_softmax(x):
    z = np.asarray(x, np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def test_expected_nearby_flags_and_species_near_ranking(full_bundle):
    """A post-processing bundle flags a label where the log softmax of its geo logits (not the raw
    logit, which a softmax over labels lets drift by any per-location offset) reaches its threshold."""
    thresholds = np.array([np.nan if t is None else t for t in _thresholds_of(full_bundle)])
    for place in (PARIS, SYDNEY, PACIFIC):
        geo = _log_softmax(_raw(full_bundle, place)["geo_logits"][0])
        expected = {i for i in range(len(LABELS)) if geo[i] >= thresholds[i]}
        with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(use_whitelist=False)) as clf:
            result = clf.classify(IMAGE, *place)
            near = clf.species_near(*place)
        assert {c.index for c in result.categories if c.expected_nearby} == expected
        assert all(c.expected_nearby is not None for c in result.categories)
        assert {c.index for c in near.categories} == expected
        assert [c.score for c in near.categories] == sorted((c.score for c in near.categories), reverse=True)
    with GeoClassifier.from_bundle(full_bundle) as clf:
        assert all(c.expected_nearby is None for c in clf.classify(IMAGE).categories)


def _thresholds_of(bundle_dir):
    return json.loads((bundle_dir / bundle_mod.NEARBY_FILE).read_text())["thresholds"]


def test_bundle_thresholds_read_log_scores_so_an_offset_per_location_changes_nothing():
    logits = np.log([0.6, 0.3, 0.1])
    thresholds = nearby.BundleThresholds(np.array([np.log(0.5), np.log(0.2), np.nan]), "softmax")
    assert list(thresholds.flags(logits)) == list(thresholds.flags(logits + 7.0)) == [True, True, None]
    raw = nearby.BundleThresholds(np.array([0.0, 0.0, np.nan]), None)  # format 1: on the raw geo logits
    assert list(raw.flags(logits)) == [False, False, None] and list(raw.flags(logits + 7.0)) == [True, True, None]
    presence = nearby.BundleThresholds(np.array([np.log(0.5)]), "presence")  # log sigmoid(f) >= log 0.5: f >= 0
    assert list(presence.flags([0.1])) == [True] and list(presence.flags([-0.1])) == [False]


def test_format_1_thresholds_of_a_post_processing_bundle_stay_on_raw_geo_logits(parts, tmp_path):
    """Bundles exported before the log-score rule keep their meaning: raw geo logit >= threshold."""
    bundle = _full_bundle(tmp_path / "old", parts, thresholds_format=1)
    thresholds = np.array([np.nan if t is None else t for t in _thresholds_of(bundle)])
    assert nearby.open_thresholds(bundle_mod.open_bundle(bundle)).objective is None
    for place in (PARIS, SYDNEY):
        geo = _raw(bundle, place)["geo_logits"][0]
        with GeoClassifier.from_bundle(bundle, GeoClassifierOptions(use_whitelist=False)) as clf:
            flagged = {c.index for c in clf.classify(IMAGE, *place).categories if c.expected_nearby}
        assert flagged == {i for i in range(len(LABELS)) if geo[i] >= thresholds[i]}


def test_expected_nearby_from_the_whitelist_without_a_geo_part(tmp_path, parts):
    bundle = _write_bundle(tmp_path / "b", parts["model_path"], "postprocess")  # no thresholds file
    with GeoClassifier.from_bundle(bundle) as clf:
        at_sydney = clf.classify(IMAGE, *SYDNEY, accuracy_m=0)
        at_sea = clf.classify(IMAGE, *PACIFIC)
    assert {c.index: c.expected_nearby for c in at_sydney.categories} == {1: True, 2: True}
    assert all(c.expected_nearby is None for c in at_sea.categories)  # no table data: unknown


# -- location accuracy ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), 2.1e7, "10", True])
def test_bad_accuracy_is_an_invalid_location_error(full_bundle, value):
    with pytest.raises(InvalidLocationError, match="accuracy_m"):
        validate_accuracy_m(value)
    with GeoClassifier.from_bundle(full_bundle) as clf:
        with pytest.raises(InvalidLocationError):
            clf.classify(IMAGE, *PARIS, accuracy_m=value)
        with pytest.raises(InvalidLocationError):
            clf.species_near(*PARIS, accuracy_m=value)
        with pytest.raises(InvalidLocationError):
            clf.classify_batch([IMAGE], [PARIS], accuracy_m=[value])


def test_accuracy_widens_the_whitelist_to_radius_plus_accuracy(tmp_path, parts):
    query = (0.0, 10.0)
    beyond_km = 160.934 + 60.0  # 60 km beyond the 100-mile radius
    far = (0.0, 10.0 + beyond_km / 111.195)
    assert great_circle_km(*query, *far) == pytest.approx(beyond_km, abs=0.5)
    bundle = tmp_path / "b"
    _write_bundle(bundle, parts["model_path"], "postprocess")
    lat, lon, lab = [query[0], far[0]], [query[1], far[1]], [0, 3]
    write_whitelist(bundle / bundle_mod.WHITELIST_FILE, lat, lon, lab, len(LABELS), 100.0, 4, LABELS)
    manifest = json.loads((bundle / bundle_mod.MANIFEST_FILE).read_text())
    manifest["files"][bundle_mod.WHITELIST_FILE] = sha256_file(bundle / bundle_mod.WHITELIST_FILE)
    (bundle / bundle_mod.MANIFEST_FILE).write_text(json.dumps(manifest))
    with GeoClassifier.from_bundle(bundle) as clf:
        exact = clf.classify(IMAGE, *query)
        widened = clf.classify(IMAGE, *query, accuracy_m=70_000)
        batch = clf.classify_batch([IMAGE, IMAGE], [query, None], accuracy_m=70_000)
        nearby_species = clf.species_near(*query, accuracy_m=70_000)
    assert {c.index for c in exact.categories} == {0} and exact.accuracy_m is None
    assert {c.index for c in widened.categories} == {0, 3} and widened.accuracy_m == 70_000
    assert batch[0].categories == widened.categories and batch[1].accuracy_m is None
    assert nearby_species.accuracy_m == 70_000


def test_disc_cells_cover_the_disc_and_give_up_when_huge():
    lat, lon = disc_cells(45.0, 7.0, 50.0, 4)
    rng = np.random.default_rng(0)
    bearing, dist = rng.uniform(0, 2 * np.pi, 500), 50.0 * np.sqrt(rng.uniform(0, 1, 500))
    # points within the disc (small-distance approximation) fall in a listed cell
    plat = 45.0 + np.degrees(dist / 6371.0088 * np.cos(bearing))
    plon = 7.0 + np.degrees(dist / 6371.0088 * np.sin(bearing) / np.cos(np.radians(45.0)))
    from mobile_sdk import geohash
    listed = set(geohash.encode(lat, lon, 4).tolist())
    assert set(geohash.encode(plat, plon, 4).tolist()) <= listed
    assert disc_cells(45.0, 7.0, 5000.0, 4) is None


# -- split models --------------------------------------------------------------------------------

def test_split_models_match_the_single_model_and_cache_the_geo_output(full_bundle):
    places = [PARIS, PARIS, SYDNEY, None, PACIFIC]
    with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(split_models=False, use_whitelist=False)) as one:
        single = [one.classify(IMAGE, *(p or (None, None))) for p in places]
        assert one._split is None
    with GeoClassifier.from_bundle(full_bundle, GeoClassifierOptions(split_models=True, use_whitelist=False)) as two:
        split = [two.classify(IMAGE, *(p or (None, None))) for p in places]
        hits_after_two_calls = None
        two._split.cache_hits = 0
        two.classify(IMAGE, *SYDNEY)
        hits_after_two_calls = two._split.cache_hits
        two.classify(IMAGE, *SYDNEY)
        assert two._split.cache_hits == hits_after_two_calls + 1  # same place: the cached geo output
        two.classify(IMAGE, *PARIS)
        assert two._split.cache_hits == hits_after_two_calls + 1  # moved: recomputed
    for a, b in zip(single, split):
        assert [c.index for c in a.categories] == [c.index for c in b.categories]
        for ca, cb in zip(a.categories, b.categories):
            assert cb.score == pytest.approx(ca.score, abs=1e-5)
            assert cb.geo_score == pytest.approx(ca.geo_score, abs=1e-5)


def test_split_models_default_follows_the_manifest(full_bundle, tmp_path, parts):
    with GeoClassifier.from_bundle(full_bundle) as clf:
        assert clf._split is None  # recommended: false
    copy = tmp_path / "b"
    shutil.copytree(full_bundle, copy)
    manifest = json.loads((copy / bundle_mod.MANIFEST_FILE).read_text())
    manifest["split_models"]["recommended"] = True
    (copy / bundle_mod.MANIFEST_FILE).write_text(json.dumps(manifest))
    with GeoClassifier.from_bundle(copy) as clf:
        assert clf._split is not None
    plain = _write_bundle(tmp_path / "plain", parts["model_path"], "postprocess")
    with pytest.raises(InvalidOptionsError, match="split_models"):
        GeoClassifier.from_bundle(plain, GeoClassifierOptions(split_models=True))


def test_cli_accuracy_and_explain(full_bundle, tmp_path, capsys):
    from PIL import Image
    image_path = tmp_path / "x.png"
    Image.fromarray(IMAGE).save(image_path)
    assert cli_main([str(full_bundle), str(image_path), "--lat", str(SYDNEY[0]), "--lon", str(SYDNEY[1]),
                     "--accuracy-m", "25000", "--explain", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy_m"] == 25000 and "excluded" in result and "rollup" in result
    assert cli_main([str(full_bundle), str(image_path), "--lat", "1", "--lon", "1", "--accuracy-m", "-5"]) == 2
    assert "accuracy_m" in capsys.readouterr().err
