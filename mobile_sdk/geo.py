"""Coordinate validation, wrapping and great-circle geometry: the one home of these rules.

The trainer, the priors, the whitelist table and the SDK all import from here (GUIDE §2):
- longitude wraps into [-180, 180);
- a latitude outside [-90, 90] or a non-finite coordinate is an error;
- an unknown location is NaN (never (0, 0)); `validate_locations` returns a `known` mask.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import InvalidLocationError

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
KM_PER_MILE = 1.609344


def miles_to_km(miles):
    return np.asarray(miles, dtype=np.float64) * KM_PER_MILE


def _wrap_degrees(lon: float) -> float:
    """wrap_longitude of one Python float, without numpy's per-call cost (the classify hot path).
    Python's float % is numpy's np.mod (fmod, then the divisor's sign), so both agree bit for bit."""
    return lon if -180.0 <= lon < 180.0 else (lon + 180.0) % 360.0 - 180.0


def wrap_longitude(lon):
    """Wrap degrees into [-180, 180). Works on scalars and arrays; NaN stays NaN."""
    if type(lon) is float:
        return _wrap_degrees(lon)
    lon = np.asarray(lon, dtype=np.float64)
    # Values already in range pass through bit-exact: mod(x + 180) - 180 would perturb -0.1.
    in_range = (lon >= -180.0) & (lon < 180.0)
    wrapped = np.where(in_range, lon, np.mod(lon + 180.0, 360.0) - 180.0)
    return float(wrapped) if np.ndim(wrapped) == 0 else wrapped


def validate_location(lat, lon) -> tuple[float, float] | None:
    """Validate one (lat, lon) pair in degrees.

    Returns None when both are None (location unknown), else (lat, wrapped lon) as floats.
    Raises InvalidLocationError naming the problem otherwise.
    """
    if type(lat) is float and type(lon) is float and -90.0 <= lat <= 90.0 and math.isfinite(lon):
        return lat, _wrap_degrees(lon)  # the common case, decided without the checks below
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        missing = "lat" if lat is None else "lon"
        raise InvalidLocationError(f"only one coordinate given: {missing} is missing; pass both or neither")
    values = []
    for name, value in (("lat", lat), ("lon", lon)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
            raise InvalidLocationError(f"{name} must be a real number of degrees, got {type(value).__name__}: {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond float range, e.g. 10**400
            raise InvalidLocationError(f"{name} is too large to be degrees ({len(str(value))} digits)") from None
        if not math.isfinite(value):
            raise InvalidLocationError(f"{name} must be finite, got {value}")
        values.append(value)
    lat_f, lon_f = values
    if not -90.0 <= lat_f <= 90.0:
        raise InvalidLocationError(f"latitude {lat_f} is outside [-90, 90]")
    return lat_f, _wrap_degrees(lon_f)


def validate_locations(latlon, allow_unknown: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate an [N, 2] array of (lat, lon) degrees.

    Rows where both values are NaN are 'unknown' (allowed unless allow_unknown=False).
    Returns (float64 [N, 2] with wrapped longitudes and NaN for unknown rows, bool [N] known mask).
    """
    try:
        arr = np.asarray(latlon, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidLocationError(f"locations must be numeric, got {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InvalidLocationError(f"locations must have shape [N, 2] (lat, lon), got {arr.shape}")
    lat, lon = arr[:, 0], arr[:, 1]
    if ((lat >= -90.0) & (lat <= 90.0) & (lon >= -180.0) & (lon < 180.0)).all():  # the common case:
        return arr.copy(), np.ones(len(arr), dtype=bool)  # every row known, valid and already wrapped
    nan = np.isnan(arr)
    unknown = nan.all(axis=1)
    if (nan.any(axis=1) & ~unknown).any():
        row = int(np.flatnonzero(nan.any(axis=1) & ~unknown)[0])
        raise InvalidLocationError(f"row {row}: only one coordinate is NaN; unknown locations need both NaN")
    if unknown.any() and not allow_unknown:
        raise InvalidLocationError(f"{int(unknown.sum())} unknown (NaN) locations where all must be known")
    known = ~unknown
    if not np.isfinite(arr[known]).all():
        row = int(np.flatnonzero(known & ~np.isfinite(arr).all(axis=1))[0])
        raise InvalidLocationError(f"row {row}: coordinates must be finite, got {arr[row].tolist()}")
    bad_lat = known & ((arr[:, 0] < -90.0) | (arr[:, 0] > 90.0))
    if bad_lat.any():
        row = int(np.flatnonzero(bad_lat)[0])
        raise InvalidLocationError(f"row {row}: latitude {arr[row, 0]} is outside [-90, 90]")
    out = arr.copy()
    out[known, 1] = wrap_longitude(arr[known, 1])
    return out, known


def to_unit_vectors(lat, lon) -> np.ndarray:
    """Degrees -> [N, 3] points on the unit sphere (for spatial indexes: chord distance is monotone in arc)."""
    lat_r = np.radians(np.asarray(lat, dtype=np.float64))
    lon_r = np.radians(np.asarray(lon, dtype=np.float64))
    cos_lat = np.cos(lat_r)
    return np.stack([cos_lat * np.cos(lon_r), cos_lat * np.sin(lon_r), np.sin(lat_r)], axis=-1)


def great_circle_km(lat1, lon1, lat2, lon2):
    """Haversine distance in km; broadcasts like numpy."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    h = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def chord_for_km(distance_km):
    """Straight-line distance between unit vectors that are `distance_km` apart on the surface."""
    angle = np.minimum(np.asarray(distance_km, dtype=np.float64) / EARTH_RADIUS_KM, math.pi)
    return 2.0 * np.sin(angle / 2.0)
