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

import tensorflow as tf


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


def make_strategy(name: str = "default", tpu: str = "") -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            raise StrategyError(f"--strategy tpu: no TPU could be reached ({type(exc).__name__}: {exc}); "
                                "run on a TPU VM or pass --tpu NAME|grpc://ADDRESS") from None
        return tf.distribute.TPUStrategy(resolver)
    raise StrategyError(f"unknown strategy {name!r}; choose default, mirrored, multiworker or tpu")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (only one worker may, in multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())
