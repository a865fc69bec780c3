"""Evaluate every method of the paper on one dataset (and optionally a second): report.md + report.json.

    python -m trainer.evaluate --data SPEC [--image RUN] [--postprocess RUN] [--featuremod RUN]
        [--second-data SPEC] [--out DIR]
    python -m trainer.evaluate --combine OUT1/report.json OUT2/report.json [--out DIR]   (Tables 5, 6)

Methods (any run may be omitted; what is given is reported):
- image only (--image), and the geolocation priors built on it: Bayesian prior (eq. 2) and
  whitelist (eq. 3), swept over 50/100/500/1000 miles;
- post-processing (--postprocess) and feature modulation (--featuremod), each also with every
  location replaced by "unknown" (NaN), the behaviour an app gets without location permission;
- when SPEC is a world folder from trainer.world: the ORACLE, image-only probabilities times the
  world's true range density, and each method's gap to it.

The prior radius is never chosen on the images it is scored on: with `--eval-split val` (the
default, as in the paper) a seeded, label-stratified `--tune-fraction` of the validation images
chooses the radius and every method is reported on the remaining images; with a separate
`--eval-split test`, the whole `--tune-split` chooses it. Predictions are cached per run, model
file and dataset under OUT/cache (trainer.inference), so re-evaluating is cheap.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from mobile_sdk.fileio import atomic_write_bytes
from mobile_sdk.taxonomy import Taxonomy
from trainer import metrics, rollup
from trainer.data import GeoDataset, load_split
from trainer.inference import predict
from trainer.priors import PRIOR_METHODS, SWEEP_RADII_MILES, LabelHistogram, product_scores, sweep_prior
from trainer.splits import tuning_split
from trainer.world.oracle import world_density


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
    """Score every method whose probabilities are given and summarise it (trainer.metrics).

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


# ---- CLI ---------------------------------------------------------------------------------------

def _load_runs(paths: Mapping[str, str | None]) -> dict:
    from trainer.checkpoint import load_run

    runs = {kind: load_run(path) for kind, path in paths.items() if path}
    label_lists = {kind: list(run.labels) for kind, run in runs.items()}
    first = next(iter(label_lists.items()), None)
    for kind, labels in label_lists.items():
        if labels != first[1]:
            raise EvaluationError(f"runs {first[0]} and {kind} have different label lists; "
                                  "evaluate runs trained on the same labels together")
    return runs


def _oracle_density(density_fn, ds: GeoDataset) -> np.ndarray:
    density = np.zeros((len(ds), ds.num_labels))
    if ds.has_location.any():  # unknown rows keep 0: the fusion falls back to image only
        density[ds.has_location] = density_fn(ds.locations[ds.has_location])
    return density


def _predict_all(runs, run_dirs, ds: GeoDataset, args, tag: str, unknown: bool = True) -> dict:
    """Each run's probabilities on `ds` (the image control never sees a location), and with
    `unknown` each geo run's with every location unknown."""
    probs = {}
    for kind, run in runs.items():
        rows = without_locations(ds) if kind == "image_control" else ds
        probs[kind] = predict(run, run_dirs[kind], rows, batch_size=args.batch_size, cache_dir=args.cache,
                              desc=f"{kind} on {tag}")
        if kind in GEO_RUN_KINDS and unknown:
            probs[f"{kind}_unknown"] = predict(run, run_dirs[kind], without_locations(ds),
                                               batch_size=args.batch_size, cache_dir=args.cache,
                                               desc=f"{kind} on {tag}, location unknown")
    return probs


def run_evaluation(args) -> dict:
    run_dirs = {"image": args.image, "postprocess": args.postprocess, "featuremod": args.featuremod,
                "image_control": args.image_control}
    run_dirs = {k: v for k, v in run_dirs.items() if v}
    if not run_dirs:
        raise EvaluationError("give at least one of --image, --postprocess, --featuremod, --image-control")
    runs = _load_runs(run_dirs)
    labels = list(next(iter(runs.values())).labels)
    train = load_split(args.data, "train", label_names=labels)
    if train.skipped.get("unknown_label"):
        raise EvaluationError(f"{train.skipped['unknown_label']} training images of {args.data} have labels the runs "
                              "do not know: evaluate runs together with the data they were trained on")
    evalset = load_split(args.data, args.eval_split, label_names=labels)
    if len(evalset) == 0:
        raise EvaluationError(f"split {args.eval_split!r} of {args.data} has no usable images")
    if args.eval_split == args.tune_split:
        tune_rows, report_rows = tuning_split(evalset.labels, args.tune_fraction, args.seed)
        tuneset, evalset = evalset.subset(tune_rows), evalset.subset(report_rows)
        tuning = (f"the prior radius was chosen on {len(tuneset)} other `{args.tune_split}` images "
                  f"(seeded label-stratified hold-out, fraction {args.tune_fraction}), never on the reported ones.")
    else:
        tuneset = load_split(args.data, args.tune_split, label_names=labels)
        tuning = f"the prior radius was chosen on the {len(tuneset)} images of split `{args.tune_split}`."
    density_fn = world_density(args.data, labels)
    probs = _predict_all(runs, run_dirs, evalset, args, args.eval_split)
    tune_probs = _predict_all(runs, run_dirs, tuneset, args, f"{args.tune_split} (tuning)", unknown=False)
    tune = (tune_probs.get("image"), tuneset.locations, tuneset.labels)
    density = _oracle_density(density_fn, evalset) if density_fn and "image" in runs else None
    primary = evaluate_methods(train, evalset, probs, tune=tune, density=density, radii=args.radii,
                               tune_probs=tune_probs)
    primary["n"] = len(evalset)
    if evalset.taxonomy:  # roll-up: each run's threshold chosen on the tuning rows, reported here
        primary["rollup"] = rollup.evaluation_section(
            {NAMES[k]: (tune_probs[k], probs[k]) for k in runs if k in tune_probs and k in probs},
            tuneset.labels, evalset.labels, Taxonomy(evalset.taxonomy, labels))
        primary["rollup_ranks"] = list(evalset.taxonomy["ranks"])
    first_config = next(iter(runs.values())).config
    report = {
        "version": REPORT_VERSION,
        "data": args.data,
        "eval_split": args.eval_split,
        "tune_split": args.tune_split,
        "tuning": tuning,
        "runs": run_dirs,
        "backbone": str(getattr(runs.get("image", next(iter(runs.values()))).config, "backbone", "unknown")),
        "image_size": str(first_config.image_size),
        "primary": primary,
        "sizes": {"train": len(train), "tune": len(tuneset), "reported": len(evalset)},
    }
    if args.second_data:
        second = load_split(args.second_data, args.second_split, label_names=labels)
        if len(second) == 0:
            raise EvaluationError(f"{args.second_data} has no images with labels of the training label list")
        second_probs = _predict_all(runs, run_dirs, second, args, "second data")
        section = evaluate_methods(train, second, second_probs, chosen_radii=primary.get("chosen_radius_miles"),
                                   temperatures=primary["temperatures"])
        section.update(data=args.second_data, n=len(second), skipped=dict(second.skipped))
        report["second"] = section
    return report


def _radii(text: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"radii must be comma-separated miles, got {text!r}") from None
    if not radii or not all(math.isfinite(r) and r > 0 for r in radii):
        raise argparse.ArgumentTypeError(f"radii must be positive and finite, got {text!r}")
    return radii


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="data SPEC (trainer.data.load_split); required unless --combine")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="REPORT_JSON",
                        help="instead of evaluating: Tables 5 and 6 across these reports -> OUT/combined.md")
    parser.add_argument("--image", help="image-only RUN_DIR (also the base of the priors and the oracle)")
    parser.add_argument("--postprocess", help="post-processing RUN_DIR")
    parser.add_argument("--featuremod", help="feature-modulation RUN_DIR")
    parser.add_argument("--image-control", help="RUN_DIR trained like --featuremod with every location dropped "
                        "(trainer.train --model featuremod --location-dropout 1): evaluated without location")
    parser.add_argument("--second-data", help="a second evaluation SPEC (Table 6), e.g. yfcc:CSV,IMAGE_ROOT")
    parser.add_argument("--second-split", default="val", help="split name for the second SPEC (default val)")
    parser.add_argument("--eval-split", default="val", help="split reported (default val)")
    parser.add_argument("--tune-split", default="val", help="split that chooses the prior radius (default val)")
    parser.add_argument("--tune-fraction", type=float, default=EVAL_TUNE_FRACTION,
                        help="when eval and tune split coincide: fraction held out to choose the radius")
    parser.add_argument("--radii", type=_radii, default=SWEEP_RADII_MILES,
                        help="prior radii to sweep, miles, comma-separated (default 50,100,500,1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("out/eval"), help="report folder (default out/eval)")
    parser.add_argument("--cache", type=Path, help="prediction cache folder (default OUT/cache)")
    return parser


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if args.cache is None:
        args.cache = args.out / "cache"
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be positive")
    if args.combine:
        try:
            text = combine_reports([json.loads(path.read_text(encoding="utf-8")) for path in args.combine])
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"evaluate --combine: cannot combine {[str(p) for p in args.combine]}: {exc!r}") from exc
        atomic_write_bytes(args.out / "combined.md", text.encode())
        print(text)
        return {"combined": text}
    if not args.data:
        raise SystemExit("evaluate: --data is required (unless --combine)")
    try:
        report = run_evaluation(args)
    except (EvaluationError, ValueError, OSError) as exc:
        raise SystemExit(f"evaluate: {exc}") from exc
    write_report(report, args.out)
    print(render_markdown(report))
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return report


if __name__ == "__main__":
    main()
