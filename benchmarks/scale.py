"""Scale: the geo tables (whitelist table, priors index) as labels and observations grow.

    python -m benchmarks.scale [--sizes 500:272037,5000:3000000,50000:30000000] [--memory-gb 8]
                               [--timeout-min 20]

Each size is (labels, observations) of jittered resampled copies of the real iNat500 ranges
(`bench_whitelist.resampled_observations`; 500 labels is the real data). Each build runs in its own
child process with an address-space limit (`--memory-gb`) and a time limit, so a size that does not
fit fails alone, is reported as such, and does not take the shared machine down. Measured per size:
table bytes, build seconds and peak memory (the child's max RSS), the warm single lookup and
`lookup_batch` throughput (CPU time), and the priors' index (trainer.evaluation.priors.LabelHistogram) and query
(1,000 points, 100 miles) CPU times. Growth is fitted as a power law between the measured sizes and projected
to 80,000 taxa and 100 M observations.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_whitelist import OBSERVATIONS, load_observations, resampled_observations
from benchmarks.common import Section, Target, machine

DEFAULT_SIZES = ((500, 272_037), (5_000, 3_000_000), (50_000, 30_000_000))
QUICK_SIZES = ((100, 30_000), (500, 272_037))
PROJECT_TO = (80_000, 100_000_000)
QUERIES = 4000


def _observations(num_labels: int, num_observations: int):
    lat, lon, labels, _ = load_observations(OBSERVATIONS)
    if num_labels == labels.max() + 1 and num_observations == lat.size:
        return lat, lon, labels
    return resampled_observations(lat, lon, labels, num_labels, num_observations, seed=num_labels)


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(num_labels: int, num_observations: int, out: Path, with_priors: bool) -> dict:
    """Build one size and measure it (runs in the child process)."""
    from benchmarks.common import interleaved
    from mobile_sdk.whitelist.builder import build_whitelist
    from mobile_sdk.whitelist.reader import WhitelistTable

    lat, lon, labels = _observations(num_labels, num_observations)
    names = [f"taxon_{i}" for i in range(num_labels)]
    rss_before = _max_rss_bytes()
    begin, begin_cpu = time.perf_counter(), time.process_time()
    blob = build_whitelist(lat, lon, labels, num_labels, 100.0, 4, names)
    build_seconds, build_cpu_seconds = time.perf_counter() - begin, time.process_time() - begin_cpu
    rss_build = _max_rss_bytes()
    out.write_bytes(blob)
    table = WhitelistTable.from_bytes(blob)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, lat.size, QUERIES)
    q_lat, q_lon = lat[pick], lon[pick]
    points = list(zip(q_lat.tolist(), q_lon.tolist()))
    for a, b in points:
        table.lookup_validated(a, b)

    def singles():
        for a, b in points:
            table.lookup_validated(a, b)
    # CPU time of this process: sizes run one after the other on a shared machine whose load varies.
    timings = interleaved({"single": singles, "batch": lambda: table.lookup_batch(q_lat, q_lon)}, repeats=5,
                          warmup=1, clock=time.process_time)
    single, batch = timings["single"], timings["batch"]
    result = {"labels": num_labels, "observations": int(lat.size), "table_bytes": len(blob),
              "cells": table.num_cells, "sets": table.num_sets, "build_seconds": build_seconds,
              "build_cpu_seconds": build_cpu_seconds,
              "build_rss_bytes": rss_build, "data_rss_bytes": rss_before,
              "single_lookup_us": single.median / QUERIES * 1e6, "batch_points_per_s": QUERIES / batch.median}
    if with_priors:
        from trainer.evaluation.priors import LabelHistogram

        try:  # CPU time, like the lookups; a priors index that does not fit leaves the table's numbers
            begin = time.process_time()
            histogram = LabelHistogram(np.stack([lat, lon], axis=1), labels, num_labels)
            result["priors_index_seconds"] = time.process_time() - begin
            queries = np.stack([q_lat[:1000], q_lon[:1000]], axis=1)
            begin = time.process_time()
            histogram.counts(queries, 100.0)
            result["priors_query_seconds_per_1000"] = time.process_time() - begin
        except MemoryError:
            result["priors_failed"] = "out of memory"
    return result


def run_size(num_labels: int, num_observations: int, memory_gb: float, timeout_s: float, with_priors: bool) -> dict:
    """One size in a child process under an address-space limit; a failure is a result too."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.gwl"
        limit = int(memory_gb * (1 << 30))
        command = [sys.executable, "-m", "benchmarks.scale", "--child", f"{num_labels}:{num_observations}",
                   "--child-out", str(out)] + (["--priors"] if with_priors else [])
        begin = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            return {"labels": num_labels, "observations": num_observations,
                    "failed": f"did not finish within {timeout_s / 60:.0f} min"}
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            return {"labels": num_labels, "observations": num_observations,
                    "failed": f"exit {done.returncode} after {time.perf_counter() - begin:.0f} s: {tail}"}
        return json.loads(done.stdout.strip().splitlines()[-1])


def fit_growth(labels, observations, ys) -> tuple[float, float, float]:
    """(label exponent, observation exponent, factor) of y = factor * labels**a * observations**b,
    least squares in logs. With sizes where labels and observations grew together the two cannot
    be told apart: then all the growth is put on the observations (a = 0)."""
    logs = np.log(np.asarray([labels, observations], dtype=np.float64))
    design = np.column_stack([logs[0], logs[1], np.ones(logs.shape[1])])
    if np.linalg.matrix_rank(design) < 3:
        design = design[:, 1:]
    coef = np.linalg.lstsq(design, np.log(np.asarray(ys, dtype=np.float64)), rcond=None)[0]
    if coef.size == 2:
        coef = np.r_[0.0, coef]
    return float(coef[0]), float(coef[1]), float(np.exp(coef[2]))


def report(results: list[dict]) -> str:
    from trainer.evaluation.metrics import markdown_table

    rows = []
    for r in results:
        if "failed" in r:
            rows.append([f"{r['labels']:,}", f"{r['observations']:,}", f"**did not fit**: {r['failed']}"] + [""] * 6)
            continue
        rows.append([f"{r['labels']:,}", f"{r['observations']:,}", f"{r['table_bytes']:,}",
                     f"{r['build_seconds']:.0f}" + (f" ({r['build_cpu_seconds']:.0f} CPU)" if "build_cpu_seconds" in r else ""),
                     f"{r['build_rss_bytes'] / 2**30:.2f}",
                     f"{r['single_lookup_us']:.2f}", f"{r['batch_points_per_s'] / 1e6:.2f}",
                     f"{r['priors_index_seconds']:.1f}" if "priors_index_seconds" in r else r.get("priors_failed", "not run"),
                     f"{r['priors_query_seconds_per_1000']:.2f}" if "priors_query_seconds_per_1000" in r else "not run"])
    lines = [markdown_table(["labels", "observations", "table bytes", "build s (wall)", "build peak RSS GiB",
                             "single lookup µs", "batch M points/s", "priors index s CPU", "priors query s CPU / 1,000"],
                            rows)]
    ok = [r for r in results if "failed" not in r]
    if len(ok) >= 2:
        sizes = ([r["labels"] for r in ok], [r["observations"] for r in ok])
        goal = DEFAULT_SIZES[-1]
        lines += ["", f"Growth y = c · labels^a · observations^b, fitted in logs through the measured "
                      f"sizes (a = 0 where the sizes cannot separate the two), projected to the goal's "
                      f"{goal[0]:,} labels / {goal[1]:,} observations and to {PROJECT_TO[0]:,} taxa / "
                      f"{PROJECT_TO[1]:,} observations:", ""]
        for what, key, scale, unit in [("table", "table_bytes", 1e6, "MB"), ("build (wall)", "build_seconds", 60, "min"),
                                       ("build (CPU)", "build_cpu_seconds", 60, "min"),
                                       ("build peak RSS", "build_rss_bytes", 2**30, "GiB"),
                                       ("single lookup", "single_lookup_us", 1, "µs"),
                                       ("priors index", "priors_index_seconds", 60, "min"),
                                       ("priors query, 1,000 points", "priors_query_seconds_per_1000", 60, "min")]:
            have = [i for i, r in enumerate(ok) if r.get(key) is not None]
            if len(have) < 2:
                continue
            a, b, c = fit_growth([sizes[0][i] for i in have], [sizes[1][i] for i in have], [ok[i][key] for i in have])
            at = lambda size: c * size[0] ** a * size[1] ** b / scale  # noqa: E731
            lines.append(f"- {what}: a = {a:.2f}, b = {b:.2f}; {at(goal):,.1f} {unit} at the goal, "
                         f"{at(PROJECT_TO):,.1f} {unit} projected")
    return "\n".join(lines)


def targets(results: list[dict], memory_gb: float) -> list[Target]:
    """The goal at the largest size: built within 10 minutes and 8 GB, single lookup no slower than
    at the smallest size. The minutes are CPU time: the build is single-threaded, and on a shared
    machine its wall time adds the waits for a core (both are in the text)."""
    small, large = results[0], results[-1]
    name = f"{large['labels']:,} labels / {large['observations']:,} observations"
    if "failed" in large:
        return [Target(f"whitelist table of {name} builds in ≤ 10 min and ≤ 8 GB", False, large["failed"],
                       key="scale_build_minutes", value=None, limit=10)]
    minutes, wall = large["build_cpu_seconds"] / 60, large["build_seconds"] / 60
    gib = large["build_rss_bytes"] / 2**30
    ratio = large["single_lookup_us"] / small["single_lookup_us"]
    return [
        Target(f"whitelist table of {name} builds in ≤ 10 min (CPU time)", minutes <= 10,
               f"{minutes:.1f} min CPU time ({wall:.1f} min wall on the shared machine)",
               key="scale_build_minutes", value=round(minutes, 2), limit=10),
        Target(f"whitelist table of {name} builds in ≤ 8 GB", gib <= 8, f"peak RSS {gib:.2f} GiB",
               key="scale_build_gib", value=round(gib, 2), limit=8),
        Target(f"single lookup at {name} no slower than at {small['labels']:,} labels", ratio <= 1.0,
               f"{large['single_lookup_us']:.2f} vs {small['single_lookup_us']:.2f} µs CPU time ({ratio:.2f}x)",
               key="scale_single_lookup_vs_smallest", value=round(ratio, 3), limit=1.0),
    ]


def section(results: list[dict], memory_gb: float, timeout_min: float, seconds: float) -> Section:
    body = "\n".join([f"Machine: {machine()}", "",
                      f"Command: `python -m benchmarks.scale` (each build in a child process limited to "
                      f"{memory_gb:g} GB of address space and {timeout_min:g} min; radius 100 mi, precision 4). "
                      "The build is single-threaded: its CPU time is the work, its wall time adds the waits for "
                      "a core on a shared machine.", "", report(results)])
    return Section("Scale", body, targets(results, memory_gb), seconds)


def run(sizes=DEFAULT_SIZES, memory_gb: float = 8.0, timeout_min: float = 20.0, with_priors: bool = True,
        log=print) -> Section:
    begin = time.perf_counter()
    if not OBSERVATIONS.exists():
        return Section("Scale", f"Skipped: {OBSERVATIONS.name} is absent.", [], 0.0)
    results = []
    for num_labels, num_observations in sizes:
        log(f"scale: {num_labels:,} labels, {num_observations:,} observations ...")
        results.append(run_size(num_labels, num_observations, memory_gb, timeout_min * 60, with_priors))
        log(f"  {results[-1]}")
    return section(results, memory_gb, timeout_min, time.perf_counter() - begin)


def _size(text: str) -> tuple[int, int]:
    labels, observations = text.split(":")
    return int(labels), int(observations)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(f"{a}:{b}" for a, b in DEFAULT_SIZES),
                        help="comma-separated LABELS:OBSERVATIONS")
    parser.add_argument("--memory-gb", type=float, default=8.0)
    parser.add_argument("--timeout-min", type=float, default=20.0)
    parser.add_argument("--no-priors", action="store_true")
    parser.add_argument("--child", type=_size, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--priors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.child_out, args.priors)))
        return 0
    section = run([_size(s) for s in args.sizes.split(",")], args.memory_gb, args.timeout_min, not args.no_priors)
    print(section.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
