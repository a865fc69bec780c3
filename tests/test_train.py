"""trainer.training.config, trainer.train, trainer.training.runs, trainer.training.strategy: tiny runs on synthetic data
(32 px, alpha 0.35, 3 classes, 2 steps an epoch), plus slow end-to-end runs in subprocesses."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from harness import IMAGE_MODEL_KINDS  # noqa: E402
from trainer import train as train_mod  # noqa: E402
from trainer.model import networks  # noqa: E402
from trainer.training import build, loop  # noqa: E402
from trainer.training.config import POSTPROCESS_PATIENCE, OptimizerConfig, TrainConfig  # noqa: E402
from trainer.training.inputs import Splits  # noqa: E402
from trainer.training.runs import RunError, load_run  # noqa: E402
from trainer.training.strategy import StrategyError, make_strategy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE, CLASSES, BATCH = 32, 3, 8
LABELS = [f"species_{i}" for i in range(CLASSES)]


def _arrays(n, seed):
    """Images whose mean colour and locations both depend on the label, so both can be learned."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 120, (n, SIZE, SIZE, 3)) + (labels * 60)[:, None, None, None]
    loc = np.stack([labels * 40.0 - 40 + rng.normal(0, 3, n), labels * 90.0 - 90 + rng.normal(0, 3, n)], 1)
    loc[::5] = np.nan  # some unknown locations
    return {"image": images.astype(np.uint8), "location": loc.astype(np.float32)}, labels.astype(np.int32)


def synthetic_splits(n=24, seed=0) -> Splits:
    """In-memory train and tuning rows; an input shard is every count-th row, like geo_splits."""
    parts = {"train": _arrays(n, seed), "tune": _arrays(12, seed + 1)}

    def dataset(part, batch_size, training, shard=(1, 0), seed=seed):
        ds = tf.data.Dataset.from_tensor_slices(parts[part]).shard(*shard)
        if training:
            ds = ds.shuffle(n, seed=seed).repeat()
        return ds.batch(batch_size)

    return Splits(dataset, labels=LABELS, train_size=n, tune_size=12)


def tiny_config(model="image", **changes) -> TrainConfig:
    values = dict(data="synthetic", model=model, image_size=SIZE, alpha=0.35, batch_size=BATCH, epochs=1,
                  steps_per_epoch=2, seed=0)
    values.update(changes)
    return TrainConfig(**values)


def _loss(model, x, y):
    logits = model(x, training=False)["logits"]
    return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "image"
    config = tiny_config(epochs=2)
    keras.utils.set_random_seed(config.seed)  # what train() does before building: the same initial model
    initial = networks.build_image_model(CLASSES, image_size=SIZE, alpha=0.35)
    metrics = loop.train(config, run_dir, synthetic_splits())
    return run_dir, initial, metrics


@pytest.fixture(scope="module")
def postprocess_run(image_run, tmp_path_factory):
    """A 2-epoch post-processing run on image_run (the tests below inspect it; the hybrid starts from it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "postprocess"
    loop.train(tiny_config("postprocess", init=str(image_run[0]), epochs=2), run_dir, synthetic_splits())
    return run_dir


# --- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", IMAGE_MODEL_KINDS)
def test_config_json_round_trip(kind):
    config = TrainConfig(data="world", model=kind, init=None if kind == "image" else "/runs/image",
                         modulated_layers=("block_5_depthwise_relu",) if kind == "featuremod" else None)
    restored = TrainConfig.from_json(config.to_json())
    assert restored == config and isinstance(restored.modulated_layers, tuple)
    assert json.loads(config.to_json())["optimizer"]["name"] == config.optimizer.name


def test_config_defaults_follow_the_paper():
    pp = TrainConfig(data="w", model="postprocess", init="/r")
    assert (pp.optimizer.learning_rate, pp.optimizer.decay_rate) == (0.02, 1.0)
    fm = TrainConfig(data="w", model="featuremod")
    assert (fm.optimizer.name, fm.optimizer.learning_rate, fm.optimizer.decay_rate, fm.optimizer.decay_epochs) == (
        "rmsprop", 0.00225, 0.94, 4.0)  # the paper's 0.0045 halved for the backbone (docs/training.md)
    assert fm.optimizer.geo_lr_multiplier == 20.0 and pp.optimizer.geo_lr_multiplier == 1.0
    assert fm.location_dropout > 0 and fm.modulated_layers == networks.default_modulated_layers("mobilenet_v2")
    schedule = fm.optimizer.schedule(steps_per_epoch=10)
    assert isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
    for step, expected in [(0, 0.00225), (39, 0.00225), (40, 0.00225 * 0.94), (85, 0.00225 * 0.94 ** 2)]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)
    assert isinstance(fm.optimizer.build(10), keras.optimizers.RMSprop)
    assert pp.optimizer.schedule(10) == 0.02 and isinstance(pp.optimizer.build(10), keras.optimizers.SGD)
    # Post-processing at that constant rate: noisy tuning metrics while the loss falls for 100+ epochs
    # (docs/training.md), so it waits 30 epochs for a lower tuning loss; other kinds 3 for a better top-1.
    assert (pp.patience, fm.patience, TrainConfig(data="w").patience) == (POSTPROCESS_PATIENCE, 3, 3)
    assert POSTPROCESS_PATIENCE == 30 and pp.replace(patience=5).patience == 5


@pytest.mark.parametrize("changes, field", [
    (dict(model="cnn"), "model"), (dict(backbone="vgg"), "backbone"), (dict(image_size=8), "image_size"),
    (dict(model="postprocess"), "init"), (dict(init="/r"), "init"), (dict(encoding="xyz"), "encoding"),
    (dict(variant="R(F)"), "variant"), (dict(location_dropout=1.5), "location_dropout"),
    (dict(epochs=0), "epochs"), (dict(batch_size=2.5), "batch_size"), (dict(strategy="horovod"), "strategy"),
    (dict(backbone="inception_v3", alpha=0.5, image_size=75), "alpha"), (dict(data=""), "data"),
    (dict(optimizer=OptimizerConfig(name="adam")), None),
])
def test_config_rejects_bad_fields_by_name(changes, field):
    values = dict(data="world")
    values.update(changes)
    if field is None:
        TrainConfig(**values)  # a valid override, for contrast
        return
    with pytest.raises(ValueError, match=f"'{field}'"):
        TrainConfig(**values)


def test_config_from_json_rejects_unknown_fields_and_bad_json():
    with pytest.raises(ValueError, match="unknown config fields"):
        TrainConfig.from_dict({"data": "w", "learning_rate": 0.1})
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_json("{")
    with pytest.raises(ValueError, match="optimizer.learning_rate"):
        OptimizerConfig(learning_rate=-1.0)


# --- training -----------------------------------------------------------------------------------

def test_image_run_trains_and_writes_the_run_folder(image_run):
    run_dir, initial, metrics = image_run
    for name in ("model.keras", "config.json", "labels.txt", "metrics.json", "state/checkpoint"):
        assert (run_dir / name).is_file(), name
    run = load_run(run_dir)
    assert run.labels == LABELS and run.config == tiny_config(epochs=2)
    assert run.metrics == metrics and 1 <= metrics["epoch"] <= 2 and 0 <= metrics["tune_accuracy"] <= 1
    assert (metrics["train_size"], metrics["tune_size"], metrics["epochs_done"]) == (24, 12, 2)
    assert metrics["stop_reason"].startswith("cap") and [h["epoch"] for h in metrics["history"]] == [1, 2]
    x, y = _arrays(16, seed=5)
    assert _loss(run.model, x, y) != pytest.approx(_loss(initial, x, y), abs=1e-6)
    assert not list(run_dir.glob(".*tmp*"))  # no temporary files left behind


def test_postprocess_trains_geo_net_only_and_keeps_image_weights_bit_identical(image_run, postprocess_run):
    image = load_run(image_run[0]).model
    run = load_run(postprocess_run)
    nested = run.model.get_layer("image_only")
    assert len(nested.weights) == len(image.weights)
    for after, before in zip(nested.weights, image.weights):
        assert after.path == before.path
        np.testing.assert_array_equal(after.numpy(), before.numpy())
    x, y = _arrays(16, seed=6)
    # Training changed the loss (the geo head starts at exactly the image model's logits) ...
    assert _loss(run.model, x, y) != pytest.approx(_loss(image, x, y), abs=1e-6)
    # ... and without a location the prediction is exactly the image-only one.
    x["location"][:] = np.nan
    np.testing.assert_array_equal(run.model(x)["logits"].numpy(), image(x)["logits"].numpy())
    np.testing.assert_array_equal(run.model(x)["geo_logits"].numpy(), 0.0)
    assert len(list((postprocess_run / "state").glob("logits-train-*.npz"))) == 1  # the CNN ran once; logits cached


def test_postprocess_never_reruns_the_cnn_during_training(image_run, tmp_path, monkeypatch):
    image_dir, _, _ = image_run
    calls = []
    original = build.cached_logits

    def counting(image_model, dataset, cache_path, desc):
        calls.append(desc)
        return original(image_model, dataset, cache_path, desc)

    monkeypatch.setattr(build, "cached_logits", counting)
    trained, saved, data = build.build_models(
        tiny_config("postprocess", init=str(image_dir)), synthetic_splits(), tmp_path)
    assert len(calls) == 2  # train and tune, once each
    assert set(data.dataset("train", 4, True).element_spec[0]) == {"vision_logits", "location"}  # no images
    assert not any(layer.name == "backbone" for layer in trained._flatten_layers())


def test_featuremod_starts_from_image_run_and_trains(image_run, tmp_path):
    image_dir, _, _ = image_run
    config = tiny_config("featuremod", init=str(image_dir), modulated_layers=(
        "block_6_depthwise_relu", "block_12_depthwise_relu"))
    loop.train(config, tmp_path, synthetic_splits())
    run = load_run(tmp_path)
    assert sorted(networks.modulation_layers(run.model)) == ["block_12_depthwise_relu", "block_6_depthwise_relu"]
    image = load_run(image_dir).model
    x, y = _arrays(16, seed=7)
    assert _loss(run.model, x, y) != pytest.approx(_loss(image, x, y), abs=1e-6)
    beta = networks.modulation_layers(run.model)["block_6_depthwise_relu"].beta
    assert np.abs(beta.kernel.numpy()).max() > 0  # the zero-initialised β map received gradients


def test_resume_after_a_crash_mid_epoch(image_run, tmp_path, monkeypatch, capsys):
    # The geo head of post-processing trains in seconds; the kill -9 test below covers the CNN.
    config = tiny_config("postprocess", init=str(image_run[0]), epochs=2, steps_per_epoch=3)
    splits = synthetic_splits()

    class Crash(Exception):
        pass

    real_epoch = loop._train_epoch

    def crash_in_second_epoch(step, iterator, steps, epoch, config):
        if epoch == 2:
            real_epoch(step, iterator, 1, epoch, config)  # one step of epoch 2, then the process dies
            raise Crash
        return real_epoch(step, iterator, steps, epoch, config)
    monkeypatch.setattr(loop, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(Crash):
        loop.train(config, tmp_path, splits)
    assert json.loads((tmp_path / "metrics.json").read_text())["epoch"] == 1
    monkeypatch.undo()

    loop.train(config, tmp_path, synthetic_splits())
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    state = tf.train.latest_checkpoint(tmp_path / "state")
    assert state.endswith("ckpt-2")
    saved = dict(tf.train.list_variables(state))
    iterations = [name for name in saved if "optimizer" in name and "iteration" in name]
    assert iterations and int(tf.train.load_variable(state, iterations[0])) == 2 * 3  # no step counted twice
    # The same command once more has nothing left to do; another config is refused.
    loop.train(config, tmp_path, synthetic_splits())
    assert "all 2 epochs are done" in capsys.readouterr().out
    loop.train(config.replace(epochs=1), tmp_path, synthetic_splits())  # asks for less than was done
    assert "all 1 epochs are done" in capsys.readouterr().out
    assert load_run(tmp_path).config.epochs == 2  # config.json still says what the run did
    with pytest.raises(RunError, match="another config"):
        loop.train(config.replace(seed=1), tmp_path, synthetic_splits())


def test_early_stopping_on_a_plateau_of_the_tuning_metric_and_its_resume(image_run, tmp_path, capsys):
    # A learning rate of ~0: the tuning top-1 never improves after epoch 1, a plateau by construction.
    config = tiny_config("postprocess", init=str(image_run[0]), epochs=10, patience=2,
                         optimizer=OptimizerConfig(name="sgd", learning_rate=1e-30))
    metrics = loop.train(config, tmp_path, synthetic_splits())
    assert (metrics["epoch"], metrics["epochs_done"]) == (1, 3)
    assert metrics["stop_reason"].startswith("plateau") and "stopped after epoch 3: plateau" in capsys.readouterr().out
    # The stop is part of the resume state: the same command has nothing to do ...
    loop.train(config, tmp_path, synthetic_splits())
    assert "nothing to do after epoch 3" in capsys.readouterr().out
    # ... and more patience continues from epoch 3 with the restored best epoch.
    metrics = loop.train(config.replace(patience=3), tmp_path, synthetic_splits())
    assert "resuming after epoch 3 of 10" in capsys.readouterr().out
    assert (metrics["epoch"], metrics["epochs_done"]) == (1, 4)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("kind, kept, stop", [("image", 2, "tune_accuracy"), ("postprocess", 4, "tune_loss")])
def test_post_processing_is_picked_and_stopped_by_its_tuning_loss(kind, kept, stop, image_run, tmp_path, monkeypatch):
    # A scripted tuning curve (loss sum, top-1 hits, top-5 hits, rows) whose top-1 peaks at epoch 2 on
    # a lucky jump while the loss keeps falling until epoch 4: top-1 picks 2, the loss picks 4.
    curve = iter([(10.0, 5, 12, 12), (9.0, 8, 12, 12), (8.0, 6, 12, 12), (7.0, 7, 12, 12), (7.5, 7, 12, 12),
                  (7.2, 7, 12, 12)])
    monkeypatch.setattr(loop.DistributedSteps, "evaluate", lambda self, dataset: np.array(next(curve), float))
    changes = dict(init=str(image_run[0])) if kind == "postprocess" else {}
    metrics = loop.train(tiny_config(kind, epochs=8, patience=2, **changes), tmp_path, synthetic_splits())
    assert loop.tune_metric(kind) == stop and metrics["selected_on"].startswith(stop)
    assert metrics["epoch"] == kept and metrics["stop_reason"].startswith(f"plateau: {stop}")
    assert metrics["epochs_done"] == kept + 2


def _write_csv_world(root: Path, shuffle_val_labels: bool) -> str:
    """train.csv and val.csv of small PNGs (a data SPEC with {split}); val labels optionally shuffled."""
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 40, 0), ("val", 12, 1)):
        x, y = _arrays(n, seed)
        if split == "val" and shuffle_val_labels:
            y = np.random.default_rng(3).permutation(y)
        lines = ["file,label,latitude,longitude"]
        for i in range(n):
            name = f"{split}-{i}.png"
            Image.fromarray(x["image"][i]).save(root / name)
            lat, lon = ("", "") if np.isnan(x["location"][i, 0]) else x["location"][i]
            lines.append(f"{name},{LABELS[y[i]]},{lat},{lon}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return f"csv:{root}/{{split}}.csv"


def _untimed(metrics: dict) -> dict:
    timing = ("train_seconds", "images_per_second")
    out = {k: v for k, v in metrics.items() if k not in timing}
    out["history"] = [{k: v for k, v in h.items() if k not in timing} for h in metrics["history"]]
    return out


def test_shuffling_the_reported_labels_changes_no_choice(tmp_path):
    """Selection reads only the tuning rows (held out of train): val, the reported split, is never read."""
    from trainer.data.readers import load_split
    from trainer.data.splits import tuning_split

    results = []
    for shuffled in (False, True):
        spec = _write_csv_world(tmp_path / f"world-{shuffled}", shuffled)
        config = tiny_config(data=spec, epochs=3, patience=1, steps_per_epoch=2)
        metrics = loop.train(config, tmp_path / f"run-{shuffled}")
        weights = [w.numpy() for w in load_run(tmp_path / f"run-{shuffled}").model.weights]
        results.append((metrics, weights))
    (plain, plain_weights), (shuffled, shuffled_weights) = results
    tune_rows, train_rows = tuning_split(load_split(spec, "train").labels, 0.1)
    assert (plain["train_size"], plain["tune_size"]) == (len(train_rows), len(tune_rows)) == (37, 3)
    assert _untimed(plain) == _untimed(shuffled)  # chosen epoch, stop, every tuning and training metric
    for a, b in zip(plain_weights, shuffled_weights):
        np.testing.assert_array_equal(a, b)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert train_mod.main(["--data", "w", "--model", "postprocess", "--out", str(tmp_path / "r")]) == 2
    assert "--init" in capsys.readouterr().err
    assert train_mod.main(["--data", str(tmp_path / "missing"), "--model", "image", "--image-size", "32",
                           "--alpha", "0.35", "--out", str(tmp_path / "r2")]) == 2
    assert "missing" in capsys.readouterr().err


def test_cli_inherits_backbone_settings_from_init(image_run):
    image_dir, _, _ = image_run
    args = train_mod.parse_args(["--data", "w", "--model", "featuremod", "--init", str(image_dir), "--out", "x",
                                 "--blocks", "4,block_9_depthwise_relu", "--variant", "film"])
    config = train_mod.config_from_args(args)
    assert (config.image_size, config.alpha, config.backbone) == (SIZE, 0.35, "mobilenet_v2")
    assert config.modulated_layers == ("block_4_depthwise_relu", "block_9_depthwise_relu")
    switched = train_mod.config_from_args(train_mod.parse_args(
        ["--data", "w", "--model", "featuremod", "--init", str(image_dir), "--out", "x", "--optimizer", "adam"]))
    assert switched.optimizer == OptimizerConfig(name="adam", learning_rate=1e-3)  # not RMSprop's epsilon 1.0
    assert train_mod.config_from_args(train_mod.parse_args(
        ["--data", "w", "--model", "featuremod", "--out", "x", "--lr", "0.01"])).optimizer.decay_rate == 0.94
    with pytest.raises(RunError, match="image-size"):
        train_mod.config_from_args(train_mod.parse_args(
            ["--data", "w", "--model", "featuremod", "--init", str(image_dir), "--out", "x", "--image-size", "64"]))


def test_load_run_errors(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "config.json").write_text(tiny_config().to_json())
    with pytest.raises(RunError, match="model.keras"):
        load_run(tmp_path)


def test_strategy_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match="TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(StrategyError, match="not valid JSON"):
        make_strategy("multiworker")
    with pytest.raises(StrategyError, match="unknown strategy"):
        make_strategy("horovod")
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(StrategyError, match="no TPU could be reached"):
        make_strategy("tpu")


# --- subprocesses: MirroredStrategy on 2 logical CPUs, kill -9, the CLI on a world ---------------

def _python(code_or_args, env=None, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, *code_or_args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_importing_the_trainer_leaves_tensorflow_unstarted():
    """MultiWorkerMirroredStrategy configures collectives (and tests set logical devices) only before
    TensorFlow's runtime starts: no module of the trainer may make a tensor at import."""
    code = ("import tensorflow as tf, trainer.train; cpu = tf.config.list_physical_devices('CPU')[0]; "
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
            "print('unstarted')")
    proc = _python(["-c", code])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "unstarted" in out, out[-3000:]


@pytest.fixture(scope="module")
def two_logical_cpus(tmp_path_factory):
    """One process on 2 logical CPUs (TensorFlow sets them only before its runtime starts) runs both
    probes below, the replica statistics and a mirrored training: (exit code, output, run folder)."""
    run_dir = tmp_path_factory.mktemp("mirrored")
    code = textwrap.dedent(f"""
        import sys, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from test_train import synthetic_splits, tiny_config
        from trainer.training import loop
        from trainer.training.strategy import make_strategy, replica_averager, sync_from_chief

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            layer = keras.layers.BatchNormalization()
            layer.build((None, 3))
        mean = layer.moving_mean
        diverge = tf.function(lambda: strategy.run(lambda: mean.assign(tf.fill([3], 1.0 + 2.0 * tf.cast(
            tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)))))
        copies = lambda: [float(x.numpy()[0]) for x in strategy.experimental_local_results(mean.value)]
        diverge()
        print("diverged", copies())
        replica_averager(strategy, [mean])()
        print("averaged", copies())
        diverge()
        sync_from_chief(strategy, [mean])
        print("chief", copies())

        print("replicas", make_strategy("mirrored").num_replicas_in_sync)
        metrics = loop.train(tiny_config(strategy="mirrored"), {str(run_dir)!r}, synthetic_splits())
        print("done epoch", metrics["epoch"])
    """)
    proc = _python(["-c", code])
    out, _ = proc.communicate(timeout=1800)
    return proc.returncode, out, run_dir


@pytest.mark.slow
def test_replica_local_statistics_are_averaged_and_the_chief_state_broadcast(two_logical_cpus):
    """Keras 3 BatchNorm statistics have no aggregation, so each replica updates its own copy:
    replica_averager makes them one; sync_from_chief hands replica 0's resume state to all."""
    code, out, _ = two_logical_cpus
    assert code == 0, out[-3000:]
    assert "diverged [1.0, 3.0]" in out and "averaged [2.0, 2.0]" in out and "chief [1.0, 1.0]" in out


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(two_logical_cpus):
    code, out, run_dir = two_logical_cpus
    assert code == 0, out[-3000:]
    assert "replicas 2" in out and "done epoch 1" in out
    assert load_run(run_dir).config.strategy == "mirrored"


@pytest.mark.slow
def test_cli_on_a_tiny_world_and_resume_after_kill_9(tiny_world, tmp_path):
    image = tmp_path / "image"
    base = ["-m", "trainer.train", "--data", str(tiny_world), "--image-size", "32", "--alpha", "0.35",
            "--batch-size", "8", "--steps-per-epoch", "10"]
    cmd = base + ["--model", "image", "--epochs", "4", "--patience", "1", "--out", str(image)]
    proc = _python(cmd)
    # Kill -9 as soon as the run's event file says epoch 1 is checkpointed (epoch 2 is starting).
    deadline = time.time() + 500
    while not (image / "state" / "checkpoint").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed in epoch 2"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert (image / "state" / "checkpoint").is_file(), "epoch 1 never finished"
    load_run(image)  # what is on disk is complete and loadable
    proc = _python(cmd)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "resuming after epoch 1 of 4" in out
    # Early stopping survived the kill: the kept epoch is the first best on the tuning rows over the
    # whole history, and the run stopped exactly `patience` epochs after it (or at the cap).
    metrics = json.loads((image / "metrics.json").read_text())
    curve = [h["tune_accuracy"] for h in metrics["history"]]
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, metrics["epochs_done"] + 1))
    assert metrics["epoch"] == 1 + int(np.argmax(curve))
    if metrics["stop_reason"].startswith("plateau"):
        assert metrics["epochs_done"] - metrics["epoch"] == 1
    else:
        assert metrics["epochs_done"] == 4 and metrics["stop_reason"].startswith("cap")
    assert f"stopped after epoch {metrics['epochs_done']}" in out
    pp = _python(base + ["--model", "postprocess", "--init", str(image), "--epochs", "1", "--out", str(tmp_path / "pp")])
    out, _ = pp.communicate(timeout=600)
    assert pp.returncode == 0, out[-3000:]
    run = load_run(tmp_path / "pp")
    assert run.labels == load_run(image).labels and set(run.model.output) >= {"vision_logits", "geo_logits"}


@pytest.fixture(scope="module")
def featuremod_and_initial_weights():
    """One feature-modulation model for every one-step comparison: each step starts from these weights."""
    keras.utils.set_random_seed(0)
    model = networks.build_featuremod_model(networks.build_image_model(CLASSES, image_size=SIZE, alpha=0.35),
                                          location_dropout=0.0, seed=0)
    return model, model.get_weights()


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_geo_lr_multiplier_scales_only_the_geo_updates(name, featuremod_and_initial_weights):
    """One step from identical weights: the geo net's and modulation FCs' updates are exactly
    `geo_lr_multiplier` times those with one rate for all; the backbone's are unchanged."""
    model, initial = featuremod_and_initial_weights
    x, y = _arrays(BATCH, 0)
    geo_net_paths = {"fm_fc1/kernel", "fm_fc2/kernel"}
    steps = {}
    for multiplier in (1.0, 10.0):
        model.set_weights(initial)
        geo = networks.geo_variables(model)
        assert geo_net_paths <= {v.path for v in geo}
        assert len(geo) == 4 + 2 * len(networks.modulation_layers(model))  # fc1, fc2; β kernel + bias each
        config = OptimizerConfig(name=name, learning_rate=1e-3, geo_lr_multiplier=multiplier)
        optimizer = config.build(1, geo)
        before = [v.numpy().copy() for v in model.trainable_variables]
        with tf.GradientTape() as tape:
            logits = model({k: tf.constant(v) for k, v in x.items()}, training=False)["logits"]
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        steps[multiplier] = {v.path: v.numpy() - b for v, b in zip(model.trainable_variables, before)}
        geo_paths = {v.path for v in geo}
    for path, step in steps[1.0].items():
        expected = step * 10.0 if path in geo_paths else step
        np.testing.assert_allclose(steps[10.0][path], expected, rtol=1e-4, atol=1e-9, err_msg=path)
    # The zero-initialised β kernels get a gradient at once; the geo net's only through them, so
    # it first moves on the second step (its gradient is W_β = 0 at initialisation).
    assert any(np.abs(s).max() > 0 for p, s in steps[1.0].items() if "modulate_" in p and p.endswith("kernel"))


def _geoprior_run(run_dir, encoding="sincos", geo_net="residual"):
    """A geoprior run folder as trainer.training.geoprior writes it, with random geo weights."""
    from trainer.training.runs import atomic_save_model, write_labels

    run_dir.mkdir(parents=True)
    geo = networks.build_geo_model(CLASSES, encoding, geo_net)
    rng = np.random.default_rng(0)
    for layer in geo.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.get_weights()])
    (run_dir / "config.json").write_text(TrainConfig(data="obs.csv", model="geoprior", encoding=encoding,
                                                     geo_net=geo_net).to_json())
    write_labels(run_dir, LABELS)
    atomic_save_model(geo, run_dir / "model.keras")
    return geo


def test_postprocess_geo_net_starts_from_a_geoprior_run(image_run, tmp_path):
    from trainer.training.geoprior import predict_logits

    image_dir, _, _ = image_run
    geo = _geoprior_run(tmp_path / "geoprior")
    config = tiny_config("postprocess", init=str(image_dir), geo_init=str(tmp_path / "geoprior"), geo_net="residual",
                         optimizer=OptimizerConfig(name="sgd", learning_rate=1e-9))  # ~no update: see the start
    loop.train(config, tmp_path / "post", synthetic_splits())
    x, _ = _arrays(8, seed=7)
    np.testing.assert_allclose(load_run(tmp_path / "post").model(x)["geo_logits"].numpy(),
                               predict_logits(geo, x["location"]), atol=1e-3, rtol=1e-3)
    with pytest.raises(RunError, match="--encoding sincos --geo-net residual"):
        loop.train(config.replace(encoding="fourier"), tmp_path / "other", synthetic_splits())


def test_hybrid_featuremod_adds_the_postprocessing_geo_logits_of_the_same_image_run(image_run, postprocess_run,
                                                                                    tmp_path):
    image_dir, _, _ = image_run
    post = load_run(postprocess_run).model
    config = tiny_config("featuremod", init=str(image_dir), geo_init=str(postprocess_run))
    _, hybrid, _ = build.build_models(config, synthetic_splits(), None)  # as training starts (the demo trains it)
    x, _ = _arrays(8, seed=7)
    np.testing.assert_allclose(hybrid(x)["logits"].numpy(), post(x)["logits"].numpy(), atol=1e-4)
    assert np.abs(post(x)["geo_logits"].numpy()).max() > 0
    with pytest.raises(RunError, match="is a image run"):  # --geo-init must name a post-processing run
        build.build_models(config.replace(geo_init=str(image_dir)), synthetic_splits(), None)
    other = tmp_path / "other_image"
    shutil.copytree(image_dir, other)
    with pytest.raises(RunError, match="not --init"):  # its geo logits complement another image model
        build.build_models(config.replace(init=str(other)), synthetic_splits(), None)
    with pytest.raises(ValueError, match="needs --init"):
        tiny_config("featuremod", geo_init=str(postprocess_run))


@pytest.mark.slow
def test_a_reachable_address_that_is_no_tpu_fails_within_bounded_time(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts TCP connections but speaks no gRPC
    code = ("import sys, trainer.training.strategy as s; s.TPU_CONNECT_TIMEOUT_S = 5; from trainer import train; "
            f"sys.exit(train.main(['--data', 'nowhere', '--model', 'image', '--out', {str(tmp_path / 'r')!r}, "
            f"'--strategy', 'tpu', '--tpu', 'grpc://127.0.0.1:{server.getsockname()[1]}']))")
    proc = _python(["-c", code])
    try:
        out, _ = proc.communicate(timeout=300)  # importing TensorFlow dominates; the wait is 5 s
    finally:
        server.close()
    assert proc.returncode == 2 and "did not answer within 5 s" in out, out[-2000:]


# --- multi-worker: real worker processes on free localhost ports ---------------------------------

# `python -m trainer.train` that also prints a line after every training step and checkpoint (the
# events a test waits for), the TFRecord files each input pipeline reads, and a digest of the
# final weights it trained in memory.
WORKER = textwrap.dedent("""
    import hashlib, os, sys
    import numpy as np
    import tensorflow as tf
    from trainer import train
    from trainer.data import pipeline
    from trainer.training import loop
    trained = []
    class Recording(loop.DistributedSteps):
        def __init__(self, strategy, model, *args):
            super().__init__(strategy, model, *args)
            trained.append(model)
        def train_step(self, iterator):
            counts = super().train_step(iterator)
            print("trained a step", flush=True)
            return counts
    save, shard_files = tf.train.CheckpointManager.save, pipeline.shard_files
    def announced_save(manager, *args, **kwargs):
        path = save(manager, *args, **kwargs)
        print("saved a checkpoint", flush=True)
        return path
    def recorded_files(files, shard):
        chosen = shard_files(files, shard)
        print("reads", " ".join(sorted(os.path.join(*f.split(os.sep)[-2:]) for f in chosen)), flush=True)
        return chosen
    loop.DistributedSteps, tf.train.CheckpointManager.save, pipeline.shard_files = (
        Recording, announced_save, recorded_files)
    code = train.main(sys.argv[1:])
    if trained:
        weights = b"".join(np.asarray(w).tobytes() for w in trained[-1].get_weights())
        print("final weights", hashlib.sha256(weights).hexdigest())
    sys.exit(code)
""")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Worker:
    """One worker process of a localhost cluster. A thread collects its output, so the test can wait
    for a line (an event, not a sleep) and no worker blocks on a full pipe while its peers wait
    for it in a collective."""

    def __init__(self, args, index, ports):
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        self.proc = _python(["-c", WORKER, *args], env={
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        self.lines, self.ended, self.changed = [], False, threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def count(self, text):
        return sum(line.startswith(text) for line in self.lines)

    def wait_for(self, text, times=1, timeout=900) -> bool:
        """Whether `times` lines starting with `text` came before the output ended (or the timeout)."""
        with self.changed:
            self.changed.wait_for(lambda: self.count(text) >= times or self.ended, timeout)
            return self.count(text) >= times

    def finish(self, timeout=1800) -> tuple[int, str]:
        self.proc.wait(timeout)
        self.reader.join()
        return self.proc.returncode, "".join(self.lines)


def _cluster(args_of_index, n=2, ports=None):
    ports = ports or _free_ports(n)
    return [Worker(args_of_index(i), i, ports) for i in range(n)]


def _finish(workers, timeout=1800):
    """Every worker exits 0 with the same final weights; their outputs."""
    outs = []
    for worker in workers:
        code, out = worker.finish(timeout)
        assert code == 0, out[-4000:]
        outs.append(out)
    digests = [line for out in outs for line in out.splitlines() if line.startswith("final weights")]
    assert len(digests) == len(workers) and len(set(digests)) == 1, digests  # every worker: the same weights
    return outs


def _tiny_args(data, model, out, *extra, steps=4, epochs=2):
    """32 px, alpha 0.35, global batch 16; `steps=None` trains whole epochs."""
    return ["--data", str(data), "--model", model, "--out", str(out), "--image-size", "32", "--alpha", "0.35",
            "--batch-size", "16", "--epochs", str(epochs), *(["--steps-per-epoch", str(steps)] if steps else []),
            *extra]


@pytest.fixture(scope="module")
def two_worker_runs(tiny_world, tmp_path_factory):
    """A run of every image model kind trained by 2 workers (each exits 0 with identical weights),
    the chief's folder KIND-0 under one root (KIND-1 must not exist). The geo models start from the
    image run, both clusters at once (mostly one core per process). The post-processing run is also
    the parity test's: whole epochs until its tuning loss settles (4; see PARITY_NOISE_FLOOR)."""
    root = tmp_path_factory.mktemp("two_workers")
    _finish(_cluster(lambda i: _tiny_args(tiny_world, "image", root / f"image-{i}", "--strategy", "multiworker")))
    clusters = [_cluster(lambda i: _tiny_args(tiny_world, "featuremod", root / f"featuremod-{i}", "--strategy",
                                              "multiworker")),
                _cluster(lambda i: _parity_postprocess_args(tiny_world, root, root / f"postprocess-{i}", "--strategy",
                                                            "multiworker"))]
    for cluster in clusters:
        _finish(cluster)
    return root


def _parity_postprocess_args(tiny_world, root, out, *extra):
    """The parity test's post-processing run (2 workers or one process): from the 2-worker image run
    under `root` (what both start from is not compared), 4 whole epochs, patience above the cap."""
    return _tiny_args(tiny_world, "postprocess", out, "--init", str(root / "image-0"), "--patience", "4", *extra,
                      steps=None, epochs=4)


@pytest.mark.slow
def test_two_workers_train_and_export_every_model_kind(tiny_world, two_worker_runs, tmp_path):
    """Both exit 0 with identical weights, only the chief writes its run folder, the run exports."""
    from converters.export import export_bundle

    root = two_worker_runs
    for model in IMAGE_MODEL_KINDS:
        assert not (root / f"{model}-1").exists()  # only the chief writes its run folder
        run = load_run(root / f"{model}-0")
        assert run.config.strategy == "multiworker" and run.metrics["epochs_done"] == run.config.epochs >= 2
    manifest = export_bundle(str(root / "featuremod-0"), tmp_path / "bundle", "float32", data=str(tiny_world),
                             verify_samples=8)
    assert manifest["metrics"]["verification"]["samples"] > 0


# The least "noise" the parity check allows (3x the spread between two seeds can be tiny by chance).
# Measured (post-processing as below, from a tiny image run of 12 steps): one process, seeds 0, 1, 2,
# ended at tune loss 0.788, 0.800, 0.779 and training loss 0.846, 0.857, 0.840; two workers, seeds
# 0 and 1, at 0.785, 0.756 and 0.860, 0.843 (before each worker shuffled with its own seed: 0.842,
# 0.876 and 0.898, 0.883, above every single-process seed).
PARITY_NOISE_FLOOR = 0.05


@pytest.mark.slow
def test_two_workers_reach_the_metrics_of_one_process_within_seed_noise(tiny_world, two_worker_runs, tmp_path):
    """One process and 2 workers with the same global batch of 16 on the same data: the 2-worker run's
    final tuning and training loss lie within the spread between one process's seeds. Measured on
    post-processing, whose geo head learns the tiny world's ranges within 4 epochs (tune loss about
    1.8 -> 0.8); the tiny image model does not learn within a test's budget (its tuning top-1 stays
    at the majority label for 6 epochs), so its metrics would agree whether training worked or not.
    Every run starts from the same image run (the 2-worker one: what it starts from is not compared)."""
    # Both seeds in one process, one after the other (one TensorFlow start; train.main seeds each run).
    runs = [_parity_postprocess_args(tiny_world, two_worker_runs, tmp_path / f"one-{seed}", "--seed", str(seed))
            for seed in (0, 1)]
    one_process = _python(["-c", f"import sys; from trainer import train; sys.exit(max(train.main(a) for a in {runs!r}))"])
    out, _ = one_process.communicate(timeout=1800)
    assert one_process.returncode == 0, out[-3000:]
    singles = [load_run(tmp_path / f"one-{seed}").metrics["history"] for seed in (0, 1)]
    two = load_run(two_worker_runs / "postprocess-0").metrics["history"]
    for metric in ("tune_loss", "loss"):
        first, last = ([h[epoch][metric] for h in singles] for epoch in (0, -1))
        noise = max(3 * abs(last[0] - last[1]), PARITY_NOISE_FLOOR)
        assert min(first) - max(last) > 5 * noise, (metric, first, last)  # training moved it far beyond the noise
        assert abs(two[-1][metric] - np.mean(last)) <= noise, (metric, two[-1][metric], last)


@pytest.mark.slow
def test_two_workers_read_their_own_tfrecord_files_and_resume_after_kill_9(tiny_world, tmp_path):
    """Two workers on a prepared dataset each read their own TFRecord files. One is killed with
    SIGKILL in the middle of epoch 2: the other stops by itself, saying what to do, and the same
    two commands started again (the same ports) resume after epoch 1 and finish alike."""
    from trainer import prepare
    from trainer.data.pipeline import read_tfrecord_index

    prepare.main(["--data", tiny_world, "--split", "train", "--out", str(tmp_path / "prepared")])
    files = read_tfrecord_index(tmp_path / "prepared" / "train")["shards"]
    assert len(files) == prepare.DEFAULT_SHARDS == 8
    ports = _free_ports(2)
    args = lambda i: _tiny_args(f"tfrecords:{tmp_path / 'prepared'}", "image", tmp_path / f"run-{i}",  # noqa: E731
                                "--strategy", "multiworker", "--patience", "3", epochs=3)
    chief, worker = _cluster(args, ports=ports)
    # Epoch 1 (4 steps) is checkpointed; kill when the chief has trained 2 steps of epoch 2.
    assert chief.wait_for("trained a step", times=6, timeout=1800), chief.lines[-30:]
    worker.proc.send_signal(signal.SIGKILL)
    worker.finish()
    code, out = chief.finish(timeout=600)  # its peer is gone: it must stop by itself, saying what to do
    assert code == 3 and "start every worker again with the same command" in out, out[-3000:]
    assert chief.count("saved a checkpoint") == 1  # epoch 2 never completed
    for index, w in enumerate((chief, worker)):  # worker i read files i, i + 2, ... of train, nothing else
        reads = {line.split(None, 1)[1].strip() for line in w.lines if line.startswith("reads train")}
        assert reads == {" ".join(f"train/{f}" for f in files[index::2])}, reads
    outs = _finish(_cluster(args, ports=ports))
    assert all("resuming after epoch 1 of 3" in out for out in outs), outs[0][-3000:]
    metrics = load_run(tmp_path / "run-0").metrics
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3] and metrics["epochs_done"] == 3
    assert not (tmp_path / "run-1").exists()
