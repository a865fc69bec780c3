"""One distributed training and evaluation step for every --strategy (`DistributedSteps`)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


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
