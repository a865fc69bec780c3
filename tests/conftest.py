"""The shared test harness: session-scoped tiny world, tiny runs of each kind and exported bundles,
built once per `pytest` session in-process, and the shared-data guard.

- `tiny_world`: the `tiny` world (presets/tiny.py), seed 0, as a path string.
- `random_runs`: one untrained run folder per model kind (fast; for export and interface tests);
- `smoke_demo`: `python -m pipelines.demo --quick` run once (slow tests): its trained runs of every
  kind (runs/KIND), world, evaluation and bundle serve the demo's own end-to-end test and the
  evaluation's, so the session trains the tiny models once.
- `tiny_bundles(kind, mode)`: each (kind, quantization) bundle of a random run, exported once;
  `tiny_bundle`: the post-processing int8 one.
- `toy_tflite(kind)`: the SDK tests' toy contract model of `kind` ("postprocess" or "image",
  test_sdk._tiny_keras) as a .tflite file, converted once per session.
- `inat500_observations`: ../shared/data/inat500_observations.npz (or under $GEOAWARE_SHARED_DATA),
  through harness.shared_file: skipped when absent, FAILED when absent and
  GEOAWARE_REQUIRE_SHARED_DATA=1 (set by .ci/run: CI has the data).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from harness import EXPORT_SAMPLES, IMAGE_MODEL_KINDS, REPO, shared_file


class SmokeDemo(NamedTuple):
    out: Path  # the demo's output folder (world/, runs/KIND/, eval/, bundle/, ...)
    stdout: str
    runs: dict  # {kind: run folder} for image, postprocess, featuremod


@pytest.fixture(scope="session")
def inat500_observations() -> Path:
    """272,037 iNaturalist observations of 500 species (npz: train_locs, train_ids, taxon_names)."""
    return shared_file("inat500_observations.npz")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> str:
    from trainer.world.build import write_world

    return str(write_world(tmp_path_factory.mktemp("world") / "tiny", "tiny", seed=0, progress=False))


@pytest.fixture(scope="session")
def random_runs(tiny_world, tmp_path_factory) -> dict:
    """{kind: loaded Run} for every model kind, untrained (see harness.random_runs)."""
    from harness import random_runs
    from trainer.training.runs import load_run

    folders = random_runs(tiny_world, tmp_path_factory.mktemp("random_runs"))
    return {kind: load_run(path) for kind, path in folders.items()}


@pytest.fixture(scope="session")
def smoke_demo(tmp_path_factory) -> SmokeDemo:
    """The demo's smoke variant, run as a user runs it (each stage a `python -m` command)."""
    out = tmp_path_factory.mktemp("smoke_demo") / "demo"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run([sys.executable, "-m", "pipelines.demo", "--quick", "--out", str(out)], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=1800)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return SmokeDemo(out, completed.stdout, {kind: out / "runs" / kind for kind in IMAGE_MODEL_KINDS})


@pytest.fixture(scope="session")
def tiny_bundles(random_runs, tmp_path_factory):
    """get(kind, mode) -> (bundle folder, manifest), each exported once per session."""
    from converters.export import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    cache = {}

    def get(kind: str, mode: str):
        if (kind, mode) not in cache:
            out = root / f"{kind}-{mode}"
            cache[kind, mode] = (out, export_bundle(random_runs[kind], out, mode, **EXPORT_SAMPLES))
        return cache[kind, mode]
    return get


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundles) -> Path:
    return tiny_bundles("postprocess", "int8")[0]


@pytest.fixture(scope="session")
def toy_tflite(tmp_path_factory):
    """get(kind) -> the toy contract model's .tflite path, converted once per session (read-only: copy it)."""
    from test_sdk import _tiny_tflite

    root = tmp_path_factory.mktemp("toy_tflite")
    cache = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = _tiny_tflite(root / f"{kind}.tflite", kind)
        return cache[kind]
    return get
