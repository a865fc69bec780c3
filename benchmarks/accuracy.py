"""Accuracy on the `bench` world: every method of the paper, the oracle bound and the gaps to it.

Runs the same stages as `make demo` (pipelines.demo.train_and_evaluate: world, three trained
models and the equal-epochs image control, trainer.evaluate) with the sizes and epoch caps of
`presets/bench.py`: the image baseline trains to the plateau of its tuning top-1, every geo model
starts from it. Then every model kind is exported as an int8 bundle (each records its recommended
whitelist fusion, chosen on the tuning images) and converters.fusion measures every fusion through
the SDK on the reported images; the section ends with the "which model to ship" table. With
--seeds N the geo models (post-processing, feature modulation, the image control) and the
evaluation are repeated at seeds SEED+1.. on the same world and image-only run, and the methods
table is reported as mean ± std over the N seeds. A rerun reuses finished stages.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Section, Target, shown_path
from pipelines import demo
from pipelines.stages import Runner
from presets import bench as preset
from presets import Settings
from trainer.evaluation.report import NAMES, UNKNOWN

def targets_from(methods: dict, oracle: str | None, settings: Settings, fusion: dict | None = None) -> list[Target]:
    """The accuracy targets (keyed ones go to docs/benchmarks.json). `fusion`: converters.fusion's
    results for the exported bundles, for the default-vs-best fusion target."""
    top1 = {name: r["top1"] for name, r in methods.items()}
    # The bench world's targets carry the plain names; another world's (the demo's) add its name.
    suffix = "" if settings.world == "bench" else f"_{settings.world}"
    image, bayes, white, post, fm, fm_unknown, control = (top1.get(k) for k in (
        NAMES["image"], NAMES["bayesian"], NAMES["whitelist"], NAMES["postprocess"], NAMES["featuremod"],
        NAMES["featuremod"] + UNKNOWN, NAMES["image_control"]))
    epochs = (f"image only trained to its plateau, at most {settings.image_epochs} epochs; "
              f"{settings.featuremod_epochs} feature-modulation epochs")
    out = []
    if oracle is not None and post is not None:
        gap = 100 * (post - top1[oracle])
        out.append(Target("post-processing top-1 within 1 point of the oracle", gap >= -1.0,
                          f"post-processing {100 * post:.1f}% vs oracle {100 * top1[oracle]:.1f}% ({gap:+.1f} points)",
                          key="postprocess_minus_oracle_top1" + suffix, value=round(gap, 2), limit=-1.0))
    if image is not None:
        out.append(Target(f"image-only top-1 in the paper's range (55-65%) on the {settings.world} world",
                          55.0 <= 100 * image <= 65.0, f"{100 * image:.1f}% ({epochs})",
                          key=f"image_only_top1_{settings.world}", value=round(100 * image, 2), limit=[55.0, 65.0]))
    if None not in (image, white, post):
        out.append(Target("image only < whitelist < post-processing (top-1)", image < white < post,
                          f"{100 * image:.1f}% < {100 * white:.1f}% < {100 * post:.1f}%"))
    if None not in (bayes, white):
        out.append(Target("whitelist beats the Bayesian prior (as in the paper)", white > bayes,
                          f"whitelist {100 * white:.1f}% vs Bayesian {100 * bayes:.1f}%"
                          + ("" if white > bayes else ": why, measured: docs/evaluation.md")))
    if None not in (fm, post):
        gap = 100 * (fm - post)
        out.append(Target("feature modulation ≥ post-processing − 1 point (small MobileNet V2)", gap >= -1.0,
                          f"feature mod. {100 * fm:.1f}% vs post-processing {100 * post:.1f}% ({gap:+.1f} points; "
                          f"{epochs})", key="featuremod_minus_postprocess_top1" + suffix, value=round(gap, 2), limit=-1.0))
    if None not in (fm_unknown, control):
        gap = abs(100 * (fm_unknown - control))
        out.append(Target("feature modulation without location within 1 point of the equal-epochs image control",
                          gap <= 1.0, f"{100 * fm_unknown:.1f}% vs {100 * control:.1f}% ({gap:.1f} points apart)",
                          key="featuremod_unknown_minus_image_control_top1" + suffix, value=round(gap, 2), limit=1.0))
    if fusion:
        worst = min(fusion.values(), key=lambda e: e["default_minus_best"])
        out.append(Target("each bundle's recommended fusion within 0.5 point of the best in hindsight",
                          worst["default_minus_best"] >= -0.5,
                          f"worst: {worst['model_kind']} recommends whitelist {worst['recommended']}, "
                          f"{worst['default_minus_best']:+.1f} points vs the best on the reported images",
                          key="default_fusion_minus_best_fusion_top1" + suffix, value=round(worst["default_minus_best"], 2),
                          limit=-0.5))
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


# The paired gaps judged again on their mean over seeds: key in targets_from -> whether it is a lower bound.
SPREAD_TARGETS = {"featuremod_minus_postprocess_top1": True, "featuremod_unknown_minus_image_control_top1": False,
                  "postprocess_minus_oracle_top1": True}


def seed_spread_targets(reports: list[dict], settings: Settings) -> list[Target]:
    """targets_from's paired gaps at every seed, held to their limits on the mean (keys
    NAME_over_seeds): one seed's verdict can be luck."""
    per_seed = [{t.key: t for t in targets_from(r["primary"]["methods"], r["primary"].get("oracle"), settings)}
                for r in reports]
    out = []
    for key, lower_bound in SPREAD_TARGETS.items():
        found = [targets[key] for targets in per_seed if key in targets]
        if len(found) < len(reports):
            continue
        values = np.array([t.value for t in found])
        mean, limit = float(values.mean()), found[0].limit
        out.append(Target(f"{found[0].name}, on the mean over {len(values)} seeds",
                          mean >= limit if lower_bound else mean <= limit,
                          f"{mean:+.1f} ± {values.std(ddof=1):.1f} points (per seed "
                          f"{', '.join(f'{v:+.1f}' for v in values)})", key=key + "_over_seeds",
                          value=round(mean, 2), limit=limit))
    return out


def mean_std_table(reports: list[dict]) -> str:
    """Top-1 / head / tail of every method as mean ± standard deviation over the seeds' reports."""
    from trainer.evaluation.metrics import markdown_table

    names = list(reports[0]["primary"]["methods"])
    rows = []
    for name in names:
        cells = [name]
        for pick in (lambda r: r["top1"], lambda r: r["head"]["top1"], lambda r: r["tail"]["top1"]):
            values = np.array([100 * pick(rep["primary"]["methods"][name]) for rep in reports
                               if name in rep["primary"]["methods"]])
            cells.append(f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.1f}")
        rows.append(cells)
    return markdown_table(["method", "top-1 (%)", "head (%)", "tail (%)"], rows)


def one_seed(work: Path, settings: Settings, seed: int) -> tuple[dict, dict]:
    """World, trainings and evaluation, then every model kind exported (int8) and its fusions
    measured through the SDK: (report, fusion results)."""
    runner = Runner(Path(work))
    paths = demo.Paths(Path(work))
    report = demo.train_and_evaluate(runner, paths, settings, seed)
    bundles = demo.export_bundles(runner, paths, settings, seed, kinds=demo.KINDS,
                                  folder=lambda kind: paths.out / "bundles" / kind)
    runner.stage(demo.fusion_stage(paths, bundles, seed))
    return report, json.loads((paths.eval / "fusion.json").read_text())


def geo_seed(work: Path, shared: Path, settings: Settings, seed: int) -> dict:
    """The geo models and the evaluation again at another seed, on `shared`'s world and image run: the report."""
    runner = Runner(Path(work))
    return demo.train_and_evaluate(runner, demo.Paths(Path(work), shared=Path(shared)), settings, seed)


def from_demo(out: Path) -> Section:
    """The accuracy targets of a finished `make demo` (python -m pipelines.demo --out OUT): its
    comparison, fusion and ship tables, the targets keyed NAME_demo. Trains nothing."""
    from converters.fusion import fusion_table, ship_table
    from presets import demo as demo_preset

    paths = demo.Paths(Path(out))
    try:
        report = json.loads((paths.eval / "report.json").read_text())
        fusion = json.loads((paths.eval / "fusion.json").read_text())
    except (OSError, ValueError) as exc:
        return Section("Accuracy on the demo world", f"No finished `make demo` in `{shown_path(out)}` ({exc}).",
                       [Target("the demo's accuracy targets", None, "run `make demo` first")])
    primary, settings = report["primary"], demo_preset.RUN
    curves = demo.stop_summary(paths)
    body = [f"`make demo` (`python -m pipelines.demo`, presets/demo.py): `{settings.world}` world, "
            f"{primary['n']} validation images reported ({report['tuning']}); MobileNet V2 alpha {settings.alpha}, "
            f"{settings.image_size} px from scratch; feature modulation is the hybrid (docs/training.md). "
            "Training: " + "; ".join(curves) + ".", "", demo.comparison_table(report),
            "", "Whitelist fusion of each int8 bundle through the SDK (reported images; bold: the "
                "bundle's recommendation, chosen on the tuning images):", "", fusion_table(fusion),
            "", "Which model to ship:", "", ship_table(report, fusion)]
    return Section("Accuracy on the demo world", "\n".join(body),
                   targets_from(primary["methods"], primary.get("oracle"), settings, fusion))


def run(work: Path, quick: bool = False, seed: int = 0, seeds: int = 1) -> Section:
    """The bench's accuracy section. With `seeds` > 1 the methods table is mean ± std over the geo
    models of seeds seed, seed+1, ... (WORK/seedN, on WORK's world and image-only run)."""
    begin = time.monotonic()
    work = Path(work)
    settings = preset.SMOKE if quick else preset.RUN
    report, fusion = one_seed(work, settings, seed)
    reports = [report] + [geo_seed(work / f"seed{seed + i}", work, settings, seed + i) for i in range(1, seeds)]
    primary = report["primary"]
    paths = demo.Paths(work)
    body = [f"World: `{settings.world}` preset (seed {seed}), {primary['n']} validation images reported "
            f"({report['tuning']}). MobileNet V2 alpha {settings.alpha}, {settings.image_size} px, trained from "
            f"scratch, every run to the plateau of its tuning metric: at most {settings.image_epochs} image-only and "
            f"{settings.geo_epochs} post-processing epochs; {settings.featuremod_epochs} feature-modulation epochs "
            "(and the same for the image control)" + (" (--quick smoke run)." if quick else "."),
            "", "Training: " + "; ".join(demo.stop_summary(paths)) + ".", "", demo.comparison_table(report)]
    if seeds > 1:
        body += ["", f"Mean ± standard deviation over {seeds} seeds ({seed}..{seed + seeds - 1}: the geo models, the "
                     "image control and the evaluation's tuning split at each seed, on one world and image-only "
                     "run):", "", mean_std_table(reports)]
    if "prior_sweep" in primary:
        from trainer.evaluation.metrics import table_prior_sweep

        body += ["", "Radius sweep of the priors (radius chosen on the tuning images, bold):", "",
                 table_prior_sweep(primary["prior_sweep"])]
    from converters.fusion import fusion_table, ship_table

    body += ["", "Whitelist fusion of each int8 bundle through the SDK, top-1 on the reported images (bold: the "
                 "bundle's recommendation, chosen on the tuning images):", "", fusion_table(fusion),
             "", "Which model to ship:", "", ship_table(report, fusion),
             "", f"Full report: `{shown_path(paths.eval / 'report.md')}`."]
    targets = targets_from(primary["methods"], primary.get("oracle"), settings, fusion)
    if seeds > 1:
        targets += seed_spread_targets(reports, settings)
    return Section("Accuracy on the bench world", "\n".join(body), targets, time.monotonic() - begin)
