"""The shared test harness: session-scoped tiny world, tiny runs of each kind and exported bundles,
built once per `pytest` session in-process, and the shared-data guard.

- `tiny_world`: the `tiny` world (presets/tiny.py), seed 0, as a path string.
- `random_runs`: one untrained run folder per model kind (fast; for export and interface tests);
  `trained_runs`: the same three trained by the trainer.train CLI for a few steps (slow tests).
- `tiny_bundles(kind, mode)`: each (kind, quantization) bundle of a random run, exported once;
  `tiny_bundle`: the post-processing int8 one.
- `inat500_observations`: ../shared/data/inat500_observations.npz (or under $GEOAWARE_SHARED_DATA),
  through harness.shared_file: skipped when absent, FAILED when absent and
  GEOAWARE_REQUIRE_SHARED_DATA=1 (set by .ci/run: CI has the data).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import EXPORT_SAMPLES, shared_file


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
def trained_runs(tiny_world, tmp_path_factory) -> dict:
    """{kind: run folder} trained for a few steps on the tiny world (see harness.trained_runs)."""
    from harness import trained_runs

    return trained_runs(tiny_world, tmp_path_factory.mktemp("trained_runs"))


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
