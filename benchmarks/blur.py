"""What should the model part do with a location accuracy? Measured on the tuning rows with every
location obscured as iNaturalist obscures it: replaced by a uniformly random point of its 0.2-degree
cell (22 km north-south), the accuracy then being the cell's half-diagonal.

    python -m benchmarks.blur --bundle BUNDLE --data SPEC [--tune-fraction 0.3] [--seed 0]

Compared (top-1 on the same rows; the bundle must have geo.tflite and vision.tflite):
- model only: exact location; obscured location as given ("nothing"); obscured location with the
  geo logits averaged over 16 points of the accuracy disc ("disc average");
- the SDK (model + the bundle's recommended whitelist fusion): exact location; obscured location
  with and without `accuracy_m`.
The rows are the evaluation's tuning rows (trainer.data.splits.tuning_split of the validation split),
never the reported ones.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

from mobile_sdk.geo import great_circle_km, wrap_longitude

CELL_DEG = 0.2
DISC_POINTS = 16


def obscure(lat, lon, rng, cell=CELL_DEG):
    """A uniformly random point of each location's `cell`-degree cell (iNaturalist's obscuring)."""
    cell_lat = np.floor((lat + 90.0) / cell) * cell - 90.0
    cell_lon = np.floor((lon + 180.0) / cell) * cell - 180.0
    out_lat = np.clip(cell_lat + rng.uniform(0, cell, lat.shape), -90.0, 90.0)
    return out_lat, wrap_longitude(cell_lon + rng.uniform(0, cell, lon.shape))


def disc_points(lat, lon, radius_km, n, rng):
    """n points uniform in the disc (small-distance approximation, fine at tens of km)."""
    bearing, dist = rng.uniform(0, 2 * np.pi, n), radius_km * np.sqrt(rng.uniform(0, 1, n))
    dlat = np.degrees(dist / 6371.0088 * np.cos(bearing))
    dlon = np.degrees(dist / 6371.0088 * np.sin(bearing) / max(math.cos(math.radians(lat)), 1e-6))
    return np.stack([np.clip(lat + dlat, -90, 90), wrap_longitude(lon + dlon)], axis=1).astype(np.float32)


def measure(bundle_dir, data: str, tune_fraction: float = 0.3, seed: int = 0) -> dict:
    from converters.verify import load_samples
    from mobile_sdk import GeoClassifier, GeoClassifierOptions
    from trainer.data.readers import load_split
    from trainer.data.splits import tuning_split

    clf = GeoClassifier.from_bundle(bundle_dir, GeoClassifierOptions(split_models=True, num_threads=1,
                                                                     excluded_top_k=0, rollup_threshold=None))
    val = load_split(data, "val", label_names=clf.labels)
    tune, _ = tuning_split(val.labels, tune_fraction, seed)
    rows = val.subset(tune[val.has_location[tune]])
    images, _, labels = load_samples(rows, clf.manifest["input_size"], len(rows), seed)  # rows in order
    rng = np.random.default_rng(seed)
    lat, lon = obscure(rows.lat, rows.lon, rng)
    accuracy_km = float(great_circle_km(45.0, 0.0, 45.0 + CELL_DEG / 2, CELL_DEG / 2))  # half-diagonal at 45 deg
    split = clf._split
    hits = {k: [] for k in ("model, exact", "model, obscured (nothing)", "model, obscured (disc average)",
                            "SDK, exact", "SDK, obscured, no accuracy", "SDK, obscured, accuracy_m")}
    for i in range(len(rows)):
        vision = split.vision.run_part(images[i:i + 1])
        exact = vision + split.geo.run_part(np.array([[rows.lat[i], rows.lon[i]]], np.float32))
        given = vision + split.geo.run_part(np.array([[lat[i], lon[i]]], np.float32))
        points = disc_points(lat[i], lon[i], accuracy_km, DISC_POINTS, rng)
        averaged = vision + np.mean([split.geo.run_part(points[j:j + 1]) for j in range(len(points))], axis=0)
        hits["model, exact"].append(exact.argmax() == labels[i])
        hits["model, obscured (nothing)"].append(given.argmax() == labels[i])
        hits["model, obscured (disc average)"].append(averaged.argmax() == labels[i])
        top = lambda r: r.categories[0].index if r.categories else -1  # noqa: E731
        hits["SDK, exact"].append(top(clf.classify(images[i], rows.lat[i], rows.lon[i])) == labels[i])
        hits["SDK, obscured, no accuracy"].append(top(clf.classify(images[i], lat[i], lon[i])) == labels[i])
        hits["SDK, obscured, accuracy_m"].append(
            top(clf.classify(images[i], lat[i], lon[i], accuracy_m=accuracy_km * 1000)) == labels[i])
    clf.close()
    return {"rows": int(len(rows)), "accuracy_m": round(accuracy_km * 1000), "cell_deg": CELL_DEG,
            "top1": {k: float(np.mean(v)) for k, v in hits.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.blur", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--tune-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = measure(args.bundle, args.data, args.tune_fraction, args.seed)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
