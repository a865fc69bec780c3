"""`make demo`: the whole system on the `demo` world, end to end, in about 15 minutes on 2 cores.

    python -m trainer.demo [--out out/demo] [--fresh] [--quick]

Stages (each calls the real CLI or library function, never a shortcut):
 1. generate the `demo` world                      -> OUT/world
 2-4. train image-only, post-processing and feature-modulation MobileNet V2 -> OUT/runs/*
 5. evaluate priors and every model; print one comparison table -> OUT/eval/report.md
 6. export the post-processing model as an int8 bundle -> OUT/bundle
 7. classify validation images through the SDK with and without their location
 8. range-map PNG and the examples sheet            -> OUT/rangemap.png, OUT/examples.png

A second run reuses every stage whose stamp (OUT/.stamps/NAME.json, written only after the stage
succeeded) records the same command and whose outputs still exist; `--fresh` starts over.
`--quick` is a tiny smoke variant (the `tiny` world, a few steps) used by the tests.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobile_sdk.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    """Everything that sizes the demo. The full settings are budgeted to ~15 min on 2 cores."""

    preset: str
    image_size: int
    alpha: float
    batch_size: int
    image_epochs: int
    geo_epochs: int
    featuremod_epochs: int
    calibration_samples: int
    sdk_examples: int
    steps_per_epoch: int | None = None  # cap (smoke runs only)


# Measured on the 2-core dev machine: `make demo ARGS=--fresh` with these settings took 7 min 17 s
# (load ~1; venv already installed): world 36 s, image 228 s, post-processing 22 s, feature
# modulation 88 s, the rest 60 s. Under load 6-9 with 12 + 4 epochs it took 23 min.
FULL = Settings(preset="demo", image_size=64, alpha=0.35, batch_size=32, image_epochs=10, geo_epochs=20,
                featuremod_epochs=3, calibration_samples=100, sdk_examples=6)
QUICK = Settings(preset="tiny", image_size=32, alpha=0.35, batch_size=16, image_epochs=1, geo_epochs=2,
                 featuremod_epochs=1, calibration_samples=8, sdk_examples=3, steps_per_epoch=4)


class StageError(RuntimeError):
    """A demo stage failed; the message names the stage and the command to rerun."""


@dataclass
class Stage:
    """One resumable step. `key` identifies what it computes (e.g. its command line); `outputs`
    must exist when it is done; `stale` are paths to delete when a finished earlier version of the
    stage (other key, or other upstream stages) would otherwise be resumed as if it were this one."""

    name: str
    key: list | str
    outputs: list[Path]
    run: callable
    description: str = ""
    stale: list[Path] = field(default_factory=list)


@dataclass
class Runner:
    """Runs stages in order. A stage is reused when its stamp holds the same key *and* the same
    upstream digest (the keys and run tokens of every stage before it). Each time a stage really
    runs it gets a fresh token, so changing or redoing a stage reruns everything that follows."""

    out: Path
    started: float = field(default_factory=time.monotonic)
    log: list[tuple[str, str, float]] = field(default_factory=list)  # (stage, "ran"/"reused", seconds)
    upstream: str = ""  # digest of the keys and run tokens of the stages run or reused so far
    seen: set = field(default_factory=set)  # stage names handled in this run

    @property
    def stamps(self) -> Path:
        return self.out / ".stamps"

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def header(self, text: str) -> None:
        print(f"\n=== [{self.elapsed()}] {text}", flush=True)

    def _stamp(self, stage: Stage) -> dict | None:
        try:
            return json.loads((self.stamps / f"{stage.name}.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _advance(self, stage: Stage, token: str) -> None:
        self.upstream = hashlib.sha256(json.dumps([self.upstream, stage.name, stage.key, token]).encode()).hexdigest()[:16]

    def stage(self, stage: Stage):
        """Run `stage` unless its stamp says it is done. Returns what stage.run returned (None
        when reused)."""
        if stage.name in self.seen:  # asked again in the same run (e.g. the bench's world): done
            return None
        self.seen.add(stage.name)
        self.header(f"{stage.name}: {stage.description}")
        identity = {"key": stage.key, "upstream": self.upstream}
        stamp = self._stamp(stage)
        if stamp is not None and {k: stamp.get(k) for k in identity} == identity \
                and all(Path(p).exists() for p in stage.outputs):
            print(f"    reusing {', '.join(str(p) for p in stage.outputs)} (delete {self.stamps / stage.name}.json to redo)")
            self._advance(stage, stamp.get("token", ""))
            self.log.append((stage.name, "reused", 0.0))
            return None
        if stamp is not None:  # finished before with other inputs: never resume from that
            for path in stage.stale:
                shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
        (self.stamps / f"{stage.name}.json").unlink(missing_ok=True)  # a half-finished rerun must not look done
        begin = time.monotonic()
        result = stage.run()
        seconds = time.monotonic() - begin
        missing = [str(p) for p in stage.outputs if not Path(p).exists()]
        if missing:
            raise StageError(f"stage {stage.name} finished but did not write {missing}")
        token = uuid.uuid4().hex
        atomic_write_text(self.stamps / f"{stage.name}.json",
                          json.dumps({**identity, "token": token, "seconds": round(seconds, 1)}))
        self._advance(stage, token)
        self.log.append((stage.name, "ran", seconds))
        print(f"    done in {seconds:.0f} s", flush=True)
        return result


def run_cli(args: list[str], stdout_log: Path | None = None) -> None:
    """Run `python -m ...` with the same interpreter. Progress bars (stderr) stream to the terminal;
    stdout too, unless `stdout_log` is given (then it goes to that file)."""
    args = [str(a) for a in args]
    print("    $ python -m " + " ".join(args) + (f" > {stdout_log}" if stdout_log else ""), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if stdout_log is not None:
        Path(stdout_log).parent.mkdir(parents=True, exist_ok=True)
    with open(stdout_log, "w") if stdout_log else open(os.devnull) as log:
        completed = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                                   stdout=log if stdout_log else None)
    if completed.returncode != 0:
        raise StageError(f"`python -m {' '.join(args)}` failed with exit code {completed.returncode}")


@dataclass(frozen=True)
class Paths:
    out: Path

    world = property(lambda self: self.out / "world")
    runs = property(lambda self: self.out / "runs")
    eval = property(lambda self: self.out / "eval")
    bundle = property(lambda self: self.out / "bundle")
    rangemap = property(lambda self: self.out / "rangemap.png")
    examples = property(lambda self: self.out / "examples.png")
    logs = property(lambda self: self.out / "logs")

    def run(self, kind: str) -> Path:
        return self.runs / kind


def train_stage(paths: Paths, kind: str, settings: Settings, seed: int) -> Stage:
    """trainer.train for one model kind; geo models start from the image-only run."""
    epochs = {"image": settings.image_epochs, "postprocess": settings.geo_epochs,
              "featuremod": settings.featuremod_epochs}[kind]
    args = ["trainer.train", "--data", str(paths.world), "--model", kind, "--out", str(paths.run(kind)),
            "--epochs", str(epochs), "--batch-size", str(settings.batch_size), "--seed", str(seed)]
    if kind == "image":
        args += ["--image-size", str(settings.image_size), "--alpha", str(settings.alpha)]
    else:
        args += ["--init", str(paths.run("image"))]
    if settings.steps_per_epoch:
        args += ["--steps-per-epoch", str(settings.steps_per_epoch)]
    titles = {"image": "image-only MobileNet V2", "postprocess": "post-processing geo net on the frozen image model",
              "featuremod": "feature-modulation MobileNet V2 from the image-only weights"}
    # An interrupted run (no stamp) resumes from its state/; a finished run of other settings or
    # of another image model is deleted first (`stale`), so it is never resumed as this one.
    return Stage(f"train-{kind}", args, [paths.run(kind) / "model.keras"], lambda: run_cli(args),
                 f"train {titles[kind]} ({epochs} epochs)", stale=[paths.run(kind)])


def train_and_evaluate(runner: Runner, paths: Paths, settings: Settings, seed: int) -> dict:
    """World -> three trained models -> trainer.evaluate report (shared with benchmarks.accuracy)."""
    world_args = ["trainer.world", "--out", str(paths.world), "--preset", settings.preset, "--seed", str(seed), "--force"]
    runner.stage(Stage("world", world_args, [paths.world / "train.json", paths.world / "val.json"],
                       lambda: run_cli(world_args), f"generate the `{settings.preset}` world"))
    for kind in ("image", "postprocess", "featuremod"):
        runner.stage(train_stage(paths, kind, settings, seed))
    eval_args = ["trainer.evaluate", "--data", str(paths.world), "--out", str(paths.eval), "--seed", str(seed),
                 *[a for kind in ("image", "postprocess", "featuremod") for a in (f"--{kind}", str(paths.run(kind)))]]
    log = paths.logs / "evaluate.md"
    runner.stage(Stage("evaluate", eval_args, [paths.eval / "report.json"], lambda: run_cli(eval_args, log),
                       "evaluate the priors (radius sweep), every model and the oracle"))
    return json.loads((paths.eval / "report.json").read_text())


def comparison_table(report: dict) -> str:
    """The paper's Table 3/5 shape: top-1, top-5, head, tail per method, gap to the oracle."""
    from trainer.metrics import table_methods

    primary = report["primary"]
    return table_methods(primary["methods"], oracle=primary.get("oracle"))


def sdk_examples(paths: Paths, limit: int, scan: int = 300) -> list[dict]:
    """Classify validation images through the SDK with and without their location; return (and
    print) those whose answer the location changed, fixes first."""
    from mobile_sdk.classifier import GeoClassifier
    from trainer.data import load_split

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
        from trainer.metrics import markdown_table

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

    export_args = ["converters.export", "--model", str(paths.run("postprocess")), "--out", str(paths.bundle),
                   "--quantize", "int8", "--data", str(paths.world), "--force",
                   "--calibration-samples", str(settings.calibration_samples)]
    runner.stage(Stage("export", export_args, [paths.bundle / "manifest.json"], lambda: run_cli(export_args),
                       "export the post-processing model as an int8 bundle (it reports vision and geo parts)"))

    runner.header("classify validation images through the SDK, without and with their location")
    changed = sdk_examples(paths, settings.sdk_examples)

    fixed = [c for c in changed if c["verdict"] == "fixed"]
    label = (fixed or changed)[0]["truth"] if changed else None
    if label is None:
        from trainer.data import load_split

        label = load_split(str(paths.world), "val").label_names[0]

    def draw_range_map():
        from trainer.rangemap import range_map

        range_map(paths.rangemap, label, run_dir=paths.run("postprocess"), prior_spec=str(paths.world),
                  truth_world=str(paths.world))

    runner.stage(Stage("rangemap", ["rangemap", label], [paths.rangemap], draw_range_map,
                       f"range map of {label}: geo net vs radius prior vs true range"))

    def draw_examples():
        from trainer.examples import examples_sheet

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
    parser = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="output folder (default out/demo)")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first and redo every stage")
    parser.add_argument("--quick", action="store_true", help="tiny smoke variant: tiny world, one epoch each")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.out)
    settings = QUICK if args.quick else FULL
    try:
        run_all(runner, settings, args.seed)
    except StageError as exc:
        print(f"\ndemo failed after {runner.elapsed()}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
