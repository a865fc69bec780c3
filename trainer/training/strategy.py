"""`--strategy`: TensorFlow's own distribution engines.

- default: one device (whatever TensorFlow picks);
- mirrored: MirroredStrategy, synchronous data parallelism over the local GPUs (or logical CPUs);
- multiworker: MultiWorkerMirroredStrategy; every worker runs the same command with its own
  TF_CONFIG (https://www.tensorflow.org/guide/distributed_training#TF_CONFIG);
- tpu: TPUStrategy, only where a TPU cluster resolver finds a TPU (`--tpu NAME|grpc://ADDR`).
"""
from __future__ import annotations

import json
import os
import threading

import tensorflow as tf


TPU_CONNECT_TIMEOUT_S = 60.0


class StrategyError(ValueError):
    """A strategy that cannot be built here, with the reason."""


def _check_tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError("--strategy multiworker needs the TF_CONFIG environment variable "
                            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                            '"task": {"type": "worker", "index": 0}})')
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise StrategyError(f"TF_CONFIG needs 'cluster' and 'task' entries, got {raw!r}")
    return config


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    """TPUStrategy, or a StrategyError within TPU_CONNECT_TIMEOUT_S: a reachable address that is not a
    TPU (or a TPU that never answers) would otherwise block in initialize_tpu_system forever."""
    outcome = {}

    def connect():
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            outcome["resolver"] = resolver
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    # A daemon thread: a connection that hangs must not keep the process alive after the error.
    thread = threading.Thread(target=connect, name="tpu-connect", daemon=True)
    thread.start()
    thread.join(TPU_CONNECT_TIMEOUT_S)
    if thread.is_alive():
        outcome["error"] = f"{tpu or 'the default TPU'} did not answer within {TPU_CONNECT_TIMEOUT_S:g} s"
    if "resolver" not in outcome:
        raise StrategyError(f"--strategy tpu: no TPU could be reached ({outcome['error']}); "
                            "run on a TPU VM or pass --tpu NAME|grpc://ADDRESS")
    return tf.distribute.TPUStrategy(outcome["resolver"])


def make_strategy(name: str = "default", tpu: str = "") -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise StrategyError(f"unknown strategy {name!r}; choose default, mirrored, multiworker or tpu")


def is_multiworker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _assign_reduced(strategy, variables, replica_value, op):
    """A tf.function that sets every variable, on every replica, to `op` over the replicas'
    `replica_value(variable)` (computed in replica context, where a variable reads its local copy)."""
    variables = list(variables)

    @tf.function
    def assign():
        values = strategy.run(lambda: [replica_value(v) for v in variables])
        for variable, value in zip(variables, values):
            variable.assign(tf.cast(strategy.reduce(op, value, axis=None), variable.dtype))

    return assign


def sync_from_chief(strategy: tf.distribute.Strategy, variables) -> None:
    """Give every worker the first replica's (the chief's) values of `variables`.

    Only the chief keeps resume state, so after a restart only its restore finds a checkpoint; this
    broadcast (an all-reduce SUM of replica 0's values and zeros elsewhere) hands them to the others.
    Values travel as float64, exact for float32 weights and integer counters below 2**53."""

    def chief_only(variable):
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.where(first, tf.cast(variable, tf.float64), tf.zeros_like(variable, tf.float64))

    _assign_reduced(strategy, variables, chief_only, tf.distribute.ReduceOp.SUM)()


def replica_averager(strategy: tf.distribute.Strategy, variables):
    """A callable that replaces `variables` by their mean over the replicas. For statistics each
    replica updates from its own batches only (BatchNormalization's moving mean and variance: Keras 3
    creates them without an aggregation, so every replica keeps its own copy); averaging them
    after each epoch gives every worker the same, whole-batch statistics."""
    variables = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    if strategy.num_replicas_in_sync == 1 or not variables:
        return lambda: None
    return _assign_reduced(strategy, variables, tf.convert_to_tensor, tf.distribute.ReduceOp.MEAN)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (only one worker may, in multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())
