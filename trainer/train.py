"""Train image-only, post-processing or feature-modulation models; resumable.

    python -m trainer.train --data SPEC --model image|postprocess|featuremod --out RUN_DIR
        [--backbone mobilenet_v2|inception_v3] [--init RUN_DIR] [--weights imagenet|PATH|none]
        [--strategy default|mirrored|multiworker|tpu] [--epochs N] [--image-size N] [--alpha A] ...

RUN_DIR gets model.keras (the epoch with the best top-1 on the tuning rows, a held-out part of
train that is never reported), config.json, labels.txt, metrics.json and state/ (docs/CONTRACTS.md).
Training stops when the tuning top-1 plateaus (--patience) or at --epochs. Every epoch ends with an
atomic checkpoint, so after a crash or kill -9 the same command continues from the last completed
epoch. docs/training.md has the details.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from mobile_sdk.encoding import DEFAULT_ENCODING, ENCODINGS
from mobile_sdk.fileio import atomic_write_text, sha256_file
from trainer import models
from trainer.checkpoint import (CONFIG_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, STATE_DIR, RunError,
                                atomic_save_model, atomic_write_json, load_run, read_config, read_labels,
                                write_labels)
from trainer.config import GEO_LR_MULTIPLIER, OPTIMIZERS, STRATEGIES, OptimizerConfig, TrainConfig
from trainer.inference import cached_logits
from trainer.layers import VARIANTS
from trainer.splits import DEFAULT_TUNE_FRACTION, tuning_split
from trainer.strategy import is_chief, is_multiworker, make_strategy, replica_averager, sync_from_chief

TUNE_METRIC = "tune_accuracy"  # top-1 on the tuning rows picks model.keras and stops training
LOG_EVERY_S = 30.0  # progress line interval within an epoch


@dataclass
class Splits:
    """The training and tuning rows, and `dataset(part, batch_size, training, shard)` that reads one
    input shard of a part as batched ({"image", "location"}, label) elements. training=True shuffles
    (seeded), augments and repeats forever; training=False reads the rows once, in order."""
    dataset: Callable[..., tf.data.Dataset]
    labels: list[str]
    train_size: int
    tune_size: int


TFRECORDS_PREFIX = "tfrecords:"


def _load_tfrecord_splits(config: TrainConfig) -> Splits:
    """`tfrecords:DIR`: DIR/train and DIR/tune written by `python -m trainer.prepare --split train`."""
    from trainer.pipeline import make_dataset_from_tfrecords, read_tfrecord_index

    root = Path(config.data[len(TFRECORDS_PREFIX):])
    index = {part: read_tfrecord_index(root / part) for part in ("train", "tune")}
    if index["tune"]["label_names"] != index["train"]["label_names"]:
        raise ValueError(f"{root}/tune was prepared with other labels than {root}/train")
    fraction = index["tune"].get("tune_fraction")
    if config.tune is not None or fraction != config.tune_fraction:
        raise ValueError(f"{root}/tune holds a tune fraction of {fraction} of the training rows; with tfrecords "
                         "the tuning split is the one trainer.prepare wrote: pass its --tune-fraction and no --tune")

    def dataset(part, batch_size, training, shard=(1, 0), seed=config.seed):
        return make_dataset_from_tfrecords(root / part, config.image_size, batch_size, training=training,
                                           shuffle_seed=seed, repeat=training, shard=shard)

    return Splits(dataset, labels=list(index["train"]["label_names"]),
                  train_size=int(index["train"]["num_examples"]), tune_size=int(index["tune"]["num_examples"]))


def geo_splits(train, tune, image_size) -> Splits:
    """Splits over two trainer.data.GeoDatasets; an input shard is every count-th row."""
    from trainer.pipeline import make_dataset

    parts = {"train": train, "tune": tune}

    def dataset(part, batch_size, training, shard=(1, 0), seed=0):
        rows = parts[part]
        count, index = shard
        if count > 1:
            rows = rows.subset(np.arange(index, len(rows), count))
        # Location dropout happens inside the geo models (LocationDropout), not in the pipeline.
        return make_dataset(rows, image_size, batch_size, training=training, shuffle_seed=seed, repeat=training)

    return Splits(dataset, labels=list(train.label_names), train_size=len(train), tune_size=len(tune))


def load_splits(config: TrainConfig) -> Splits:
    """The config's data SPEC through trainer.data and trainer.pipeline (or `tfrecords:DIR`), with its
    tuning rows: `--tune SPEC`'s split "tune", else a seeded label-stratified part of train."""
    if config.data.startswith(TFRECORDS_PREFIX):
        return _load_tfrecord_splits(config)
    from trainer.data import load_split

    train = load_split(config.data, "train")
    if config.tune is not None:
        tune = load_split(config.tune, "tune", label_names=train.label_names)
    else:
        tune_rows, train_rows = tuning_split(train.labels, config.tune_fraction)
        train, tune = train.subset(train_rows), train.subset(tune_rows)
    if len(tune) == 0:
        raise ValueError(f"the tuning split of {config.tune or config.data} has no usable rows")
    return geo_splits(train, tune, config.image_size)


def _steps_per_epoch(config: TrainConfig, train_size: int) -> int:
    steps = math.ceil(train_size / config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def _logit_splits(caches: dict, splits: Splits) -> Splits:
    """Splits over cached (vision_logits, location, label) arrays; an input shard is every count-th row."""

    def dataset(part, batch_size, training, shard=(1, 0), seed=0):
        cache = caches[part]
        rows = np.arange(shard[1], len(cache["label"]), shard[0])
        ds = tf.data.Dataset.from_tensor_slices(
            ({"vision_logits": cache["vision_logits"][rows], "location": cache["location"][rows]},
             cache["label"][rows]))
        if training:
            ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True).repeat()
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return dataclasses.replace(splits, dataset=dataset)


def _load_init_run(path, flag: str, model: str, config: TrainConfig, labels: list[str]):
    """The run that `flag` (--init / --geo-init) names, refused unless it is a `model` run on these labels."""
    run = load_run(path)
    if run.config.model != model:
        raise RunError(f"{flag} {path} is a {run.config.model} run; it must be a --model {model} run")
    if run.labels != labels:
        raise RunError(f"{flag} {path} was trained on other labels than {config.data} "
                       f"({len(run.labels)} vs {len(labels)} labels, or another order)")
    return run


def _load_image_run(config: TrainConfig, labels: list[str]):
    init = _load_init_run(config.init, "--init", "image", config, labels)
    if (init.config.tune, init.config.tune_fraction) != (config.tune, config.tune_fraction):
        raise RunError(f"--init {config.init} held out other tuning rows (--tune/--tune-fraction differ): "
                       "its backbone would have trained on this run's tuning rows")
    return init.model


def _init_geo_head(head, config: TrainConfig, labels: list[str]) -> None:
    """Start the post-processing geo net from a presence-only geo model (trainer.geoprior)."""
    geo = _load_init_run(config.geo_init, "--geo-init", "geoprior", config, labels)
    if (geo.config.encoding, geo.config.geo_net) != (config.encoding, config.geo_net):
        raise RunError(f"--geo-init {config.geo_init} uses --encoding {geo.config.encoding} --geo-net "
                       f"{geo.config.geo_net}; pass the same to this run")
    models.init_geo_from(head, geo.model)


def build_models(config: TrainConfig, splits: Splits, state_dir: Path | None):
    """(model trained on logits, model saved as model.keras, the Splits it trains on)."""
    num_classes = len(splits.labels)
    if config.model == "postprocess":
        image_model = _load_image_run(config, splits.labels)
        # The CNN runs once per image, here; the geo net trains on the cached logits. The cache is
        # keyed by the image model's file, so a retrained --init run is never served stale logits.
        key = sha256_file(Path(config.init) / MODEL_FILE)[:16]
        caches = {part: cached_logits(image_model, splits.dataset(part, config.batch_size, training=False),
                                       state_dir / f"logits-{part}-{key}.npz" if state_dir else None,
                                       f"image logits ({part})")
                  for part in ("train", "tune")}
        head = models.build_geo_head(num_classes, config.encoding, location_dropout=config.location_dropout,
                                     seed=config.seed, geo_net=config.geo_net)
        if config.geo_init:
            _init_geo_head(head, config, splits.labels)
        saved = models.build_postprocess_model(image_model, head)
        trained = keras.Model(head.input, head.output["logits"], name="geo_head_training")
        return trained, saved, _logit_splits(caches, splits)
    if config.model == "featuremod":
        image_model = (_load_image_run(config, splits.labels) if config.init else models.build_image_model(
            num_classes, config.backbone, config.image_size, config.alpha, config.weights_arg, config.dropout))
        saved = models.build_featuremod_model(image_model, config.encoding, config.modulated_layers, config.variant,
                                              config.location_dropout, seed=config.seed, geo_net=config.geo_net)
    else:
        saved = models.build_image_model(num_classes, config.backbone, config.image_size, config.alpha,
                                         config.weights_arg, config.dropout)
    trained = keras.Model(saved.input, saved.output["logits"], name=f"{saved.name}_training")
    return trained, saved, splits


class DistributedSteps:
    """The one training and evaluation step for every --strategy (docs/training.md): `strategy.run`
    over `distribute_datasets_from_function`, in place of Keras 3's model.fit, which fails under
    MultiWorkerMirroredStrategy. Each replica's loss is its summed cross-entropy over the GLOBAL
    batch, so the gradients the optimizer all-reduces (SUM) are the global-batch mean: the same
    --batch-size and --lr train alike on one device or many."""

    # Per-replica sums, reduced over replicas: loss, top-1 hits, top-k hits, examples.
    COUNTS = ("loss", "accuracy", "top5", "examples")

    def __init__(self, strategy, model, optimizer, global_batch: int, top_k: int):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        replicas = strategy.num_replicas_in_sync
        if global_batch % replicas:
            raise ValueError(f"--batch-size {global_batch} is the global batch; it must split evenly over the "
                             f"{replicas} replicas")
        self.global_batch, self.top_k = global_batch, top_k
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        self._train_step = tf.function(self._train_step_fn)
        self._eval_step = tf.function(self._eval_step_fn)

    def distribute(self, make_dataset) -> tf.distribute.DistributedDataset:
        """`make_dataset(per_replica_batch, shard=(count, index))` per input pipeline (one per worker)."""

        def fn(context: tf.distribute.InputContext):
            return make_dataset(context.get_per_replica_batch_size(self.global_batch),
                                (context.num_input_pipelines, context.input_pipeline_id))

        return self.strategy.distribute_datasets_from_function(fn)

    def _counts(self, y, logits):
        y = tf.cast(y, tf.int32)
        per_example = self.loss(y, logits)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        top_k = tf.cast(tf.math.in_top_k(y, logits, self.top_k), tf.float32)
        counts = tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(hits), tf.reduce_sum(top_k),
                           tf.cast(tf.size(y), tf.float32)])
        return per_example, counts

    def _replica_train(self, x, y):
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            per_example, counts = self._counts(y, logits)
            loss = tf.reduce_sum(per_example) / self.global_batch
            if self.model.losses:  # weight regularisers: once per global step, split over replicas
                loss += tf.add_n(self.model.losses) / self.strategy.num_replicas_in_sync
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return counts

    def _train_step_fn(self, iterator):
        counts = self.strategy.run(self._replica_train, args=next(iterator))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, counts, axis=None)

    def _eval_step_fn(self, x, y):
        return self._counts(y, self.model(x, training=False))[1]

    def train_step(self, iterator) -> np.ndarray:
        """One global step; the counts summed over all replicas."""
        return self._train_step(iterator).numpy()

    def evaluate(self, dataset) -> np.ndarray:
        """Counts over a finite, plain (not distributed) dataset, on this worker: a distributed last,
        partial batch leaves some replicas an empty batch, which MobileNet V2's graph rejects."""
        totals = np.zeros(len(self.COUNTS))
        for x, y in dataset:
            totals += self._eval_step(x, y).numpy()
        return totals

    @classmethod
    def metrics(cls, totals, prefix: str = "") -> dict:
        values = dict(zip(cls.COUNTS, np.asarray(totals, dtype=np.float64).tolist()))
        n = max(values.pop("examples"), 1.0)
        return {f"{prefix}{k}": v / n for k, v in values.items()}


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
        return (f"plateau: {TUNE_METRIC} has not improved for {config.patience} epochs since epoch {best_epoch} "
                f"(--patience {config.patience})")
    if epoch >= config.epochs:
        return f"cap: reached --epochs {config.epochs}"
    return None


def train(config: TrainConfig, run_dir, splits: Splits | None = None) -> dict:
    """Train (or resume) the run in `run_dir` until the tuning top-1 plateaus or --epochs; returns
    metrics.json: the chosen (best on the tuning rows) epoch's metrics, the split sizes, why
    training stopped and the per-epoch history."""
    if config.model == "geoprior":  # observations only: its own trainer
        from trainer import geoprior

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
            steps, models.geo_variables(trained) if config.model == "featuremod" else ())
        optimizer.build(trained.trainable_variables)  # slots exist before a restore and outside strategy.run
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_tune_accuracy")
        best_epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        checkpoint = tf.train.Checkpoint(model=trained, optimizer=optimizer, epoch=epoch_var, best=best_var,
                                         best_epoch=best_epoch_var)
        manager = tf.train.CheckpointManager(checkpoint, state_dir, max_to_keep=1)
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
    if not reason:
        tune_data = data.dataset("tune", config.batch_size, False)
        for epoch in range(start + 1, config.epochs + 1):
            # Each epoch's order and augmentation follow from (seed, epoch) alone, so a resumed run
            # sees the data an uninterrupted one would have seen.
            train_data = step.distribute(
                lambda batch, shard: data.dataset("train", batch, True, shard, config.seed + epoch))
            logs = _train_epoch(step, iter(train_data), steps, epoch, config)
            average_statistics()  # replicas saw different batches: one set of BatchNorm statistics
            logs.update(DistributedSteps.metrics(step.evaluate(tune_data), "tune_"))
            improved = logs[TUNE_METRIC] > float(best_var.numpy())
            history.append({"epoch": epoch, **logs})
            print(f"epoch {epoch}/{config.epochs}: " + " ".join(f"{k} {v:.4g}" for k, v in logs.items())
                  + (" (best so far)" if improved else ""), flush=True)
            if improved:
                best_var.assign(logs[TUNE_METRIC])
                best_epoch_var.assign(epoch)
            reason = _stop_reason(epoch, int(best_epoch_var.numpy()), config)
            # Crash safety: model.keras, then metrics.json, then the resume state, each atomic;
            # after a crash the run redoes at most the epoch in progress.
            if chief:
                if improved:
                    atomic_save_model(saved, run_dir / MODEL_FILE)
                atomic_write_json(run_dir / METRICS_FILE, _run_metrics(history, int(best_epoch_var.numpy()),
                                                                       splits, reason))
            epoch_var.assign(epoch)
            manager.save(checkpoint_number=epoch)
            if reason:
                print(f"stopped after epoch {epoch}: {reason}; kept epoch {int(best_epoch_var.numpy())} "
                      f"({TUNE_METRIC} {float(best_var.numpy()):.4f})", flush=True)
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


def _run_metrics(history: list, best_epoch: int, splits: Splits, stop_reason: str | None) -> dict:
    """metrics.json: the kept epoch's metrics at the top level (as load_run and export read them)."""
    chosen = history[best_epoch - 1] if 0 < best_epoch <= len(history) else {}
    return {**chosen, "epoch": best_epoch, "selected_on": f"{TUNE_METRIC} (tuning rows, never reported)",
            "train_size": splits.train_size, "tune_size": splits.tune_size, "epochs_done": len(history),
            "stop_reason": stop_reason, "history": history}


def _parse_blocks(text: str | None, backbone: str):
    """Comma list of layer names; for MobileNet V2 plain block numbers are accepted too."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if backbone == "mobilenet_v2":
        names = [f"block_{n}_depthwise_relu" if n.isdigit() else n for n in names]
    return tuple(names)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="data SPEC: a world folder, FORMAT:PATH[,IMAGE_ROOT], or tfrecords:DIR from trainer.prepare")
    p.add_argument("--model", required=True, choices=models.MODEL_KINDS)
    p.add_argument("--out", required=True, help="RUN_DIR; rerunning the same command resumes it")
    p.add_argument("--backbone", choices=models.BACKBONES, help="default: the --init run's, else mobilenet_v2")
    p.add_argument("--init", help="image-only RUN_DIR to start from (required for postprocess)")
    p.add_argument("--weights", default="none", help="backbone weights when not --init: imagenet|PATH|none")
    p.add_argument("--strategy", default="default", choices=STRATEGIES)
    p.add_argument("--tpu", default="", help="TPU name or grpc:// address for --strategy tpu")
    p.add_argument("--epochs", type=int, default=10, help="the most epochs; training stops earlier on a plateau")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better top-1 on the tuning rows")
    p.add_argument("--tune", help="data SPEC whose split 'tune' picks the epoch (default: hold out --tune-fraction "
                                  "of train, seeded and label-stratified); never trained on nor reported")
    p.add_argument("--tune-fraction", type=float, default=DEFAULT_TUNE_FRACTION)
    p.add_argument("--steps-per-epoch", type=int, help="cap the steps per epoch (smoke runs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, help="default: the --init run's, else 224")
    p.add_argument("--alpha", type=float, help="MobileNet V2 width; default: the --init run's, else 1.0")
    p.add_argument("--encoding", default=DEFAULT_ENCODING, choices=ENCODINGS)
    p.add_argument("--geo-net", default=models.DEFAULT_GEO_NET, choices=models.GEO_NETS,
                   help="geo network: the paper's MLP or SINR's residual net")
    p.add_argument("--geo-init", metavar="RUN_DIR",
                   help="postprocess: start the geo net from this geoprior run (same labels, encoding, geo net)")
    p.add_argument("--variant", default="add", choices=sorted(VARIANTS),
                   help="feature modulation: " + ", ".join(f"{k} = {v}" for k, v in VARIANTS.items()))
    p.add_argument("--blocks", help="feature modulation: comma list of layer names (MobileNet V2: or block numbers)")
    p.add_argument("--location-dropout", type=float, help="default 0.1 for featuremod, 0 for postprocess")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the image logits")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="default: the model kind's (docs/training.md); another one starts from its own "
                        "defaults (adam/rmsprop 1e-3, sgd 0.01 momentum 0.9, no decay)")
    p.add_argument("--lr", type=float, help="initial learning rate; default: the model kind's")
    p.add_argument("--geo-lr-multiplier", type=float,
                   help="feature modulation: learning-rate multiplier for the geo net and modulation FCs "
                        f"(default {GEO_LR_MULTIPLIER:g} with the default optimizer, else 1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    inherited = {}
    if args.init:
        init = read_config(args.init)
        inherited = {"backbone": init.backbone, "alpha": init.alpha, "image_size": init.image_size}
        for name, value in inherited.items():
            given = getattr(args, name)
            if given is not None and given != value:
                raise RunError(f"--{name.replace('_', '-')} {given} differs from the --init run's {value}")
    backbone = args.backbone or inherited.get("backbone", "mobilenet_v2")
    optimizer = OptimizerConfig.for_model(args.model)
    if args.optimizer and args.optimizer != optimizer.name:  # another optimizer: its own defaults
        optimizer = OptimizerConfig.named(args.optimizer)
    if args.lr is not None:
        optimizer = dataclasses.replace(optimizer, learning_rate=args.lr)
    if args.geo_lr_multiplier is not None:
        optimizer = dataclasses.replace(optimizer, geo_lr_multiplier=args.geo_lr_multiplier)
    return TrainConfig(
        data=args.data, model=args.model, backbone=backbone,
        alpha=args.alpha if args.alpha is not None else inherited.get("alpha", 1.0),
        image_size=args.image_size if args.image_size is not None else inherited.get("image_size", 224),
        weights=args.weights, init=str(Path(args.init).resolve()) if args.init else None,
        encoding=args.encoding, geo_net=args.geo_net,
        geo_init=str(Path(args.geo_init).resolve()) if args.geo_init else None, modulated_layers=_parse_blocks(args.blocks, backbone), variant=args.variant,
        location_dropout=args.location_dropout, dropout=args.dropout, optimizer=optimizer, epochs=args.epochs,
        patience=args.patience, tune=args.tune, tune_fraction=args.tune_fraction,
        batch_size=args.batch_size, seed=args.seed, strategy=args.strategy, tpu=args.tpu,
        steps_per_epoch=args.steps_per_epoch)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "geoprior" in {a.split("=", 1)[-1] for a in argv if a.startswith("--model")} | \
            {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--model"}:
        from trainer import geoprior  # presence-only: observations, no images (its own trainer)

        return geoprior.main(argv)
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        metrics = train(config, args.out)
    except ValueError as exc:  # config, data, run-folder and strategy errors are all ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"kept epoch {metrics.get('epoch')} of {metrics.get('epochs_done')} "
          f"({TUNE_METRIC} {metrics.get(TUNE_METRIC, float('nan')):.4f} on {metrics.get('tune_size')} tuning rows); "
          f"run in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
