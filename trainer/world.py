"""The benchmark world: a seeded, fine-grained, geolocated species dataset with KNOWN range densities.

    python -m trainer.world --out DIR [--preset tiny|demo|bench] [--seed N] [--observations FILE] [--force]

writes, in the iNaturalist 2021 layout (so `trainer.data` reads it with no special case):
    DIR/train.json, DIR/val.json    images[{id, file_name, latitude, longitude, date}],
                                    annotations[{image_id, category_id}], categories[{id, name, supercategory}]
    DIR/train/LLLL/IIIIII.jpg ...   the images (JPEG)
    DIR/world.json                  preset, seed, species (genus, supercategory, counts, range parameters)
    DIR/ranges.npz                  each species' TRUE range density (see `World.density`)

Why it is hard in the ways that matter for the paper:
- Species come in genera of look-alikes: members differ only by small shifts of colour, pattern
  frequency/coverage, shape and accent size, each smaller than the individual variation, under
  random pose, scale, position, background clutter, lighting and noise. Genera of one
  supercategory share a body plan; supercategories have distinct body plans.
- Members of a genus live in different regions whose ranges partly overlap, so location
  separates look-alikes (the paper's woodpeckers) but not perfectly.
- Training counts are long-tailed (log-uniform over ranks: head >= 100, tail < 100 images per
  species); validation counts are nearly uniform, as in iNaturalist.

Ranges are piecewise constant on a grid of GRID_DEG cells: each species has a probability per cell,
and a location is drawn by picking a cell, then a point uniform on the sphere inside it. So the
density `World.density` reports (probability / cell area in steradians) is EXACTLY the one sampled
from, and it integrates to 1 over the sphere. Procedural ranges (default) are mixtures of
von Mises-Fisher blobs masked to land by `global-land-mask`; with `--observations` (CSV or npz of
label/lat/lon, e.g. ../shared/data/inat500_observations.npz) each species takes a real taxon's
range as a vMF kernel density over its observations, genus members being given taxa whose ranges
overlap only partly.
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import sparse
from scipy.spatial import cKDTree
from tqdm import tqdm

from mobile_sdk.fileio import staged_folder
from mobile_sdk.geo import chord_for_km, EARTH_RADIUS_KM, to_unit_vectors, validate_locations

WORLD_FORMAT = "geoaware-world"
WORLD_VERSION = 1
GRID_DEG = 0.5
LAT_LIMITS = (-56.0, 72.0)  # where procedural range centres may lie (no Antarctica/high Arctic)


@dataclasses.dataclass(frozen=True)
class Preset:
    supercategories: int
    genera_per_supercategory: int
    species_per_genus: int
    image_size: int
    train_max: int  # images of the most common species
    train_min: int  # images of the rarest species
    val_per_species: int
    # Species offsets from their genus mean, in units of the individual variation: the knob that
    # sets image-only difficulty (smaller = more alike).
    subtlety: float = 1.5
    range_sigma_deg: tuple = (5.0, 9.0)  # vMF blob spread
    member_separation_deg: tuple = (12.0, 22.0)  # genus members' range centres from the genus centre
    missing_location_rate: float = 0.01  # train images without a location (iNat has some)


PRESETS = {
    "tiny": Preset(2, 2, 2, 32, train_max=120, train_min=12, val_per_species=8),
    "demo": Preset(4, 4, 3, 64, train_max=400, train_min=25, val_per_species=30),
    "bench": Preset(6, 10, 4, 64, train_max=300, train_min=20, val_per_species=20),
}

# Body plans, one per supercategory (distinct appearance families).
BODY_PLANS = ("Flora", "Coleoptera", "Pisces", "Lepidoptera", "Mollusca", "Aves")
PATTERNS = ("stripes", "bands", "spots", "rings", "checks")
_SYLLABLES = ("ka", "lo", "mi", "ra", "te", "vu", "sen", "dor", "pha", "xi", "qua", "bel", "tor", "nym", "zo", "cri")
_EPITHETS = ("borealis", "australis", "occidentalis", "orientalis", "montana", "minor", "major", "rufa",
             "viridis", "maculata", "lineata", "vulgaris", "elegans", "ornata", "pallida", "obscura")


# ----------------------------------------------------------------------------------------- ranges

class RangeGrid:
    """The equal-angle cell grid on which range densities are piecewise constant."""

    def __init__(self, grid_deg: float = GRID_DEG):
        self.grid_deg = float(grid_deg)
        self.n_lat = int(round(180 / grid_deg))
        self.n_lon = int(round(360 / grid_deg))
        lat_edges = np.linspace(-90.0, 90.0, self.n_lat + 1)
        band = np.radians(grid_deg) * (np.sin(np.radians(lat_edges[1:])) - np.sin(np.radians(lat_edges[:-1])))
        self.cell_area = np.repeat(band, self.n_lon)  # steradians; sums to 4*pi
        self.lat_edges = lat_edges

    @property
    def size(self) -> int:
        return self.n_lat * self.n_lon

    def centres(self, cells=None) -> np.ndarray:
        cells = np.arange(self.size) if cells is None else np.asarray(cells)
        i, j = np.divmod(cells, self.n_lon)
        return np.stack([-90.0 + (i + 0.5) * self.grid_deg, -180.0 + (j + 0.5) * self.grid_deg], axis=1)

    def cell_of(self, lat, lon) -> np.ndarray:
        i = np.clip(np.floor((np.asarray(lat) + 90.0) / self.grid_deg).astype(np.int64), 0, self.n_lat - 1)
        j = np.floor((np.asarray(lon) + 180.0) / self.grid_deg).astype(np.int64) % self.n_lon
        return i * self.n_lon + j

    def sample_in_cells(self, cells, rng) -> np.ndarray:
        """Points uniform on the sphere inside each cell (uniform in lon and in sin(lat))."""
        i, j = np.divmod(np.asarray(cells), self.n_lon)
        # Stay a hair inside the cell so 6-decimal rounding in the JSON cannot cross an edge.
        margin = 1e-4 / self.grid_deg
        u = rng.uniform(margin, 1 - margin, size=(len(i), 2))
        s0, s1 = np.sin(np.radians(self.lat_edges[i])), np.sin(np.radians(self.lat_edges[i + 1]))
        lat = np.degrees(np.arcsin(s0 + u[:, 0] * (s1 - s0)))
        lon = -180.0 + (j + u[:, 1]) * self.grid_deg
        return np.stack([lat, lon], axis=1)


def _vmf_log_kernel(kappa, cos_angle):
    """log of the vMF density on the sphere: log(kappa / (2 pi (1 - e^-2k))) + kappa (cos - 1)."""
    return np.log(kappa / (2 * np.pi * -np.expm1(-2 * kappa))) + kappa * (cos_angle - 1.0)


def _kappa(sigma_deg):
    return 1.0 / np.radians(sigma_deg) ** 2


def _vmf_mixture_cells(grid, tree, cell_ids, centres_latlon, kappas, weights, max_sigmas=3.0):
    """Cell probabilities of a vMF mixture restricted to the cells of `tree` (truncated at
    max_sigmas). Returns (cells, probabilities summing to 1), or empty arrays when no cell lies near."""
    mu = to_unit_vectors(centres_latlon[:, 0], centres_latlon[:, 1])
    sigma_km = EARTH_RADIUS_KM / np.sqrt(kappas)
    near = sorted(set().union(*(tree.query_ball_point(m, float(chord_for_km(max_sigmas * s)))
                                for m, s in zip(mu, sigma_km))))
    if not near:
        return np.zeros(0, np.int64), np.zeros(0)
    cells = cell_ids[np.asarray(near)]
    xyz = tree.data[np.asarray(near)]
    logs = np.stack([np.log(w) + _vmf_log_kernel(k, xyz @ m) for m, k, w in zip(mu, kappas, weights)])
    mass = np.exp(logs - logs.max()).sum(axis=0) * grid.cell_area[cells]
    keep = mass > 0
    return cells[keep], mass[keep] / mass[keep].sum()


def _land_cells(grid: RangeGrid) -> np.ndarray:
    """Cells whose centre is land according to global-land-mask (a real land mask)."""
    from global_land_mask import globe
    c = grid.centres()
    return np.flatnonzero(globe.is_land(c[:, 0], c[:, 1]))


def _procedural_ranges(grid, genera, preset, rng):
    """Per species: a vMF mixture around a centre placed around its genus centre, masked to land."""
    land = _land_cells(grid)
    land_centres = grid.centres(land)
    allowed = land[(land_centres[:, 0] > LAT_LIMITS[0]) & (land_centres[:, 0] < LAT_LIMITS[1])]
    tree = cKDTree(to_unit_vectors(*land_centres.T))
    ranges = []
    for members in genera:
        genus_centre = grid.centres([rng.choice(allowed, p=_area_weights(grid, allowed))])[0]
        start = rng.uniform(0, 2 * np.pi)
        for m, _ in enumerate(members):
            for _attempt in range(50):
                bearing = start + 2 * np.pi * m / len(members) + rng.normal(0, 0.3)
                dist = rng.uniform(*preset.member_separation_deg) if len(members) > 1 else 0.0
                centre = _destination(genus_centre, bearing, dist)
                n_blobs = int(rng.integers(1, 4))
                blob_centres = np.array([_destination(centre, rng.uniform(0, 2 * np.pi), rng.uniform(0, 6.0) if b else 0.0)
                                         for b in range(n_blobs)])
                sigmas = rng.uniform(*preset.range_sigma_deg, size=n_blobs)
                weights = rng.dirichlet(np.full(n_blobs, 2.0))
                cells, probs = _vmf_mixture_cells(grid, tree, land, blob_centres, _kappa(sigmas), weights)
                if len(cells) >= 20:  # enough land under the blobs to be a range
                    break
            else:
                raise RuntimeError("could not place a species range on land; try another seed")
            ranges.append(dict(cells=cells, probs=probs, params={
                "kind": "procedural", "blobs": [
                    {"lat": round(float(c[0]), 4), "lon": round(float(c[1]), 4), "sigma_deg": round(float(s), 4),
                     "weight": round(float(w), 6)} for c, s, w in zip(blob_centres, sigmas, weights)]}))
    return ranges


def _area_weights(grid, cells):
    w = grid.cell_area[cells]
    return w / w.sum()


def _destination(latlon, bearing, dist_deg):
    """The point `dist_deg` of arc from latlon along `bearing` (radians), in degrees."""
    lat1, lon1 = np.radians(latlon)
    d = np.radians(dist_deg)
    lat2 = np.arcsin(np.sin(lat1) * np.cos(d) + np.cos(lat1) * np.sin(d) * np.cos(bearing))
    lon2 = lon1 + np.arctan2(np.sin(bearing) * np.sin(d) * np.cos(lat1), np.cos(d) - np.sin(lat1) * np.sin(lat2))
    lon = (np.degrees(lon2) + 180.0) % 360.0 - 180.0
    return np.array([np.degrees(lat2), lon])


def load_observations(path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(latlon [N, 2], taxon index [N], taxon names) from the npz of ../shared/data/README.md
    (train_locs, train_ids, taxon_ids, taxon_names) or a CSV with columns label,latitude,longitude.
    Malformed files and invalid coordinates raise ValueError (this is input data, not a dataset
    row to skip)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            d = np.load(path)
            names = [str(n) for n in d["taxon_names"]]
            order = {int(t): i for i, t in enumerate(d["taxon_ids"])}
            index = np.array([order[int(t)] for t in d["train_ids"]])
            latlon = d["train_locs"].astype(np.float64)
        else:
            import csv
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            names = sorted({r["label"] for r in rows})
            order = {n: i for i, n in enumerate(names)}
            index = np.array([order[r["label"]] for r in rows])
            latlon = np.array([[float(r["latitude"]), float(r["longitude"])] for r in rows])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read observations {path} (npz with train_locs/train_ids/taxon_ids/"
                         f"taxon_names, or CSV label,latitude,longitude): {exc!r}") from None
    latlon, _ = validate_locations(latlon, allow_unknown=False)
    return latlon, index, names


def _observation_ranges(grid, genera, obs_path, rng, kernel_sigma_deg=2.0):
    """Per species: a real taxon's range as a vMF kernel density over its observations (binned to
    cells first). Genus members get taxa whose ranges overlap partly (Bhattacharyya coefficient)."""
    latlon, taxon, names = load_observations(obs_path)
    n_taxa = len(names)
    needed = sum(len(m) for m in genera)
    counts = np.bincount(taxon, minlength=n_taxa)
    usable = np.flatnonzero(counts >= 30)
    if len(usable) < needed:
        raise ValueError(f"{obs_path}: {len(usable)} taxa with >= 30 observations, need {needed}")
    coarse = RangeGrid(5.0)
    hist = np.zeros((n_taxa, coarse.size))
    np.add.at(hist, (taxon, coarse.cell_of(latlon[:, 0], latlon[:, 1])), 1.0)
    hist = np.sqrt(hist / hist.sum(axis=1, keepdims=True))
    overlap = hist @ hist.T  # Bhattacharyya coefficient between taxa
    unused = set(usable.tolist())
    tree = cKDTree(to_unit_vectors(*grid.centres().T))
    all_cells = np.arange(grid.size)
    ranges = []
    for members in genera:
        chosen = [int(rng.choice(sorted(unused)))]
        unused.discard(chosen[0])
        while len(chosen) < len(members):
            cand = np.array(sorted(unused))
            worst = overlap[np.ix_(cand, chosen)]
            ok = cand[(worst.max(axis=1) < 0.6) & (worst.max(axis=1) > 0.02)]
            # Partial overlap wanted; otherwise the candidate whose overlap is nearest 0.2.
            pick = int(rng.choice(ok)) if len(ok) else int(cand[np.argmin(np.abs(worst.max(axis=1) - 0.2))])
            chosen.append(pick)
            unused.discard(pick)
        for t in chosen:
            cells_obs, n_obs = np.unique(grid.cell_of(*latlon[taxon == t].T), return_counts=True)
            centres = grid.centres(cells_obs)
            kappas = np.full(len(cells_obs), _kappa(kernel_sigma_deg))
            cells, probs = _vmf_mixture_cells(grid, tree, all_cells, centres, kappas, n_obs / n_obs.sum())
            ranges.append(dict(cells=cells, probs=probs, params={
                "kind": "observations", "taxon": names[t], "observations": int(counts[t]),
                "kernel_sigma_deg": kernel_sigma_deg}))
    return ranges


# ------------------------------------------------------------------------------------- appearance

# Per-parameter unit of individual variation. A species' mean sits `subtlety` units (per
# parameter, random sign and size) away from its genus mean: look-alikes overlap in appearance.
_TRAIT_UNITS = {"hue": 0.025, "pattern_hue": 0.03, "log_freq": 0.08, "coverage": 0.07, "shape": 0.06,
                "accent": 0.08}


def _genus_appearance(rng, plan: str, pattern: str, hue: float) -> dict:
    return {
        "plan": plan,
        "pattern": pattern,
        "hue": hue, "sat": float(rng.uniform(0.45, 0.9)), "val": float(rng.uniform(0.5, 0.95)),
        "pattern_hue": float(rng.uniform()), "pattern_val": float(rng.uniform(0.2, 0.9)),
        "log_freq": float(np.log(rng.uniform(2.5, 6.0))), "coverage": float(rng.uniform(0.3, 0.6)),
        "shape": float(rng.uniform(0.3, 0.7)), "accent": float(rng.uniform(0.15, 0.35)),
        "accent_hue": float(rng.uniform()), "parts": int(rng.integers(4, 8)),
    }


def _species_appearance(genus: dict, rng, subtlety: float) -> dict:
    sp = dict(genus)
    for trait, unit in _TRAIT_UNITS.items():
        sp[trait] = float(genus[trait] + rng.normal(0.0, subtlety) * unit)
    return sp


def _individual(sp: dict, rng) -> dict:
    ind = dict(sp)
    for trait, unit in _TRAIT_UNITS.items():
        ind[trait] = sp[trait] + rng.normal(0.0, unit)
    return ind


def _rgb(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _smooth_noise(rng, n, cells=4):
    """Low-frequency noise in [0, 1] on an n x n grid (bilinear upsampling of a coarse grid)."""
    coarse = rng.uniform(size=(cells + 1, cells + 1))
    x = np.linspace(0, cells, n)
    i = np.minimum(x.astype(int), cells - 1)
    f = x - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _silhouette(plan, u, v, ind):
    """(body mask, accent mask) in the object's local frame, for each body plan."""
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)
    shape = ind["shape"]
    if plan == "Flora":  # petals
        boundary = 0.6 + (0.2 + 0.3 * shape) * np.cos(ind["parts"] * phi)
        return r < 0.75 * boundary + 0.15, r < ind["accent"] * 0.9
    if plan == "Coleoptera":  # oval beetle with a head
        body = (u / (0.45 + 0.2 * shape)) ** 2 + ((v - 0.1) / 0.75) ** 2 < 1
        head = u ** 2 + (v + 0.75) ** 2 < (0.2 + 0.3 * ind["accent"]) ** 2
        return body | head, head
    if plan == "Pisces":  # body + tail fin
        body = (u / 0.8) ** 2 + (v / (0.3 + 0.25 * shape)) ** 2 < 1
        tail = (u > 0.6) & (u < 1.0) & (np.abs(v) < (u - 0.6) * 1.6)
        eye = (u + 0.5) ** 2 + (v + 0.05) ** 2 < (0.05 + 0.15 * ind["accent"]) ** 2
        return body | tail, eye
    if plan == "Lepidoptera":  # two pairs of wings
        a = 0.35 + 0.2 * shape
        wings = np.zeros_like(u, dtype=bool)
        for side in (-1, 1):
            wings |= ((u - side * 0.45) / a) ** 2 + ((v + 0.3) / 0.45) ** 2 < 1
            wings |= ((u - side * 0.35) / (0.7 * a)) ** 2 + ((v - 0.4) / 0.35) ** 2 < 1
        body = (u / 0.08) ** 2 + (v / 0.8) ** 2 < 1
        eyes = np.minimum(np.hypot(np.abs(u) - 0.5, v + 0.3), 1.0) < 0.05 + 0.2 * ind["accent"]
        return wings | body, eyes | body
    if plan == "Mollusca":  # spiral shell
        spiral = np.sin(ind["parts"] * 0.6 * np.log(r + 1e-3) * 3 - phi) > 0.2 - shape
        return r < 0.8, (r < 0.8) & spiral & (r > 0.1)
    # Aves: body, head, beak, tail
    body = ((u - 0.05) / 0.55) ** 2 + (v / (0.3 + 0.15 * shape)) ** 2 < 1
    head = (u + 0.55) ** 2 + (v + 0.2) ** 2 < 0.22 ** 2
    beak = (u < -0.7) & (u > -0.95) & (np.abs(v + 0.2) < (u + 0.95) * 0.3)
    tail = (u > 0.5) & (u < 0.95) & (np.abs(v - 0.05) < 0.05 + (u - 0.5) * 0.4)
    cap = head & (v < -0.25 + 0.2 * ind["accent"])
    return body | head | beak | tail, cap | beak


def _pattern(kind, u, v, ind):
    """Where the pattern colour shows, in the object's local frame."""
    freq = np.exp(ind["log_freq"])
    cover = np.clip(ind["coverage"], 0.05, 0.95)
    if kind == "stripes":
        return (np.sin(np.pi * freq * u) + 1) / 2 < cover
    if kind == "bands":
        return (np.sin(np.pi * freq * v) + 1) / 2 < cover
    if kind == "rings":
        return (np.sin(np.pi * freq * np.hypot(u, v)) + 1) / 2 < cover
    if kind == "checks":
        return np.sin(np.pi * freq * u) * np.sin(np.pi * freq * v) > 1 - 2 * cover
    fu, fv = (freq * u / 2) % 1 - 0.5, (freq * v / 2) % 1 - 0.5  # spots
    return np.hypot(fu, fv) < 0.5 * np.sqrt(cover)


def render(species: dict, rng, size: int, supersample: int = 2) -> np.ndarray:
    """One photo of an individual of `species`: uint8 [size, size, 3]."""
    ind = _individual(species, rng)
    n = size * supersample
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    x = (x + 0.5) / n * 2 - 1
    y = (y + 0.5) / n * 2 - 1
    # Background: gradient between two colours, low-frequency texture, clutter shapes.
    c0, c1 = _rgb(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9)), _rgb(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
    t = _smooth_noise(rng, n, cells=int(rng.integers(2, 6)))[..., None]
    img = c0 * t + c1 * (1 - t)

    def clutter(count):
        nonlocal img
        for _ in range(count):
            cx, cy, a, b, th = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.05, 0.4), rng.uniform(0.02, 0.2), rng.uniform(0, np.pi)
            xr = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
            yr = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
            mask = (xr / a) ** 2 + (yr / b) ** 2 < 1
            img = np.where(mask[..., None], _rgb(rng.uniform(), rng.uniform(0, 1), rng.uniform(0.1, 1)), img)

    clutter(int(rng.integers(1, 7)))
    # The animal: random pose (rotation within +-60 degrees of upright), scale and position.
    theta, scale = rng.uniform(-np.pi / 3, np.pi / 3), rng.uniform(0.5, 0.85)
    tx, ty = rng.uniform(-0.25, 0.25, size=2)
    u = ((x - tx) * np.cos(theta) + (y - ty) * np.sin(theta)) / scale
    v = (-(x - tx) * np.sin(theta) + (y - ty) * np.cos(theta)) / scale
    body, accent = _silhouette(ind["plan"], u, v, ind)
    pattern = _pattern(ind["pattern"], u, v, ind) & body & ~accent
    shade = (1.0 - 0.25 * np.clip(np.hypot(u, v), 0, 1))[..., None]  # some 3-D roundness
    img = np.where(body[..., None], _rgb(ind["hue"], ind["sat"], ind["val"]) * shade, img)
    img = np.where(pattern[..., None], _rgb(ind["pattern_hue"], 0.8, ind["pattern_val"]) * shade, img)
    img = np.where(accent[..., None], _rgb(ind["accent_hue"], 0.7, 0.6), img)
    if rng.uniform() < 0.3:  # a foreground leaf/twig partly occluding the animal
        clutter(1)
    # Lighting: brightness, colour cast, a directional gradient; then sensor noise.
    gain = rng.uniform(0.65, 1.25) * rng.normal(1.0, 0.06, size=3)
    direction = rng.uniform(0, 2 * np.pi)
    img = img * gain * (1 + 0.25 * (np.cos(direction) * x + np.sin(direction) * y))[..., None]
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    img = img + rng.normal(0, rng.uniform(0.01, 0.04), size=img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------- the world

def _names(rng, n_genera, per_genus):
    genera, seen = [], set()
    while len(genera) < n_genera:
        name = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        if name not in seen:
            seen.add(name)
            genera.append(name)
    epithets = [list(rng.permutation(_EPITHETS)[:per_genus]) for _ in genera]
    return genera, epithets


def _long_tail_counts(n, hi, lo, rng):
    """Log-uniform over ranks from `hi` to `lo`, ranks shuffled across species."""
    ranks = rng.permutation(n)
    return np.round(hi * (lo / hi) ** (ranks / max(n - 1, 1))).astype(int)


def build_world(preset_name: str = "demo", seed: int = 0, observations=None):
    """Everything but the pixels: species, appearance, ranges, image records. Deterministic in seed."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    if preset.species_per_genus > len(_EPITHETS) or preset.supercategories > len(BODY_PLANS):
        raise ValueError("preset too large for the name/body-plan tables")
    rng = np.random.default_rng(seed)
    n_genera = preset.supercategories * preset.genera_per_supercategory
    genus_names, epithets = _names(rng, n_genera, preset.species_per_genus)
    species, genera = [], []
    for g in range(n_genera):
        plan = BODY_PLANS[g // preset.genera_per_supercategory]
        if g % preset.genera_per_supercategory == 0:
            # Genera of one body plan differ in pattern type and body hue, so look-alikes are
            # mostly confused within their genus (as in real fine-grained data).
            patterns = rng.permutation(PATTERNS)
            hues = (rng.uniform() + np.arange(preset.genera_per_supercategory) / preset.genera_per_supercategory) % 1.0
        k = g % preset.genera_per_supercategory
        look = _genus_appearance(rng, plan, str(patterns[k % len(PATTERNS)]), float(hues[k]))
        members = []
        for e in epithets[g]:
            members.append(len(species))
            species.append({"id": len(species), "name": f"{genus_names[g]} {e}", "genus": genus_names[g],
                            "supercategory": plan, "appearance": _species_appearance(look, rng, preset.subtlety)})
        genera.append(members)
    grid = RangeGrid()
    range_rng = np.random.default_rng([seed, 1])
    ranges = (_observation_ranges(grid, genera, observations, range_rng) if observations
              else _procedural_ranges(grid, genera, preset, range_rng))
    train_counts = _long_tail_counts(len(species), preset.train_max, preset.train_min, rng)
    spread = max(1, preset.val_per_species // 5)
    val_counts = rng.integers(preset.val_per_species - spread, preset.val_per_species + spread + 1, size=len(species))
    for sp, r, nt, nv in zip(species, ranges, train_counts, val_counts):
        sp.update(range=r["params"], train_count=int(nt), val_count=int(nv))
    records = {}
    next_id = 0
    for split, counts in (("train", train_counts), ("val", val_counts)):
        rows = []
        for sp, r, count in zip(species, ranges, counts):
            cells = rng.choice(r["cells"], size=count, p=r["probs"])
            locs = grid.sample_in_cells(cells, rng)
            missing = rng.uniform(size=count) < (preset.missing_location_rate if split == "train" else 0.0)
            for k in range(count):
                day = int(rng.integers(0, 3 * 365))
                rows.append({"id": next_id, "label": sp["id"], "file_name": f"{split}/{sp['id']:04d}/{next_id:06d}.jpg",
                             "latitude": None if missing[k] else round(float(locs[k, 0]), 6),
                             "longitude": None if missing[k] else round(float(locs[k, 1]), 6),
                             "date": f"{2018 + day // 365}-{1 + (day % 365) // 31:02d}-{1 + day % 28:02d}",
                             "seed": int(rng.integers(2 ** 63))})
                next_id += 1
        records[split] = rows
    return preset, species, ranges, grid, records


def _coco_doc(species, rows):
    return {
        "info": {"description": "geoaware benchmark world", "version": WORLD_VERSION},
        "images": [{k: r[k] for k in ("id", "file_name", "latitude", "longitude", "date")} for r in rows],
        "annotations": [{"id": r["id"], "image_id": r["id"], "category_id": r["label"]} for r in rows],
        "categories": [{"id": sp["id"], "name": sp["name"], "supercategory": sp["supercategory"]} for sp in species],
    }


def _dump_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def _encode_jpeg(pixels, quality):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_world(out, preset_name: str = "demo", seed: int = 0, observations=None, force: bool = False,
                progress: bool = True) -> Path:
    """Generate the world into `out` atomically (a temp folder renamed into place). Returns `out`."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to replace it")
    preset, species, ranges, grid, records = build_world(preset_name, seed, observations)
    with staged_folder(out) as tmp:
        total = sum(len(r) for r in records.values())
        with tqdm(total=total, desc=f"world {preset_name} seed {seed}", unit="img", disable=not progress) as bar:
            for split, rows in records.items():
                for r in rows:
                    rng = np.random.default_rng(r["seed"])
                    pixels = render(species[r["label"]]["appearance"], rng, preset.image_size)
                    path = tmp / r["file_name"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(_encode_jpeg(pixels, int(rng.integers(80, 96))))
                    bar.update()
                _dump_json(_coco_doc(species, rows), tmp / f"{split}.json")
        offsets = np.cumsum([0] + [len(r["cells"]) for r in ranges])
        np.savez_compressed(tmp / "ranges.npz", grid_deg=np.float64(grid.grid_deg), offsets=offsets,
                            cells=np.concatenate([r["cells"] for r in ranges]).astype(np.int64),
                            probs=np.concatenate([r["probs"] for r in ranges]),
                            label_names=np.array([sp["name"] for sp in species]))
        _dump_json({"format": WORLD_FORMAT, "version": WORLD_VERSION, "preset": preset_name, "seed": seed,
                    "observations": str(observations) if observations else None,
                    "settings": dataclasses.asdict(preset), "image_size": preset.image_size,
                    "grid_deg": grid.grid_deg,
                    "supercategories": sorted({sp["supercategory"] for sp in species}),
                    "species": species}, tmp / "world.json")
    return out


class World:
    """A written world: its species and their TRUE range densities p(G | L)."""

    def __init__(self, root):
        self.root = Path(root)
        try:
            self.info = json.loads((self.root / "world.json").read_text(encoding="utf-8"))
            ranges = np.load(self.root / "ranges.npz")
        except FileNotFoundError as exc:
            raise ValueError(f"{root} is not a world folder written by trainer.world: {exc.filename} missing") from None
        if self.info.get("format") != WORLD_FORMAT:
            raise ValueError(f"{root}/world.json is not a {WORLD_FORMAT} file")
        self.species = self.info["species"]
        self.label_names = [sp["name"] for sp in self.species]
        self.genus = [sp["genus"] for sp in self.species]
        self.supercategory = [sp["supercategory"] for sp in self.species]
        self.grid = RangeGrid(float(ranges["grid_deg"]))
        offsets = ranges["offsets"]
        rows = np.repeat(np.arange(len(self.species)), np.diff(offsets))
        # [cells, labels] probability of each label's range in each cell.
        self._cell_probs = sparse.csr_matrix((ranges["probs"], (ranges["cells"], rows)),
                                             shape=(self.grid.size, len(self.species)))

    @property
    def num_labels(self) -> int:
        return len(self.species)

    def density(self, latlon) -> np.ndarray:
        """float64 [N, L]: p(G | L) per steradian at each location (rows of NaN for unknown ones).

        Longitudes wrap; invalid coordinates raise mobile_sdk.errors.InvalidLocationError."""
        locs, known = validate_locations(latlon)
        out = np.full((len(locs), self.num_labels), np.nan)
        cells = self.grid.cell_of(locs[known, 0], locs[known, 1])
        out[known] = self._cell_probs[cells].toarray() / self.grid.cell_area[cells][:, None]
        return out


def load_world(root) -> World:
    return World(root)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.world", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observations", help="CSV/npz of label/lat/lon: real ranges instead of procedural")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    try:
        out = write_world(args.out, args.preset, args.seed, args.observations, args.force)
    except (FileExistsError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {args.preset} world (seed {args.seed}) to {out}")


if __name__ == "__main__":
    main()
