"""Location encodings, the numpy side. The Keras side is trainer.model.layers.LocationEncoder; a parity
test pins them together. Both take raw degrees with NaN rows meaning 'unknown'.

Every encoding appends a `known` flag and zeroes the features of unknown rows, so an unknown
location can never look like (0°, 0°) — with the `paper` encoding (0, 0) would otherwise encode
to all zeros.

The features themselves are written once, in `location_features`, against an array namespace
(`numpy` here, `keras.ops` in the graph), using only elementwise arithmetic, sin, cos and
concatenation: TFLite builtins that stay float32 in int8 models.
"""
from __future__ import annotations

import math

import numpy as np

from .geo import validate_locations

ENCODINGS = ("sincos", "paper", "fourier")
DEFAULT_ENCODING = "sincos"

# `fourier`: sin/cos of the unit vector (x, y, z) at frequencies pi * 2**k, k < FOURIER_SCALES.
# The finest wavelength is 2 / 2**7 of the Earth's radius, about 100 km: what a small range needs.
FOURIER_SCALES = 8

_FEATURES = {
    # The paper's normalisation: discontinuous at the antimeridian.
    "paper": 2,
    # sin/cos of lat and lon: 179.99°E and 179.99°W encode almost alike (not so at the poles, where
    # every longitude is the same point).
    "sincos": 4,
    # The point on the unit sphere and a ladder of sin/cos of it: a smooth function of the point
    # itself, so continuous across the antimeridian and at the poles, and multi-scale.
    "fourier": 3 + 6 * FOURIER_SCALES,
}


def encoded_dim(kind: str) -> int:
    """Width of the encoding, known flag included."""
    _check_kind(kind)
    return _FEATURES[kind] + 1


def _check_kind(kind: str) -> None:
    if kind not in ENCODINGS:
        raise ValueError(f"unknown location encoding {kind!r}; choose one of {ENCODINGS}")


def location_features(lat, lon, kind: str, xp):
    """lat, lon: [N, 1] degrees of known rows (lon in [-180, 180)); xp: numpy or keras.ops.
    Returns [N, encoded_dim(kind) - 1], without the known flag."""
    if kind == "paper":
        return xp.concatenate([lat / 90.0, lon / 180.0], axis=-1)
    lat_r, lon_r = lat * (math.pi / 180.0), lon * (math.pi / 180.0)
    sin_lat, cos_lat, sin_lon, cos_lon = xp.sin(lat_r), xp.cos(lat_r), xp.sin(lon_r), xp.cos(lon_r)
    if kind == "sincos":
        return xp.concatenate([sin_lat, cos_lat, sin_lon, cos_lon], axis=-1)
    xyz = xp.concatenate([cos_lat * cos_lon, cos_lat * sin_lon, sin_lat], axis=-1)
    scaled = xp.concatenate([xyz * (math.pi * 2.0 ** k) for k in range(FOURIER_SCALES)], axis=-1)
    return xp.concatenate([xyz, xp.sin(scaled), xp.cos(scaled)], axis=-1)


def encode_locations(latlon, kind: str = DEFAULT_ENCODING) -> np.ndarray:
    """[N, 2] degrees (NaN rows = unknown) -> float32 [N, encoded_dim(kind)]."""
    _check_kind(kind)
    locs, known = validate_locations(latlon)
    lat = np.where(known, locs[:, 0], 0.0)[:, None]
    lon = np.where(known, locs[:, 1], 0.0)[:, None]
    flag = known.astype(np.float64)[:, None]
    out = np.concatenate([location_features(lat, lon, kind, np) * flag, flag], axis=-1)
    return out.astype(np.float32)
