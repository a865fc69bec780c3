"""Geo model from observations alone (label + location, no images): location -> a logit f per label.

    python -m trainer.train --model geoprior --observations FILE --out RUN_DIR
        [--objective softmax|presence] [--encoding fourier] [--geo-net paper] [--epochs 20]
        [--batch-size 2048] [--lr 5e-4] [--pos-weight 2048] [--val-fraction 0.05] [--seed 0]

FILE is an observation file (.npz like the shared iNat500 file: train_locs as [lat, lon], train_ids,
taxon_ids, taxon_names; or a .csv with columns label, lat, lon) or any data SPEC the dataset readers load
(its train split's locations). Rows without a location are skipped.

Two objectives (the model, trainer.model.networks.build_geo_model, and mobile_sdk.geo_scores say what f means):

- `softmax` (the default): cross-entropy of softmax(f) on the observations' labels, the paper's
  post-processing loss with no image; softmax(f) is P(label | location). On held-out real
  observations it ranks labels best (the "Real geography" benchmark results).
- `presence`: SINR's "assume negative" loss with random background points (Cole et al. 2023);
  σ(f_j) is label j's own presence probability. For an observation (x, y) and a uniformly random
  point r on the sphere, the loss is, averaged over labels ("AN-full"):

    pos_weight * -log σ(f_y(x))  +  Σ_{j≠y} -log(1 - σ(f_j(x)))  +  Σ_j -log(1 - σ(f_j(r)))

RUN_DIR gets model.keras (best epoch on the held-out validation observations), config.json,
labels.txt and metrics.json, like every run; it exports as a geo bundle (the export command) and
starts a post-processing geo net (`trainer.train --model postprocess --geo-init RUN_DIR`).
A rerun of the same command trains again from scratch (runs take minutes); another config is refused.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_sdk.encoding import ENCODINGS
from mobile_sdk.geo import validate_locations
from mobile_sdk.geo_scores import GEO_OBJECTIVES, log_scores
from trainer.data.readers import load_split
from trainer.evaluation.metrics import top_k_hits

# The CLI's defaults: the geo net that ranks labels best on held-out real observations (the
# geography benchmark: softmax, the multi-scale encoding, the paper's MLP; Adam 5e-4 and batch 2048
# as SINR), with the epochs its seed spread trains (the best one on validation is kept).
DEFAULT_OBJECTIVE = "softmax"
DEFAULT_ENCODING_GEOPRIOR, DEFAULT_GEO_NET_GEOPRIOR = "fourier", "paper"
DEFAULT_EPOCHS = 20
DEFAULT_BATCH = 2048
DEFAULT_VAL_FRACTION = 0.05
VALIDATION_METRIC = "val_loglik"  # picks model.keras: mean log P(true label | location)


class ObservationError(ValueError):
    """An observation file that cannot be read: names the file and the problem."""


@dataclass(frozen=True)
class Observations:
    latlon: np.ndarray  # float64 [N, 2] degrees, all known
    labels: np.ndarray  # int32 [N]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Observations":
        return Observations(self.latlon[index], self.labels[index], self.label_names)


def _known_only(latlon, labels, names, source) -> Observations:
    try:
        locs, known = validate_locations(np.asarray(latlon, np.float64))
    except ValueError as exc:
        raise ObservationError(f"{source}: {exc}") from None
    if not known.any():
        raise ObservationError(f"{source}: no observation has a location")
    return Observations(locs[known], np.asarray(labels, np.int32)[known], list(names))


def _read_npz(path: Path) -> Observations:
    try:
        with np.load(path) as data:
            missing = sorted({"train_locs", "train_ids", "taxon_ids", "taxon_names"} - set(data.files))
            if missing:
                raise ObservationError(f"{path}: missing arrays {missing} (has {sorted(data.files)})")
            index = {int(t): i for i, t in enumerate(data["taxon_ids"].tolist())}
            ids = data["train_ids"].tolist()
            unknown = sorted({int(t) for t in ids} - set(index))
            if unknown:
                raise ObservationError(f"{path}: train_ids {unknown[:5]} are not in taxon_ids")
            labels = np.array([index[int(t)] for t in ids], dtype=np.int32)
            locs = np.asarray(data["train_locs"], np.float64)
            names = [str(n) for n in data["taxon_names"].tolist()]
    except (OSError, ValueError) as exc:
        if isinstance(exc, ObservationError):
            raise
        raise ObservationError(f"{path}: not a readable .npz observation file: {exc}") from None
    if locs.ndim != 2 or locs.shape[1] != 2 or len(locs) != len(labels):
        raise ObservationError(f"{path}: train_locs must be [N, 2] for N = {len(labels)} train_ids, got {locs.shape}")
    return _known_only(locs, labels, names, path)


def _read_csv(path: Path) -> Observations:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ObservationError(f"{path}: cannot read CSV: {exc}") from None
    if not rows or not {"label", "lat", "lon"} <= set(rows[0]):
        raise ObservationError(f"{path}: an observation CSV needs a header with columns label, lat, lon")
    names = sorted({r["label"] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    try:
        locs = np.array([[float(r["lat"] or "nan"), float(r["lon"] or "nan")] for r in rows])
    except ValueError as exc:
        raise ObservationError(f"{path}: a lat/lon is not a number: {exc}") from None
    return _known_only(locs, [index[r["label"]] for r in rows], names, path)


def load_observations(spec: str) -> Observations:
    """An observation file (.npz, .csv) or a data SPEC (its train split) -> known observations."""
    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        return _read_npz(path)
    if path.suffix == ".csv" and path.is_file():
        return _read_csv(path)
    data = load_split(spec, "train")
    return _known_only(np.stack([data.lat, data.lon], axis=1), data.labels, data.label_names, spec)


def split_by_observation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (kept, held-out) index arrays; every observation lands in exactly one."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def random_sphere_points(n: int, rng_uniform) -> "tf.Tensor":  # noqa: F821
    """n points uniform on the sphere, [lat, lon] degrees; rng_uniform(shape) -> U[0, 1)."""
    import tensorflow as tf

    u = rng_uniform((n, 2))
    lat = tf.asin(2.0 * u[:, 0] - 1.0) * (180.0 / math.pi)
    lon = 360.0 * u[:, 1] - 180.0
    return tf.stack([lat, lon], axis=1)


def assume_negative_loss(logits_obs, labels, logits_bg, pos_weight: float):
    """SINR's AN-full loss (module docstring), stable in logits: -log σ(f) = softplus(-f) and
    -log(1 - σ(f)) = softplus(f)."""
    import tensorflow as tf

    positive = tf.one_hot(labels, tf.shape(logits_obs)[-1], dtype=logits_obs.dtype)
    at_obs = positive * pos_weight * tf.nn.softplus(-logits_obs) + (1.0 - positive) * tf.nn.softplus(logits_obs)
    return tf.reduce_mean(at_obs) + tf.reduce_mean(tf.nn.softplus(logits_bg))


def label_probs(logits: np.ndarray, objective: str) -> np.ndarray:
    """P(label | location) of a geo model trained with `objective`: its scores (mobile_sdk.geo_scores)
    renormalised over labels (for presence, the presence-only prior of Mac Aodha et al. 2019)."""
    return np.exp(log_scores(log_scores(logits, objective), "softmax"))


def label_metrics(probs: np.ndarray, labels: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Mean log P(true label) (nats) and top-k (ties count against) of a [N, L] probability table."""
    true_p = probs[np.arange(len(labels)), labels]
    out = {"loglik": float(np.mean(np.log(np.maximum(true_p, 1e-12))))}
    out.update({f"top{k}": float(top_k_hits(probs, labels, min(k, probs.shape[1])).mean()) for k in ks})
    return out


def predict_logits(model, latlon, batch: int = 8192) -> np.ndarray:
    """[N, 2] degrees -> [N, L] logits."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(_with_blank_image(x), training=False)["logits"])
    latlon = np.asarray(latlon, np.float32)
    return np.concatenate([forward(latlon[i:i + batch]).numpy() for i in range(0, len(latlon), batch)]) \
        if len(latlon) else np.zeros((0, model.output["logits"].shape[-1]), np.float32)


def _with_blank_image(location):
    """A geo model's inputs: the location and the 1x1 image it ignores (trainer.model.networks.build_geo_model)."""
    import tensorflow as tf

    return {"image": tf.zeros((tf.shape(location)[0], 1, 1, 3), tf.uint8), "location": location}


def fit(obs: Observations, config, val: Observations | None = None, on_epoch=None, log=print,
        max_seconds: float | None = None):
    """Train a geo model on `obs` with config.geo_objective (config: a TrainConfig of model
    geoprior). Each epoch ends with on_epoch(epoch, model, metrics) when given; returns (model,
    [metrics per epoch]). Metrics: the mean training loss, the epoch's seconds and, with `val`,
    val_* label metrics of P(label | location) (label_probs).
    max_seconds: stop after the first epoch that ends past this training time (config.epochs caps it)."""
    import keras
    import tensorflow as tf

    from trainer.model.networks import build_geo_model

    keras.utils.set_random_seed(config.seed)
    num_labels = len(obs.label_names)
    objective = config.geo_objective
    model = build_geo_model(num_labels, config.encoding, config.geo_net, seed=config.seed, objective=objective)
    batch = config.batch_size
    steps = max(1, len(obs) // batch)  # drop the ragged last batch: one traced shape
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    optimizer = config.optimizer.build(steps)
    data = (tf.data.Dataset.from_tensor_slices((obs.latlon.astype(np.float32), obs.labels))
            .shuffle(len(obs), seed=config.seed, reshuffle_each_iteration=True).repeat()
            .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    generator = tf.random.Generator.from_seed(config.seed)
    pos_weight = float(config.pos_weight)

    @tf.function(jit_compile=False)
    def step(location, labels):
        with tf.GradientTape() as tape:
            if objective == "softmax":
                logits = model(_with_blank_image(location), training=True)["logits"]
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            else:
                background = random_sphere_points(tf.shape(location)[0], lambda s: generator.uniform(s))
                logits = model(_with_blank_image(tf.concat([location, background], 0)), training=True)["logits"]
                n = tf.shape(location)[0]
                loss = assume_negative_loss(logits[:n], labels, logits[n:], pos_weight)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    history, batches, start = [], iter(data), time.monotonic()
    for epoch in range(config.epochs):
        begin, total = time.monotonic(), 0.0
        for _ in range(steps):
            total += float(step(*next(batches)))
        metrics = {"epoch": epoch + 1, "loss": total / steps, "seconds": time.monotonic() - begin}
        if val is not None and len(val):
            scores = label_metrics(label_probs(predict_logits(model, val.latlon), objective), val.labels)
            metrics.update({f"val_{k}": v for k, v in scores.items()})
            metrics["val_accuracy"] = metrics["val_top1"]
        log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, model, metrics)
        if max_seconds is not None and time.monotonic() - start >= max_seconds:
            break
    return model, history


def train(config, run_dir, val_fraction: float = DEFAULT_VAL_FRACTION, log=print) -> dict:
    """Train the geoprior run `config` into run_dir; returns the best epoch's metrics."""
    from mobile_sdk.fileio import atomic_write_text
    from trainer.training.runs import (CONFIG_FILE, METRICS_FILE, MODEL_FILE, RunError, atomic_save_model,
                                       atomic_write_json, read_config, write_labels)

    if config.model != "geoprior":
        raise ValueError(f"trainer.training.geoprior trains model geoprior, got {config.model!r}")
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).is_file() and read_config(run_dir) != config:
        raise RunError(f"{run_dir} holds a run with another config; choose another --out")
    obs = load_observations(config.data)
    kept, held = split_by_observation(len(obs), val_fraction, config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, config.to_json() + "\n")
    write_labels(run_dir, obs.label_names)
    log(f"{len(kept):,} training and {len(held):,} validation observations of {len(obs.label_names)} labels")
    best = {}

    def keep_best(epoch, model, metrics):
        if not best or metrics[VALIDATION_METRIC] > best[VALIDATION_METRIC]:
            best.clear()
            best.update(metrics)
            atomic_save_model(model, run_dir / MODEL_FILE)
            atomic_write_json(run_dir / METRICS_FILE, {**metrics, "train_observations": int(len(kept)),
                                                       "val_observations": int(len(held)), "val_fraction": val_fraction})

    fit(obs.subset(kept), config, obs.subset(held), keep_best, log)
    return dict(best)


def parse_args(argv=None) -> argparse.Namespace:
    from trainer.model.networks import GEO_NETS
    from trainer.training.config import OPTIMIZERS

    p = argparse.ArgumentParser(prog="python -m trainer.train --model geoprior",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=("geoprior",))
    p.add_argument("--observations", required=True, metavar="FILE",
                   help="observations: .npz (like the shared iNat500 file), .csv (label,lat,lon) or a data SPEC")
    p.add_argument("--out", required=True, help="RUN_DIR")
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=GEO_OBJECTIVES,
                   help="softmax: P(label | location), ranks labels best (default); presence: each label's "
                   "own presence probability (assume-negative loss with random background points)")
    p.add_argument("--encoding", default=DEFAULT_ENCODING_GEOPRIOR, choices=ENCODINGS)
    p.add_argument("--geo-net", default=DEFAULT_GEO_NET_GEOPRIOR, choices=GEO_NETS)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--steps-per-epoch", type=int, help="cap the steps per epoch (smoke runs)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam")
    p.add_argument("--lr", type=float, help="default 5e-4")
    p.add_argument("--pos-weight", type=float, default=2048.0,
                   help="presence: weight of an observation's own label against the assume-negative terms")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="observations held out to pick the best epoch")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def config_from_args(args):
    import dataclasses

    from trainer.training.config import OptimizerConfig, TrainConfig

    optimizer = OptimizerConfig.for_model("geoprior")
    if args.optimizer and args.optimizer != optimizer.name:
        optimizer = OptimizerConfig.named(args.optimizer)
    if args.lr is not None:
        optimizer = dataclasses.replace(optimizer, learning_rate=args.lr)
    data = str(Path(args.observations).resolve()) if Path(args.observations).is_file() else args.observations
    return TrainConfig(data=data, model="geoprior", geo_objective=args.objective, encoding=args.encoding,
                       geo_net=args.geo_net,
                       pos_weight=args.pos_weight, optimizer=optimizer, epochs=args.epochs,
                       batch_size=args.batch_size, seed=args.seed, steps_per_epoch=args.steps_per_epoch)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        metrics = train(config_from_args(args), args.out, args.val_fraction)
    except ValueError as exc:  # config, observation file and run-folder errors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"best {VALIDATION_METRIC} {metrics.get(VALIDATION_METRIC, float('nan')):.4f} "
          f"(epoch {metrics.get('epoch')}, top-1 {metrics.get('val_top1', float('nan')):.1%}); run in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
