"""Train image-only, post-processing or feature-modulation models; resumable.

    python -m trainer.train --data SPEC --model image|postprocess|featuremod --out RUN_DIR
        [--backbone mobilenet_v2|inception_v3] [--init RUN_DIR] [--weights imagenet|PATH|none]
        [--strategy default|mirrored|multiworker|tpu] [--epochs N] [--image-size N] [--alpha A] ...

RUN_DIR gets model.keras (best on validation), config.json, labels.txt, metrics.json and state/
(docs/CONTRACTS.md). Every epoch ends with an atomic checkpoint, so after a crash or kill -9 the
same command continues from the last completed epoch. docs/training.md has the details.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
from trainer.strategy import is_chief, make_strategy

VALIDATION_METRIC = "val_accuracy"  # top-1 on the validation split picks model.keras


@dataclass
class Splits:
    """Batched ({"image", "location"}, label) datasets. `train` is shuffled, augmented and repeats
    forever; `train_eval` is the training set with evaluation preprocessing, in order, once."""
    train: tf.data.Dataset
    train_eval: tf.data.Dataset
    val: tf.data.Dataset
    labels: list[str]
    train_size: int


TFRECORDS_PREFIX = "tfrecords:"


def _load_tfrecord_splits(config: TrainConfig) -> Splits:
    """`tfrecords:DIR`: DIR/train and DIR/val written by `python -m trainer.prepare`."""
    from trainer.pipeline import make_dataset_from_tfrecords, read_tfrecord_index

    root = Path(config.data[len(TFRECORDS_PREFIX):])
    train_index, val_index = read_tfrecord_index(root / "train"), read_tfrecord_index(root / "val")
    if val_index["label_names"] != train_index["label_names"]:
        raise ValueError(f"{root}/val was prepared with other labels than {root}/train; "
                         "prepare val with --label-names of the training labels")
    size, batch = config.image_size, config.batch_size
    return Splits(
        train=make_dataset_from_tfrecords(root / "train", size, batch, training=True, shuffle_seed=config.seed,
                                          repeat=True),
        train_eval=make_dataset_from_tfrecords(root / "train", size, batch, training=False),
        val=make_dataset_from_tfrecords(root / "val", size, batch, training=False),
        labels=list(train_index["label_names"]), train_size=int(train_index["num_examples"]))


def load_splits(config: TrainConfig) -> Splits:
    """The config's data SPEC through trainer.data and trainer.pipeline (or `tfrecords:DIR`)."""
    if config.data.startswith(TFRECORDS_PREFIX):
        return _load_tfrecord_splits(config)
    from trainer.data import load_split
    from trainer.pipeline import make_dataset

    train = load_split(config.data, "train")
    val = load_split(config.data, "val", label_names=train.label_names)
    size, batch = config.image_size, config.batch_size
    return Splits(
        # Location dropout happens inside the geo models (LocationDropout), not in the pipeline.
        train=make_dataset(train, size, batch, training=True, shuffle_seed=config.seed, repeat=True),
        train_eval=make_dataset(train, size, batch, training=False),
        val=make_dataset(val, size, batch, training=False),
        labels=list(train.label_names), train_size=len(train))


def _steps_per_epoch(config: TrainConfig, train_size: int) -> int:
    steps = math.ceil(train_size / config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def _logit_dataset(cache: dict, batch_size: int, training: bool, seed: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
        ({"vision_logits": cache["vision_logits"], "location": cache["location"]}, cache["label"]))
    if training:
        ds = ds.shuffle(len(cache["label"]), seed=seed, reshuffle_each_iteration=True).repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _load_image_run(config: TrainConfig, labels: list[str]):
    init = load_run(config.init)
    if init.config.model != "image":
        raise RunError(f"--init {config.init} is a {init.config.model} run; it must be an image-only run")
    if init.labels != labels:
        raise RunError(f"--init {config.init} was trained on other labels than {config.data} "
                       f"({len(init.labels)} vs {len(labels)} labels, or another order)")
    return init.model


def _init_geo_head(head, config: TrainConfig, labels: list[str]) -> None:
    """Start the post-processing geo net from a presence-only geo model (trainer.geoprior)."""
    geo = load_run(config.geo_init)
    if geo.config.model != "geoprior":
        raise RunError(f"--geo-init {config.geo_init} is a {geo.config.model} run; it must be a geoprior run")
    if geo.labels != labels:
        raise RunError(f"--geo-init {config.geo_init} has other labels than {config.data} "
                       f"({len(geo.labels)} vs {len(labels)}, or another order)")
    if (geo.config.encoding, geo.config.geo_net) != (config.encoding, config.geo_net):
        raise RunError(f"--geo-init {config.geo_init} uses --encoding {geo.config.encoding} --geo-net "
                       f"{geo.config.geo_net}; pass the same to this run")
    models.init_geo_from(head, geo.model)


def build_models(config: TrainConfig, splits: Splits, state_dir: Path | None):
    """(model trained on logits, model saved as model.keras, train data, val data)."""
    num_classes = len(splits.labels)
    if config.model == "postprocess":
        image_model = _load_image_run(config, splits.labels)
        # The CNN runs once per image, here; the geo net trains on the cached logits. The cache is
        # keyed by the image model's file, so a retrained --init run is never served stale logits.
        key = sha256_file(Path(config.init) / MODEL_FILE)[:16]
        caches = {split: state_dir / f"logits-{split}-{key}.npz" if state_dir else None for split in ("train", "val")}
        train_cache = cached_logits(image_model, splits.train_eval, caches["train"], "image logits (train)")
        val_cache = cached_logits(image_model, splits.val, caches["val"], "image logits (val)")
        head = models.build_geo_head(num_classes, config.encoding, location_dropout=config.location_dropout,
                                     seed=config.seed, geo_net=config.geo_net)
        if config.geo_init:
            _init_geo_head(head, config, splits.labels)
        saved = models.build_postprocess_model(image_model, head)
        trained = keras.Model(head.input, head.output["logits"], name="geo_head_training")
        return (trained, saved, _logit_dataset(train_cache, config.batch_size, True, config.seed),
                _logit_dataset(val_cache, config.batch_size, False, config.seed))
    if config.model == "featuremod":
        image_model = (_load_image_run(config, splits.labels) if config.init else models.build_image_model(
            num_classes, config.backbone, config.image_size, config.alpha, config.weights_arg, config.dropout))
        saved = models.build_featuremod_model(image_model, config.encoding, config.modulated_layers, config.variant,
                                              config.location_dropout, seed=config.seed, geo_net=config.geo_net)
    else:
        saved = models.build_image_model(num_classes, config.backbone, config.image_size, config.alpha,
                                         config.weights_arg, config.dropout)
    trained = keras.Model(saved.input, saved.output["logits"], name=f"{saved.name}_training")
    return trained, saved, splits.train, splits.val


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: the best model so far -> model.keras + metrics.json, then the resume state.

    Order matters for crash safety: the resume state is written last, so after a crash the run
    redoes at most the epoch in progress; every file is replaced atomically."""

    def __init__(self, run_dir: Path, saved_model, manager, epoch_var, best_var, chief: bool):
        super().__init__()
        self.run_dir, self.saved_model, self.manager = run_dir, saved_model, manager
        self.epoch_var, self.best_var, self.chief = epoch_var, best_var, chief

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if VALIDATION_METRIC not in logs:
            raise RuntimeError(f"training logged no {VALIDATION_METRIC}; got {sorted(logs)}")
        score = float(logs[VALIDATION_METRIC])
        if score > float(self.best_var.numpy()):
            if self.chief:
                atomic_save_model(self.saved_model, self.run_dir / MODEL_FILE)
                atomic_write_json(self.run_dir / METRICS_FILE,
                                  {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
            self.best_var.assign(score)
        self.epoch_var.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


def _check_existing_run(run_dir: Path, config: TrainConfig) -> None:
    """The same command may continue a run (also with more --epochs); anything else is refused."""
    if not (run_dir / CONFIG_FILE).is_file():
        return
    old = read_config(run_dir)
    if old.replace(epochs=config.epochs) != config:
        changed = sorted(k for k, v in config.to_dict().items() if old.to_dict()[k] != v and k != "epochs")
        raise RunError(f"{run_dir} holds a run with another config (differs in {changed}); "
                       "rerun the same command to resume it, or choose another --out")


def _epochs_done(state_dir: Path) -> int:
    latest = tf.train.latest_checkpoint(state_dir) if state_dir.is_dir() else None
    return int(tf.train.load_variable(latest, "epoch/.ATTRIBUTES/VARIABLE_VALUE")) if latest else 0


def train(config: TrainConfig, run_dir, splits: Splits | None = None) -> dict:
    """Train (or resume) the run in `run_dir`; returns the best validation metrics."""
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
        trained, saved, train_data, val_data = build_models(config, splits, state_dir if chief else None)
        optimizer = config.optimizer.build(
            steps, models.geo_variables(trained) if config.model == "featuremod" else ())
        trained.compile(
            optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                     keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, len(splits.labels)), name="top5")])
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_val_accuracy")
        checkpoint = tf.train.Checkpoint(model=trained, optimizer=optimizer, epoch=epoch_var, best=best_var)
        manager = tf.train.CheckpointManager(checkpoint, state_dir, max_to_keep=1)
        if manager.latest_checkpoint:
            optimizer.build(trained.trainable_variables)  # slots must exist before they are restored
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()

    start = int(epoch_var.numpy())
    if start >= config.epochs:
        print(f"{run_dir}: all {config.epochs} epochs are done already")
    else:
        if start:
            print(f"{run_dir}: resuming after epoch {start} of {config.epochs}")
        trained.fit(train_data, validation_data=val_data, epochs=config.epochs, initial_epoch=start,
                    steps_per_epoch=steps, shuffle=False,  # the datasets shuffle themselves
                    verbose=1 if sys.stdout.isatty() else 2,
                    callbacks=[EpochCheckpoint(run_dir, saved, manager, epoch_var, best_var, chief)])
    if not chief:
        shutil.rmtree(state_dir, ignore_errors=True)
    metrics = run_dir / METRICS_FILE
    return json.loads(metrics.read_text(encoding="utf-8")) if metrics.is_file() else {}


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
    p.add_argument("--epochs", type=int, default=10)
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
    print(f"best {VALIDATION_METRIC} {metrics.get(VALIDATION_METRIC, float('nan')):.4f} "
          f"(epoch {metrics.get('epoch')}); run in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
