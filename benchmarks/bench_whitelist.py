"""The geohash whitelist table on real geography: size, build time, lookup speed, exactness.

    python -m benchmarks.bench_whitelist [--radius 100] [--precision 4] [--queries 5000] [--repeats 3]

On ../shared/data/inat500_observations.npz (272,037 iNaturalist observations, 500 species) with 2%
of observations held out as queries:
- bytes of the table vs `gzip -9` of the naive JSON {geohash: [labels]} of the same table;
- build time (median of --repeats builds on the full data, the size the export command sees);
- single `lookup` and batched `lookup_batch` throughput on held-out points;
- false negatives against an exact cKDTree radius query (must be 0) and the extra labels.
`section()` returns the same as a benchmarks.common.Section for `make bench`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Section, Target, interleaved, machine, ratio_target, time_calls
from mobile_sdk import geohash
from mobile_sdk.geo import chord_for_km, miles_to_km, to_unit_vectors
from mobile_sdk.whitelist.builder import build_whitelist
from mobile_sdk.whitelist.reader import WhitelistTable

OBSERVATIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "inat500_observations.npz"


def _load(path: Path):
    data = np.load(path)
    _, labels = np.unique(data["train_ids"], return_inverse=True)
    locs = data["train_locs"].astype(np.float64)
    return locs[:, 0], locs[:, 1], labels.astype(np.int64), [str(n) for n in data["taxon_names"]]


def naive_gzip_json_bytes(table: WhitelistTable) -> tuple[int, int]:
    """(raw, gzip -9) bytes of the JSON mapping geohash string -> label list, for the same table."""
    keys, set_ids = table.cells()
    sets = [table.set_labels(s).tolist() for s in range(table.num_sets)]
    naive = {geohash.to_string(k, table.precision): sets[s] for k, s in zip(keys.tolist(), set_ids.tolist())}
    text = json.dumps(naive, separators=(",", ":")).encode()
    return len(text), len(gzip.compress(text, 9))


def measure(path: Path = OBSERVATIONS, radius_miles: float = 100.0, precision: int = 4, queries: int = 5000,
            repeats: int = 3, seed: int = 0, log=print) -> dict:
    from scipy.spatial import cKDTree  # the exact reference; the SDK itself never needs scipy

    lat, lon, labels, names = _load(path)
    log(f"{lat.size:,} observations, {len(names)} labels; radius {radius_miles} mi, precision {precision}")
    build_seconds = []
    for i in range(repeats):
        begin = time.perf_counter()
        blob = build_whitelist(lat, lon, labels, len(names), radius_miles, precision, names)
        build_seconds.append(time.perf_counter() - begin)
        log(f"  build {i + 1}/{repeats}: {build_seconds[-1]:.2f} s")
    table = WhitelistTable.from_bytes(blob, expected_label_names=names)
    raw_json, gzip_json = naive_gzip_json_bytes(table)
    log(f"  table {len(blob):,} B; naive JSON {raw_json:,} B, gzip -9 {gzip_json:,} B")

    # Exactness on held-out points: a table built without them, against cKDTree on the rest.
    rng = np.random.default_rng(seed)
    held = rng.random(lat.size) < 0.02
    held_table = WhitelistTable.from_bytes(
        build_whitelist(lat[~held], lon[~held], labels[~held], len(names), radius_miles, precision, names))
    q = np.flatnonzero(held)[:queries]
    q_lat, q_lon = lat[q], lon[q]
    tree = cKDTree(to_unit_vectors(lat[~held], lon[~held]))
    train_labels = labels[~held]
    hits = tree.query_ball_point(to_unit_vectors(q_lat, q_lon), chord_for_km(miles_to_km(radius_miles)))
    exact = [np.unique(train_labels[h]) for h in hits]
    allowed, covered = held_table.lookup_batch(q_lat, q_lon)
    false_negatives = sum(int((~allowed[i, e]).sum()) for i, e in enumerate(exact))
    uncovered_with_data = sum(1 for i, e in enumerate(exact) if e.size and not covered[i])
    exact_size = float(np.mean([e.size for e in exact]))
    table_size = float(np.mean(np.where(covered, allowed.sum(axis=1), 0)))
    log(f"  {q.size} held-out queries: {false_negatives} false negatives")

    # Throughput: single lookups walk the held-out points (cache warm after the first pass),
    # the batch call takes them all at once.
    points = list(zip(q_lat.tolist(), q_lon.tolist()))
    single = time_calls(lambda: [held_table.lookup(a, b) for a, b in points], repeats=5, warmup=1)
    cold = WhitelistTable.from_bytes(held_table._buffer)
    begin = time.perf_counter()
    for a, b in points:
        cold.lookup(a, b)
    cold_seconds = time.perf_counter() - begin
    batch = time_calls(lambda: held_table.lookup_batch(q_lat, q_lon), repeats=5, warmup=1)
    return {
        "observations": int(lat.size), "labels": len(names), "radius_miles": radius_miles, "precision": precision,
        "cells": table.num_cells, "sets": table.num_sets, "runs": table.num_runs,
        "table_bytes": len(blob), "json_bytes": raw_json, "gzip_json_bytes": gzip_json,
        "ratio_vs_gzip_json": len(blob) / gzip_json,
        "build_seconds_median": float(np.median(build_seconds)), "build_seconds": build_seconds,
        "queries": int(q.size), "false_negatives": false_negatives, "uncovered_with_data": uncovered_with_data,
        "covered_fraction": float(covered.mean()), "mean_exact_labels": exact_size, "mean_table_labels": table_size,
        "single_lookup_us_warm": single.median / len(points) * 1e6,
        "single_lookup_us_cold_first_pass": cold_seconds / len(points) * 1e6,
        "batch_lookups_per_second": len(points) / batch.median,
    }


def report(m: dict) -> str:
    return "\n".join([
        f"- data: {m['observations']:,} observations, {m['labels']} labels; radius {m['radius_miles']:g} mi, "
        f"geohash precision {m['precision']}",
        f"- table: {m['table_bytes']:,} bytes ({m['cells']:,} cells, {m['runs']:,} runs, {m['sets']:,} distinct sets)",
        f"- naive JSON {{cell: [labels]}}: {m['json_bytes']:,} bytes; gzip -9: {m['gzip_json_bytes']:,} bytes",
        f"- **ratio table / gzip-JSON: {m['ratio_vs_gzip_json']:.3f}**",
        f"- build time: {m['build_seconds_median']:.2f} s median of {len(m['build_seconds'])} "
        f"({', '.join(f'{s:.2f}' for s in m['build_seconds'])})",
        f"- held-out queries: {m['queries']:,}; **false negatives {m['false_negatives']}**; covered points with "
        f"data but no cell: {m['uncovered_with_data']}; covered {m['covered_fraction']:.1%}",
        f"- labels per query: exact {m['mean_exact_labels']:.1f}, table {m['mean_table_labels']:.1f} "
        "(extras come from the cell-size margin)",
        f"- single lookup: {m['single_lookup_us_warm']:.1f} us warm, {m['single_lookup_us_cold_first_pass']:.1f} us "
        "on a first pass over a cold table (blocks inflated on demand)",
        f"- batched lookup: {m['batch_lookups_per_second']:,.0f} points/s",
    ])


def section(**kwargs) -> Section:
    begin = time.perf_counter()
    m = measure(log=lambda *_: None, **kwargs)
    body = (f"Machine: {machine()}\n\nCommand: `python -m benchmarks.bench_whitelist`\n\n" + report(m))
    targets = [
        ratio_target("whitelist table <= 0.4x gzip JSON", m["table_bytes"], m["gzip_json_bytes"], 0.4,
                     "table / gzip -9 naive JSON"),
        Target("whitelist zero false negatives", m["false_negatives"] == 0 and m["uncovered_with_data"] == 0,
               f"{m['false_negatives']} false negatives on {m['queries']} held-out queries (exact cKDTree check)"),
    ]
    return Section("Whitelist table", body, targets, time.perf_counter() - begin)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_whitelist", description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=Path, default=OBSERVATIONS)
    parser.add_argument("--radius", type=float, default=100.0, help="miles")
    parser.add_argument("--precision", type=int, default=4)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="builds timed")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = parser.parse_args(argv)
    if not args.observations.exists():
        print(f"skipped: {args.observations} is absent", file=sys.stderr)
        return 0
    print(f"machine: {machine()}")
    m = measure(args.observations, args.radius, args.precision, args.queries, args.repeats)
    print(report(m))
    if args.json:
        print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
