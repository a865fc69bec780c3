"""The examples sheet (the paper's Figure 5): validation images whose label geolocation corrected.

    python -m trainer.figures.examples --data SPEC --image IMAGE_RUN --geo GEO_RUN --out PNG [--max 6]

Each row: the photo (true label), the range of the image-only guess and the range of the
geo-aware answer, both with the photo's location starred. Ranges are the world's true range
densities when SPEC is a generated world, else the radius prior of SPEC's training split.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.readers import load_split
from trainer.evaluation.inference import predict
from trainer.evaluation.priors import LabelHistogram
from trainer.figures import rangemap
from trainer.world.oracle import world_density  # already in a run's label order

SHEET_STEP_DEG = 2.0  # small panels: a coarse grid draws fast and looks the same


@dataclass(frozen=True)
class Correction:
    row: int  # index into the validation split
    true: int
    image_guess: int
    image_prob: float  # image-only probability of its (wrong) guess
    geo_answer: int
    geo_prob: float  # geo-aware probability of its (right) answer


def find_corrections(labels, has_location, image_probs, geo_probs, limit: int) -> list[Correction]:
    """Located rows that the image-only model got wrong and the geo-aware model got right, most
    confident corrections first, at most one per true label so the sheet shows variety."""
    labels = np.asarray(labels)
    image_top = np.argmax(image_probs, axis=1)
    geo_top = np.argmax(geo_probs, axis=1)
    rows = np.flatnonzero(np.asarray(has_location) & (image_top != labels) & (geo_top == labels))
    rows = rows[np.argsort(-geo_probs[rows, geo_top[rows]], kind="stable")]
    picked, seen = [], set()
    for row in rows:
        if int(labels[row]) in seen:
            continue
        seen.add(int(labels[row]))
        picked.append(Correction(int(row), int(labels[row]), int(image_top[row]), float(image_probs[row, image_top[row]]),
                                 int(geo_top[row]), float(geo_probs[row, geo_top[row]])))
        if len(picked) == limit:
            break
    return picked


def range_source(spec: str, train_ds, radius_miles: float = rangemap.DEFAULT_RADIUS_MILES):
    """(description, latlon [N,2] -> scores [N, L]): the world's true densities when `spec` is a
    generated world, else the training split's radius prior."""
    density = world_density(spec, list(train_ds.label_names))
    if density is not None:
        return "true range density", density
    histogram = LabelHistogram(train_ds.locations, train_ds.labels, train_ds.num_labels)

    def prior(latlon):
        counts = histogram.counts(latlon, radius_miles).astype(np.float64)
        totals = counts.sum(axis=1, keepdims=True)
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)

    return f"radius prior, r = {radius_miles:g} mi", prior


def draw_sheet(out_png, val_ds, corrections: list[Correction], range_of, range_name: str) -> Path:
    """Write the sheet PNG (atomically)."""
    from PIL import Image

    if not corrections:
        raise ValueError("no corrected validation images to draw: geolocation changed no wrong answer into a right one")
    grid = rangemap.world_grid(SHEET_STEP_DEG)
    ranges = range_of(grid.latlon)
    names = val_ds.label_names
    plt, fig, axes = rangemap.figure(ncols=3, nrows=len(corrections), width=3.6, height=2.0)
    try:
        for (ax_img, ax_guess, ax_geo), c in zip(axes, corrections):
            photo = Image.open(val_ds.paths[c.row]).convert("RGB")
            ax_img.imshow(photo, interpolation="nearest")
            ax_img.set_title(f"true: {names[c.true]}", fontsize=8)
            ax_img.axis("off")
            where = (val_ds.lat[c.row], val_ds.lon[c.row])
            rangemap.draw_panel(ax_guess, grid, ranges[:, c.image_guess], f"image only: {names[c.image_guess]} "
                                f"({c.image_prob:.0%})", marker=where, colorbar=False)
            rangemap.draw_panel(ax_geo, grid, ranges[:, c.geo_answer], f"geo-aware: {names[c.geo_answer]} "
                                f"({c.geo_prob:.0%})", marker=where, colorbar=False)
        fig.suptitle(f"Geolocation corrected these (ranges: {range_name}; star = photo location)", fontsize=9)
        fig.tight_layout()
        return rangemap.save_figure(fig, out_png)
    finally:
        plt.close(fig)


def examples_sheet(out_png, spec: str, image_run_dir, geo_run_dir, limit: int = 6,
                   cache_dir=None) -> tuple[Path, list[Correction]]:
    """Find corrected validation images and draw them. `cache_dir`: trainer.evaluate's prediction
    cache, so a sheet after an evaluation does not rerun the models."""
    from trainer.training.runs import load_run

    train = load_split(spec, "train")
    val = load_split(spec, "val", label_names=train.label_names)
    image_run, geo_run = load_run(image_run_dir), load_run(geo_run_dir)
    for run, name in ((image_run, image_run_dir), (geo_run, geo_run_dir)):
        if list(run.labels) != list(train.label_names):
            raise ValueError(f"run {name} was trained on another label set than {spec}")
    probs = [predict(run, run_dir, val, cache_dir=cache_dir, desc=f"{Path(run_dir).name} on val")
             for run, run_dir in ((image_run, image_run_dir), (geo_run, geo_run_dir))]
    corrections = find_corrections(val.labels, val.has_location, *probs, limit)
    range_name, range_of = range_source(spec, train)
    return draw_sheet(out_png, val, corrections, range_of, range_name), corrections


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.figures.examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data SPEC (its val split is searched)")
    parser.add_argument("--image", required=True, help="image-only RUN_DIR")
    parser.add_argument("--geo", required=True, help="geo-aware RUN_DIR (post-processing or feature modulation)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--max", type=int, default=6, help="rows on the sheet")
    parser.add_argument("--cache", help="prediction cache folder (e.g. trainer.evaluate's OUT/cache)")
    args = parser.parse_args(argv)
    if args.max < 1:
        parser.error("--max must be at least 1")
    try:
        out, corrections = examples_sheet(args.out, args.data, args.image, args.geo, args.max, args.cache)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"examples sheet with {len(corrections)} corrected images written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
