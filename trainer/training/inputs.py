"""What a training run reads: its training and tuning rows as `Splits`, from a data SPEC (through
trainer.data), from TFRecords written by `python -m trainer.prepare` (`tfrecords:DIR`), or, for
post-processing, from the image model's cached logits (`logit_splits`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from trainer.data.pipeline import make_dataset, make_dataset_from_tfrecords, read_tfrecord_index
from trainer.data.readers import load_split
from trainer.data.splits import tuning_split
from trainer.training.config import TrainConfig


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


def logit_splits(caches: dict, splits: Splits) -> Splits:
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
