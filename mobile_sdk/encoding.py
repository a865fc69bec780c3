"""Location encodings, the numpy side. The Keras side is trainer.layers.LocationEncoder; a parity
test pins them together. Both take raw degrees with NaN rows meaning 'unknown'.

Every encoding appends a `known` flag and zeroes the features of unknown rows, so an unknown
location can never look like (0°, 0°) — with the `paper` encoding (0, 0) would otherwise encode
to all zeros.
"""
from __future__ import annotations

import numpy as np

from .geo import validate_locations

ENCODINGS = ("sincos", "paper")
DEFAULT_ENCODING = "sincos"

_FEATURES = {
    # The paper's normalisation: discontinuous at the antimeridian.
    "paper": 2,
    # sin/cos of lat and lon: 179.99°E and 179.99°W encode almost alike.
    "sincos": 4,
}


def encoded_dim(kind: str) -> int:
    """Width of the encoding, known flag included."""
    _check_kind(kind)
    return _FEATURES[kind] + 1


def _check_kind(kind: str) -> None:
    if kind not in ENCODINGS:
        raise ValueError(f"unknown location encoding {kind!r}; choose one of {ENCODINGS}")


def encode_locations(latlon, kind: str = DEFAULT_ENCODING) -> np.ndarray:
    """[N, 2] degrees (NaN rows = unknown) -> float32 [N, encoded_dim(kind)]."""
    _check_kind(kind)
    locs, known = validate_locations(latlon)
    lat = np.where(known, locs[:, 0], 0.0)
    lon = np.where(known, locs[:, 1], 0.0)
    if kind == "paper":
        feats = [lat / 90.0, lon / 180.0]
    else:
        lat_r, lon_r = np.radians(lat), np.radians(lon)
        feats = [np.sin(lat_r), np.cos(lat_r), np.sin(lon_r), np.cos(lon_r)]
    flag = known.astype(np.float64)
    out = np.stack([f * flag for f in feats] + [flag], axis=-1)
    return out.astype(np.float32)
