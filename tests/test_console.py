"""trainer.console: a command's TensorFlow start-up is quiet, its progress bars write lines to logs,
and real problems still show."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.console import tensorflow_notices

REPO = Path(__file__).resolve().parents[1]
STARTUP = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1.2 1159 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results
I0000 00:00:1.3 1159 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1.4 1159 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit
W0000 00:00:1.5 1159 something.cc:1] a real warning
""".splitlines(keepends=True)


def test_notices_are_dropped_and_cuinit_only_where_no_driver_was_found():
    assert tensorflow_notices(STARTUP) == {0, 1, 2, 3}  # the warning stays
    with_driver = [line for line in STARTUP if "cudart_stub" not in line]
    assert "cuInit" in with_driver[2] and 2 not in tensorflow_notices(with_driver)  # a GPU machine's real error


@pytest.mark.slow
def test_a_command_starts_quietly_and_writes_progress_lines_to_a_log(tmp_path):
    """`python -m trainer.X` in a subprocess with stderr to a file: no TensorFlow notice, one line per
    progress update, INFO logging on; GEOAWARE_VERBOSE=1 shows what was filtered."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "__init__.py").write_text("")
    (tmp_path / "probe" / "run.py").write_text(
        "import logging, tensorflow as tf\nfrom tqdm import tqdm\n"
        "for _ in tqdm(range(3), desc='steps'):\n    tf.constant(1)\n"
        "logging.getLogger('trainer.data.rows').info('summary line')\n")
    code = "import sys, runpy; sys.argv[:1] = ['-m']; import trainer; runpy.run_module('probe.run', run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    # Both at once, stderr to files: each is mostly a single-threaded TensorFlow import, so two cores
    # finish both in the time of one.
    logs = {flag: tmp_path / f"stderr-{flag}.log" for flag in ("0", "1")}
    procs = {}
    for flag, log in logs.items():
        with open(log, "w") as stderr:
            procs[flag] = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                           stderr=stderr, env={**env, "GEOAWARE_VERBOSE": flag})
    quiet_code = procs["0"].wait(timeout=300)
    procs["1"].wait(timeout=300)
    quiet, verbose = (logs[flag].read_text() for flag in ("0", "1"))
    assert quiet_code == 0, quiet[-2000:]
    assert "oneDNN" not in quiet and "cuInit" not in quiet and "port.cc" not in quiet
    assert "oneDNN" in verbose  # there was something to filter
    lines = quiet.splitlines()
    assert any(line.startswith("steps: 100%") for line in lines) and "\r" not in quiet
    assert "summary line" in lines
