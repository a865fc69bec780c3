"""Which whitelist fusion (and calibration temperature) a bundle ships with, chosen by measurement
through the SDK.

    python -m converters.fusion --bundle DIR [--bundle DIR ...] --data SPEC [--seed N] [--out FILE]
                                [--report EVAL/report.json]

Every candidate (whitelist off, soft at a few floors, hard) runs through `GeoClassifier` on the
exported model, as an app would. `converters.export` measures them on the TUNING images (the
seeded, label-stratified `trainer.evaluation.report.EVAL_TUNE_FRACTION` of `val` that trainer.evaluate
holds out to choose the prior radius; never the whitelist's own training records) and writes the
best into the manifest as `recommended_fusion`. This CLI measures every candidate of each bundle
on the REPORTED images (the rest of `val`) and marks the recommended one, so a report shows what
the choice costs against the best fusion in hindsight, with each model's file size and the median
time of one classify call (under whatever load the machine has). With `--report` (trainer.evaluate's
report.json of the same runs and seed) it ends with "which model to ship": one row per bundle with
its accuracy, file size, latency and recommended fusion.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mobile_sdk import GeoClassifier, GeoClassifierOptions
from mobile_sdk.bundle import open_bundle
from mobile_sdk.fileio import atomic_write_bytes
from mobile_sdk.preprocess import load_image

# (whitelist, soft floor). Ties go to the earlier candidate: the simplest fusion that is as good.
CANDIDATES = (("off", None), ("soft", 0.001), ("soft", 0.01), ("soft", 0.1), ("hard", None))


def candidate_name(whitelist: str, floor: float | None) -> str:
    return whitelist if floor is None else f"{whitelist} {floor:g}"


def evaluation_rows(val, seed: int = 0):
    """(tuning part, reported part) of an evaluation split, exactly as trainer.evaluate splits it."""
    from trainer.data.splits import tuning_split
    from trainer.evaluation.report import EVAL_TUNE_FRACTION

    tune, report = tuning_split(val.labels, EVAL_TUNE_FRACTION, seed)
    return val.subset(tune), val.subset(report)


def measure_fusions(bundle_dir, ds, candidates=CANDIDATES) -> dict[str, float]:
    """Top-1 of each candidate on the rows of a GeoDataset, through GeoClassifier. A bundle without
    a whitelist table has only "off"."""
    bundle = open_bundle(bundle_dir)
    if bundle.whitelist is None:
        candidates = [c for c in candidates if c[0] == "off"]
    images = [load_image(path) for path in ds.paths]
    out = {}
    for whitelist, floor in candidates:
        options = GeoClassifierOptions(max_results=1, use_whitelist=whitelist != "off",
                                       whitelist_mode=None if whitelist == "off" else whitelist,
                                       whitelist_floor=floor)
        classifier = GeoClassifier(bundle, options)
        hits = [classifier.classify(image, *((float(lat), float(lon)) if known else (None, None))).categories[0].index
                == label for image, lat, lon, known, label in zip(images, ds.lat, ds.lon, ds.has_location, ds.labels)]
        out[candidate_name(whitelist, floor)] = float(np.mean(hits))
    return out


def fit_calibration(bundle_dir, ds) -> dict:
    """The manifest's calibration: a temperature fitted (least NLL) on the SDK's scores of the
    rows of `ds` (the tuning images), kept only if it lowers their expected calibration error
    ("if it helps"; else 1.0), with the ECE before and after."""
    from trainer.evaluation.inference import sdk_scores
    from trainer.evaluation.metrics import expected_calibration_error, fit_temperature, temper

    scores = sdk_scores(bundle_dir, ds, GeoClassifierOptions(use_whitelist=False))
    scores /= scores.sum(axis=1, keepdims=True)
    t = fit_temperature(scores, ds.labels)
    before = expected_calibration_error(scores, ds.labels)
    after = expected_calibration_error(temper(scores, t), ds.labels)
    return {"temperature": t if after < before else 1.0, "fitted_temperature": t,
            "ece_tune_before": round(before, 6), "ece_tune_after": round(after, 6),
            "chosen_on": f"{len(ds)} tuning images (held-out part of val)"}


def choose_fusion(top1_by_candidate: dict[str, float], rows: int) -> dict:
    """The manifest's recommended_fusion: the best candidate (first one on ties) and the evidence."""
    order = {candidate_name(*c): c for c in CANDIDATES}
    best = max(top1_by_candidate, key=lambda name: (top1_by_candidate[name], -list(order).index(name)))
    whitelist, floor = order[best]
    return {"whitelist": whitelist, "floor": floor, "chosen_on": f"{rows} tuning images (held-out part of val)",
            "tune_top1": {k: round(v, 6) for k, v in top1_by_candidate.items()}}


def fusion_table(rows: dict[str, dict]) -> str:
    """Markdown: one row per bundle, top-1 of every candidate on the reported images, the
    recommended one in bold, and its gap to the best in hindsight."""
    from trainer.evaluation.metrics import markdown_table

    names = [candidate_name(*c) for c in CANDIDATES]
    body = []
    for bundle, r in rows.items():
        cells = []
        for name in names:
            value = r["reported_top1"].get(name)
            text = "–" if value is None else f"{100 * value:.1f}%"
            cells.append(f"**{text}**" if name == r["recommended"] else text)
        body.append([bundle, *cells, f"{r['default_minus_best']:+.1f}"])
    return markdown_table(["bundle", *[f"whitelist {n}" for n in names], "recommended − best (points)"], body)


def classify_ms(bundle_dir, ds, repeats: int = 30) -> float:
    """Median milliseconds of one GeoClassifier.classify (decoded image, location known, the
    bundle's default fusion): LiteRT invoke plus the SDK's preprocessing and fusion."""
    import time

    images = [load_image(path) for path in ds.paths[:repeats]]
    with GeoClassifier.from_bundle(bundle_dir) as classifier:
        classifier.classify(images[0], float(ds.lat[0]), float(ds.lon[0]))  # warm-up
        times = []
        for image, lat, lon in zip(images, ds.lat, ds.lon):
            begin = time.perf_counter()
            classifier.classify(image, float(lat), float(lon))
            times.append(time.perf_counter() - begin)
    return 1000.0 * float(np.median(times))


def ship_table(report: dict, fusion: dict) -> str:
    """"Which model to ship": one row per exported model kind: top-1 with location and with it
    unknown, head / tail, int8 file size, classify latency and the recommended whitelist fusion
    (report: trainer.evaluate's report.json; fusion: this module's results)."""
    from trainer.evaluation.metrics import markdown_table, pct
    from trainer.evaluation.report import NAMES, UNKNOWN

    methods = report["primary"]["methods"]
    rows = []
    for entry in fusion.values():
        kind = entry["model_kind"]
        known = methods.get(NAMES[kind], {})
        unknown = methods.get(NAMES[kind] + UNKNOWN, known if kind == "image" else {})
        rows.append([NAMES[kind], pct(known.get("top1")), pct(unknown.get("top1")),
                     pct(known.get("head", {}).get("top1")), pct(known.get("tail", {}).get("top1")),
                     f"{entry['model_bytes'] / 1024:.0f} KiB", f"{entry['classify_ms']:.1f} ms",
                     f"whitelist {entry['recommended']} ({100 * entry['reported_top1'][entry['recommended']]:.1f}%)"])
    return markdown_table(["model (int8)", "top-1, location", "top-1, location unknown", "head", "tail",
                           "model file", "classify (median)", "recommended fusion (its top-1 via the SDK)"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.fusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", action="append", required=True, help="bundle folder (repeat for several)")
    parser.add_argument("--data", required=True, help="data SPEC whose `val` split is evaluated")
    parser.add_argument("--seed", type=int, default=0, help="the tuning split's seed (trainer.evaluate --seed)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--report", type=Path,
                        help="trainer.evaluate's report.json of the same runs: end with the 'which model to ship' table")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text()) if args.report else None
    except (OSError, ValueError) as exc:
        parser.error(f"--report {args.report}: not a trainer.evaluate report.json ({exc})")
    from trainer.data.readers import load_split

    results = {}
    for path in args.bundle:
        bundle = open_bundle(path)
        val = load_split(args.data, "val", label_names=bundle.labels)
        _, reported = evaluation_rows(val, args.seed)
        top1 = measure_fusions(path, reported)
        fusion = bundle.manifest.get("recommended_fusion")
        recommended = candidate_name(fusion["whitelist"], fusion["floor"]) if fusion else "hard"
        kind = bundle.manifest["model_kind"]
        results[kind if kind not in results else f"{kind} ({Path(path).name})"] = {
            "model_kind": kind, "reported_top1": top1, "reported_rows": len(reported),
            "recommended": recommended, "default_minus_best": 100 * (top1.get(recommended, np.nan) - max(top1.values())),
            "model_bytes": (Path(path) / "model.tflite").stat().st_size, "classify_ms": classify_ms(path, reported)}
    print(fusion_table(results))
    if report is not None:
        print("\nWhich model to ship:\n\n" + ship_table(report, results))
    if args.out:
        atomic_write_bytes(args.out, (json.dumps(results, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
