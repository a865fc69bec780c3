"""Roll-up accuracy in the evaluation, and the measured choice of the SDK's `rollup_threshold`.

The answer to an image at threshold t (mobile_sdk.taxonomy.Taxonomy.rollup): the top label when its
score reaches t, else the lowest taxon whose labels' summed score reaches t, else no answer. An
answer is correct when it contains the true label. The threshold is chosen on tuning rows only:
the lowest t on a grid whose answers are correct at least `TARGET_PRECISION` of the time (the most
specific answers that are still rarely wrong), then reported on other rows.

    python -m trainer.evaluation.rollup --data SPEC (--run RUN_DIR | --bundle BUNDLE) [--tune-fraction 0.3] [--seed 0]

With --bundle the scores are the SDK's (mobile_sdk.GeoClassifier with default options: the bundle's
calibration temperature and recommended whitelist fusion), exactly what `rollup_threshold` meets in
an app; with --run, the run's own probabilities.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from mobile_sdk.bundle import open_bundle
from mobile_sdk.taxonomy import SPECIES_RANK, Taxonomy
from trainer.data.readers import load_split
from trainer.data.splits import tuning_split
from trainer.evaluation.inference import predict, sdk_scores
from trainer.evaluation.metrics import markdown_table, pct

TARGET_PRECISION = 0.9
THRESHOLD_GRID = tuple(np.round(np.arange(0.3, 0.96, 0.05), 2))


def answers(probs: np.ndarray, taxonomy: Taxonomy, threshold: float) -> list:
    """Per row: (rank, name) of the answer, or None when nothing reaches the threshold."""
    out = []
    for row in np.asarray(probs, dtype=np.float64):
        top = int(np.argmax(row))
        if row[top] >= threshold:
            out.append((SPECIES_RANK, taxonomy.labels[top]))
            continue
        taxon = taxonomy.rollup(row, threshold)
        out.append(None if taxon is None else (taxon.rank, taxon.name))
    return out


def rollup_report(probs: np.ndarray, labels: np.ndarray, taxonomy: Taxonomy, threshold: float) -> dict:
    """Species top-1 next to the roll-up answers: how often an answer is given and contains the true
    label, overall and per rank."""
    given = answers(probs, taxonomy, threshold)
    by_rank: dict = {}
    correct_total = 0
    for answer, truth in zip(given, np.asarray(labels)):
        rank = "none" if answer is None else answer[0]
        ok = answer is not None and taxonomy.name_of(int(truth), answer[0]) == answer[1]
        entry = by_rank.setdefault(rank, {"rows": 0, "correct": 0})
        entry["rows"] += 1
        entry["correct"] += int(ok)
        correct_total += int(ok)
    n = len(given)
    answered = n - by_rank.get("none", {"rows": 0})["rows"]
    return {"threshold": float(threshold), "rows": n,
            "species_top1": float(np.mean(np.argmax(probs, axis=1) == labels)) if n else 0.0,
            "answer_accuracy": correct_total / answered if answered else 0.0,
            "answered": answered / n if n else 0.0,
            "by_rank": {rank: {"share": e["rows"] / n, "accuracy": e["correct"] / e["rows"]}
                        for rank, e in by_rank.items()}}


def choose_threshold(probs: np.ndarray, labels: np.ndarray, taxonomy: Taxonomy,
                     target: float = TARGET_PRECISION, grid=THRESHOLD_GRID) -> tuple[float, dict]:
    """The lowest grid threshold whose answers reach `target` accuracy on these (tuning) rows, else
    the highest; returns it with the sweep {threshold: answer accuracy}."""
    sweep = {float(t): rollup_report(probs, labels, taxonomy, t)["answer_accuracy"] for t in grid}
    good = [t for t, acc in sweep.items() if acc >= target]
    return (min(good) if good else max(sweep)), sweep


def evaluation_section(tune_and_eval_probs: dict, tune_labels, eval_labels, taxonomy: Taxonomy) -> dict:
    """{method: report} with each method's threshold chosen on its tuning probabilities.
    `tune_and_eval_probs`: method -> (tuning probs, reported probs)."""
    out = {}
    for method, (tune_probs, eval_probs) in tune_and_eval_probs.items():
        threshold, sweep = choose_threshold(tune_probs, tune_labels, taxonomy)
        out[method] = {**rollup_report(eval_probs, eval_labels, taxonomy, threshold), "tuning_sweep": sweep}
    return out


def table(section: dict, ranks) -> str:
    """Markdown: per method, the chosen threshold, species top-1 and the roll-up answers by rank."""
    columns = [SPECIES_RANK, *reversed(list(ranks)), "none"]
    header = ["method", "threshold", "species top-1", "answers correct", "answered",
              *[f"{rank} (share / correct)" for rank in columns]]
    rows = []
    for method, r in section.items():
        cells = [f"{pct(r['by_rank'][k]['share'])} / {pct(r['by_rank'][k]['accuracy'])}" if k in r["by_rank"] else "-"
                 for k in columns]
        rows.append([method, f"{r['threshold']:.2f}", pct(r["species_top1"]), pct(r["answer_accuracy"]),
                     pct(r["answered"]), *cells])
    return markdown_table(header, rows)


def main(argv=None) -> dict:
    from trainer.training.runs import load_run

    parser = argparse.ArgumentParser(prog="python -m trainer.evaluation.rollup", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a RUN_DIR (its probabilities, location included)")
    source.add_argument("--bundle", help="an exported bundle (the SDK's scores with its default options)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tune-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run = load_run(args.run) if args.run else None
    labels = list(run.labels if run else open_bundle(args.bundle).labels)
    ds = load_split(args.data, args.split, label_names=labels)
    if not ds.taxonomy:
        raise SystemExit(f"{args.data} has no taxonomy")
    taxonomy = Taxonomy(ds.taxonomy, labels)
    tune, report = tuning_split(ds.labels, args.tune_fraction, args.seed)
    probs = predict(run, args.run, ds) if run else sdk_scores(args.bundle, ds)
    threshold, sweep = choose_threshold(probs[tune], ds.labels[tune], taxonomy)
    out = {"chosen_threshold": threshold, "target": TARGET_PRECISION, "tuning_sweep": sweep,
           "tuning_rows": int(len(tune)), "reported": rollup_report(probs[report], ds.labels[report], taxonomy, threshold)}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
