"""The shared test harness: session-scoped tiny world, tiny runs of each kind and exported bundles,
built once per test run, and the shared-data guard.

`make test` runs the tests on every core (pytest-xdist, `-n auto --dist loadgroup`): each worker
process is a pytest session of its own, so the expensive session fixtures below are built by
`built_once` in a folder every worker of the run shares (the first worker builds it under a file
lock, the others wait for it and read it). Tests that share a module-scoped fixture are sent to one
worker in a row (`pytest_collection_modifyitems`, `pytest_xdist_make_scheduler`), so it is built once
as well; slow tests are sent first, so the longest ones do not start last.

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

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

from harness import EXPORT_SAMPLES, IMAGE_MODEL_KINDS, REPO, shared_file


class SmokeDemo(NamedTuple):
    out: Path  # the demo's output folder (world/, runs/KIND/, eval/, bundle/, ...)
    stdout: str
    runs: dict  # {kind: run folder} for image, postprocess, featuremod


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name`, written by `build(folder)` once per test run: in one pytest process a fresh
    temporary folder; under pytest-xdist a folder all workers of the run share, built by the first
    worker that asks for it (under a file lock) and reused by the others. Callers treat it as read-only."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # the run's folder above every worker's own (pytest-xdist docs)
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this worker dies
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # half-written by a worker whose build failed
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


# Session fixtures so long to build that a second worker must not sit waiting for them: their tests
# go to one worker, like those of a module-scoped fixture.
ONE_WORKER = ("smoke_demo",)
GROUPS_FILE = "xdist-groups.json"  # in the run's folder: {node id: group} from the workers to the scheduler


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture (or one of ONE_WORKER) form one group, which one
    worker runs in a row (`GroupScheduling`), so the fixture is built once (a worker tears a module's
    fixtures down whenever its next test is from another module). Under pytest-xdist, slow tests
    first: the scheduler hands tests out in this order, so the longest do not start last."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # a stable sort
    parent = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys_of = {}
    for item in items:
        keys = [f"{item.module.__name__}::{name}" if defs[-1].scope == "module" else name
                for name, defs in item._fixtureinfo.name2fixturedefs.items()
                if defs and (defs[-1].scope == "module" or name in ONE_WORKER)]
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
        keys_of[item.nodeid] = keys
    groups = {nodeid: root(keys[0]) for nodeid, keys in keys_of.items() if keys}
    # Every worker collects the same tests, so they all write the same file.
    from mobile_sdk.fileio import atomic_write_text
    atomic_write_text(config._tmp_path_factory.getbasetemp().parent / GROUPS_FILE, json.dumps(groups))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: plain pytest runs without it
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the groups above. pytest-xdist's own loadgroup reads xdist_group marks
    by renaming each test's node id, which pytest 9 no longer lets it do (every test then runs alone),
    so the workers hand the groups over in GROUPS_FILE, read once all of them have collected."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = json.loads((config._tmp_path_factory.getbasetemp() / GROUPS_FILE).read_text())
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def inat500_observations() -> Path:
    """272,037 iNaturalist observations of 500 species (npz: train_locs, train_ids, taxon_names)."""
    return shared_file("inat500_observations.npz")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> str:
    from trainer.world.build import write_world

    folder = built_once(tmp_path_factory, "world", lambda out: write_world(out / "tiny", "tiny", seed=0, progress=False))
    return str(folder / "tiny")


@pytest.fixture(scope="session")
def random_runs(tiny_world, tmp_path_factory) -> dict:
    """{kind: loaded Run} for every model kind, untrained (see harness.random_runs)."""
    from harness import random_runs
    from trainer.training.runs import load_run

    root = built_once(tmp_path_factory, "random_runs", lambda out: random_runs(tiny_world, out))
    return {kind: load_run(root / kind) for kind in IMAGE_MODEL_KINDS}


@pytest.fixture(scope="session")
def smoke_demo(tmp_path_factory) -> SmokeDemo:
    """The demo's smoke variant, run as a user runs it (each stage a `python -m` command)."""
    def run(root: Path) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        completed = subprocess.run([sys.executable, "-m", "pipelines.demo", "--quick", "--out", str(root / "demo")],
                                   cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        (root / "stdout.txt").write_text(completed.stdout)

    root = built_once(tmp_path_factory, "smoke_demo", run)
    out = root / "demo"
    return SmokeDemo(out, (root / "stdout.txt").read_text(), {kind: out / "runs" / kind for kind in IMAGE_MODEL_KINDS})


@pytest.fixture(scope="session")
def tiny_bundles(random_runs, tmp_path_factory):
    """get(kind, mode) -> (bundle folder, the manifest export_bundle returned), each exported once per
    test run (when first asked for)."""
    from converters.export import export_bundle

    cache = {}

    def export(root: Path, kind: str, mode: str) -> None:
        manifest = export_bundle(random_runs[kind], root / "bundle", mode, **EXPORT_SAMPLES)
        (root / "returned_manifest.json").write_text(json.dumps(manifest))  # beside the bundle, for other workers

    def get(kind: str, mode: str):
        if (kind, mode) not in cache:
            root = built_once(tmp_path_factory, f"bundle-{kind}-{mode}", lambda out: export(out, kind, mode))
            cache[kind, mode] = (root / "bundle", json.loads((root / "returned_manifest.json").read_text()))
        return cache[kind, mode]
    return get


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundles) -> Path:
    return tiny_bundles("postprocess", "int8")[0]


@pytest.fixture(scope="session")
def toy_tflite(tmp_path_factory):
    """get(kind) -> the toy contract model's .tflite path, converted once per test run (read-only: copy it)."""
    from test_sdk import _tiny_tflite

    def get(kind: str) -> Path:
        return built_once(tmp_path_factory, f"toy_tflite-{kind}", lambda out: _tiny_tflite(out / "model.tflite", kind)) \
            / "model.tflite"
    return get
