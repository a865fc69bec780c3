"""Custom Keras layers of the geo-aware models, registered so `keras.models.load_model` needs only
`import trainer.model.layers`.

Everything here must convert to TFLite builtins (int8 included): no is_finite, no Python control
flow on tensor values. Validation follows docs/CONTRACTS.md: a row is *known* iff |lat| <= 90 and
|lon| <= 3.4e38 — both comparisons are false for NaN, the second is false for ±inf.
"""
from __future__ import annotations

import keras
from keras import ops

from mobile_sdk.encoding import DEFAULT_ENCODING, encoded_dim, location_features

_register = keras.saving.register_keras_serializable(package="geoaware")

# Largest finite float32 is ~3.4028e38: |lon| <= this is false only for ±inf and NaN.
_MAX_FINITE_LON = 3.4e38


@_register
class PixelScaling(keras.layers.Layer):
    """uint8 RGB 0..255 -> float32 in [-1, 1] (x / 127.5 - 1), the scaling of both backbones."""

    def call(self, images):
        return ops.cast(images, "float32") / 127.5 - 1.0

    def compute_output_spec(self, images):
        return keras.KerasTensor(images.shape, dtype="float32")


@_register
class LocationEncoder(keras.layers.Layer):
    """Raw degrees [B, 2] (lat, lon; NaN/inf/out-of-range = unknown) -> float32 [B, encoded_dim(kind)].

    The Keras mirror of mobile_sdk.encoding.encode_locations: same features, the `known` flag last,
    unknown rows all zeros. The graph cannot raise, so invalid rows become unknown.
    """

    def __init__(self, kind: str = DEFAULT_ENCODING, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = encoded_dim(kind)  # raises ValueError for an unknown kind
        self.kind = kind

    def call(self, location):
        # Elementwise on the whole [B, 2] tensor with per-column constants: slicing the raw input
        # first would let an int8 converter quantize the raw degrees (and NaN) before validation.
        location = ops.cast(location, "float32")
        in_range = ops.abs(location) <= ops.convert_to_tensor([90.0, _MAX_FINITE_LON])
        known = ops.logical_and(in_range[:, 0:1], in_range[:, 1:2])
        # SELECT, not multiply: NaN * 0 is NaN.
        location = ops.where(known, location, 0.0)
        # Wrap into [-180, 180) as mobile_sdk.geo.wrap_longitude does; a no-op on latitudes already
        # in [-90, 90]. mod(x, 360) first is exact in float32 even for huge |lon|, where x + 180
        # would round.
        rem = ops.mod(location, 360.0)
        location = ops.where(rem >= 180.0, rem - 360.0, rem)
        flag = ops.cast(known, "float32")
        feats = location_features(location[:, 0:1], location[:, 1:2], self.kind, ops)
        return ops.concatenate([feats * flag, flag], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


@_register
class KnownFlag(keras.layers.Layer):
    """The `known` column (last) of a LocationEncoder output: [B, D] -> [B, 1] of 0.0 / 1.0."""

    def call(self, encoded):
        return encoded[:, -1:]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)


@_register
class LocationDropout(keras.layers.Layer):
    """Training only: replaces whole location rows by NaN (= unknown) with probability `rate`,
    so a geo model also learns to classify without a location. Identity at inference."""

    def __init__(self, rate: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate <= 1.0:  # 1.0: never a location (the image control of feature modulation)
            raise ValueError(f"LocationDropout rate must be in [0, 1], got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, location, training=None):
        if not training or self.rate == 0.0:
            return location
        drop = keras.random.uniform((ops.shape(location)[0], 1), seed=self.seed_generator) < self.rate
        return ops.where(drop, float("nan"), location)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@_register
class GateByKnown(keras.layers.Layer):
    """[x, known] -> x * known: exactly 0 for unknown rows (x is finite: unknown encodes to zeros)."""

    def call(self, inputs):
        x, known = inputs
        return x * known

    def compute_output_shape(self, input_shape):
        return input_shape[0]


# The Table 2 variants: config name -> the paper's notation. R = the block's activation (ReLU),
# S = sigmoid, F = image features, β/γ = linear maps of the geo features to the block's channels.
VARIANTS = {
    "add": "R(F)+β",
    "relu_add": "R(F)+R(β)",
    "sigmoid_scale": "S(γ)·R(F)",
    "sigmoid_scale_relu_add": "S(γ)·R(F)+R(β)",
    "relu_scale_relu_add": "R(γ)·R(F)+R(β)",
    "film": "R(γ·F+β)",
}
DEFAULT_VARIANT = "add"

# Per variant: (how γ is activated or None, how β is activated or None).
_VARIANT_PARTS = {
    "add": (None, "linear"),
    "relu_add": (None, "relu"),
    "sigmoid_scale": ("sigmoid", None),
    "sigmoid_scale_relu_add": ("sigmoid", "relu"),
    "relu_scale_relu_add": ("relu", "relu"),
    "film": ("linear", "linear"),
}
# Initial γ pre-activation bias: the known-location path starts as (close to) the identity, like the
# unknown path, so modulation starts from the image-only model instead of perturbing it.
# Sigmoid cannot reach 1; 3.0 gives 0.95.
_GAMMA_BIAS = {"sigmoid": 3.0, "relu": 1.0, "linear": 1.0}


@_register
class FeatureModulation(keras.layers.Layer):
    """[features [B,H,W,C], geo [B,G], known [B,1]] -> modulated features (eq. 4 and Table 2).

    γ and β are per-channel linear maps of the geo features, reshaped to 1x1xC. Gated by `known`:
    an unknown location gives γ = 1, β = 0, so the features pass through exactly. For `film` this
    layer computes γ·F + β on pre-activation features; the model builder places it before the
    block's activation. Kernels start at zero, so a fresh layer is the identity up to γ's bias.
    """

    def __init__(self, channels: int, variant: str = DEFAULT_VARIANT, **kwargs):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"unknown modulation variant {variant!r}; choose one of {sorted(VARIANTS)}")
        if int(channels) <= 0:
            raise ValueError(f"FeatureModulation channels must be positive, got {channels}")
        self.channels = int(channels)
        self.variant = variant
        self.gamma_activation, self.beta_activation = _VARIANT_PARTS[variant]
        self.gamma = self.beta = None
        if self.gamma_activation:
            self.gamma = keras.layers.Dense(
                self.channels, activation=self.gamma_activation, kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(_GAMMA_BIAS[self.gamma_activation]), name="gamma")
        if self.beta_activation:
            self.beta = keras.layers.Dense(
                self.channels, activation=self.beta_activation, kernel_initializer="zeros", name="beta")

    def build(self, input_shape):
        features_shape, geo_shape, _ = input_shape
        if features_shape[-1] != self.channels:
            raise ValueError(f"FeatureModulation built for {self.channels} channels got features {features_shape}")
        for dense in (self.gamma, self.beta):
            if dense is not None:
                dense.build(geo_shape)

    def modulation(self, geo, known):
        """(γ, β) as [B,1,1,C] after gating (None where the variant has no such term)."""
        gamma = beta = None
        if self.gamma is not None:
            gamma = 1.0 + known * (self.gamma(geo) - 1.0)
            gamma = ops.reshape(gamma, (-1, 1, 1, self.channels))
        if self.beta is not None:
            beta = ops.reshape(known * self.beta(geo), (-1, 1, 1, self.channels))
        return gamma, beta

    def call(self, inputs):
        features, geo, known = inputs
        gamma, beta = self.modulation(geo, known)
        if gamma is not None:
            features = features * gamma
        if beta is not None:
            features = features + beta
        return features

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "variant": self.variant}
