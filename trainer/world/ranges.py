"""Species ranges as cell probabilities on the RangeGrid: procedural (vMF blobs on land) or taken
from real observations (a vMF kernel density over a real taxon's records)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from mobile_sdk.geo import chord_for_km, EARTH_RADIUS_KM, to_unit_vectors, validate_locations
from trainer.world.grid import RangeGrid

LAT_LIMITS = (-56.0, 72.0)  # where procedural range centres may lie (no Antarctica/high Arctic)


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


def destination(latlon, bearing, dist_deg):
    """The point `dist_deg` of arc from latlon along `bearing` (radians), in degrees."""
    lat1, lon1 = np.radians(latlon)
    d = np.radians(dist_deg)
    lat2 = np.arcsin(np.sin(lat1) * np.cos(d) + np.cos(lat1) * np.sin(d) * np.cos(bearing))
    lon2 = lon1 + np.arctan2(np.sin(bearing) * np.sin(d) * np.cos(lat1), np.cos(d) - np.sin(lat1) * np.sin(lat2))
    lon = (np.degrees(lon2) + 180.0) % 360.0 - 180.0
    return np.array([np.degrees(lat2), lon])


def procedural_ranges(grid, genera, preset, rng):
    """Per species: a vMF mixture masked to land. Genus members sit `member_separation_deg` from
    their genus centre in spread-out directions, so sister ranges abut or partly overlap; with
    chance `sympatric_rate` a member instead shares the previous member's centre (sympatric)."""
    land = _land_cells(grid)
    land_centres = grid.centres(land)
    allowed = land[(land_centres[:, 0] > LAT_LIMITS[0]) & (land_centres[:, 0] < LAT_LIMITS[1])]
    tree = cKDTree(to_unit_vectors(*land_centres.T))
    ranges = []
    for members in genera:
        for _attempt in range(50):  # a genus centre on a small island may leave no land nearby: redraw
            placed = _place_genus(grid, tree, land, allowed, len(members), preset, rng)
            if placed is not None:
                break
        else:
            raise RuntimeError("could not place a genus's ranges on land; try another seed")
        ranges += placed
    return ranges


def _place_genus(grid, tree, land, allowed, n_members, preset, rng):
    """The members' ranges around one genus centre, or None when one of them finds too little land."""
    genus_centre = grid.centres([rng.choice(allowed, p=grid.area_weights(allowed))])[0]
    start = rng.uniform(0, 2 * np.pi)
    previous, placed = None, []
    for m in range(n_members):
        sympatric = previous is not None and rng.uniform() < preset.sympatric_rate
        if sympatric:
            centre = previous
        else:
            bearing = start + 2 * np.pi * m / n_members + rng.normal(0, 0.3)
            dist = rng.uniform(*preset.member_separation_deg) if n_members > 1 else 0.0
            centre = destination(genus_centre, bearing, dist)
        n_blobs = int(rng.integers(1, 4))
        blob_centres = np.array([destination(centre, rng.uniform(0, 2 * np.pi),
                                             rng.uniform(0, preset.range_sigma_deg[1]) if b else 0.0)
                                 for b in range(n_blobs)])
        sigmas = rng.uniform(*preset.range_sigma_deg, size=n_blobs)
        weights = rng.dirichlet(np.full(n_blobs, 2.0))
        cells, probs = _vmf_mixture_cells(grid, tree, land, blob_centres, _kappa(sigmas), weights)
        if len(cells) < 20:  # too little land under the blobs to be a range
            return None
        previous = centre
        placed.append(dict(cells=cells, probs=probs, params={
            "kind": "procedural", "sympatric_with_previous": bool(sympatric), "blobs": [
                {"lat": round(float(c[0]), 4), "lon": round(float(c[1]), 4), "sigma_deg": round(float(s), 4),
                 "weight": round(float(w), 6)} for c, s, w in zip(blob_centres, sigmas, weights)]}))
    return placed


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


def observation_ranges(grid, genera, obs_path, rng, kernel_sigma_deg=2.0):
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
