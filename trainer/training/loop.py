"""The training loop of the image-only, post-processing and feature-modulation models (the command
is `python -m trainer.train`): the data splits, the models a config builds, one distributed step,
and `train(config, run_dir)`, which checkpoints every epoch atomically and resumes after a crash.

RUN_DIR gets model.keras (the epoch with the best top-1 on the tuning rows, a held-out part of
train that is never reported), config.json, labels.txt, metrics.json and state/ (docs/CONTRACTS.md).
Training stops when the tuning top-1 plateaus (`patience`) or at `epochs`. docs/training.md has the
details.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from mobile_sdk.fileio import atomic_write_text, sha256_file
from trainer.data.pipeline import make_dataset, make_dataset_from_tfrecords, read_tfrecord_index
from trainer.data.readers import load_split
from trainer.data.splits import tuning_split
from trainer.evaluation.inference import cached_logits
from trainer.model import networks
from trainer.training import geoprior
from trainer.training.config import TrainConfig
from trainer.training.runs import (CONFIG_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, STATE_DIR, RunError,
                                   atomic_save_model, atomic_write_json, load_run, read_config, read_labels,
                                   write_labels)
from trainer.training.strategy import is_chief, is_multiworker, make_strategy, replica_averager, sync_from_chief

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
    """Splits over two datasets (trainer.data.dataset.GeoDataset); an input shard is every count-th row."""
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
    """The config's data SPEC through trainer.data.readers and trainer.data.pipeline (or `tfrecords:DIR`), with its
    tuning rows: `--tune SPEC`'s split "tune", else a seeded label-stratified part of train."""
    if config.data.startswith(TFRECORDS_PREFIX):
        return _load_tfrecord_splits(config)
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
    """Start the post-processing geo net from a presence-only geo model (trainer.training.geoprior)."""
    geo = _load_init_run(config.geo_init, "--geo-init", "geoprior", config, labels)
    if (geo.config.encoding, geo.config.geo_net) != (config.encoding, config.geo_net):
        raise RunError(f"--geo-init {config.geo_init} uses --encoding {geo.config.encoding} --geo-net "
                       f"{geo.config.geo_net}; pass the same to this run")
    networks.init_geo_from(head, geo.model)


def _hybrid_geo_head(config: TrainConfig, labels: list[str]):
    """featuremod --geo-init: the trained geo head of a post-processing run over the same image run."""
    if not config.geo_init:
        return None
    run = _load_init_run(config.geo_init, "--geo-init", "postprocess", config, labels)
    if Path(run.config.init).resolve() != Path(config.init).resolve():
        raise RunError(f"--geo-init {config.geo_init} post-processed the image run {run.config.init}, not --init "
                       f"{config.init}: its geo logits complement another image model")
    return run.model.get_layer("geo_head")


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
        head = networks.build_geo_head(num_classes, config.encoding, location_dropout=config.location_dropout,
                                     seed=config.seed, geo_net=config.geo_net)
        if config.geo_init:
            _init_geo_head(head, config, splits.labels)
        saved = networks.build_postprocess_model(image_model, head)
        trained = keras.Model(head.input, head.output["logits"], name="geo_head_training")
        return trained, saved, _logit_splits(caches, splits)
    if config.model == "featuremod":
        image_model = (_load_image_run(config, splits.labels) if config.init else networks.build_image_model(
            num_classes, config.backbone, config.image_size, config.alpha, config.weights_arg, config.dropout))
        saved = networks.build_featuremod_model(image_model, config.encoding, config.modulated_layers, config.variant,
                                              config.location_dropout, seed=config.seed, geo_net=config.geo_net,
                                              geo_head=_hybrid_geo_head(config, splits.labels))
    else:
        saved = networks.build_image_model(num_classes, config.backbone, config.image_size, config.alpha,
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
        best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_tune_accuracy")
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
