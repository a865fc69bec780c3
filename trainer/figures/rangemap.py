"""Range maps: one label's geo score over the world, with real coastlines (the paper's Figure 1).

    python -m trainer.figures.rangemap --model RUN_DIR [--model RUN_DIR ...] --label NAME --out PNG
        [--prior DATA_SPEC] [--truth WORLD_DIR] [--observations FILE] [--zoom]

Panels drawn (one PNG), in this order:
- for each --model: a geoprior run's score (trainer.training.geoprior): P(label | location) =
  softmax(f), or the presence probability sigmoid(f) of a presence-only run; or a post-processing
  run's geo logit for the label (the learned log P(G|L)/P(G|not L) residual);
- with --prior, the Bayesian radius prior P(L|G) from the training observations of DATA_SPEC;
- with --truth WORLD_DIR, the world generator's true range density for the label;
- with --observations FILE (an observation file or data SPEC, as trainer.training.geoprior reads), the
  label's observations as points.

--zoom draws every panel at the scale of the range: the box around the label's observations (or,
with --truth only, around its true range) instead of the whole world.

A feature-modulation model has no per-label geo score (location shifts internal features, not
label logits), so asking for its range map is an error that says to use --prior instead.
Coastlines are the 0.5 contour of global-land-mask's real land mask.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_sdk.geo_scores import log_scores
from trainer.data.readers import load_split
from trainer.evaluation.priors import LabelHistogram
from trainer.world.load import load_world

DEFAULT_STEP_DEG = 1.0
DEFAULT_RADIUS_MILES = 100.0


class RangeMapError(ValueError):
    """A range map that cannot be drawn: unknown label, a model without geo scores, bad grid."""


@dataclass(frozen=True)
class Grid:
    """Cell centres of a regular lat/lon grid; `latlon` is [rows*cols, 2] in row-major order."""

    lats: np.ndarray
    lons: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.lats), len(self.lons)

    @property
    def latlon(self) -> np.ndarray:
        lat, lon = np.meshgrid(self.lats, self.lons, indexing="ij")
        return np.stack([lat.ravel(), lon.ravel()], axis=-1).astype(np.float32)


    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(lon0, lon1, lat0, lat1) of the cell edges, imshow's order."""
        half_lon = (self.lons[1] - self.lons[0]) / 2 if len(self.lons) > 1 else 0.5
        half_lat = (self.lats[1] - self.lats[0]) / 2 if len(self.lats) > 1 else 0.5
        return (self.lons[0] - half_lon, self.lons[-1] + half_lon, self.lats[0] - half_lat, self.lats[-1] + half_lat)


def region_grid(latlon: np.ndarray, cells: int = 160, margin: float = 0.25, min_span_deg: float = 6.0) -> Grid:
    """A grid over the box around points (the 1st-99th percentile, widened by `margin` on each side
    and to at least `min_span_deg`), about `cells` cells across its longer side. Boxes do not wrap:
    a range across the antimeridian is drawn on the whole-world grid instead."""
    latlon = np.asarray(latlon, np.float64)
    if len(latlon) == 0:
        raise RangeMapError("no points to zoom to")
    (lat0, lon0), (lat1, lon1) = np.percentile(latlon, 1, axis=0), np.percentile(latlon, 99, axis=0)
    if lon1 - lon0 > 180:  # across the antimeridian or spread around the globe
        return world_grid(max(360.0 / cells / 2, 0.05))
    span = max(lat1 - lat0, lon1 - lon0, min_span_deg) * (1 + 2 * margin)
    lat_c, lon_c = (lat0 + lat1) / 2, (lon0 + lon1) / 2
    lat0, lat1 = max(-90.0, lat_c - span / 2), min(90.0, lat_c + span / 2)
    lon0, lon1 = max(-180.0, lon_c - span / 2), min(180.0, lon_c + span / 2)
    step = max(span / cells, 0.01)
    return Grid(np.arange(lat0 + step / 2, lat1, step), np.arange(lon0 + step / 2, lon1, step))


def world_grid(step_deg: float = DEFAULT_STEP_DEG) -> Grid:
    if not (0.05 <= step_deg <= 30.0):
        raise RangeMapError(f"grid step must be in [0.05, 30] degrees, got {step_deg}")
    lats = np.arange(-90.0 + step_deg / 2, 90.0, step_deg)
    lons = np.arange(-180.0 + step_deg / 2, 180.0, step_deg)
    return Grid(lats, lons)


def label_index(labels: list[str], name: str) -> int:
    """Index of `name` in `labels`; accepts an integer index written as text too."""
    if name in labels:
        return labels.index(name)
    if name.isdigit() and int(name) < len(labels):
        return int(name)
    close = [label for label in labels if name.lower() in label.lower()][:5]
    hint = f"; did you mean one of {close}?" if close else f"; labels start {labels[:5]}"
    raise RangeMapError(f"label {name!r} is not one of the {len(labels)} labels{hint}")


def geo_logits_fn(model):
    """location [N,2] -> geo logits [N,L] for a post-processing model, without running its CNN.

    The geo logits depend on the location alone (they are added to the image logits afterwards).
    So either a sub-model from the location input to the `geo_logits` output is exactly the geo
    network, or, where the geo network is a nested model that also takes the vision logits (as
    trainer.model.networks builds it), that nested model is run with zero vision logits. Both are checked
    against the full model on a blank image at a few points.
    """
    import keras

    outputs = model.output if isinstance(model.output, dict) else {}
    if "geo_logits" not in outputs:
        raise RangeMapError(
            "this model has no 'geo_logits' output: only a post-processing model has a per-label "
            "geo score. Feature modulation adds location to internal features, so no range map can "
            "be read off it; draw the radius prior with --prior DATA_SPEC instead")
    try:
        geo = keras.Model(model.input["location"], outputs["geo_logits"])

        def run(latlon):
            return np.asarray(geo.predict(np.asarray(latlon, np.float32), batch_size=8192, verbose=0))
    except ValueError:  # not connected: the geo net is a nested model with more inputs
        nested = [layer for layer in model.layers if isinstance(layer, keras.Model)
                  and isinstance(layer.output, dict) and "geo_logits" in layer.output
                  and isinstance(layer.input, dict) and "location" in layer.input]
        if len(nested) != 1:
            raise RangeMapError("cannot isolate the geo network of this model: no single nested model "
                                "maps 'location' to 'geo_logits'") from None
        head = nested[0]

        def run(latlon):
            latlon = np.asarray(latlon, np.float32)
            feeds = {name: np.zeros((len(latlon), *tensor.shape[1:]), tensor.dtype)
                     for name, tensor in head.input.items() if name != "location"}
            return np.asarray(head.predict({**feeds, "location": latlon}, batch_size=8192, verbose=0)["geo_logits"])
    _check_against_full_model(model, run)
    return run


def _check_against_full_model(model, geo_fn) -> None:
    probe = np.array([[48.0, 11.0], [-33.9, 151.2], [40.7, -74.0]], np.float32)
    image = model.input["image"]
    blank = np.zeros((len(probe), *image.shape[1:]), image.dtype)
    full = np.asarray(model.predict({"image": blank, "location": probe}, verbose=0)["geo_logits"])
    if not np.allclose(full, geo_fn(probe), atol=1e-4):
        raise RangeMapError("the isolated geo network disagrees with the model's geo_logits output")


def prior_scores(train_ds, label: int, latlon: np.ndarray, radius_miles: float) -> np.ndarray:
    """Bayesian radius prior P(label | G) at each point (eq. 2's histogram, normalised); NaN where
    no training observation lies within the radius (the prior is undefined there)."""
    latlon_train = np.stack([train_ds.lat, train_ds.lon], axis=-1)
    counts = LabelHistogram(latlon_train, train_ds.labels, len(train_ds.label_names)).counts(latlon, radius_miles)
    totals = counts.sum(axis=1)
    return np.where(totals > 0, counts[:, label] / np.maximum(totals, 1), np.nan)


@functools.lru_cache(maxsize=4)
def land_outline(step_deg: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fine land mask (from global-land-mask's real data) for drawing coastlines as a contour."""
    from global_land_mask import globe

    grid = world_grid(step_deg)
    lat, lon = np.meshgrid(grid.lats, grid.lons, indexing="ij")
    return grid.lons, grid.lats, globe.is_land(lat, lon).astype(np.float32)


def draw_panel(ax, grid: Grid, scores: np.ndarray | None, title: str, marker=None, cmap="viridis", colorbar=True,
               points=None):
    """One map: scores [rows*cols] on the grid (None: coastlines only), coastlines, optional
    (lat, lon) marker, optional [N, 2] points (observations)."""
    extent = grid.extent
    values = np.full(grid.shape, np.nan) if scores is None else np.asarray(scores, np.float64).reshape(grid.shape)
    image = ax.imshow(np.ma.masked_invalid(values), origin="lower", extent=extent, cmap=cmap,
                      interpolation="nearest", aspect="auto")
    lons, lats, land = land_outline()
    ax.contour(lons, lats, land, levels=[0.5], colors="black", linewidths=0.4)
    if marker is not None:
        ax.plot(marker[1], marker[0], marker="*", color="red", markersize=10, markeredgecolor="white")
    if points is not None:
        ax.scatter(points[:, 1], points[:, 0], s=3, color="crimson", alpha=0.6, linewidths=0)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar and scores is not None:
        ax.figure.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    return image


def save_figure(fig, out_png) -> Path:
    """Write a figure as PNG atomically (temp file in the same folder, then rename)."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_png.name}.", suffix=".png", dir=out_png.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, out_png)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_png


def figure(ncols: int, nrows: int = 1, width: float = 6.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), dpi=100, squeeze=False)
    return plt, fig, axes


def geo_panel(model, labels, label: str, grid: Grid, source: str = "") -> tuple[str, np.ndarray]:
    index = label_index(list(labels), label)
    scores = geo_logits_fn(model)(grid.latlon)[:, index]
    return f"{label}: post-processing geo logit {source}".strip(), scores


def geoprior_panel(model, labels, label: str, grid: Grid, objective: str, source: str = "") -> tuple[str, np.ndarray]:
    """A geoprior run's score for the label (mobile_sdk.geo_scores): P(label | location) = softmax(f)
    for a softmax-trained run, the presence probability sigmoid(f) for a presence-only one."""
    from trainer.training.geoprior import predict_logits

    index = label_index(list(labels), label)
    scores = np.exp(log_scores(predict_logits(model, grid.latlon), objective)[:, index])
    meaning = "P(label | location)" if objective == "softmax" else "presence σ(f)"
    return f"{label}: geo net {meaning} {source}".strip(), scores


def observation_points(spec: str, label: str) -> np.ndarray:
    """[N, 2] locations of the label's observations in an observation file or data SPEC."""
    from trainer.training.geoprior import load_observations

    obs = load_observations(spec)
    return obs.latlon[obs.labels == label_index(obs.label_names, label)]


def prior_panel(train_ds, label: str, grid: Grid, radius_miles: float) -> tuple[str, np.ndarray]:
    index = label_index(list(train_ds.label_names), label)
    return f"{label}: radius prior P(L|G), r = {radius_miles:g} mi", prior_scores(train_ds, index, grid.latlon, radius_miles)


def truth_panel(world, label: str, grid: Grid) -> tuple[str, np.ndarray]:
    index = label_index(list(world.label_names), label)
    return f"{label}: true range density (world)", np.asarray(world.density(grid.latlon))[:, index]


def write_map(out_png, grid: Grid, panels: list[tuple], width: float = 6.0) -> Path:
    """Draw the panels into one PNG (atomically), side by side, two per row from three on:
    (title, scores or None[, points]). A panel's height follows the grid's lat/lon spans, so a
    degree is as tall as it is wide (the world is twice as wide as tall, a zoomed range square)."""
    if not panels:
        raise RangeMapError("no panels to draw")
    lon0, lon1, lat0, lat1 = grid.extent
    height = float(np.clip(width * (lat1 - lat0) / (lon1 - lon0), 0.4 * width, width)) + 0.4  # + the title
    ncols = len(panels) if len(panels) <= 2 else 2
    plt, fig, axes = figure(ncols, -(-len(panels) // ncols), width, height)
    try:
        for ax in axes.flat[len(panels):]:
            ax.set_axis_off()
        for ax, panel in zip(axes.flat, panels):
            title, scores, points = panel if len(panel) == 3 else (*panel, None)
            draw_panel(ax, grid, scores, title, points=points)
        fig.tight_layout()
        return save_figure(fig, out_png)
    finally:
        plt.close(fig)


def range_map(out_png, label: str, runs=(), prior_spec=None, truth_world=None,
              radius_miles: float = DEFAULT_RADIUS_MILES, step_deg: float = DEFAULT_STEP_DEG,
              observations=None, zoom: bool = False) -> Path:
    """Draw every panel that the given sources allow for one label into `out_png`; `runs`: run
    folders (geoprior or post-processing), one panel each."""
    runs = list(runs or ())
    if not runs and prior_spec is None and truth_world is None and observations is None:
        raise RangeMapError("nothing to draw: give --model RUN_DIR, --prior DATA_SPEC, --truth WORLD_DIR "
                            "or --observations FILE")
    points = None if observations is None else observation_points(observations, label)
    world = None
    if truth_world is not None:
        world = load_world(truth_world)
    grid = world_grid(step_deg)
    if zoom:
        focus = points
        if focus is None and world is not None:  # the true range: where its density is high
            density = truth_panel(world, label, grid)[1]
            focus = grid.latlon[density >= 0.2 * np.nanmax(density)]
        if focus is None or not len(focus):
            raise RangeMapError("--zoom needs the label's observations (--observations) or its true range (--truth)")
        grid = region_grid(focus)
    panels = []
    for run_dir in runs:
        from trainer.training.runs import load_run

        run = load_run(run_dir)
        try:
            source = f"({Path(run_dir).name})"
            panels.append(geoprior_panel(run.model, run.labels, label, grid, run.config.geo_objective, source)
                          if run.config.model == "geoprior" else geo_panel(run.model, run.labels, label, grid, source))
        except RangeMapError as exc:
            if len(runs) == 1 and prior_spec is None and truth_world is None and observations is None:
                raise
            print(f"rangemap: no panel for {run_dir}: {exc}", file=sys.stderr)
    if prior_spec is not None:
        panels.append(prior_panel(load_split(prior_spec, "train"), label, grid, radius_miles))
    if world is not None:
        panels.append(truth_panel(world, label, grid))
    if points is not None:
        panels.append((f"{label}: {len(points):,} observations", None, points))
    return write_map(out_png, grid, panels)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.figures.rangemap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[],
                        help="geoprior or post-processing RUN_DIR: draw its geo network's score (repeatable)")
    parser.add_argument("--label", required=True, help="label name (or index)")
    parser.add_argument("--out", required=True, help="output PNG path")
    parser.add_argument("--prior", metavar="DATA_SPEC", help="also draw the radius prior from this dataset's train split")
    parser.add_argument("--truth", metavar="WORLD_DIR", help="also draw the world's true range density")
    parser.add_argument("--observations", metavar="FILE",
                        help="also draw the label's observations (.npz, .csv or data SPEC, as trainer.training.geoprior reads)")
    parser.add_argument("--zoom", action="store_true", help="draw at the scale of the range, not the whole world")
    parser.add_argument("--radius-miles", type=float, default=DEFAULT_RADIUS_MILES)
    parser.add_argument("--step", type=float, default=DEFAULT_STEP_DEG, help="grid step in degrees")
    args = parser.parse_args(argv)
    try:
        out = range_map(args.out, args.label, args.model, args.prior, args.truth, args.radius_miles, args.step,
                        args.observations, args.zoom)
    except RangeMapError as exc:
        parser.error(str(exc))
    print(f"range map written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
