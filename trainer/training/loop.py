"""The training loop of the image-only, post-processing and feature-modulation models (the command
is `python -m trainer.train`): `train(config, run_dir)` trains the models a config builds
(trainer.training.build) on its rows (trainer.training.inputs), one distributed step at a time
(trainer.training.steps), checkpoints every epoch atomically and resumes after a crash.

RUN_DIR gets model.keras (the epoch with the best top-1 on the tuning rows, a held-out part of
train that is never reported; the lowest tuning loss for post-processing, `tune_metric`), config.json,
labels.txt, metrics.json and state/ (docs/CONTRACTS.md). Training stops when that metric plateaus
(`patience`) or at `epochs`. docs/training.md has the details.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mobile_sdk.bundle import LABELS_FILE
from mobile_sdk.fileio import atomic_write_text
from trainer.model import networks
from trainer.training import geoprior
from trainer.training.build import build_models
from trainer.training.config import TrainConfig
from trainer.training.inputs import Splits, load_splits
from trainer.training.runs import (CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_DIR, RunError, atomic_save_model,
                                   atomic_write_json, read_config, read_labels, write_labels)
from trainer.training.steps import DistributedSteps
from trainer.training.strategy import is_chief, is_multiworker, make_strategy, replica_averager, sync_from_chief

LOG_EVERY_S = 30.0  # progress line interval within an epoch
TUNE_METRIC = "tune_accuracy"  # top-1 on the tuning rows picks model.keras and stops training ...
# ... except for post-processing: trained at the paper's constant rate, its top-1 on the few tuning
# rows jumps by 2-3 points from epoch to epoch for 100+ epochs while its loss still falls, and one
# lucky epoch ended training 3.6 points below the oracle on the demo world; its tuning loss (a
# proper score over every row, so far less noisy) is what picks and stops it (docs/training.md).
TUNE_METRICS = {"postprocess": "tune_loss"}
LOWER_IS_BETTER = ("tune_loss",)


def tune_metric(model: str) -> str:
    """The metrics key on the tuning rows that picks model.keras and stops training a `model` kind."""
    return TUNE_METRICS.get(model, TUNE_METRIC)


def _score_sign(metric: str) -> float:
    """score = sign * value is larger when better; value = sign * score."""
    return -1.0 if metric in LOWER_IS_BETTER else 1.0


def _steps_per_epoch(config: TrainConfig, train_size: int) -> int:
    steps = math.ceil(train_size / config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def _check_existing_run(run_dir: Path, config: TrainConfig) -> None:
    """The same command may continue a run (also with more --epochs or --patience); anything else is refused."""
    if not (run_dir / CONFIG_FILE).is_file():
        return
    old = read_config(run_dir)
    if old.replace(epochs=config.epochs, patience=config.patience) != config:
        changed = sorted(k for k, v in config.to_dict().items()
                         if old.to_dict()[k] != v and k not in ("epochs", "patience"))
        raise RunError(f"{run_dir} holds a run with another config (differs in {changed}); "
                       "rerun the same command to resume it, or choose another --out")


def _epochs_done(state_dir: Path) -> int:
    latest = tf.train.latest_checkpoint(state_dir) if state_dir.is_dir() else None
    return int(tf.train.load_variable(latest, "epoch/.ATTRIBUTES/VARIABLE_VALUE")) if latest else 0


def _previous_history(run_dir: Path, epochs_done: int) -> list:
    """Per-epoch metrics of the epochs the resume state holds (an epoch redone after a crash is dropped)."""
    path = run_dir / METRICS_FILE
    history = json.loads(path.read_text(encoding="utf-8")).get("history", []) if path.is_file() else []
    return history[:epochs_done]


def _stop_reason(epoch: int, best_epoch: int, config: TrainConfig) -> str | None:
    if epoch - best_epoch >= config.patience:
        return (f"plateau: {tune_metric(config.model)} has not improved for {config.patience} epochs since epoch "
                f"{best_epoch} (--patience {config.patience})")
    if epoch >= config.epochs:
        return f"cap: reached --epochs {config.epochs}"
    return None


def train(config: TrainConfig, run_dir, splits: Splits | None = None) -> dict:
    """Train (or resume) the run in `run_dir` until the tuning top-1 plateaus or --epochs; returns
    metrics.json: the chosen (best on the tuning rows) epoch's metrics, the split sizes, why
    training stopped and the per-epoch history."""
    if config.model == "geoprior":  # observations only: its own trainer
        return geoprior.train(config, run_dir)
    run_dir = Path(run_dir)
    _check_existing_run(run_dir, config)
    strategy = make_strategy(config.strategy, config.tpu)
    chief = is_chief(strategy)
    splits = splits or load_splits(config)
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        labels_file = run_dir / LABELS_FILE
        if labels_file.is_file() and read_labels(labels_file) != splits.labels:
            raise RunError(f"{labels_file} differs from the labels of {config.data}")
        # config.json records what the run did: a smaller --epochs than already done changes nothing.
        done = _epochs_done(run_dir / STATE_DIR)
        atomic_write_text(run_dir / CONFIG_FILE, config.replace(epochs=max(config.epochs, done)).to_json() + "\n")
        write_labels(run_dir, splits.labels)
    # Non-chief workers must take part in saving (collectives) but write to a scratch folder.
    state_dir = run_dir / STATE_DIR if chief else Path(tempfile.mkdtemp(prefix="geoaware-worker-state-"))
    keras.utils.set_random_seed(config.seed)
    steps = _steps_per_epoch(config, splits.train_size)

    with strategy.scope():
        trained, saved, data = build_models(config, splits, state_dir if chief else None)
        optimizer = config.optimizer.build(
            steps, networks.geo_variables(trained) if config.model == "featuremod" else ())
        optimizer.build(trained.trainable_variables)  # slots exist before a restore and outside strategy.run
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_tune_score")
        best_epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        checkpoint = tf.train.Checkpoint(model=trained, optimizer=optimizer, epoch=epoch_var, best=best_var,
                                         best_epoch=best_epoch_var)
        manager = tf.train.CheckpointManager(checkpoint, state_dir, max_to_keep=1)
        # Created here on every worker: a restore would create it on the chief alone (only it has
        # resume state), and under MultiWorkerMirroredStrategy creating a variable is a collective
        # every worker must join; a lone one pairs with the others' next collective and fails.
        _ = checkpoint.save_counter
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if is_multiworker(strategy):  # only the chief has resume state: hand it to every worker
            sync_from_chief(strategy, [*trained.variables, *optimizer.variables, epoch_var, best_var, best_epoch_var])
        step = DistributedSteps(strategy, trained, optimizer, config.batch_size, min(5, len(splits.labels)))
        average_statistics = replica_averager(strategy, trained.non_trainable_variables)

    start = int(epoch_var.numpy())
    history = _previous_history(run_dir, start) if chief else []
    reason = _stop_reason(start, int(best_epoch_var.numpy()), config) if start else None
    if reason:
        print(f"{run_dir}: all {config.epochs} epochs are done already" if start >= config.epochs
              else f"{run_dir}: nothing to do after epoch {start}, it stopped on a {reason}")
    elif start:
        print(f"{run_dir}: resuming after epoch {start} of {config.epochs}")
    metric = tune_metric(config.model)
    if not reason:
        tune_data = data.dataset("tune", config.batch_size, False)
        for epoch in range(start + 1, config.epochs + 1):
            # Each epoch's order and augmentation follow from (seed, epoch, input pipeline) alone, so a
            # resumed run sees the data an uninterrupted one would have seen. Each worker shuffles with
            # its own seed: with one seed for all, worker i's k-th row would always be row k*N+i, so a
            # global batch would hold N neighbouring rows N times over (measured: slower learning).
            train_data = step.distribute(lambda batch, shard: data.dataset(
                "train", batch, True, shard, config.seed + epoch + 1_000_003 * shard[1]))
            logs = _train_epoch(step, iter(train_data), steps, epoch, config)
            average_statistics()  # replicas saw different batches: one set of BatchNorm statistics
            logs.update(DistributedSteps.metrics(step.evaluate(tune_data), "tune_"))
            improved = _score_sign(metric) * logs[metric] > float(best_var.numpy())
            history.append({"epoch": epoch, **logs})
            print(f"epoch {epoch}/{config.epochs}: " + " ".join(f"{k} {v:.4g}" for k, v in logs.items())
                  + (" (best so far)" if improved else ""), flush=True)
            if improved:
                best_var.assign(_score_sign(metric) * logs[metric])
                best_epoch_var.assign(epoch)
            reason = _stop_reason(epoch, int(best_epoch_var.numpy()), config)
            # Crash safety: model.keras, then metrics.json, then the resume state, each atomic;
            # after a crash the run redoes at most the epoch in progress.
            if chief:
                if improved:
                    atomic_save_model(saved, run_dir / MODEL_FILE)
                atomic_write_json(run_dir / METRICS_FILE, _run_metrics(history, int(best_epoch_var.numpy()),
                                                                       splits, reason, metric))
            epoch_var.assign(epoch)
            manager.save(checkpoint_number=epoch)
            if reason:
                print(f"stopped after epoch {epoch}: {reason}; kept epoch {int(best_epoch_var.numpy())} "
                      f"({metric} {_score_sign(metric) * float(best_var.numpy()):.4f})", flush=True)
                break
    if not chief:
        shutil.rmtree(state_dir, ignore_errors=True)
    metrics = run_dir / METRICS_FILE
    return json.loads(metrics.read_text(encoding="utf-8")) if metrics.is_file() else {}


def _train_epoch(step: DistributedSteps, iterator, steps: int, epoch: int, config: TrainConfig) -> dict:
    """`steps` global steps, a progress line every LOG_EVERY_S; the epoch's training metrics."""
    begin = last_log = time.perf_counter()
    totals = np.zeros(len(DistributedSteps.COUNTS))
    for done in range(1, steps + 1):
        totals += step.train_step(iterator)
        if time.perf_counter() - last_log > LOG_EVERY_S and done < steps:
            last_log = time.perf_counter()
            print(f"epoch {epoch}: step {done}/{steps}, loss {totals[0] / totals[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - begin
    return {**DistributedSteps.metrics(totals), "train_seconds": seconds,
            "images_per_second": steps * config.batch_size / seconds}


def _run_metrics(history: list, best_epoch: int, splits: Splits, stop_reason: str | None, metric: str) -> dict:
    """metrics.json: the kept epoch's metrics at the top level (as load_run and export read them)."""
    chosen = history[best_epoch - 1] if 0 < best_epoch <= len(history) else {}
    return {**chosen, "epoch": best_epoch, "selected_on": f"{metric} (tuning rows, never reported)",
            "train_size": splits.train_size, "tune_size": splits.tune_size, "epochs_done": len(history),
            "stop_reason": stop_reason, "history": history}
