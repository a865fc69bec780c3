"""Accuracy on the `bench` world: every method of the paper, the oracle bound and the gaps to it.

Runs the same stages as `make demo` (pipelines.demo.train_and_evaluate: world, three trained
models, trainer.evaluate) with the sizes of `presets/bench.py`, the epochs sized to --budget-min: the first
image-only epoch is timed, and the remaining budget is split between the image-only epochs
(~55%), feature modulation (~30%, each epoch costs about 1.3 image epochs) and post-processing
(cheap: it trains on cached logits). A rerun reuses finished stages.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from benchmarks.common import Section, Target, shown_path
from pipelines import demo
from pipelines.stages import Runner
from presets import bench as preset
from presets import Settings
from trainer.evaluate import NAMES

FEATUREMOD_EPOCH_COST = 1.3  # feature-modulation epoch time / image-only epoch time (measured on the demo world)


def budget_epochs(budget_min: float, first_epoch_s: float) -> tuple[int, int]:
    """(image-only epochs, feature-modulation epochs) that fit the budget, at least 1 each."""
    if first_epoch_s <= 0:
        raise ValueError(f"first_epoch_s must be positive, got {first_epoch_s}")
    budget_s = budget_min * 60.0
    image = max(1, math.floor(0.55 * budget_s / first_epoch_s))
    featuremod = max(1, math.floor(0.30 * budget_s / (FEATUREMOD_EPOCH_COST * first_epoch_s)))
    return image, featuremod


def sized_settings(runner: Runner, paths: demo.Paths, budget_min: float, seed: int) -> Settings:
    """Time one image-only epoch (it is kept: the full run resumes from it), then size the epochs."""
    runner.stage(demo.world_stage(paths, preset.RUN, seed))
    calibration = runner.out / "calibration.json"
    probe = demo.train_stage(paths, "image", preset.RUN, seed)

    def timed():
        begin = time.monotonic()
        runner.cli(probe.key, None)
        calibration.write_text(json.dumps({"first_epoch_s": time.monotonic() - begin}))

    runner.stage(dataclasses.replace(probe, name="calibrate", outputs=[calibration], run=timed))
    first_epoch_s = json.loads(calibration.read_text())["first_epoch_s"]
    image, featuremod = budget_epochs(budget_min, first_epoch_s)
    print(f"    first image-only epoch took {first_epoch_s:.0f} s (startup included): "
          f"{image} image-only and {featuremod} feature-modulation epochs fit {budget_min:g} min")
    return preset.RUN.replace(image_epochs=image, featuremod_epochs=featuremod)


def targets_from(methods: dict, oracle: str | None, settings: Settings) -> list[Target]:
    top1 = {name: r["top1"] for name, r in methods.items()}
    image, white, post, fm = (top1.get(NAMES[k]) for k in ("image", "whitelist", "postprocess", "featuremod"))
    short = (f"the budget allowed {settings.image_epochs} image-only and {settings.featuremod_epochs} "
             "feature-modulation epochs, far from the paper's converged training")
    out = []
    if oracle is not None and post is not None:
        gap = 100 * (top1[oracle] - post)
        out.append(Target("post-processing top-1 within 1 point of the oracle", gap <= 1.0,
                          f"oracle {100 * top1[oracle]:.1f}% vs post-processing {100 * post:.1f}% (gap {gap:.1f} points)"
                          + ("" if gap <= 1.0 else f". Why: the geo net must learn P(G|L) of every label from the "
                                                   f"training locations alone, within {settings.geo_epochs} epochs")))
    if None not in (image, white, post):
        ok = image < white < post
        out.append(Target("image only < whitelist < post-processing (top-1)", ok,
                          f"{100 * image:.1f}% < {100 * white:.1f}% < {100 * post:.1f}%"))
    if None not in (fm, post):
        out.append(Target("feature modulation ≥ post-processing (small MobileNet V2)", fm >= post,
                          f"feature mod. {100 * fm:.1f}% vs post-processing {100 * post:.1f}%"
                          + ("" if fm >= post else f". Why: {short}")))
    base = methods.get(NAMES["image"])
    for kind in ("postprocess", "featuremod"):
        geo = methods.get(NAMES[kind])
        if base is None or geo is None or base["tail"]["top1"] is None or base["head"]["top1"] is None:
            continue
        tail = geo["tail"]["top1"] - base["tail"]["top1"]
        head = geo["head"]["top1"] - base["head"]["top1"]
        out.append(Target(f"{NAMES[kind]}: geolocation gain larger on the tail than on the head", tail > head,
                          f"tail +{100 * tail:.1f} vs head +{100 * head:.1f} points"))
    return out


def run(work: Path, budget_min: float = 45.0, quick: bool = False, seed: int = 0) -> Section:
    begin = time.monotonic()
    runner = Runner(Path(work))
    paths = demo.Paths(Path(work))
    settings = preset.SMOKE if quick else sized_settings(runner, paths, budget_min, seed)
    report = demo.train_and_evaluate(runner, paths, settings, seed)
    primary = report["primary"]
    body = [f"World: `{settings.world}` preset (seed {seed}), {primary['n']} validation images reported "
            f"({report['tuning']}). MobileNet V2 alpha {settings.alpha}, {settings.image_size} px, trained from "
            f"scratch: {settings.image_epochs} image-only, {settings.geo_epochs} post-processing and "
            f"{settings.featuremod_epochs} feature-modulation epochs"
            + (f" (sized to a {budget_min:g}-minute budget)." if not quick else " (--quick smoke run)."),
            "", demo.comparison_table(report)]
    if "prior_sweep" in primary:
        from trainer.metrics import table_prior_sweep

        body += ["", "Radius sweep of the priors (radius chosen on the tuning images, bold):", "",
                 table_prior_sweep(primary["prior_sweep"])]
    body += ["", f"Full report: `{shown_path(paths.eval / 'report.md')}`."]
    return Section("Accuracy on the bench world", "\n".join(body),
                   targets_from(primary["methods"], primary.get("oracle"), settings), time.monotonic() - begin)
