"""`make demo`: the whole system on the `demo` world, end to end, on 2 cores (timings: presets/demo.py).

    python -m pipelines.demo [--out out/demo] [--fresh] [--quick]

Stages (each calls the real CLI or library function, never a shortcut):
 1. generate the `demo` world                      -> OUT/world
 2-4. train image-only, post-processing and feature-modulation MobileNet V2 -> OUT/runs/*
    and the image control (feature modulation's recipe, every location dropped) -> OUT/runs/image_control
 5. evaluate priors, every model, calibration and the oracle; print one comparison table -> OUT/eval/report.md
 6. export the post-processing and feature-modulation models as int8 bundles (each chooses its
    whitelist fusion on the tuning images) -> OUT/bundle, OUT/bundles/featuremod; measure every
    fusion of both through the SDK on the reported images -> OUT/eval/fusion.json; print "which
    model to ship"
 7. classify validation images through the SDK with and without their location
 8. train a geo model on the world's observations alone (geoprior: the multi-scale encoding, no
    images) -> OUT/runs/geoprior; range-map PNG of one species at the scale of its range: that geo
    model's P(label | location), the post-processing geo logit, the radius prior and the true range
    -> OUT/rangemap.png; the examples sheet -> OUT/examples.png

The sizes and epochs are `presets/demo.py` (`--quick`: its smoke variant, the tiny world and a few
steps, used by the tests). A second run reuses every stage whose stamp (OUT/.stamps/NAME.json,
written only after the stage succeeded) records the same command and whose outputs still exist;
`--fresh` starts over.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_sdk.errors import ReplaceRefusedError
from mobile_sdk.fileio import check_replaceable
from pipelines.stages import REPO, Runner, Stage, StageError
from presets import Settings
from presets import demo as preset

KINDS = ("image", "postprocess", "featuremod")  # trained in this order: the geo models start from the image-only run
GEOPRIOR = "geoprior"  # the geo model on observations alone (runs/geoprior), drawn on the range map
# Feature modulation's recipe, from the same image run for the same epochs, with every training
# location dropped: what the extra epochs alone give (trainer.evaluate --image-control).
CONTROL = "image_control"


@dataclass(frozen=True)
class Paths:
    out: Path
    # Another OUT whose world and image-only run these geo models reuse (the bench's geo-model seeds).
    shared: Path | None = None

    world = property(lambda self: (self.shared or self.out) / "world")
    runs = property(lambda self: self.out / "runs")
    eval = property(lambda self: self.out / "eval")
    bundle = property(lambda self: self.out / "bundle")  # the post-processing bundle the SDK steps use
    rangemap = property(lambda self: self.out / "rangemap.png")
    examples = property(lambda self: self.out / "examples.png")
    logs = property(lambda self: self.out / "logs")

    def run(self, kind: str) -> Path:
        if kind == "image" and self.shared is not None:
            return self.shared / "runs" / kind
        return self.runs / kind

    def bundle_of(self, kind: str) -> Path:
        return self.bundle if kind == "postprocess" else self.out / "bundles" / kind


def train_stage(paths: Paths, kind: str, settings: Settings, seed: int) -> Stage:
    """trainer.train for one model kind (or CONTROL); geo models start from the image-only run."""
    model = "featuremod" if kind == CONTROL else kind
    epochs = settings.epochs(model)
    args = ["trainer.train", "--data", str(paths.world), "--model", model, "--out", str(paths.run(kind)),
            "--epochs", str(epochs), "--batch-size", str(settings.batch_size), "--seed", str(seed)]
    if kind == "image":
        args += ["--image-size", str(settings.image_size), "--alpha", str(settings.alpha)]
    else:
        args += ["--init", str(paths.run("image"))]
    if kind == "featuremod":  # the hybrid: it starts at the post-processing model (docs/training.md)
        args += ["--geo-init", str(paths.run("postprocess"))]
    if kind == CONTROL:
        args += ["--location-dropout", "1"]
    if settings.steps_per_epoch:
        args += ["--steps-per-epoch", str(settings.steps_per_epoch)]
    titles = {"image": "image-only MobileNet V2", "postprocess": "post-processing geo net on the frozen image model",
              "featuremod": "feature-modulation MobileNet V2 from the image-only weights and the post-processing geo logits",
              CONTROL: "the image control: feature modulation's recipe with every location dropped"}
    # An interrupted run (no stamp) resumes from its state/; a finished run of other settings or
    # of another image model is deleted first (`stale`), so it is never resumed as this one.
    return Stage(f"train-{kind}", args, [paths.run(kind) / "model.keras"],
                 description=f"train {titles[kind]} ({epochs} epochs)", stale=[paths.run(kind)])


def geoprior_stage(paths: Paths, settings: Settings, seed: int) -> Stage:
    """trainer.train --model geoprior on the world's training observations (the CLI's default
    objective, encoding and geo net), with the preset's epochs and batch size."""
    args = ["trainer.train", "--model", GEOPRIOR, "--observations", str(paths.world), "--out",
            str(paths.run(GEOPRIOR)), "--epochs", str(settings.geoprior_epochs), "--batch-size",
            str(settings.geoprior_batch_size), "--seed", str(seed)]
    return Stage(f"train-{GEOPRIOR}", args, [paths.run(GEOPRIOR) / "model.keras"], stale=[paths.run(GEOPRIOR)],
                 description=f"train a geo model on the world's observations alone ({settings.geoprior_epochs} epochs)")


def print_curve(run_dir: Path) -> None:
    """The run's selection metric by epoch (metrics.json "history", when the trainer records it)
    and why it stopped."""
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return
    history = metrics.get("history") or []
    key = next((k for k in ("tune_accuracy", "val_accuracy") if history and k in history[0]), None)
    if key is None:
        return
    curve = ", ".join(f"{h['epoch']}: {100 * h[key]:.1f}%" for h in history)
    print(f"    {Path(run_dir).name} {key} by epoch: {curve}; kept epoch {metrics.get('epoch')}"
          + (f"; stopped: {metrics['stop_reason']}" if metrics.get("stop_reason") else ""), flush=True)


def stop_summary(paths: Paths) -> list[str]:
    """For each trained kind: the epoch kept, of how many, and why training stopped."""
    lines = []
    for kind in (*KINDS, CONTROL):
        metrics = json.loads((paths.run(kind) / "metrics.json").read_text())
        lines.append(f"{kind} kept epoch {metrics['epoch']} of {metrics['epochs_done']} "
                     f"({metrics.get('stop_reason') or 'no stop reason recorded'})")
    return lines


def world_stage(paths: Paths, settings: Settings, seed: int) -> Stage:
    args = ["trainer.world", "--out", str(paths.world), "--preset", settings.world, "--seed", str(seed), "--force"]
    return Stage("world", args, [paths.world / "train.json", paths.world / "val.json"],
                 description=f"generate the `{settings.world}` world")


def train_and_evaluate(runner: Runner, paths: Paths, settings: Settings, seed: int) -> dict:
    """World -> three trained models and the image control -> trainer.evaluate report (shared
    with benchmarks.accuracy)."""
    if paths.shared is None:
        runner.stage(world_stage(paths, settings, seed))
    else:  # keyed on the shared image run's stamp, so these geo models are redone when it is
        stamp = Path(paths.shared) / ".stamps" / "train-image.json"
        if not stamp.is_file():
            raise StageError(f"{paths.shared} has no finished image-only run to share ({stamp} is missing)")
        runner.stage(Stage("shared-image", ["shared", str(paths.shared), stamp.read_text()],
                           [paths.run("image") / "model.keras"], run=lambda: None,
                           description=f"reuse the world and image-only run of {paths.shared}"))
    for kind in (*KINDS, CONTROL):
        if kind == "image" and paths.shared is not None:
            continue
        runner.stage(train_stage(paths, kind, settings, seed))
        if kind == "image":  # the baseline every geo model starts from: show that it reached its plateau
            print_curve(paths.run(kind))
    eval_args = ["trainer.evaluate", "--data", str(paths.world), "--out", str(paths.eval), "--seed", str(seed),
                 *[a for kind in (*KINDS, CONTROL) for a in (f"--{kind.replace('_', '-')}", str(paths.run(kind)))]]
    runner.stage(Stage("evaluate", eval_args, [paths.eval / "report.json"], stdout_log=paths.logs / "evaluate.md",
                       description="evaluate the priors (radius sweep), every model and the oracle"))
    return json.loads((paths.eval / "report.json").read_text())


def export_stage(paths: Paths, settings: Settings, seed: int, kind: str = "postprocess", out: Path | None = None) -> Stage:
    """converters.export of one run as an int8 bundle; it measures the whitelist fusions on the
    tuning images (the same held-out rows as trainer.evaluate --seed) and records the best."""
    out = out or paths.bundle
    args = ["converters.export", "--model", str(paths.run(kind)), "--out", str(out),
            "--quantize", "int8", "--data", str(paths.world), "--force",
            "--calibration-samples", str(settings.calibration_samples), "--seed", str(seed)]
    return Stage("export" if out == paths.bundle else f"export-{kind}", args, [out / "manifest.json"],
                 description=f"export the {kind} model as an int8 bundle and choose its whitelist fusion")


SHIPPED = ("postprocess", "featuremod")  # the geo-aware kinds the demo exports; `make bench` also exports image-only


def export_bundles(runner: Runner, paths: Paths, settings: Settings, seed: int, kinds=SHIPPED,
                   folder=None) -> list[Path]:
    """Export each of `kinds` as an int8 bundle into `folder(kind)` (default Paths.bundle_of); their folders."""
    bundles = [(folder or paths.bundle_of)(kind) for kind in kinds]
    for kind, bundle in zip(kinds, bundles):
        runner.stage(export_stage(paths, settings, seed, kind, out=bundle))
    return bundles


def fusion_stage(paths: Paths, bundles: list[Path], seed: int) -> Stage:
    """converters.fusion: every whitelist fusion of each bundle through the SDK on the reported images."""
    args = ["converters.fusion", *[a for b in bundles for a in ("--bundle", str(b))], "--data", str(paths.world),
            "--seed", str(seed), "--out", str(paths.eval / "fusion.json"), "--report", str(paths.eval / "report.json")]
    return Stage("fusion", args, [paths.eval / "fusion.json"], stdout_log=paths.logs / "fusion.md",
                 description="whitelist off / soft / hard through the SDK on the reported images")


def comparison_table(report: dict) -> str:
    """The paper's Table 3/5 shape: top-1, top-5, head, tail per method, gap to the oracle."""
    from trainer.evaluation.metrics import table_methods

    primary = report["primary"]
    return table_methods(primary["methods"], oracle=primary.get("oracle"))


def sdk_examples(paths: Paths, limit: int, scan: int = 300) -> list[dict]:
    """Classify validation images through the SDK with and without their location; return (and
    print) those whose answer the location changed, fixes first."""
    from mobile_sdk import GeoClassifier
    from trainer.data.readers import load_split

    val = load_split(str(paths.world), "val")
    located = np.flatnonzero(val.has_location)
    # A seeded sample across the whole split (rows are grouped by label).
    rows = np.sort(np.random.default_rng(0).choice(located, size=min(scan, len(located)), replace=False))
    changed = []
    with GeoClassifier.from_bundle(paths.bundle) as classifier:
        for row in rows:
            blind = classifier.classify(val.paths[row]).categories[0]
            located = classifier.classify(val.paths[row], float(val.lat[row]), float(val.lon[row])).categories[0]
            if blind.index != located.index:
                truth = val.label_names[val.labels[row]]
                verdict = "fixed" if located.label == truth else "broke" if blind.label == truth else "changed"
                changed.append(dict(row=int(row), file=Path(val.paths[row]).name, truth=truth,
                                    lat=float(val.lat[row]), lon=float(val.lon[row]), verdict=verdict,
                                    without=(blind.label, blind.score), located=(located.label, located.score)))
    counts = {v: sum(c["verdict"] == v for c in changed) for v in ("fixed", "broke", "changed")}
    print(f"    {len(rows)} located validation images through the int8 bundle: the location changed the "
          f"top-1 of {len(changed)} ({counts['fixed']} fixed, {counts['broke']} broken, {counts['changed']} "
          "wrong either way)")
    ordered = sorted(changed, key=lambda c: ("fixed", "changed", "broke").index(c["verdict"]))
    shown, seen = [], set()
    for c in ordered:  # one per true label, for variety
        if c["truth"] not in seen and len(shown) < limit:
            seen.add(c["truth"])
            shown.append(c)
    if shown:
        from trainer.evaluation.metrics import markdown_table

        print(markdown_table(["image", "where", "true label", "without location", "with location", ""],
                             [[c["file"], f"{c['lat']:.1f}, {c['lon']:.1f}", c["truth"],
                               f"{c['without'][0]} ({c['without'][1]:.0%})", f"{c['located'][0]} ({c['located'][1]:.0%})",
                               c["verdict"]] for c in shown]))
    return changed


def run_all(runner: Runner, settings: Settings, seed: int) -> None:
    paths = Paths(runner.out)
    report = train_and_evaluate(runner, paths, settings, seed)
    runner.header("comparison (validation images not used to choose the prior radius)")
    print(comparison_table(report), flush=True)

    runner.stage(fusion_stage(paths, export_bundles(runner, paths, settings, seed), seed))
    runner.header("whitelist fusion through the int8 bundles and the SDK (reported images; bold: each "
                  "bundle's recommendation, chosen on the tuning images), and which model to ship")
    print((paths.logs / "fusion.md").read_text(), flush=True)

    runner.header("classify validation images through the SDK, without and with their location")
    changed = sdk_examples(paths, settings.sdk_examples)

    fixed = [c for c in changed if c["verdict"] == "fixed"]
    label = (fixed or changed)[0]["truth"] if changed else None
    if label is None:
        from trainer.data.readers import load_split

        label = load_split(str(paths.world), "val").label_names[0]

    geo_runs = [paths.run("postprocess")]
    if settings.geoprior_epochs:
        runner.stage(geoprior_stage(paths, settings, seed))
        geo_runs.insert(0, paths.run(GEOPRIOR))

    def draw_range_map():
        from trainer.figures.rangemap import range_map

        range_map(paths.rangemap, label, runs=geo_runs, prior_spec=str(paths.world), truth_world=str(paths.world),
                  zoom=True)

    runner.stage(Stage("rangemap", ["rangemap", label, "zoom", *[Path(r).name for r in geo_runs]], [paths.rangemap],
                       draw_range_map, f"range map of {label} at the scale of its range: geo nets vs radius prior "
                       "vs true range"))

    def draw_examples():
        from trainer.figures.examples import examples_sheet

        _, corrections = examples_sheet(paths.examples, str(paths.world), paths.run("image"),
                                        paths.run("postprocess"), limit=6, cache_dir=paths.eval / "cache")
        print(f"    {len(corrections)} corrected validation images on the sheet")

    try:
        runner.stage(Stage("examples", ["examples", 6], [paths.examples], draw_examples,
                           "examples sheet: images whose label geolocation corrected"))
    except ValueError as exc:  # e.g. nothing was corrected (untrained --quick models)
        print(f"    no examples sheet: {exc}")

    runner.header("done")
    print("stages: " + ", ".join(f"{name} {how}" + (f" {sec:.0f} s" if how == "ran" else "")
                                 for name, how, sec in runner.log))
    outputs = [("world (train.json, val.json, images, true ranges)", paths.world),
               ("training runs (model.keras, metrics.json, config.json)", paths.runs),
               ("evaluation report (all tables)", paths.eval / "report.md"),
               ("int8 bundle for the SDK", paths.bundle), ("range map", paths.rangemap),
               ("examples sheet", paths.examples)]
    for what, where in outputs:
        print(f"  {what:<55} {where}{'' if Path(where).exists() else '  (not written)'}")
    print(f"Try: python -m mobile_sdk {paths.bundle} IMAGE --lat LAT --lon LON")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="output folder (default out/demo)")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first and redo every stage")
    parser.add_argument("--quick", action="store_true",
                        help="the smoke variant of presets/demo.py: tiny world, a few steps per stage")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fresh and args.out.exists():
        try:
            check_replaceable(args.out, ".stamps", force=True, command="pipelines.demo")  # never wipe another folder
        except ReplaceRefusedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.out)
    settings = preset.SMOKE if args.quick else preset.RUN
    try:
        run_all(runner, settings, args.seed)
    except StageError as exc:
        print(f"\ndemo failed after {runner.elapsed()}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
