import dataclasses
import json

import numpy as np
import pytest

from trainer.data.dataset import GeoDataset
from trainer.evaluation.report import (
                                       NAMES,
                                       UNKNOWN,
                                       EvaluationError,
                                       evaluate_methods,
                                       render_markdown,
                                       without_locations,
                                       write_report,
                                       )

LABEL_NAMES = ["west a", "east a", "west b"]
SUPER = ["Aves", "Plantae"]
SUPER_OF_LABEL = np.array([0, 0, 1])


def make_ds(latlon, labels):
    latlon = np.asarray(latlon, dtype=np.float64)
    labels = np.asarray(labels)
    known = ~np.isnan(latlon[:, 0])
    return GeoDataset(
        paths=np.array([f"img{i}.jpg" for i in range(len(labels))]), labels=labels, lat=latlon[:, 0],
        lon=latlon[:, 1], has_location=known, dates=np.array([""] * len(labels)),
        supercategories=SUPER_OF_LABEL[labels], label_names=LABEL_NAMES, supercategory_names=SUPER,
    )


WEST, EAST = (40.0, -120.0), (40.0, -75.0)
# Label 0 (head, 120 images) lives west, label 1 (tail) east, label 2 (tail) west.
TRAIN = make_ds([WEST] * 120 + [EAST] * 30 + [WEST] * 20, [0] * 120 + [1] * 30 + [2] * 20)
# The image model confuses labels 0 and 1 (look-alikes in different regions).
CONFUSED_TOWARD_1 = [0.3, 0.6, 0.1]
CONFUSED_TOWARD_0 = [0.6, 0.3, 0.1]


def test_evaluate_methods_hand_computed():
    # Four evaluation images: two label-0 in the west the image model calls label 1, one label-1 in
    # the east called right, and one label-0 without location called wrong.
    evalset = make_ds([WEST, WEST, EAST, (np.nan, np.nan)], [0, 0, 1, 0])
    image = np.array([CONFUSED_TOWARD_1, CONFUSED_TOWARD_1, CONFUSED_TOWARD_1, CONFUSED_TOWARD_1])
    post = np.array([CONFUSED_TOWARD_0, CONFUSED_TOWARD_0, CONFUSED_TOWARD_1, CONFUSED_TOWARD_1])
    tune = (image[:2], evalset.locations[:2], evalset.labels[:2])
    density = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out = evaluate_methods(TRAIN, evalset, {"image": image, "postprocess": post, "postprocess_unknown": image},
                           tune=tune, density=density)
    methods = out["methods"]
    assert list(methods) == [NAMES["image"], NAMES["bayesian"], NAMES["whitelist"], NAMES["postprocess"],
                             NAMES["postprocess"] + UNKNOWN, NAMES["oracle"]]
    assert methods[NAMES["image"]]["top1"] == 0.25
    # Whitelist at any radius < ~2400 mi keeps {0, 2} in the west: rows 0, 1 become right; row 3
    # (unknown location) falls back to the image and stays wrong.
    assert methods[NAMES["whitelist"]]["top1"] == 0.75
    assert methods[NAMES["whitelist"]]["head"] == {"n": 3, "top1": 2 / 3, "top5": 1.0}
    assert methods[NAMES["whitelist"]]["tail"] == {"n": 1, "top1": 1.0, "top5": 1.0}
    assert methods[NAMES["bayesian"]]["top1"] == 0.75
    assert methods[NAMES["postprocess"]]["top1"] == 0.75
    assert methods[NAMES["oracle"]]["top1"] == 0.75
    assert out["oracle"] == NAMES["oracle"]
    # Ties go to the smallest radius: every radius gives the same tuning accuracy here.
    assert out["chosen_radius_miles"] == {"bayesian": 50.0, "whitelist": 50.0}
    sweep = out["prior_sweep"][NAMES["whitelist"]]
    assert sweep["val_top1"] == {"50.0": 1.0, "100.0": 1.0, "500.0": 1.0, "1000.0": 1.0}
    assert sweep["test_top1"]["50.0"] == 0.75


def test_expected_nearby_hand_computed_from_training_rows_only(tmp_path):
    from types import SimpleNamespace

    from mobile_sdk import nearby
    from trainer.evaluation.nearby import evaluation_section, methods_for

    # Geo logits by hand: label 0 +1 in the west, label 1 +1 in the east (each -1 elsewhere), label 2
    # 0 everywhere, all shifted by +5 in the east (an offset a softmax over labels ignores). Its
    # training cells: label 0 and 2 in the west, 1 in the east, so every threshold sits at its own
    # region's log softmax and flags {0, 2} in the west, {1, 2} in the east.
    def geo_logits(latlon):
        west = (latlon[:, 1] < -100).astype(np.float64) * 2 - 1
        return np.stack([west, -west, np.zeros(len(latlon))], axis=1) + 5.0 * (west < 0)[:, None]

    image_run = SimpleNamespace(model=SimpleNamespace(output={"probabilities": None, "logits": None}))
    methods = {"post": nearby.lpt_r_method(geo_logits, "softmax", TRAIN.lat, TRAIN.lon, TRAIN.labels, 3),
               "image": methods_for({"image": image_run}, TRAIN)["image"]}
    norm = np.log(np.exp(1.0) + np.exp(-1.0) + 1.0)
    assert methods["post"].thresholds == pytest.approx((1.0 - norm, 1.0 - norm, -norm))
    # Reported rows: label 0 in the west, label 1 in the west (not where it was seen), label 1 in
    # the east, and a row without location (not counted).
    evalset = make_ds([WEST, WEST, EAST, (np.nan, np.nan)], [0, 1, 1, 0])
    section = evaluation_section(methods, evalset)
    assert section == {"labels": 3, "models": {
        "post": {"method": "lpt_r", "rows": 3, "recall": pytest.approx(2 / 3), "mean_flagged": 2.0},
        # the 100-mile table: {0, 2} in the west, {1} in the east
        "image": {"method": "whitelist", "rows": 3, "recall": pytest.approx(2 / 3), "mean_flagged": pytest.approx(5 / 3)}}}
    # The reported rows' labels choose nothing: other labels change the recall, not what is flagged.
    relabelled = evaluation_section(methods, make_ds([WEST, WEST, EAST, (np.nan, np.nan)], [0, 0, 1, 0]))
    assert relabelled["models"]["post"]["recall"] == 1.0
    assert [m["mean_flagged"] for m in relabelled["models"].values()] == \
           [m["mean_flagged"] for m in section["models"].values()]
    report = {"data": "w", "eval_split": "val", "tuning": "t.", "runs": {}, "backbone": "b",
              "primary": {**evaluate_methods(TRAIN, evalset, {"postprocess": np.full((4, 3), 1 / 3)}), "n": 4,
                          "expected_nearby": section}}
    md = render_markdown(report)
    assert "## Expected nearby" in md and "| post | LPT-R" in md and "| 3 | 66.7% | 2.0 |" in md
    assert "| image | whitelist table" in md and "| 3 | 66.7% | 1.7 |" in md


def test_second_dataset_uses_the_given_radii_and_needs_no_tuning():
    evalset = make_ds([EAST], [1])
    out = evaluate_methods(TRAIN, evalset, {"image": np.array([CONFUSED_TOWARD_0])},
                           chosen_radii={"bayesian": 100.0, "whitelist": 1000.0})
    assert "prior_sweep" not in out
    assert out["chosen_radius_miles"] == {"bayesian": 100.0, "whitelist": 1000.0}
    assert out["methods"][NAMES["whitelist"]]["top1"] == 1.0


def test_bad_inputs_are_evaluation_errors():
    evalset = make_ds([WEST], [0])
    with pytest.raises(EvaluationError, match="shape"):
        evaluate_methods(TRAIN, evalset, {"image": np.ones((2, 3)) / 3})
    with pytest.raises(EvaluationError, match="tuning data"):
        evaluate_methods(TRAIN, evalset, {"image": np.ones((1, 3)) / 3})
    with pytest.raises(EvaluationError, match="needs the image-only run"):
        evaluate_methods(TRAIN, evalset, {"postprocess": np.ones((1, 3)) / 3}, density=np.ones((1, 3)))
    with pytest.raises(EvaluationError, match="nothing to evaluate"):
        evaluate_methods(TRAIN, evalset, {})


def test_without_locations_keeps_rows_and_makes_every_location_unknown():
    ds = without_locations(TRAIN)
    assert len(ds) == len(TRAIN) and (ds.labels == TRAIN.labels).all()
    assert np.isnan(ds.locations).all() and not ds.has_location.any()


def test_report_files_render_every_table(tmp_path):
    evalset = make_ds([WEST, WEST, EAST, (np.nan, np.nan)], [0, 0, 1, 0])
    image = np.array([CONFUSED_TOWARD_1] * 4)
    primary = evaluate_methods(TRAIN, evalset, {"image": image, "featuremod": image, "featuremod_unknown": image},
                               tune=(image, evalset.locations, evalset.labels))
    primary["n"] = 4
    second = evaluate_methods(TRAIN, make_ds([EAST], [1]), {"image": np.array([CONFUSED_TOWARD_0])}, chosen_radii=primary["chosen_radius_miles"])
    second.update(data="yfcc:x.csv,imgs", n=1, skipped={"unknown_label": 2})
    report = {"data": "worlddir", "eval_split": "val", "tuning": "tuned elsewhere.", "runs": {"image": "runs/img"},
              "backbone": "mobilenet_v2", "primary": primary, "second": second}
    write_report(report, tmp_path / "eval")
    md = (tmp_path / "eval" / "report.md").read_text()
    for heading in ("Table 1", "Table 3", "Table 4", "Table 5", "Table 6"):
        assert f"## {heading}" in md
    assert "| whitelist | **75.0%** | 75.0% | 75.0% | 75.0% |" in md
    assert f"| {NAMES['featuremod']}{UNKNOWN} | 25.0% |" in md
    assert "| Plantae (0) |" not in md and "| Aves (2) | 25.0% |" in md
    assert "| yfcc:x.csv,imgs | 0.0% | 100.0% | 100.0% | – | – |" in md and "unknown_label=2" in md
    assert json.loads((tmp_path / "eval" / "report.json").read_text()) == json.loads(json.dumps(report))
    assert md == render_markdown(report)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["report.json", "report.md"]  # no temp files left


def test_cli_without_runs_is_a_clear_error(tmp_path):
    from trainer.evaluate import main

    with pytest.raises(SystemExit, match="give at least one of --image"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "eval")])


@pytest.mark.slow
def test_evaluate_end_to_end_on_a_tiny_world(smoke_demo, tmp_path):
    from trainer.data.readers import load_split
    from trainer.evaluate import main
    from trainer.evaluation.priors import SWEEP_RADII_MILES, select_radius

    root, runs = tmp_path, smoke_demo.runs  # the demo's tiny runs of every kind, on its tiny world
    tiny_world = str(smoke_demo.out / "world")
    val = load_split(tiny_world, "val")
    # Second data: 10 world images as a CSV manifest, plus a row with a label the runs never saw
    # and a row with an invalid latitude; both must be skipped and counted.
    lines = ["file,label,latitude,longitude"]
    lines += [f"{p},{val.label_names[l]},{la},{lo}" for p, l, la, lo in zip(val.paths[:10], val.labels[:10], val.lat[:10], val.lon[:10])]
    lines += [f"{val.paths[0]},Nonexistent species,10,10", f"{val.paths[1]},{val.label_names[0]},95,10"]
    (root / "second.csv").write_text("\n".join(lines) + "\n")
    args = ["--data", tiny_world, "--image", str(runs["image"]), "--postprocess", str(runs["postprocess"]),
            "--featuremod", str(runs["featuremod"]), "--second-data", f"csv:{root / 'second.csv'}", "--out", str(root / "eval")]
    report = main(args)

    primary = report["primary"]
    methods = primary["methods"]
    assert set(methods) == {"image only", "Bayesian prior", "whitelist", "post-process", "post-process (location unknown)",
                            "feature mod.", "feature mod. (location unknown)", "oracle: image × true range density"}
    assert 0.6 * len(val) <= primary["n"] < len(val)  # ~30% of val held out to choose the radius
    for result in methods.values():
        assert result["n"] == primary["n"] and 0.0 <= result["top1"] <= result["top5"] <= 1.0
    # Contract: with the location unknown, post-processing's geo logits are exactly 0, so it ranks
    # exactly like the image-only model it was built on.
    for key in ("top1", "top5"):
        assert methods["post-process (location unknown)"][key] == methods["image only"][key]
    for name, sweep in primary["prior_sweep"].items():
        assert sweep["chosen_radius"] in SWEEP_RADII_MILES
        assert sweep["chosen_radius"] == select_radius({float(r): a for r, a in sweep["val_top1"].items()})
    second = report["second"]
    assert second["n"] == 10 and second["skipped"] == {"invalid_location": 1, "unknown_label": 1}
    assert "oracle: image × true range density" not in second["methods"]  # a CSV has no true ranges
    md = (root / "eval" / "report.md").read_text()
    assert "gap to oracle" in md and f"csv:{root / 'second.csv'}" in md
    # Sizes stated; a temperature per run chosen on the tune rows; an ECE for every method.
    assert report["sizes"] == {"train": len(load_split(tiny_world, "train")),
                               "tune": len(val) - primary["n"], "reported": primary["n"]}
    assert set(primary["temperatures"]) == {"image", "postprocess", "featuremod"}
    assert all(0.0 <= m["ece"] <= 1.0 for m in methods.values()) and "Calibration" in md
    # Expected nearby per run, by the bundle's method, over the reported rows with a location.
    near = primary["expected_nearby"]
    assert {name: r["method"] for name, r in near["models"].items()} == {
        "image only": "whitelist", "post-process": "lpt_r", "feature mod.": "whitelist"}
    from trainer.data.splits import tuning_split
    from trainer.evaluation.report import EVAL_TUNE_FRACTION
    located = int(val.has_location[tuning_split(val.labels, EVAL_TUNE_FRACTION, 0)[1]].sum())
    assert all(r["rows"] == located and 0.0 <= r["recall"] <= 1.0 for r in near["models"].values())
    assert near["labels"] == val.num_labels and "## Expected nearby" in md

    # Re-evaluating reuses every cached prediction and reproduces the report exactly.
    cached = sorted(p.name for p in (root / "eval" / "cache").iterdir())
    # image: tune, eval, second; post and fm: tune (their temperatures), eval and second with and without location
    assert len(cached) == 13
    assert main(args) == report
    assert sorted(p.name for p in (root / "eval" / "cache").iterdir()) == cached


def test_combine_reports_makes_one_column_per_backbone(tmp_path):
    from trainer.evaluate import main

    evalset = make_ds([WEST, EAST], [0, 1])
    reports = []
    for backbone, probs in (("mobilenet_v2", [CONFUSED_TOWARD_1] * 2), ("inception_v3", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])):
        primary = evaluate_methods(TRAIN, evalset, {"postprocess": np.array(probs)})
        reports.append({"data": "w", "eval_split": "val", "backbone": backbone, "primary": primary})
        (tmp_path / f"{backbone}.json").write_text(json.dumps(reports[-1]))
    main(["--combine", str(tmp_path / "mobilenet_v2.json"), str(tmp_path / "inception_v3.json"), "--out", str(tmp_path)])
    combined = (tmp_path / "combined.md").read_text()
    assert "| method | mobilenet_v2 | inception_v3 |" in combined
    assert "| post-process | 50.0% | 100.0% |" in combined
    assert "| w (val), inception_v3 | 100.0% |" in combined
    with pytest.raises(SystemExit, match="cannot combine"):
        main(["--combine", str(tmp_path / "missing.json"), "--out", str(tmp_path)])


@pytest.mark.slow
def test_evaluate_refuses_data_with_other_labels_than_the_runs(smoke_demo, tmp_path):
    from trainer.evaluate import main
    from trainer.world.build import write_world
    from trainer.world.load import load_world

    runs, tiny_world = smoke_demo.runs, smoke_demo.out / "world"
    other = write_world(tmp_path / "other", "tiny", seed=1, progress=False)
    if load_world(other).label_names == load_world(tiny_world).label_names:
        pytest.skip("seed 1 happened to draw the same species names")
    with pytest.raises(SystemExit, match="labels the runs do not know"):
        main(["--data", str(other), "--image", str(runs["image"]), "--out", str(tmp_path / "eval")])


def test_cli_parses_radii_and_rejects_bad_ones(capsys):
    from trainer.evaluate import build_parser

    assert build_parser().parse_args(["--data", "d", "--radii", "25,5000"]).radii == (25.0, 5000.0)
    assert build_parser().parse_args(["--data", "d"]).radii == (50, 100, 500, 1000)
    for bad in ("", "100,-1", "far", "nan"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--data", "d", "--radii", bad])
    assert "radii must be" in capsys.readouterr().err


def _random_rows(rng, n):
    latlon = np.where(rng.uniform(size=(n, 1)) < 0.5, WEST, EAST) + rng.normal(0, 1.0, (n, 2))
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3)) + 2.0 * np.eye(3)[labels] * (rng.uniform(size=(n, 1)) < 0.6)
    probs = np.exp(3 * logits)  # overconfident on purpose: the temperature has something to fix
    return make_ds(latlon, labels), probs / probs.sum(axis=1, keepdims=True)


def test_shuffling_the_reported_labels_changes_no_choice():
    """Every data-driven choice (prior radius, temperatures) reads the tuning rows only."""
    rng = np.random.default_rng(0)
    tuneset, tune_image = _random_rows(rng, 40)
    evalset, image = _random_rows(rng, 60)
    post = np.roll(image, 1, axis=0)
    tune_probs = {"image": tune_image, "postprocess": np.roll(tune_image, 1, axis=0)}
    tune = (tune_image, tuneset.locations, tuneset.labels)

    def run(ds):
        return evaluate_methods(TRAIN, ds, {"image": image, "postprocess": post}, tune=tune, tune_probs=tune_probs)

    first = run(evalset)
    for seed in range(3):
        shuffled = run(dataclasses.replace(evalset, labels=np.random.default_rng(seed).permutation(evalset.labels)))
        assert shuffled["chosen_radius_miles"] == first["chosen_radius_miles"]
        assert shuffled["temperatures"] == first["temperatures"]
        assert {k: v["val_top1"] for k, v in shuffled["prior_sweep"].items()} == \
            {k: v["val_top1"] for k, v in first["prior_sweep"].items()}
    # ...while the reported numbers do move with the labels (the shuffle did something).
    assert shuffled["methods"][NAMES["image"]]["top1"] != first["methods"][NAMES["image"]]["top1"]
    assert set(first["temperatures"]) == {"image", "postprocess"}
    assert first["temperatures"]["image"] > 1.0  # overconfident -> softened


def test_expected_calibration_error_and_temperature():
    from trainer.evaluation.metrics import expected_calibration_error, fit_temperature, temper

    # Two images at confidence 0.9 (one right) and two at 0.6 (both right): |0.5-0.9|/2 + |1-0.6|/2.
    scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(scores, np.array([0, 1, 0, 0])) == pytest.approx(0.4)
    np.testing.assert_allclose(temper(scores, 1.0), scores)
    assert fit_temperature(scores, np.array([0, 1, 0, 0])) > 1.0
    rng = np.random.default_rng(0)
    _, probs = _random_rows(rng, 400)
    labels = rng.integers(0, 3, 400)  # labels unrelated to the scores: the best temperature flattens them
    t = fit_temperature(probs, labels)
    assert expected_calibration_error(temper(probs, t), labels) < expected_calibration_error(probs, labels)
