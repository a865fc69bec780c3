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
file and dataset under OUT/cache (trainer.evaluation.inference), so re-evaluating is cheap.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from mobile_sdk.fileio import atomic_write_bytes
from mobile_sdk.taxonomy import Taxonomy
from trainer.data.dataset import GeoDataset
from trainer.data.readers import load_split
from trainer.data.splits import tuning_split
from trainer.evaluation import nearby as expected_nearby
from trainer.evaluation import rollup
from trainer.evaluation.inference import predict
from trainer.evaluation.priors import SWEEP_RADII_MILES
from trainer.evaluation.report import (EVAL_TUNE_FRACTION, GEO_RUN_KINDS, NAMES, REPORT_VERSION, EvaluationError,
                                       combine_reports, evaluate_methods, render_markdown, without_locations,
                                       write_report)
from trainer.world.oracle import world_density


def _load_runs(paths: Mapping[str, str | None]) -> dict:
    from trainer.training.runs import load_run

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
    # expected nearby: thresholds (or table) from the training rows, recall on the reported ones
    primary["expected_nearby"] = expected_nearby.evaluation_section(
        {NAMES[k]: m for k, m in expected_nearby.methods_for(runs, train).items()}, evalset)
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
    parser.add_argument("--data", help="data SPEC (trainer.data.readers.load_split); required unless --combine")
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
