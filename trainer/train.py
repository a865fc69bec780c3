"""Train image-only, post-processing or feature-modulation models; resumable.

    python -m trainer.train --data SPEC --model image|postprocess|featuremod --out RUN_DIR
        [--backbone mobilenet_v2|inception_v3] [--init RUN_DIR] [--weights imagenet|PATH|none]
        [--strategy default|mirrored|multiworker|tpu] [--epochs N] [--image-size N] [--alpha A] ...

RUN_DIR gets model.keras (the epoch with the best top-1 on the tuning rows, a held-out part of
train that is never reported; for post-processing the lowest tuning loss), config.json, labels.txt,
metrics.json and state/ (docs/CONTRACTS.md). Training stops when that plateaus (--patience) or at
--epochs. Every epoch ends with an
atomic checkpoint, so after a crash or kill -9 the same command continues from the last completed
epoch. docs/training.md has the details.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import tensorflow as tf

from mobile_sdk.bundle import MODEL_KINDS
from mobile_sdk.encoding import DEFAULT_ENCODING, ENCODINGS
from trainer.data.splits import DEFAULT_TUNE_FRACTION
from trainer.model import networks
from trainer.model.layers import VARIANTS
from trainer.training.config import (GEO_LR_MULTIPLIER, OPTIMIZERS, POSTPROCESS_PATIENCE, STRATEGIES, OptimizerConfig,
                                     TrainConfig)
from trainer.training.loop import train, tune_metric
from trainer.training.runs import RunError, read_config


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
    p.add_argument("--model", required=True, choices=MODEL_KINDS)
    p.add_argument("--out", required=True, help="RUN_DIR; rerunning the same command resumes it")
    p.add_argument("--backbone", choices=networks.BACKBONES, help="default: the --init run's, else mobilenet_v2")
    p.add_argument("--init", help="image-only RUN_DIR to start from (required for postprocess)")
    p.add_argument("--weights", default="none", help="backbone weights when not --init: imagenet|PATH|none")
    p.add_argument("--strategy", default="default", choices=STRATEGIES)
    p.add_argument("--tpu", default="", help="TPU name or grpc:// address for --strategy tpu")
    p.add_argument("--epochs", type=int, default=10, help="the most epochs; training stops earlier on a plateau")
    p.add_argument("--patience", type=int,
                   help="stop after this many epochs without a better top-1 on the tuning rows (for postprocess: "
                        f"a lower tuning loss; default {POSTPROCESS_PATIENCE} for postprocess, whose epochs take "
                        "seconds and whose tuning metrics are noisy while its loss still falls; else 3)")
    p.add_argument("--tune", help="data SPEC whose split 'tune' picks the epoch (default: hold out --tune-fraction "
                                  "of train, seeded and label-stratified); never trained on nor reported")
    p.add_argument("--tune-fraction", type=float, default=DEFAULT_TUNE_FRACTION)
    p.add_argument("--steps-per-epoch", type=int, help="cap the steps per epoch (smoke runs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, help="default: the --init run's, else 224")
    p.add_argument("--alpha", type=float, help="MobileNet V2 width; default: the --init run's, else 1.0")
    p.add_argument("--encoding", default=DEFAULT_ENCODING, choices=ENCODINGS)
    p.add_argument("--geo-net", default=networks.DEFAULT_GEO_NET, choices=networks.GEO_NETS,
                   help="geo network: the paper's MLP or SINR's residual net")
    p.add_argument("--geo-init", metavar="RUN_DIR",
                   help="postprocess: start the geo net from this geoprior run (same labels, encoding, geo net); "
                        "featuremod: add this post-processing run's geo logits (same --init) to the modulated "
                        "network's, so it starts at post-processing's accuracy (the hybrid)")
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
        from trainer.training import geoprior  # observations, no images (its own trainer)

        return geoprior.main(argv)
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        metrics = train(config, args.out)
    except ValueError as exc:  # config, data, run-folder and strategy errors are all ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except tf.errors.UnavailableError as exc:  # multi-worker: a peer stopped (kill -9, crash, preemption)
        lines = [line for line in exc.message.splitlines() if line.strip()] or [type(exc).__name__]
        print(f"error: {next((line for line in lines if 'aborted by' in line), lines[0])}\n"
              "A worker of the cluster stopped: start every worker again with the same command; "
              "training resumes after the last completed epoch", file=sys.stderr)
        return 3
    if not metrics:  # a non-chief worker of multi-worker training: the chief wrote the run
        print("worker finished; the chief worker writes the run folder")
        return 0
    metric = tune_metric(config.model)
    print(f"kept epoch {metrics.get('epoch')} of {metrics.get('epochs_done')} "
          f"({metric} {metrics.get(metric, float('nan')):.4f} on {metrics.get('tune_size')} tuning rows); "
          f"run in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
