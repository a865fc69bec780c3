"""The stage engine and the demo's stages: reuse logic with a fake CLI (milliseconds) and the
demo's smoke variant end to end once (slow)."""
import json
from pathlib import Path

import pytest

from pipelines import demo, stages
from presets import demo as preset


def counting_stage(out: Path, calls: list, key="v1", name="make"):
    target = out / f"{name}.txt"

    def run():
        calls.append(name)
        target.write_text("done")

    return stages.Stage(name, key, [target], run, "writes a file")


def test_second_run_reuses_a_finished_stage(tmp_path, capsys):
    calls = []
    stages.Runner(tmp_path).stage(counting_stage(tmp_path, calls))
    stages.Runner(tmp_path).stage(counting_stage(tmp_path, calls))
    assert calls == ["make"]
    assert "reusing" in capsys.readouterr().out
    assert json.loads((tmp_path / ".stamps" / "make.json").read_text())["key"] == "v1"


def test_changed_key_or_missing_output_reruns(tmp_path):
    calls = []
    stages.Runner(tmp_path).stage(counting_stage(tmp_path, calls))
    stages.Runner(tmp_path).stage(counting_stage(tmp_path, calls, key="v2"))  # e.g. other epochs
    (tmp_path / "make.txt").unlink()
    stages.Runner(tmp_path).stage(counting_stage(tmp_path, calls, key="v2"))
    assert calls == ["make", "make", "make"]


def test_changed_upstream_reruns_downstream_and_deletes_its_stale_run(tmp_path):
    calls = []
    run_dir = tmp_path / "run"

    def pipeline(upstream_key):
        runner = stages.Runner(tmp_path)
        runner.stage(counting_stage(tmp_path, calls, key=upstream_key, name="up"))

        def train():
            calls.append("down")
            assert not (run_dir / "old-epochs").exists()  # a finished stale run is never resumed
            run_dir.mkdir(exist_ok=True)
            (run_dir / "old-epochs").write_text("state")

        runner.stage(stages.Stage("down", "same", [run_dir / "old-epochs"], train, stale=[run_dir]))

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
        runner = stages.Runner(tmp_path)
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

    stages.Runner(tmp_path).stage(stages.Stage("train", "k", [run_dir / "model"], resume, stale=[run_dir]))
    assert (tmp_path / ".stamps" / "train.json").exists()


def test_a_stage_asked_twice_in_one_run_runs_once(tmp_path):
    calls = []
    for _ in range(2):  # two runs of a pipeline that asks for the same stage twice
        runner = stages.Runner(tmp_path)
        runner.stage(counting_stage(tmp_path, calls, name="world"))
        runner.stage(counting_stage(tmp_path, calls, name="calibrate"))
        runner.stage(counting_stage(tmp_path, calls, name="world"))
        runner.stage(counting_stage(tmp_path, calls, name="train"))
    assert calls == ["world", "calibrate", "train"]


def test_failed_stage_leaves_no_stamp(tmp_path):
    def broken():
        raise stages.StageError("boom")

    runner = stages.Runner(tmp_path)
    with pytest.raises(stages.StageError, match="boom"):
        runner.stage(stages.Stage("broken", "k", [tmp_path / "never"], broken))
    assert not (tmp_path / ".stamps" / "broken.json").exists()
    # A stage that "succeeds" without writing its outputs is an error, not a stamp.
    with pytest.raises(stages.StageError, match="did not write"):
        runner.stage(stages.Stage("lazy", "k", [tmp_path / "never"], lambda: None))
    assert not (tmp_path / ".stamps" / "lazy.json").exists()


def test_fresh_never_wipes_a_folder_the_demo_did_not_write(tmp_path, capsys):
    (tmp_path / "thesis.txt").write_text("years of work")
    assert demo.main(["--out", str(tmp_path), "--fresh"]) == 2
    assert "has no .stamps, so it was not written by pipelines.demo" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.txt"]


def test_failing_cli_names_the_command():
    with pytest.raises(stages.StageError, match="trainer.no_such_module"):
        stages.run_cli(["trainer.no_such_module"])


class FakeCli:
    """Stands in for `python -m ...`: records each command and writes the outputs its stage expects."""

    writes = {"trainer.world": ["train.json", "val.json"], "trainer.train": ["model.keras"],
              "trainer.evaluate": ["report.json"], "converters.export": ["manifest.json"]}

    def __init__(self):
        self.calls = []

    def __call__(self, args, stdout_log=None):
        self.calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        for name in self.writes[args[0]]:
            (out / name).write_text("{}")

    def modules(self):
        return [a[0] if a[0] != "trainer.train" else f"train-{Path(a[a.index('--out') + 1]).name}" for a in self.calls]


def demo_commands(out: Path, settings, cli: FakeCli) -> None:
    """The demo's command stages (world, three trainings and the image control, evaluation, the
    post-processing and feature-modulation exports) as `make demo` runs them."""
    runner = stages.Runner(out, cli=cli)
    paths = demo.Paths(out)
    demo.train_and_evaluate(runner, paths, settings, seed=0)
    demo.export_bundles(runner, paths, settings, seed=0)


def test_demo_stages_run_the_preset_then_reuse_everything(tmp_path):
    cli = FakeCli()
    demo_commands(tmp_path, preset.RUN, cli)
    assert cli.modules() == ["trainer.world", "train-image", "train-postprocess", "train-featuremod",
                             "train-image_control", "trainer.evaluate", "converters.export", "converters.export"]
    world, image, post, featuremod = cli.calls[:4]
    control, evaluate = cli.calls[4:6]
    # Feature modulation is the hybrid: it adds the post-processing run's geo logits.
    assert featuremod[featuremod.index("--geo-init") + 1] == str(tmp_path / "runs" / "postprocess")
    # The image control: feature modulation's recipe and epochs from the same image run, no location.
    assert control[control.index("--model") + 1] == "featuremod"
    # ... without the hybrid's geo logits: its epochs are chosen, and it is reported, on images alone.
    assert "--geo-init" not in control
    assert control[control.index("--location-dropout") + 1] == "1"
    assert control[control.index("--epochs") + 1] == str(preset.RUN.featuremod_epochs)
    assert evaluate[evaluate.index("--image-control") + 1] == str(tmp_path / "runs" / "image_control")
    assert world[world.index("--preset") + 1] == preset.RUN.world
    assert image[image.index("--epochs") + 1] == str(preset.RUN.image_epochs)
    assert image[image.index("--image-size") + 1] == str(preset.RUN.image_size)
    assert post[post.index("--init") + 1] == str(tmp_path / "runs" / "image")  # geo models start from it
    exports = cli.calls[6:8]  # both geo-aware kinds, each to its own bundle; the post-processing one is OUT/bundle
    assert [e[e.index("--model") + 1] for e in exports] == [str(tmp_path / "runs" / k) for k in ("postprocess", "featuremod")]
    assert [e[e.index("--out") + 1] for e in exports] == [str(tmp_path / "bundle"), str(tmp_path / "bundles" / "featuremod")]
    demo_commands(tmp_path, preset.RUN, cli)  # a second `make demo` runs nothing
    assert len(cli.calls) == 8


def test_changed_epochs_rerun_that_training_and_what_follows(tmp_path):
    cli = FakeCli()
    demo_commands(tmp_path, preset.RUN, cli)
    demo_commands(tmp_path, preset.RUN.replace(featuremod_epochs=preset.RUN.featuremod_epochs + 1), cli)
    assert cli.modules()[8:] == ["train-featuremod", "train-image_control", "trainer.evaluate",
                                 "converters.export", "converters.export"]


def test_the_range_map_geo_model_trains_on_the_worlds_observations_alone(tmp_path):
    """The demo's geoprior stage: the CLI's default recipe (objective, encoding, geo net) on the world's
    training observations, with the preset's epochs and batch size; the smoke variant trains one too."""
    cli = FakeCli()
    stages.Runner(tmp_path, cli=cli).stage(demo.geoprior_stage(demo.Paths(tmp_path), preset.RUN, seed=0))
    args = cli.calls[0]
    assert args[:3] == ["trainer.train", "--model", "geoprior"]
    assert args[args.index("--observations") + 1] == str(tmp_path / "world")
    assert args[args.index("--epochs") + 1] == str(preset.RUN.geoprior_epochs)
    assert args[args.index("--batch-size") + 1] == str(preset.RUN.geoprior_batch_size)
    assert "--encoding" not in args and "--objective" not in args  # the CLI's defaults
    assert preset.SMOKE.geoprior_epochs


@pytest.mark.slow
def test_smoke_demo_end_to_end(smoke_demo):
    """`python -m pipelines.demo --quick` (run once per session by the smoke_demo fixture, which
    fails on a non-zero exit) writes every output and ends by saying where they are."""
    out = smoke_demo.out
    for path in ("world/train.json", "runs/image/model.keras", "runs/postprocess/model.keras",
                 "runs/featuremod/model.keras", "runs/image_control/model.keras", "runs/geoprior/model.keras",
                 "eval/report.json", "eval/fusion.json", "bundle/model.tflite", "bundle/manifest.json",
                 "bundles/featuremod/model.tflite", "rangemap.png"):
        assert (out / path).exists(), path
    assert "top-1" in smoke_demo.stdout and "post-processing" in smoke_demo.stdout
    assert str(out) in smoke_demo.stdout  # it ends by saying where the outputs are
    assert "Which model to ship" in smoke_demo.stdout
    from benchmarks.accuracy import from_demo

    section = from_demo(out)  # `make bench`'s demo section reads these outputs
    assert "Which model to ship" in section.body and section.targets
    assert all(t.met is not None for t in section.targets)


def test_the_image_curve_is_printed_when_the_run_records_it(tmp_path, capsys):
    run = tmp_path / "image"
    run.mkdir()
    demo.print_curve(run)  # no metrics.json: nothing to say
    (run / "metrics.json").write_text(json.dumps({"epoch": 2, "stop_reason": "plateau: 3 epochs without a better "
                                                  "tune_accuracy", "history": [
                                                      {"epoch": 1, "tune_accuracy": 0.4},
                                                      {"epoch": 2, "tune_accuracy": 0.55},
                                                      {"epoch": 3, "tune_accuracy": 0.54}]}))
    demo.print_curve(run)
    out = capsys.readouterr().out
    assert "tune_accuracy by epoch: 1: 40.0%, 2: 55.0%, 3: 54.0%; kept epoch 2; stopped: plateau" in out
