"""The models a training config builds: the one that trains and the one saved as model.keras, from
scratch or from the runs `--init` and `--geo-init` name (each refused unless it fits this run)."""
from __future__ import annotations

from pathlib import Path

import keras

from mobile_sdk.fileio import sha256_file
from trainer.evaluation.inference import cached_logits
from trainer.model import networks
from trainer.training.config import TrainConfig
from trainer.training.inputs import Splits, logit_splits
from trainer.training.runs import MODEL_FILE, RunError, load_run


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
        return trained, saved, logit_splits(caches, splits)
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
