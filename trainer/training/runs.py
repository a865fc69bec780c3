"""Training runs on disk (docs/CONTRACTS.md): atomic writes and `load_run`.

RUN_DIR/model.keras (best on the tuning rows), config.json, labels.txt, metrics.json, state/ (resume).
Every file is written to a temporary name in the same folder and renamed, so a reader, or a
crashed writer, never sees a half-written file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras

from mobile_sdk.bundle import LABELS_FILE
from mobile_sdk.bundle import write_labels as bundle_write_labels
from mobile_sdk.fileio import atomic_file, atomic_write_text
import trainer.model.layers  # noqa: F401  (registers the custom layers for load_model)
from trainer.training.config import TrainConfig

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
STATE_DIR = "state"


class RunError(ValueError):
    """A run folder that is missing files or holds malformed ones."""


@dataclass(frozen=True)
class Run:
    model: keras.Model
    config: TrainConfig
    labels: list[str]
    metrics: dict
    path: Path


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_model(model: keras.Model, path) -> None:
    """model.save to a temporary .keras file next to `path`, then rename."""
    with atomic_file(path, suffix=".keras") as tmp:
        model.save(tmp)


def write_labels(run_dir, labels) -> None:
    # A run's labels.txt has the bundle's format (export copies it), so one writer validates both.
    bundle_write_labels(run_dir, labels)


def read_labels(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def read_config(run_dir) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run: {CONFIG_FILE} is missing")
    try:
        return TrainConfig.from_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunError(f"{path}: {exc}") from None


def load_run(run_dir, compile: bool = False) -> Run:
    """The best model of a finished (or interrupted, after its first epoch) training run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    config = read_config(run_dir)
    for name in (MODEL_FILE, LABELS_FILE):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir} has no {name}: no epoch has finished yet, or it is not a run folder")
    labels = read_labels(run_dir / LABELS_FILE)
    metrics_path = run_dir / METRICS_FILE
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise RunError(f"{metrics_path} is not valid JSON: {exc}") from None
    try:
        model = keras.models.load_model(run_dir / MODEL_FILE, compile=compile)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise RunError(f"{run_dir / MODEL_FILE} cannot be loaded: {exc}") from exc
    classes = model.output["logits"].shape[-1]
    if classes != len(labels):
        raise RunError(f"{run_dir}: the model has {classes} outputs but {LABELS_FILE} has {len(labels)} labels")
    return Run(model=model, config=config, labels=labels, metrics=metrics, path=run_dir)
