"""The three model kinds of the paper on either backbone, all with the same interface
(docs/CONTRACTS.md): inputs {"image": uint8 [H, W, 3], "location": float32 [2]} and outputs
{"probabilities", "logits"}; post-processing also outputs "vision_logits" and "geo_logits".

- image only: keras.applications backbone + global pooling + dropout + Dense logits;
- post-processing: the frozen image model's logits + a geo net's logits (GUIDE §1);
- feature modulation: the image model's own layer objects rewired with FeatureModulation after the
  chosen blocks (eq. 4), so it starts from the image-only weights.
"""
from __future__ import annotations

import os

import keras

from mobile_sdk.encoding import DEFAULT_ENCODING
from mobile_sdk.geo_scores import GEO_OBJECTIVES
from trainer.model.layers import (DEFAULT_VARIANT, FeatureModulation, GateByKnown, KnownFlag,
                                  LocationDropout, LocationEncoder, PixelScaling)

BACKBONES = ("mobilenet_v2", "inception_v3")
# The geo network: the paper's plain MLP, or SINR's residual net (Cole et al. 2023; iNaturalist's
# geomodel): a wide first layer, then blocks of two layers with dropout added back to their input.
GEO_NETS = ("paper", "residual")
DEFAULT_GEO_NET = "paper"
RESIDUAL_WIDTH, RESIDUAL_BLOCKS, RESIDUAL_DROPOUT = 256, 4, 0.5
POSTPROCESS_GEO_UNITS = (256, 128, 128)
FEATUREMOD_GEO_UNITS = (128, 256)
# keras.applications refuses smaller inputs.
MIN_IMAGE_SIZE = {"mobilenet_v2": 32, "inception_v3": 75}

# Layer names inside the keras.applications backbones.
_BACKBONE_NAME = "backbone"
_HEAD_LAYERS = ("avg_pool", "head_dropout", "classifier")


def default_modulated_layers(backbone: str) -> tuple[str, ...]:
    """Middle and high blocks. MobileNet V2: the last post-activation tensor of inverted-bottleneck
    blocks 3-16 (stride >= 8; blocks 0-2 hold edge-level features). Inception V3: the output of
    every Inception module, mixed0-mixed10, as in the paper (§5.3)."""
    check_backbone(backbone)
    if backbone == "mobilenet_v2":
        return tuple(f"block_{i}_depthwise_relu" for i in range(3, 17))
    return tuple(f"mixed{i}" for i in range(11))


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


class WeightsUnavailableError(ValueError):
    """`weights="imagenet"` could not be downloaded; the message says how to pass a local file."""


def build_backbone(backbone: str = "mobilenet_v2", image_size: int = 224, alpha: float = 1.0,
                   weights: str | None = None, bn_momentum: float | None = None) -> keras.Model:
    """keras.applications feature extractor (no top) on float inputs in [-1, 1].

    bn_momentum replaces the applications' 0.999 (MobileNet V2), whose moving statistics need
    thousands of steps to settle: short runs would evaluate with near-initial statistics.

    weights: None (random), "imagenet" (Keras's own download and cache) or a path to a weights file
    for exactly this architecture.
    """
    check_backbone(backbone)
    if image_size < MIN_IMAGE_SIZE[backbone]:
        raise ValueError(f"image_size {image_size} is below {backbone}'s minimum {MIN_IMAGE_SIZE[backbone]}")
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise ValueError(f"weights must be None, 'imagenet' or an existing file, got {weights!r}")
    shape = (image_size, image_size, 3)
    if backbone != "mobilenet_v2" and alpha != 1.0:
        raise ValueError(f"alpha applies to mobilenet_v2 only; inception_v3 needs alpha=1.0, got {alpha}")
    application = keras.applications.MobileNetV2 if backbone == "mobilenet_v2" else keras.applications.InceptionV3
    options = dict(alpha=alpha) if backbone == "mobilenet_v2" else {}
    try:
        model = application(input_shape=shape, include_top=False, weights=weights, **options)
    except Exception as exc:  # keras.utils.get_file raises a bare Exception("URL fetch failure on ...")
        if weights == "imagenet" and "URL fetch failure" in str(exc):
            raise WeightsUnavailableError(
                f"could not download the ImageNet weights of {backbone} (no internet?): {exc}. Pass a local "
                "weights file of the same backbone instead: --weights PATH") from None
        raise
    model.name = _BACKBONE_NAME
    if bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return model


def _inputs(image_size: int) -> dict:
    return {"image": keras.Input((image_size, image_size, 3), dtype="uint8", name="image"),
            "location": keras.Input((2,), dtype="float32", name="location")}


def _named_outputs(logits, **extra) -> dict:
    return {"probabilities": keras.layers.Softmax(name="probabilities")(logits), "logits": logits, **extra}


def build_image_model(num_classes: int, backbone: str = "mobilenet_v2", image_size: int = 224,
                      alpha: float = 1.0, weights: str | None = None, dropout: float = 0.2,
                      bn_momentum: float | None = 0.9) -> keras.Model:
    """Image only. Takes the location input too (and ignores it) so every model is interchangeable."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    inputs = _inputs(image_size)
    x = PixelScaling(name="pixel_scaling")(inputs["image"])
    x = build_backbone(backbone, image_size, alpha, weights, bn_momentum)(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, _named_outputs(logits), name="image_only")


def _geo_net(location, encoding, units, location_dropout, seed, prefix, geo_net=DEFAULT_GEO_NET):
    """location -> (geo features, known flag [B, 1]). `units` applies to the paper's net only;
    `location_dropout` None takes `location` as already dropped (by the caller's LocationDropout)."""
    if geo_net not in GEO_NETS:
        raise ValueError(f"unknown geo net {geo_net!r}; choose one of {GEO_NETS}")
    if location_dropout is not None:
        location = LocationDropout(location_dropout, seed=seed, name=f"{prefix}_location_dropout")(location)
    encoded = LocationEncoder(encoding, name=f"{prefix}_location_encoder")(location)
    x = encoded
    if geo_net == "paper":
        for i, n in enumerate(units):
            x = keras.layers.Dense(n, activation="relu", name=f"{prefix}_fc{i + 1}")(x)
    else:
        x = keras.layers.Dense(RESIDUAL_WIDTH, activation="relu", name=f"{prefix}_fc1")(x)
        for b in range(RESIDUAL_BLOCKS):
            y = keras.layers.Dense(RESIDUAL_WIDTH, activation="relu", name=f"{prefix}_res{b + 1}_fc1")(x)
            y = keras.layers.Dropout(RESIDUAL_DROPOUT, seed=seed, name=f"{prefix}_res{b + 1}_dropout")(y)
            y = keras.layers.Dense(RESIDUAL_WIDTH, activation="relu", name=f"{prefix}_res{b + 1}_fc2")(y)
            x = keras.layers.Add(name=f"{prefix}_res{b + 1}")([x, y])
    return x, KnownFlag(name=f"{prefix}_known")(encoded)


def _gated_geo_logits(location, num_classes, encoding, units, location_dropout, seed, geo_net):
    """location -> per-label geo logits, exactly 0 for an unknown location (prefix `geo`, so a
    presence-only geo model and a post-processing head share layer names and weights)."""
    geo, known = _geo_net(location, encoding, units, location_dropout, seed, "geo", geo_net)
    geo = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="geo_logits_dense")(geo)
    return GateByKnown(name="geo_logits")([geo, known])


def build_geo_head(num_classes: int, encoding: str = DEFAULT_ENCODING, units=POSTPROCESS_GEO_UNITS,
                   location_dropout: float = 0.0, seed: int | None = None,
                   geo_net: str = DEFAULT_GEO_NET) -> keras.Model:
    """The post-processing geo net on (vision_logits, location): logits = vision_logits + geo_logits.

    Trained alone on cached image logits. The geo logits layer starts at zero, so training starts
    from exactly the image-only ranking (unless initialised from a geo model, init_geo_from); an
    unknown location keeps geo_logits exactly 0.
    """
    vision = keras.Input((num_classes,), dtype="float32", name="vision_logits")
    location = keras.Input((2,), dtype="float32", name="location")
    geo = _gated_geo_logits(location, num_classes, encoding, units, location_dropout, seed, geo_net)
    logits = keras.layers.Add(name="combined_logits")([vision, geo])
    return keras.Model({"vision_logits": vision, "location": location},
                       _named_outputs(logits, geo_logits=geo), name="geo_head")


GEO_MODEL_IMAGE_SIZE = 1  # a geo model's image input is ignored: the smallest the contract allows


def build_geo_model(num_classes: int, encoding: str = DEFAULT_ENCODING, geo_net: str = DEFAULT_GEO_NET,
                    units=POSTPROCESS_GEO_UNITS, seed: int | None = None, objective: str = "presence") -> keras.Model:
    """A geo model on its own (trained on observations, trainer.training.geoprior): location ->
    {"logits": per-label logit f (0 when the location is unknown),
     "probabilities": what f means for the training `objective` (mobile_sdk.geo_scores): softmax(f)
     = P(label | location) for softmax, sigmoid(f) = each label's own presence probability (they do
     not sum to 1) for presence}.

    Like the image-only model, which takes the location and ignores it, this takes a (1x1) image
    and ignores it, so it exports and loads through the one contract signature."""
    inputs = _inputs(GEO_MODEL_IMAGE_SIZE)
    logits = _gated_geo_logits(inputs["location"], num_classes, encoding, units, 0.0, seed, geo_net)
    if objective not in GEO_OBJECTIVES:
        raise ValueError(f"unknown geo objective {objective!r}; choose one of {GEO_OBJECTIVES}")
    probs = keras.layers.Activation("sigmoid" if objective == "presence" else "softmax", name="probabilities")(logits)
    return keras.Model(inputs, {"probabilities": probs, "logits": logits}, name="geo_model")


def init_geo_from(head: keras.Model, geo_model: keras.Model) -> None:
    """Copy a geo model's weights (build_geo_model, same encoding, net and labels) into a
    post-processing head, layer by layer by name; raises ValueError when they do not fit."""
    weighted = [layer for layer in geo_model.layers if layer.weights]
    for layer in weighted:
        try:
            target = head.get_layer(layer.name)
        except ValueError:
            raise ValueError(f"the geo model's layer {layer.name!r} has no counterpart in the head: "
                             "use the same --geo-net as the geo model") from None
        shapes = [tuple(w.shape) for w in target.weights], [tuple(w.shape) for w in layer.weights]
        if shapes[0] != shapes[1]:
            raise ValueError(f"layer {layer.name!r}: head weights {shapes[0]} vs geo model {shapes[1]} "
                             "(another encoding, geo net or label count)")
        target.set_weights(layer.get_weights())
    head_weighted = {layer.name for layer in head.layers if layer.weights}
    if head_weighted != {layer.name for layer in weighted}:
        raise ValueError(f"the head has geo layers the geo model lacks: "
                         f"{sorted(head_weighted - {layer.name for layer in weighted})}")


def build_postprocess_model(image_model: keras.Model, geo_head: keras.Model) -> keras.Model:
    """Frozen image model + geo head, sharing both models' layers (and so their weights)."""
    image_model.trainable = False  # no gradient reaches the image model
    size = image_model.input["image"].shape[1]
    inputs = _inputs(size)
    vision = image_model(inputs)["logits"]
    out = geo_head({"vision_logits": vision, "location": inputs["location"]})
    return keras.Model(inputs, _named_outputs(out["logits"], vision_logits=vision, geo_logits=out["geo_logits"]),
                       name="postprocess")


def build_featuremod_model(image_model: keras.Model, encoding: str = DEFAULT_ENCODING,
                           modulated_layers=None, variant: str = DEFAULT_VARIANT,
                           location_dropout: float = 0.1, units=FEATUREMOD_GEO_UNITS,
                           seed: int | None = None, geo_net: str = DEFAULT_GEO_NET,
                           geo_head: keras.Model | None = None) -> keras.Model:
    """Rewire `image_model` (from build_image_model, possibly trained) with geo feature modulation.

    The backbone graph is rebuilt layer by layer from the same layer objects, so every image weight
    carries over; a FeatureModulation is inserted after each chosen layer (for `film`, before it
    when the chosen layer is the block's activation, else followed by a ReLU).

    With `geo_head` (build_geo_head, e.g. a trained post-processing run's) the model is the hybrid:
    the head's gated geo logits are added to the modulated network's logits. Modulation starts as
    the identity, so the hybrid starts exactly at that post-processing model (docs/training.md).
    One location dropout feeds both, so a dropped location leaves the image path alone.
    """
    image_model.trainable = True  # end to end (paper §5.3), even if a post-processing build froze it
    backbone = image_model.get_layer(_BACKBONE_NAME)
    names = {layer.name for layer in backbone.layers}
    if modulated_layers is None:
        modulated_layers = default_modulated_layers(
            "mobilenet_v2" if "block_1_depthwise_relu" in names else "inception_v3")
    chosen = tuple(modulated_layers)
    unknown = sorted(set(chosen) - names)
    if unknown:
        raise ValueError(f"modulated layers {unknown} are not in the backbone; e.g. "
                         f"{sorted(n for n in names if 'relu' in n or n.startswith('mixed'))[:8]}")
    if not chosen:
        raise ValueError("feature modulation needs at least one modulated layer")

    inputs = _inputs(image_model.input["image"].shape[1])
    location = LocationDropout(location_dropout, seed=seed, name="fm_location_dropout")(inputs["location"])
    geo, known = _geo_net(location, encoding, units, None, seed, "fm", geo_net)
    tensors = {id(backbone.inputs[0]): image_model.get_layer("pixel_scaling")(inputs["image"])}
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        args = keras.tree.map_structure(lambda t: tensors[id(t)], layer.input)
        if layer.name not in chosen:
            out = layer(args)
        else:
            modulation = FeatureModulation(layer.output.shape[-1], variant, name=f"modulate_{layer.name}")
            if variant == "film" and isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)):
                out = layer(modulation([args, geo, known]))  # R(γ·F + β) with the block's own R
            else:
                out = modulation([layer(args), geo, known])
                if variant == "film":
                    out = keras.layers.ReLU(name=f"relu_{layer.name}")(out)
        tensors[id(layer.output)] = out
    x = tensors[id(backbone.output)]
    for name in _HEAD_LAYERS:
        x = image_model.get_layer(name)(x)
    if geo_head is not None:
        x = geo_head({"vision_logits": x, "location": location})["logits"]
    return keras.Model(inputs, _named_outputs(x), name="featuremod")


def geo_variables(model: keras.Model) -> list:
    """Trainable variables a feature-modulation model adds to its image model: the geo net's FCs
    and every FeatureModulation (they get their own learning rate, OptimizerConfig.geo_lr_multiplier)."""
    return [v for layer in model.layers
            if isinstance(layer, FeatureModulation) or (isinstance(layer, keras.layers.Dense) and layer.name.startswith("fm_"))
            for v in layer.trainable_variables]


def modulation_layers(model: keras.Model) -> dict[str, FeatureModulation]:
    """Modulated layer name -> its FeatureModulation, for inspection and tests."""
    return {layer.name.removeprefix("modulate_"): layer for layer in model.layers
            if isinstance(layer, FeatureModulation)}
