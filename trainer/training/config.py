"""Training configuration: frozen dataclasses, validated at construction, saved as RUN_DIR/config.json
with every run and round-trippable (`TrainConfig.from_json(cfg.to_json()) == cfg`).

Smoke run (seconds, on a world from `python -m trainer.world --preset tiny --out /tmp/world`):
    python -m trainer.train --data /tmp/world --model image --image-size 32 --alpha 0.35 --epochs 1 --out /tmp/run_image
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import keras

from mobile_sdk.bundle import MODEL_KINDS
from mobile_sdk.encoding import DEFAULT_ENCODING, ENCODINGS
from mobile_sdk.geo_scores import GEO_OBJECTIVES
from trainer.data.splits import DEFAULT_TUNE_FRACTION
from trainer.model.layers import DEFAULT_VARIANT, VARIANTS
from trainer.model.networks import BACKBONES, DEFAULT_GEO_NET, GEO_NETS, MIN_IMAGE_SIZE, default_modulated_layers

OPTIMIZERS = ("sgd", "rmsprop", "adam")
STRATEGIES = ("default", "mirrored", "multiworker", "tpu")
FORMAT_VERSION = 1


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"invalid config field {field_name!r}: {message}")


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and step-decay schedule: lr * decay_rate ** floor(epoch / decay_epochs)."""
    name: str = "adam"
    learning_rate: float = 1e-3
    decay_rate: float = 1.0  # 1.0 = no decay
    decay_epochs: float = 1.0
    momentum: float = 0.0
    rho: float = 0.9  # rmsprop only
    epsilon: float = 1e-7
    # Feature modulation: the learning rate of the parameters it adds to the --init image model
    # (geo net, modulation FCs) is learning_rate * geo_lr_multiplier; the backbone keeps
    # learning_rate. 1.0 = one rate for all. See docs/training.md for the measurements.
    geo_lr_multiplier: float = 1.0

    def __post_init__(self):
        _require(self.name in OPTIMIZERS, "optimizer.name", f"{self.name!r} is not one of {OPTIMIZERS}")
        _require(self.learning_rate > 0 and math.isfinite(self.learning_rate), "optimizer.learning_rate",
                 f"must be a positive finite number, got {self.learning_rate}")
        _require(0 < self.decay_rate <= 1, "optimizer.decay_rate", f"must be in (0, 1], got {self.decay_rate}")
        _require(self.decay_epochs > 0, "optimizer.decay_epochs", f"must be > 0, got {self.decay_epochs}")
        _require(0 <= self.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(0 < self.rho < 1, "optimizer.rho", f"must be in (0, 1), got {self.rho}")
        _require(self.epsilon > 0, "optimizer.epsilon", f"must be > 0, got {self.epsilon}")
        _require(self.geo_lr_multiplier > 0 and math.isfinite(self.geo_lr_multiplier), "optimizer.geo_lr_multiplier",
                 f"must be a positive finite number, got {self.geo_lr_multiplier}")

    @classmethod
    def named(cls, name: str) -> "OptimizerConfig":
        """Plain defaults of one optimizer (no decay), for `--optimizer NAME`."""
        if name == "sgd":
            return cls(name="sgd", learning_rate=0.01, momentum=0.9)
        return cls(name=name, learning_rate=1e-3)

    @classmethod
    def for_model(cls, model: str) -> "OptimizerConfig":
        """Paper defaults for the geo models; Adam for training the image model from scratch."""
        if model == "postprocess":
            # Paper: LR 0.02 without decay; the optimizer is not stated, we use SGD + momentum.
            return cls(name="sgd", learning_rate=0.02, momentum=0.9)
        if model == "geoprior":
            # SINR's optimizer and rate (Cole et al. 2023) for its batch of 2048.
            return cls(name="adam", learning_rate=5e-4)
        if model == "featuremod":
            # Paper: RMSprop 0.0045, x0.94 every 4 epochs; rho/momentum/epsilon are the TF-slim
            # settings of the iNat baseline it starts from. Ours (measured, docs/training.md): the
            # pretrained backbone at half that rate, the new geo parameters at 20x it (0.045).
            return cls(name="rmsprop", learning_rate=FEATUREMOD_BACKBONE_LR, decay_rate=0.94, decay_epochs=4.0,
                       momentum=0.9, rho=0.9, epsilon=1.0, geo_lr_multiplier=GEO_LR_MULTIPLIER)
        return cls()

    def schedule(self, steps_per_epoch: int):
        """The learning rate: a float, or a staircase decay every decay_epochs epochs."""
        if self.decay_rate == 1.0:
            return self.learning_rate
        return keras.optimizers.schedules.ExponentialDecay(
            self.learning_rate, decay_steps=max(1, round(self.decay_epochs * steps_per_epoch)),
            decay_rate=self.decay_rate, staircase=True)

    def build(self, steps_per_epoch: int, geo_variables=()) -> keras.optimizers.Optimizer:
        """The optimizer; `geo_variables` (the variables a feature-modulation model adds to its image
        model) are updated with learning_rate * geo_lr_multiplier."""
        lr = self.schedule(steps_per_epoch)
        if self.name == "sgd":
            cls, kwargs = keras.optimizers.SGD, dict(momentum=self.momentum)
        elif self.name == "rmsprop":
            cls, kwargs = keras.optimizers.RMSprop, dict(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon)
        else:
            cls, kwargs = keras.optimizers.Adam, dict(epsilon=self.epsilon)
        geo_variables = list(geo_variables)
        if self.geo_lr_multiplier == 1.0 or not geo_variables:
            return cls(lr, **kwargs)
        return _with_geo_lr(cls)(lr, geo_paths=[v.path for v in geo_variables],
                                 geo_lr_multiplier=self.geo_lr_multiplier, **kwargs)


# A post-processing epoch is a pass over cached logits (about a second). At the paper's constant
# rate its tuning loss still falls after 100 epochs, in steps with noisy epochs between; with its
# top-1 and a patience of 10 it stopped at epoch 49 (kept 39), 3.6 points below the oracle on the
# demo world; on its tuning loss with 30 it reached the oracle (docs/training.md).
POSTPROCESS_PATIENCE = 30


# Measured on the demo world (docs/training.md): with one rate the geo net learns too slowly in a
# short fine-tuning run, and raising the rate for everything (or even the paper's rate with a fast
# geo net) moves the backbone away from the image model: the location-unknown path degrades.
FEATUREMOD_BACKBONE_LR = 0.00225
GEO_LR_MULTIPLIER = 20.0


def _with_geo_lr(base: type) -> type:
    """`base` optimizer whose update of the variables at `geo_paths` uses lr * geo_lr_multiplier
    (Keras has no per-variable learning rate; exact for every optimizer, unlike scaling gradients,
    which Adam and RMSprop normalise away)."""

    class GeoLR(base):
        def __init__(self, *args, geo_paths=(), geo_lr_multiplier=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self._geo_paths, self._geo_lr_multiplier = frozenset(geo_paths), float(geo_lr_multiplier)
            self._geo_indices = frozenset()

        def build(self, var_list):
            if not self.built:
                self._geo_indices = frozenset(i for i, v in enumerate(var_list) if v.path in self._geo_paths)
            super().build(var_list)

        def update_step(self, gradient, variable, learning_rate):
            # Traced once per variable, so this Python branch costs nothing per step.
            if self._get_variable_index(variable) in self._geo_indices:
                learning_rate = learning_rate * self._geo_lr_multiplier
            super().update_step(gradient, variable, learning_rate)

    GeoLR.__name__ = f"{base.__name__}GeoLR"
    return GeoLR


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Fields left None get the model kind's default."""
    data: str
    model: str = "image"
    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    image_size: int = 224
    weights: str = "none"  # imagenet | none | PATH (backbone weights, used when not --init)
    init: str | None = None  # image-only RUN_DIR; required for postprocess, recommended for featuremod
    encoding: str = DEFAULT_ENCODING
    geo_net: str = DEFAULT_GEO_NET  # paper (256-128-128 / 128-256) | residual (SINR); trainer.model.networks.GEO_NETS
    # postprocess: a geoprior RUN_DIR whose geo net starts the head; featuremod: a postprocess
    # RUN_DIR (from the same --init) whose geo head is added to the logits (the hybrid)
    geo_init: str | None = None
    # geoprior (trainer.training.geoprior): the training objective, softmax (cross-entropy over
    # labels) or presence (assume-negative); a run whose config lacks it was trained presence-only,
    # the only objective then (the CLI's default is softmax, the better one on real observations).
    geo_objective: str = "presence"
    # geoprior presence: the weight of an observation's own label against the 'assume negative'
    # terms of every other label and of the random background points.
    pos_weight: float = 2048.0
    modulated_layers: tuple[str, ...] | None = None
    variant: str = DEFAULT_VARIANT
    location_dropout: float | None = None
    dropout: float = 0.2
    optimizer: OptimizerConfig | None = None
    epochs: int = 10  # the cap: training stops earlier on a plateau of the tuning top-1
    patience: int | None = None  # epochs without a better tuning top-1 before stopping; None: the kind's
    # Tuning rows pick the epoch and stop training; they are never trained on nor reported. By
    # default a seeded, label-stratified tune_fraction of train (trainer.data.splits); `tune` names a
    # data SPEC whose split "tune" is used instead.
    tune: str | None = None
    tune_fraction: float = DEFAULT_TUNE_FRACTION
    batch_size: int = 32
    seed: int = 0
    strategy: str = "default"
    tpu: str = ""  # TPU name or grpc address for --strategy tpu ("" = the environment's default)
    steps_per_epoch: int | None = None  # cap, for smoke runs; None = the whole training set
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        _require(isinstance(self.data, str) and self.data != "", "data", "a data SPEC is required")
        _require(self.model in MODEL_KINDS, "model", f"{self.model!r} is not one of {MODEL_KINDS}")
        _require(self.backbone in BACKBONES, "backbone", f"{self.backbone!r} is not one of {BACKBONES}")
        _require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        _require(self.backbone == "mobilenet_v2" or self.alpha == 1.0, "alpha",
                 f"applies to mobilenet_v2 only; inception_v3 needs 1.0, got {self.alpha}")
        _require(isinstance(self.image_size, int) and self.image_size >= MIN_IMAGE_SIZE[self.backbone],
                 "image_size", f"{self.backbone} needs an int >= {MIN_IMAGE_SIZE[self.backbone]}, got {self.image_size}")
        _require(isinstance(self.weights, str) and self.weights != "", "weights", "use imagenet, none or a PATH")
        _require(self.model != "postprocess" or self.init, "init",
                 "post-processing needs --init RUN_DIR of a trained image-only model")
        _require(self.model not in ("image", "geoprior") or not self.init, "init",
                 "applies to postprocess and featuremod only")
        _require(self.geo_net in GEO_NETS, "geo_net", f"{self.geo_net!r} is not one of {GEO_NETS}")
        _require(self.geo_init is None or self.model in ("postprocess", "featuremod"), "geo_init",
                 "applies to postprocess and featuremod only")
        _require(self.geo_init is None or self.model != "featuremod" or self.init, "init",
                 "the hybrid (featuremod --geo-init) needs --init: the image run its post-processing run started from")
        _require(self.geo_objective in GEO_OBJECTIVES, "geo_objective",
                 f"{self.geo_objective!r} is not one of {GEO_OBJECTIVES}")
        _require(self.pos_weight > 0 and math.isfinite(self.pos_weight), "pos_weight",
                 f"must be a positive finite number, got {self.pos_weight}")
        _require(self.encoding in ENCODINGS, "encoding", f"{self.encoding!r} is not one of {ENCODINGS}")
        _require(self.variant in VARIANTS, "variant", f"{self.variant!r} is not one of {sorted(VARIANTS)}")
        if self.modulated_layers is None:
            object.__setattr__(self, "modulated_layers", default_modulated_layers(self.backbone))
        object.__setattr__(self, "modulated_layers", tuple(self.modulated_layers))
        _require(len(self.modulated_layers) > 0 and all(isinstance(n, str) for n in self.modulated_layers),
                 "modulated_layers", "need at least one layer name")
        if self.location_dropout is None:
            # Post-processing is exact without a location (geo logits gated to 0), so dropping
            # locations would only discard training signal; feature modulation must learn it.
            object.__setattr__(self, "location_dropout", 0.1 if self.model == "featuremod" else 0.0)
        # 1 drops every location: the equal-epochs image control of feature modulation (docs/evaluation.md)
        _require(0 <= self.location_dropout <= 1, "location_dropout", f"must be in [0, 1], got {self.location_dropout}")
        _require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.optimizer is None:
            object.__setattr__(self, "optimizer", OptimizerConfig.for_model(self.model))
        elif isinstance(self.optimizer, dict):
            object.__setattr__(self, "optimizer", OptimizerConfig(**self.optimizer))
        _require(isinstance(self.optimizer, OptimizerConfig), "optimizer", "must be an OptimizerConfig")
        _require(self.tune is None or (isinstance(self.tune, str) and self.tune != ""), "tune",
                 "must be None or a data SPEC")
        _require(0 < self.tune_fraction < 1, "tune_fraction", f"must be in (0, 1), got {self.tune_fraction}")
        if self.patience is None:
            object.__setattr__(self, "patience", POSTPROCESS_PATIENCE if self.model == "postprocess" else 3)
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, name, f"must be an int >= 1, got {value!r}")
        _require(self.steps_per_epoch is None or (isinstance(self.steps_per_epoch, int) and self.steps_per_epoch >= 1),
                 "steps_per_epoch", f"must be None or an int >= 1, got {self.steps_per_epoch!r}")
        _require(isinstance(self.seed, int), "seed", f"must be an int, got {self.seed!r}")
        _require(self.strategy in STRATEGIES, "strategy", f"{self.strategy!r} is not one of {STRATEGIES}")
        _require(self.format_version == FORMAT_VERSION, "format_version",
                 f"this trainer reads version {FORMAT_VERSION}, got {self.format_version}")

    @property
    def weights_arg(self) -> str | None:
        """`weights` as keras.applications takes it."""
        return None if self.weights == "none" else self.weights

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["modulated_layers"] = list(self.modulated_layers)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ValueError(f"a TrainConfig must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(values) - known)
        if extra:
            raise ValueError(f"unknown config fields {extra}; known fields are {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("optimizer"), dict):
            opt = values["optimizer"]
            opt_known = {f.name for f in dataclasses.fields(OptimizerConfig)}
            if set(opt) - opt_known:
                raise ValueError(f"unknown optimizer fields {sorted(set(opt) - opt_known)}")
            values["optimizer"] = OptimizerConfig(**opt)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc}") from None
        return cls.from_dict(values)
