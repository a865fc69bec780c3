"""The demo: stage reuse logic (fast) and the --quick variant end to end (slow)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import demo

REPO = Path(__file__).resolve().parents[1]


def counting_stage(out: Path, calls: list, key="v1", name="make"):
    target = out / f"{name}.txt"

    def run():
        calls.append(name)
        target.write_text("done")

    return demo.Stage(name, key, [target], run, "writes a file")


def test_second_run_reuses_a_finished_stage(tmp_path, capsys):
    calls = []
    demo.Runner(tmp_path).stage(counting_stage(tmp_path, calls))
    demo.Runner(tmp_path).stage(counting_stage(tmp_path, calls))
    assert calls == ["make"]
    assert "reusing" in capsys.readouterr().out
    assert json.loads((tmp_path / ".stamps" / "make.json").read_text())["key"] == "v1"


def test_changed_key_or_missing_output_reruns(tmp_path):
    calls = []
    demo.Runner(tmp_path).stage(counting_stage(tmp_path, calls))
    demo.Runner(tmp_path).stage(counting_stage(tmp_path, calls, key="v2"))  # e.g. other epochs
    (tmp_path / "make.txt").unlink()
    demo.Runner(tmp_path).stage(counting_stage(tmp_path, calls, key="v2"))
    assert calls == ["make", "make", "make"]


def test_changed_upstream_reruns_downstream_and_deletes_its_stale_run(tmp_path):
    calls = []
    run_dir = tmp_path / "run"

    def pipeline(upstream_key):
        runner = demo.Runner(tmp_path)
        runner.stage(counting_stage(tmp_path, calls, key=upstream_key, name="up"))

        def train():
            calls.append("down")
            assert not (run_dir / "old-epochs").exists()  # a finished stale run is never resumed
            run_dir.mkdir(exist_ok=True)
            (run_dir / "old-epochs").write_text("state")

        runner.stage(demo.Stage("down", "same", [run_dir / "old-epochs"], train, stale=[run_dir]))

    pipeline("v1")
    pipeline("v1")
    assert calls == ["up", "down"]
    pipeline("v2")  # only the upstream key changed
    assert calls == ["up", "down", "up", "down"]


def test_redone_upstream_with_the_same_key_reruns_downstream(tmp_path):
    """Deleting a stage's output (or stamp) reruns it with the same command; what follows must not
    be reused from the old result (e.g. an evaluation of the previous feature-modulation run)."""
    calls = []

    def pipeline():
        runner = demo.Runner(tmp_path)
        runner.stage(counting_stage(tmp_path, calls, name="train"))
        runner.stage(counting_stage(tmp_path, calls, name="evaluate"))

    pipeline()
    pipeline()
    assert calls == ["train", "evaluate"]
    (tmp_path / "train.txt").unlink()
    pipeline()
    assert calls == ["train", "evaluate", "train", "evaluate"]


def test_interrupted_stage_keeps_its_state_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state").write_text("epoch 3")  # no stamp: the stage never finished

    def resume():
        assert (run_dir / "state").read_text() == "epoch 3"
        (run_dir / "model").write_text("done")

    demo.Runner(tmp_path).stage(demo.Stage("train", "k", [run_dir / "model"], resume, stale=[run_dir]))
    assert (tmp_path / ".stamps" / "train.json").exists()


def test_a_stage_asked_twice_in_one_run_runs_once(tmp_path):
    calls = []
    for _ in range(2):  # two runs of a pipeline that asks for the same stage twice
        runner = demo.Runner(tmp_path)
        runner.stage(counting_stage(tmp_path, calls, name="world"))
        runner.stage(counting_stage(tmp_path, calls, name="calibrate"))
        runner.stage(counting_stage(tmp_path, calls, name="world"))
        runner.stage(counting_stage(tmp_path, calls, name="train"))
    assert calls == ["world", "calibrate", "train"]


def test_failed_stage_leaves_no_stamp(tmp_path):
    def broken():
        raise demo.StageError("boom")

    runner = demo.Runner(tmp_path)
    with pytest.raises(demo.StageError, match="boom"):
        runner.stage(demo.Stage("broken", "k", [tmp_path / "never"], broken))
    assert not (tmp_path / ".stamps" / "broken.json").exists()
    # A stage that "succeeds" without writing its outputs is an error, not a stamp.
    with pytest.raises(demo.StageError, match="did not write"):
        runner.stage(demo.Stage("lazy", "k", [tmp_path / "never"], lambda: None))
    assert not (tmp_path / ".stamps" / "lazy.json").exists()


def test_failing_cli_names_the_command():
    with pytest.raises(demo.StageError, match="trainer.no_such_module"):
        demo.run_cli(["trainer.no_such_module"])


@pytest.mark.slow
def test_quick_demo_end_to_end_then_reuses(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "trainer.demo", "--quick", "--out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for path in ("world/train.json", "runs/image/model.keras", "runs/postprocess/model.keras",
                 "runs/featuremod/model.keras", "eval/report.json", "bundle/model.tflite",
                 "bundle/manifest.json", "rangemap.png"):
        assert (out / path).exists(), path
    assert "top-1" in first.stdout and "post-processing" in first.stdout
    assert str(out) in first.stdout  # it ends by saying where the outputs are
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing") >= 6
