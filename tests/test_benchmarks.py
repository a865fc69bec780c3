"""Benchmark helpers on tiny inputs (the benchmarks themselves are run by `make bench`)."""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common, geography, run

def test_timing_median_and_quantiles():
    t = common.timing_of([0.5, 0.1, 0.2, 0.3, 0.4])
    assert (t.median, t.p10, t.p90, t.repeats) == (0.3, 0.1, 0.5, 5)
    with pytest.raises(ValueError):
        common.timing_of([])
    with pytest.raises(ValueError, match="repeats"):
        common.time_calls(lambda: None, repeats=0)


def test_interleaved_timing_sees_the_slower_callable():
    timings = common.interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, repeats=5, warmup=1)
    assert timings["slow"].median >= 0.002 > timings["fast"].median


def test_ratio_target_verdict_and_reason():
    met = common.ratio_target("classify overhead", 1.05, 1.0, 1.10, "classify/invoke")
    missed = common.ratio_target("classify overhead", 1.5, 1.0, 1.10, "classify/invoke", why_missed="resize")
    assert met.met is True and "1.050x" in met.detail
    assert missed.met is False and "Why: resize" in missed.detail and "MISSED" in missed.line()


def test_split_by_observation_is_a_disjoint_cover():
    train, test = geography.split_by_observation(100, 0.2, seed=3)
    assert len(test) == 20 and len(train) == 80
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    with pytest.raises(ValueError, match="fraction"):
        geography.split_by_observation(100, 1.0, seed=0)


def test_whitelist_stats_hand_computed():
    counts = np.array([[3, 0, 1],    # true 0 survives, 2 candidates
                       [0, 0, 2],    # true 1 filtered out, 1 candidate
                       [0, 0, 0]])   # no data: nothing filtered, 3 candidates, survives
    stats = geography.whitelist_stats(counts, np.array([0, 1, 1]))
    assert stats["recall"] == pytest.approx(2 / 3)
    assert stats["mean_candidates"] == pytest.approx(2.0)
    assert stats["no_data"] == pytest.approx(1 / 3)


def test_location_only_stats_and_smoothing():
    counts = np.array([[9, 0, 1], [0, 0, 0]])
    probs = geography.bayesian_location_probs(counts, smoothing=1.0)
    np.testing.assert_allclose(probs[0], [10 / 13, 1 / 13, 2 / 13])
    np.testing.assert_allclose(probs[1], [1 / 3] * 3)  # empty histogram: uniform
    stats = geography.location_only_stats(probs, np.array([0, 2]))
    assert stats["loglik"] == pytest.approx(np.mean(np.log([10 / 13, 1 / 3])))
    assert stats["top1"] == 0.5  # row 1 is a 3-way tie, which counts against


def test_run_rejects_unknown_sections(capsys):
    with pytest.raises(SystemExit):
        run.main(["--only", "accuracy,nope"])
    assert "subset of" in capsys.readouterr().err


def test_assemble_marks_missing_sections(tmp_path):
    (tmp_path / "geography.md").write_text("## Real geography\n\nnumbers\n")
    doc = run.assemble(tmp_path)
    assert "numbers" in doc and "No section with targets has run yet" in doc
    assert "python -m benchmarks.run --only perf" in doc and "python -m benchmarks.run --only accuracy" in doc


def test_real_observations_load_with_consistent_labels(inat500_observations):
    latlon, labels, names = geography.load_observations(inat500_observations)
    assert latlon.shape == (272037, 2) and len(names) == 500
    assert labels.min() == 0 and labels.max() == 499
    assert np.abs(latlon[:, 0]).max() <= 90


def test_accuracy_targets_from_a_report():
    from benchmarks.accuracy import targets_from
    from presets import bench

    def method(top1, head, tail):
        return {"top1": top1, "head": {"top1": head}, "tail": {"top1": tail}}

    methods = {"image only": method(0.50, 0.60, 0.40), "whitelist": method(0.55, 0.62, 0.48),
               "post-process": method(0.70, 0.72, 0.68), "feature mod.": method(0.65, 0.70, 0.60),
               "oracle": method(0.705, 0.73, 0.68)}
    methods.update({"Bayesian prior": method(0.56, 0.6, 0.5), "feature mod. (location unknown)": method(0.52, 0, 0),
                    "image control (same extra epochs, no location)": method(0.515, 0, 0)})
    fusion = {"post": {"model_kind": "postprocess", "recommended": "off", "default_minus_best": -0.2},
              "fm": {"model_kind": "featuremod", "recommended": "hard", "default_minus_best": -0.8}}
    targets = targets_from(methods, "oracle", bench.RUN, fusion)
    verdicts = {t.name: t.met for t in targets}
    assert verdicts == {
        "post-processing top-1 within 1 point of the oracle": True,
        "image-only top-1 in the paper's range (55-65%) on the bench world": False,
        "image only < whitelist < post-processing (top-1)": True,
        "whitelist beats the Bayesian prior (as in the paper)": False,
        "feature modulation ≥ post-processing − 1 point (small MobileNet V2)": False,
        "feature modulation without location within 1 point of the equal-epochs image control": True,
        "each bundle's recommended fusion within 0.5 point of the best in hindsight": False,
        "post-process: geolocation gain larger on the tail than on the head": True,
        "feature mod.: geolocation gain larger on the tail than on the head": True,
    }
    keyed = {t.key: (t.value, t.limit) for t in targets if t.key}
    assert keyed == {"postprocess_minus_oracle_top1": (-0.5, -1.0), "image_only_top1_bench": (50.0, [55.0, 65.0]),
                     "featuremod_minus_postprocess_top1": (-5.0, -1.0),
                     "featuremod_unknown_minus_image_control_top1": (0.5, 1.0),
                     "default_fusion_minus_best_fusion_top1": (-0.8, -0.5)}
    # Another world's targets (the demo's) carry its name, so they never overwrite the bench's.
    from presets import demo

    demo_keys = {t.key for t in targets_from(methods, "oracle", demo.RUN, fusion) if t.key}
    assert demo_keys == {"postprocess_minus_oracle_top1_demo", "image_only_top1_demo",
                         "featuremod_minus_postprocess_top1_demo", "featuremod_unknown_minus_image_control_top1_demo",
                         "default_fusion_minus_best_fusion_top1_demo"}


def test_demo_section_without_a_finished_demo_says_not_run(tmp_path):
    from benchmarks.accuracy import from_demo

    section = from_demo(tmp_path / "nothing")
    assert [t.met for t in section.targets] == [None] and "make demo" in section.targets[0].detail


def test_assemble_collects_target_verdicts(tmp_path):
    met = common.Target("a", True, "fine")
    missed = common.Target("b", False, "too slow")
    (tmp_path / "perf.md").write_text(common.Section("Performance", "body", [met, missed]).markdown())
    doc = run.assemble(tmp_path)
    summary = doc.split("## Targets\n")[1].split("## ")[0]
    assert met.line() in summary and missed.line() in summary


def test_main_writes_keyed_targets_to_json(tmp_path, monkeypatch):
    keyed = common.ratio_target("fast enough", 3.0, 2.0, 1.25, "a/b", key="a_vs_b")
    unkeyed = common.Target("prose only", True, "fine")
    monkeypatch.setattr(run, "run_section", lambda name, args: common.Section("Performance", "body", [keyed, unkeyed]))
    doc, json_doc = tmp_path / "b.md", tmp_path / "b.json"
    run.main(["--only", "perf", "--out", str(tmp_path / "work"), "--doc", str(doc), "--json", str(json_doc)])
    records = json.loads(json_doc.read_text())
    where = records[0].pop("machine")  # the machine line, with the load average when it ran
    assert where.split(", load avg")[0] == common.machine().split(", load avg")[0]
    assert records == [{"name": "a_vs_b", "value": 1.5, "limit": 1.25, "met": False,
                        "command": "python -m benchmarks.run --only perf --out " + str(tmp_path / "work")
                                   + f" --doc {doc} --json {json_doc}"}]
    assert "**MISSED** fast enough" in doc.read_text()


def test_geo_seeds_reuse_the_world_and_image_run(tmp_path):
    """The bench's extra seeds train only the geo models and the control, from the first seed's world
    and image-only run; they are redone when that run is, and refuse to start without it."""
    from pipelines import demo
    from pipelines.stages import Runner, StageError

    calls = []

    def fake_cli(args, stdout_log=None):  # stands in for trainer.world / trainer.train / trainer.evaluate
        calls.append(list(args))
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        names = {"trainer.world": ("train.json", "val.json"), "trainer.evaluate": ("report.json",)}
        for name in names.get(args[0], ("model.keras",)):
            (out / name).write_text("{}")

    settings = demo.preset.SMOKE
    seed_dir = tmp_path / "seed1"
    with pytest.raises(StageError, match="no finished image-only run"):
        demo.train_and_evaluate(Runner(seed_dir, cli=fake_cli), demo.Paths(seed_dir, shared=tmp_path), settings, 1)
    demo.train_and_evaluate(Runner(tmp_path, cli=fake_cli), demo.Paths(tmp_path), settings, 0)
    calls.clear()
    demo.train_and_evaluate(Runner(seed_dir, cli=fake_cli), demo.Paths(seed_dir, shared=tmp_path), settings, 1)
    trained = [c for c in calls if c[0] == "trainer.train"]
    assert [c[0] for c in calls] == ["trainer.train"] * 3 + ["trainer.evaluate"]
    assert [c[c.index("--out") + 1] for c in trained] == [str(seed_dir / "runs" / k) for k in
                                                          ("postprocess", "featuremod", "image_control")]
    for c in calls:
        assert c[c.index("--data") + 1] == str(tmp_path / "world") and c[c.index("--seed") + 1] == "1"
    assert all(c[c.index("--init") + 1] == str(tmp_path / "runs" / "image") for c in trained)
    calls.clear()
    demo.train_and_evaluate(Runner(seed_dir, cli=fake_cli), demo.Paths(seed_dir, shared=tmp_path), settings, 1)
    assert calls == []  # everything reused
    (tmp_path / ".stamps" / "train-image.json").write_text('{"key": "redone"}')
    demo.train_and_evaluate(Runner(seed_dir, cli=fake_cli), demo.Paths(seed_dir, shared=tmp_path), settings, 1)
    assert [c[0] for c in calls] == ["trainer.train"] * 3 + ["trainer.evaluate"]


def test_scale_fit_and_a_size_that_did_not_fit():
    from benchmarks import scale

    labels, observations = [10, 100, 100], [1000, 10_000, 20_000]
    a, b, c = scale.fit_growth(labels, observations, [3 * n**0.5 * m**1.5 for n, m in zip(labels, observations)])
    assert (a, b, c) == pytest.approx((0.5, 1.5, 3.0))
    a, b, c = scale.fit_growth([10, 100], [1000, 10_000], [2 * 1000**1.2, 2 * 10_000**1.2])  # grew together
    assert (a, b, c) == pytest.approx((0.0, 1.2, 2.0))
    small = {"labels": 500, "observations": 272_037, "table_bytes": 1, "cells": 1, "sets": 1, "build_seconds": 60.0,
             "build_cpu_seconds": 20.0, "build_rss_bytes": 2**30, "single_lookup_us": 1.0, "batch_points_per_s": 1e6}
    failed = {"labels": 50_000, "observations": 30_000_000, "failed": "did not finish within 15 min"}
    section = scale.section([small, failed], 8, 15, 1.0)
    assert "did not fit" in section.body and [t.met for t in section.targets] == [False]
    # The minutes are CPU time: a build that waited for a core past 10 min of wall time still meets them.
    met = scale.targets([small, {**small, "labels": 50_000, "build_seconds": 1500.0, "build_cpu_seconds": 540.0,
                                 "single_lookup_us": 0.9}], 8)
    assert [t.met for t in met] == [True, True, True] and met[0].value == 9.0 and "25.0 min wall" in met[0].detail
    slow = scale.targets([small, {**small, "labels": 50_000, "build_cpu_seconds": 660.0}], 8)
    assert [t.met for t in slow] == [False, True, True]


def test_resampled_observations_copy_real_ranges():
    from benchmarks.bench_whitelist import resampled_observations

    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)
    labels = np.repeat(np.arange(3), 100)
    new_lat, new_lon, new_labels = resampled_observations(lat, lon, labels, 7, 700, jitter_km=1.0)
    assert new_lat.shape == new_lon.shape == new_labels.shape == (700,)
    assert np.bincount(new_labels).tolist() == [100] * 7
    assert (np.abs(new_lat) <= 90).all() and (new_lon >= -180).all() and (new_lon < 180).all()
    for j in range(7):  # every copy stays within a few km of its source label's observations
        source = labels == j % 3
        nearest = np.abs(new_lat[new_labels == j][:, None] - lat[source][None]).min(axis=1)
        assert nearest.max() < 0.1


def test_methods_table_over_seeds_is_mean_and_std():
    from benchmarks.accuracy import mean_std_table

    def report(top1):
        return {"primary": {"methods": {"image only": {"top1": top1, "head": {"top1": 0.5}, "tail": {"top1": top1}}}}}

    table = mean_std_table([report(0.5), report(0.6), report(0.7)])
    assert "| image only | 60.0 ± 10.0 | 50.0 ± 0.0 | 60.0 ± 10.0 |" in table


def test_expected_nearby_is_the_bundles_lpt_r_rule():
    """The section flags labels by mobile_sdk.nearby's rule (log scores, thresholds over distinct
    cells of the validation observations), so an offset per location changes nothing."""
    from trainer.training.geoprior import Observations

    def log_probs(latlon):  # P(L|G) by hand: label 0 likely in the west, label 1 in the east
        west = latlon[:, 1] < 0
        return np.log(np.where(west[:, None], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]))

    # Two validation observations of label 0 share a cell in the west, one of label 1 is in the east;
    # label 2 is never observed, so it is never expected.
    val = Observations(np.array([[10.0, -50.0], [10.001, -50.0], [10.0, 50.0]]), np.array([0, 0, 1]), ["a", "b", "c"])
    test_latlon, test_labels = np.array([[20.0, -40.0], [20.0, 40.0], [20.0, 40.0]]), np.array([0, 1, 0])
    stats = geography.nearby_stats(log_probs, "softmax", val, test_latlon, test_labels)
    assert stats == {"nearby": pytest.approx(1.0), "nearby_recall": pytest.approx(2 / 3)}  # {0} west, {1} east
    shifted = geography.nearby_stats(lambda ll: log_probs(ll) + 4.0 * (ll[:, 1] > 0)[:, None], "softmax", val,
                                     test_latlon, test_labels)
    assert shifted == stats


def test_train_ceiling_subset_keeps_every_label(tiny_world, tmp_path):
    from benchmarks import train_ceiling
    from trainer.data.readers import load_split

    world = load_split(tiny_world, "train")
    subset = load_split(train_ceiling.subset_spec(Path(tiny_world), len(world) // 4, tmp_path), "train")
    assert subset.label_names == world.label_names
    assert len(world) // 5 < len(subset) <= len(world) // 3
    assert set(subset.paths) < set(world.paths)
    assert train_ceiling.subset_spec(Path(tiny_world), None, tmp_path) == tiny_world


def test_train_ceiling_summary_is_the_median_after_the_first_epoch():
    from benchmarks import train_ceiling

    result = {"train_size": 100, "epochs": 4,
              "trainer.train": {"wall": [90.0, 5.0, 4.0, 6.0], "cpu": [50.0, 2.0, 4.0, 3.0]},
              "model.fit": {"wall": [1.0, 2.0, 2.0, 2.0], "cpu": [80.0, 1.0, 2.0, 2.0]}}
    speed = train_ceiling.summary(result)
    assert speed["trainer.train"] == {"wall": 20.0, "cpu": 100 / 3}
    assert speed["model.fit"] == {"wall": 50.0, "cpu": 50.0}


@pytest.mark.slow
def test_train_ceiling_measures_both_sides_epoch_by_epoch(tiny_world, tmp_path):
    from benchmarks import train_ceiling

    result = train_ceiling.measure(tiny_world, tmp_path, epochs=2, image_size=32, alpha=0.35, batch_size=16)
    for side in ("trainer.train", "model.fit"):
        assert len(result[side]["cpu"]) == len(result[side]["wall"]) == 2
        assert all(0 < cpu for cpu in result[side]["cpu"])
    assert (tmp_path / "cli-run" / "model.keras").is_file()


def test_train_ceiling_verdict_is_by_cpu_time():
    from benchmarks import train_ceiling

    result = {"train_size": 100, "epochs": 3,
              "trainer.train": {"wall": [9.0, 1.0, 1.0], "cpu": [9.0, 2.0, 2.0]},
              "model.fit": {"wall": [9.0, 1.0, 1.0], "cpu": [9.0, 1.0, 1.0]}}
    target, = train_ceiling.report(result).targets
    assert (target.key, target.value, target.met) == ("train_cli_vs_fit_ceiling", 0.5, False)
    assert "by wall time 1.000x" in target.detail and "Why:" in target.detail


def test_seed_spread_targets_judge_the_mean_of_the_paired_gaps():
    """One lucky seed does not meet a target: the gap of every seed is averaged before the limit."""
    from benchmarks.accuracy import seed_spread_targets
    from presets import bench
    from trainer.evaluation.report import NAMES, UNKNOWN

    def report(post, fm, unknown, control, oracle):
        methods = {NAMES["postprocess"]: post, NAMES["featuremod"]: fm, NAMES["featuremod"] + UNKNOWN: unknown,
                   NAMES["image_control"]: control, "oracle": oracle}
        return {"primary": {"oracle": "oracle", "methods": {k: {"top1": v / 100} for k, v in methods.items()}}}

    targets = seed_spread_targets([report(74, 75, 63, 63.5, 76), report(75, 76, 61, 65, 76.5), report(75, 76.5, 63, 64, 76)],
                                  bench.RUN)
    by_key = {t.key: t for t in targets}
    fm = by_key["featuremod_minus_postprocess_top1_over_seeds"]
    unknown = by_key["featuremod_unknown_minus_image_control_top1_over_seeds"]
    oracle = by_key["postprocess_minus_oracle_top1_over_seeds"]
    assert (fm.met, fm.value) == (True, pytest.approx(1.17, abs=0.01))
    assert (unknown.met, unknown.value) == (False, pytest.approx(1.83, abs=0.01))  # seed 0 alone (0.5) would have met it
    assert (oracle.met, oracle.value) == (False, pytest.approx(-1.5))
    assert "per seed +0.5, +4.0, +1.0" in unknown.detail
