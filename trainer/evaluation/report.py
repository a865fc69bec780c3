"""The evaluation's core, numpy only: every method of the paper scored on one dataset from its
probabilities (`evaluate_methods`), and report.md / report.json rendered from the same numbers.
The command that loads runs, predicts and writes a report is `python -m trainer.evaluate`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from mobile_sdk.fileio import atomic_write_bytes
from trainer.data.dataset import GeoDataset
from trainer.evaluation import metrics, nearby, rollup
from trainer.evaluation.priors import PRIOR_METHODS, SWEEP_RADII_MILES, LabelHistogram, product_scores, sweep_prior


RUN_KINDS = ("image", "postprocess", "featuremod", "image_control")
GEO_RUN_KINDS = ("postprocess", "featuremod")
NAMES = {
    "image": "image only",
    "bayesian": "Bayesian prior",
    "whitelist": "whitelist",
    "postprocess": "post-process",
    "featuremod": "feature mod.",
    "image_control": "image control (same extra epochs, no location)",
    "oracle": "oracle: image × true range density",
}
UNKNOWN = " (location unknown)"
EVAL_TUNE_FRACTION = 0.3  # of the evaluation split, held out to make every choice (never reported)
REPORT_VERSION = 1


class EvaluationError(ValueError):
    """Runs or datasets that cannot be evaluated together (label lists differ, empty splits...)."""


# ---- predictions -------------------------------------------------------------------------------

def without_locations(ds: GeoDataset) -> GeoDataset:
    """The same rows with every location unknown (NaN), to run a geo model without location."""
    nan = np.full(len(ds), np.nan)
    return dataclasses.replace(ds, lat=nan, lon=nan, has_location=np.zeros(len(ds), dtype=bool))


# ---- the numpy core: probabilities in, report sections out -------------------------------------

def evaluate_methods(
    train: GeoDataset,
    evalset: GeoDataset,
    probs: Mapping[str, np.ndarray],
    *,
    tune: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    chosen_radii: Mapping[str, float] | None = None,
    radii=SWEEP_RADII_MILES,
    density: np.ndarray | None = None,
    tune_probs: Mapping[str, np.ndarray] | None = None,
    temperatures: Mapping[str, float] | None = None,
) -> dict:
    """Score every method whose probabilities are given and summarise it (trainer.evaluation.metrics).

    probs: any of "image", "postprocess", "featuremod", "image_control" and "<kind>_unknown" ->
    [N, L] on `evalset`. Priors (from probs["image"]): radius swept and chosen on `tune` = (image
    probs, latlon, labels) of other images, or fixed by `chosen_radii` (e.g. those chosen for the
    primary dataset). density: the true P(G|L) [N, L] for the oracle row. Calibration: each
    method's expected calibration error; for each run kind in `tune_probs` (probabilities on the
    tune rows) a temperature fitted there, or fixed by `temperatures`, and the ECE after it.
    Every choice reads tune rows only: the reported rows' labels change no choice (tested).
    """
    num_labels = train.num_labels
    for key, p in probs.items():
        if np.shape(p) != (len(evalset), num_labels):
            raise EvaluationError(f"{key} probabilities have shape {np.shape(p)}, expected {(len(evalset), num_labels)}")
    head = metrics.head_labels(train.labels, num_labels)

    def summary(scores):
        return metrics.summarize(scores, evalset.labels, head=head, supercategories=evalset.supercategories,
                                 supercategory_names=evalset.supercategory_names)

    methods: dict[str, dict] = {}
    scored: dict[str, np.ndarray] = {}  # method name -> its scores on the reported rows
    out: dict = {"methods": methods}

    def add(name, scores):
        methods[name], scored[name] = summary(scores), scores

    image = probs.get("image")
    if image is not None:
        add(NAMES["image"], image)
        histogram = LabelHistogram(train.locations, train.labels, num_labels)
        if chosen_radii is None:
            if tune is None:
                raise EvaluationError("the priors need tuning data (tune=...) or fixed chosen_radii")
            sweeps = {m: sweep_prior(histogram, m, tune, (image, evalset.locations), radii) for m in PRIOR_METHODS}
            out["prior_sweep"] = {
                NAMES[m]: {
                    "val_top1": {str(r): a for r, a in s.val_top1.items()},
                    "test_top1": {str(r): metrics.top_k_accuracy(sc, evalset.labels, 1) for r, sc in s.test_scores.items()},
                    "chosen_radius": s.chosen_radius,
                }
                for m, s in sweeps.items()
            }
            chosen_radii = {m: s.chosen_radius for m, s in sweeps.items()}
            prior_scores = {m: sweeps[m].test_scores[chosen_radii[m]] for m in PRIOR_METHODS}
        else:
            prior_scores = {m: PRIOR_METHODS[m](image, histogram.counts(evalset.locations, chosen_radii[m]))
                            for m in PRIOR_METHODS}
        out["chosen_radius_miles"] = {m: float(chosen_radii[m]) for m in PRIOR_METHODS}
        for m in PRIOR_METHODS:
            add(NAMES[m], prior_scores[m])
    for kind in GEO_RUN_KINDS:
        if kind in probs:
            add(NAMES[kind], probs[kind])
        if f"{kind}_unknown" in probs:
            add(NAMES[kind] + UNKNOWN, probs[f"{kind}_unknown"])
    if "image_control" in probs:
        add(NAMES["image_control"], probs["image_control"])
    if density is not None:
        if image is None:
            raise EvaluationError("the oracle needs the image-only run (--image)")
        add(NAMES["oracle"], product_scores(image, density))
        out["oracle"] = NAMES["oracle"]
    if not methods:
        raise EvaluationError("nothing to evaluate: give at least one run")
    if temperatures is None:
        temperatures = {kind: metrics.fit_temperature(p, tune[2]) for kind, p in (tune_probs or {}).items()
                        if kind in probs and tune is not None}
    out["temperatures"] = dict(temperatures)
    run_of = {NAMES[k]: k for k in RUN_KINDS} | {NAMES[k] + UNKNOWN: k for k in GEO_RUN_KINDS}
    out["calibration"] = {}
    for name, scores in scored.items():
        t = temperatures.get(run_of.get(name))
        ece = metrics.expected_calibration_error(scores, evalset.labels)
        methods[name]["ece"] = ece
        out["calibration"][name] = {"ece": ece, "temperature": t, "ece_tempered": None if t is None else
                                    metrics.expected_calibration_error(metrics.temper(scores, t), evalset.labels)}
    return out


# ---- report ------------------------------------------------------------------------------------

def render_markdown(report: dict) -> str:
    primary = report["primary"]
    lines = ["# Evaluation report", ""]
    lines.append(f"Data `{report['data']}`: {primary['n']} images of split `{report['eval_split']}` reported; "
                 f"{report['tuning']}")
    if "sizes" in report:
        sizes = report["sizes"]
        lines.append(f"Sizes: train {sizes['train']} (the priors' histogram), tune {sizes['tune']} (every choice "
                     f"below: radius, temperatures), reported {sizes['reported']}.")
    lines.append("Runs: " + ", ".join(f"{k} = `{v}`" for k, v in report["runs"].items()) + ".")
    lines.append("Accuracies are top-k over images; ties count against the prediction. "
                 f"Head labels have ≥{metrics.HEAD_MIN_TRAIN_IMAGES} training images.")
    if "prior_sweep" in primary:
        chosen = ", ".join(f"{NAMES[m]} {r:g} mi" for m, r in primary["chosen_radius_miles"].items())
        lines += ["", "## Table 1: geolocation priors, top-1 by radius", "",
                  metrics.table_prior_sweep(primary["prior_sweep"]), "",
                  f"Bold: the radius chosen on validation ({chosen}); the other columns are shown, not used."]
    lines += ["", "## Table 3: top-1, top-5, head and tail", "",
              metrics.table_methods(primary["methods"], oracle=primary.get("oracle"))]
    if any(UNKNOWN in name for name in primary["methods"]):
        lines += ["", f"Rows marked “{UNKNOWN.strip()}” ran the same geo model with every location NaN "
                      "(no location permission); they should match image only within about a point."]
    if primary.get("calibration"):
        lines += ["", "## Calibration: expected calibration error (top-1 confidence, 15 bins)", "",
                  metrics.markdown_table(
                      ["method", "ECE", "temperature (fitted on tune)", "ECE after it"],
                      [[name, f"{c['ece']:.3f}", "–" if c["temperature"] is None else f"{c['temperature']:.2f}",
                        "–" if c["ece_tempered"] is None else f"{c['ece_tempered']:.3f}"]
                       for name, c in primary["calibration"].items()])]
    if NAMES["image_control"] in primary["methods"]:
        lines += ["", f"“{NAMES['image_control']}”: the feature-modulation recipe from the same image run for the "
                      "same epochs with every training location dropped, evaluated without location: what the "
                      "extra training alone gives. Location's gain is feature modulation minus this row."]
    if "rollup" in primary:
        lines += ["", "## Roll-up: species or the lowest taxon reaching the threshold", "",
                  rollup.table(primary["rollup"], primary["rollup_ranks"]), "",
                  f"Each threshold is the lowest whose answers contain the true label at least "
                  f"{rollup.TARGET_PRECISION:.0%} of the time on the tuning images (mobile_sdk's rollup_threshold)."]
    if "expected_nearby" in primary:
        lines += ["", "## Expected nearby: the true label flagged at its own location", "",
                  nearby.table(primary["expected_nearby"]), "",
                  "The bundle's method for each model (the one its exported bundle uses), from the training locations only."]
    lines += ["", "## Table 4: top-1 per supercategory (labels in the evaluated images)", "",
              metrics.table_supercategories(primary["methods"])]
    lines += ["", "## Table 5: top-1 by image backbone", "",
              metrics.table_backbones({report["backbone"]: primary["methods"]})]
    datasets = {f"{report['data']} ({report['eval_split']})": primary["methods"]}
    if "second" in report:
        second = report["second"]
        datasets[second["data"]] = second["methods"]
    lines += ["", "## Table 6: top-1 by evaluation data", "", metrics.table_datasets(datasets)]
    if "second" in report:
        second = report["second"]
        skipped = ", ".join(f"{k}={v}" for k, v in second["skipped"].items()) or "none"
        lines += ["", f"Second data `{second['data']}`: {second['n']} images with labels mapped to the "
                      f"training label list (skipped: {skipped}); priors use the radii chosen above."]
    return "\n".join(lines) + "\n"


def combine_reports(reports: list[dict]) -> str:
    """Tables 5 and 6 across several report.json files (e.g. one per backbone): each report is a
    column of Table 5 and contributes its datasets to Table 6."""
    if not reports:
        raise EvaluationError("nothing to combine")
    backbones: dict[str, dict] = {}
    datasets: dict[str, dict] = {}
    for report in reports:
        column = report["backbone"]
        if column in backbones:
            column = f"{column} ({report['data']})"
        backbones[column] = report["primary"]["methods"]
        datasets[f"{report['data']} ({report['eval_split']}), {report['backbone']}"] = report["primary"]["methods"]
        if "second" in report:
            datasets[f"{report['second']['data']}, {report['backbone']}"] = report["second"]["methods"]
    return "\n".join(["# Combined evaluation", "", "## Table 5: top-1 by image backbone", "",
                      metrics.table_backbones(backbones), "", "## Table 6: top-1 by evaluation data", "",
                      metrics.table_datasets(datasets), ""])


def write_report(report: dict, out_dir: Path) -> None:
    """report.json and report.md, each written atomically."""
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "report.md", render_markdown(report).encode())
