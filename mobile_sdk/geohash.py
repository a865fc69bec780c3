"""Vectorised integer geohash: cells as uint64 keys, not strings.

A geohash of precision p (characters) has 5p bits that interleave longitude and latitude bisections,
longitude first. The key is those bits as an integer, so sorting keys sorts cells in the geohash
Z-order and the string form is just base32 of the key (`to_string`/`from_string`, for humans and
tests). p <= 12 keeps keys within 60 bits.

Cells are the half-open boxes [lat_min, lat_max) x [lon_min, lon_max); latitude 90 falls in the
last row. Longitude wraps first (mobile_sdk.geo's rule), so 180 is -180 and lands in the first
column, where string geohash libraries put 180 in the last one: the only difference from them.
"""
from __future__ import annotations

import math

import numpy as np

MAX_PRECISION = 12
BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_BASE32_INDEX = {c: i for i, c in enumerate(BASE32)}


def check_precision(precision) -> int:
    if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)) or not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"geohash precision must be an integer in [1, {MAX_PRECISION}], got {precision!r}")
    return int(precision)


def bit_split(precision: int) -> tuple[int, int]:
    """(latitude bits, longitude bits) of a precision: longitude gets the extra bit of odd totals."""
    total = 5 * check_precision(precision)
    return total // 2, total - total // 2


def grid_shape(precision: int) -> tuple[int, int]:
    """(rows, columns) of the cell grid: 2**lat_bits latitude rows by 2**lon_bits longitude columns."""
    lat_bits, lon_bits = bit_split(precision)
    return 1 << lat_bits, 1 << lon_bits


def cell_size_deg(precision: int) -> tuple[float, float]:
    """(height, width) of every cell in degrees."""
    rows, cols = grid_shape(precision)
    return 180.0 / rows, 360.0 / cols


# Morton bit tricks: spread the low 32 bits of x to the even bit positions, and back. They work on
# Python ints and on uint64 arrays alike.
_SPREAD = ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
           (2, 0x3333333333333333), (1, 0x5555555555555555))


def _spread(x):
    for shift, mask in _SPREAD:
        x = (x | (x << shift)) & mask
    return x


def _compact(x):
    x = x & 0x5555555555555555
    for shift, mask in ((1, 0x3333333333333333), (2, 0x0F0F0F0F0F0F0F0F), (4, 0x00FF00FF00FF00FF),
                        (8, 0x0000FFFF0000FFFF), (16, 0x00000000FFFFFFFF)):
        x = (x | (x >> shift)) & mask
    return x


def _interleave(rows, cols, precision: int):
    """Geohash bit order from the most significant bit: longitude, latitude, longitude, ... so the
    last bit is longitude when the total is odd and latitude when it is even."""
    lat_bits, lon_bits = bit_split(precision)
    if lon_bits > lat_bits:
        return _spread(cols) | (_spread(rows) << 1)
    return (_spread(cols) << 1) | _spread(rows)


def rows_cols_to_keys(rows, cols, precision: int) -> np.ndarray:
    """Grid indices (row from the south, column from -180) -> keys. Columns wrap around the globe."""
    lat_bits, lon_bits = bit_split(precision)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.mod(np.asarray(cols, dtype=np.int64), 1 << lon_bits)
    if ((rows < 0) | (rows >= 1 << lat_bits)).any():
        raise ValueError("geohash row index outside the grid")
    return _interleave(rows.astype(np.uint64), cols.astype(np.uint64), precision)


def keys_to_rows_cols(keys, precision: int) -> tuple[np.ndarray, np.ndarray]:
    lat_bits, lon_bits = bit_split(precision)
    keys = np.asarray(keys, dtype=np.uint64)
    if lon_bits > lat_bits:
        cols, rows = _compact(keys), _compact(keys >> np.uint64(1))
    else:
        cols, rows = _compact(keys >> np.uint64(1)), _compact(keys)
    return rows.astype(np.int64), cols.astype(np.int64)


def latlon_to_rows_cols(lat, lon, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """Degrees -> grid indices. Inputs must be validated (finite, |lat| <= 90); longitude wraps."""
    rows_n, cols_n = grid_shape(precision)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.mod(np.asarray(lon, dtype=np.float64) + 180.0, 360.0)  # [0, 360), i.e. wrapped lon + 180
    rows = np.clip(np.floor((lat + 90.0) * (rows_n / 180.0)), 0, rows_n - 1).astype(np.int64)
    cols = np.clip(np.floor(lon * (cols_n / 360.0)), 0, cols_n - 1).astype(np.int64)
    return rows, cols


def encode_one(lat: float, lon: float, precision: int) -> int:
    """The scalar fast path of `encode` (same float arithmetic, Python ints): one phone query."""
    n_rows, n_cols = grid_shape(precision)
    row = min(max(math.floor((lat + 90.0) * (n_rows / 180.0)), 0), n_rows - 1)
    col = min(max(math.floor(((lon + 180.0) % 360.0) * (n_cols / 360.0)), 0), n_cols - 1)
    return int(_interleave(row, col, precision))


def scalar_encoder(precision: int):
    """A function (lat, lon) -> key equal to `encode_one` at this precision, with the bit
    interleaving precomputed as tables (2**(5p/2) entries, so precision <= 8): the hot path of a
    single table lookup."""
    if check_precision(precision) > 8:
        raise ValueError(f"scalar_encoder precomputes tables: precision must be <= 8, got {precision}")
    n_rows, n_cols = grid_shape(precision)
    row_bits = _interleave(np.arange(n_rows, dtype=np.uint64), np.uint64(0), precision).tolist()
    col_bits = _interleave(np.uint64(0), np.arange(n_cols, dtype=np.uint64), precision).tolist()
    row_scale, col_scale, last_row, last_col = n_rows / 180.0, n_cols / 360.0, n_rows - 1, n_cols - 1
    floor = math.floor

    def key(lat: float, lon: float) -> int:
        row = floor((lat + 90.0) * row_scale)
        col = floor(((lon + 180.0) % 360.0) * col_scale)
        return (row_bits[row if 0 <= row <= last_row else (0 if row < 0 else last_row)]
                | col_bits[col if 0 <= col <= last_col else (0 if col < 0 else last_col)])
    return key


def encode(lat, lon, precision: int) -> np.ndarray:
    """Degrees -> uint64 keys (vectorised). Callers validate coordinates (mobile_sdk.geo)."""
    rows, cols = latlon_to_rows_cols(lat, lon, precision)
    return rows_cols_to_keys(rows, cols, precision)


def decode_bounds(keys, precision: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keys -> (lat_min, lat_max, lon_min, lon_max) of each cell, in degrees."""
    rows, cols = keys_to_rows_cols(keys, precision)
    height, width = cell_size_deg(precision)
    lat_min = rows * height - 90.0
    lon_min = cols * width - 180.0
    return lat_min, lat_min + height, lon_min, lon_min + width


def decode_centres(keys, precision: int) -> tuple[np.ndarray, np.ndarray]:
    lat_min, lat_max, lon_min, lon_max = decode_bounds(keys, precision)
    return (lat_min + lat_max) / 2.0, (lon_min + lon_max) / 2.0


def neighbours(keys, precision: int) -> np.ndarray:
    """[N, 8] keys of the surrounding cells (N, NE, E, SE, S, SW, W, NW).

    Longitude wraps across the antimeridian. Beyond a pole there is no cell: those entries hold the
    cell itself (rows are clamped), so the result is always a valid key.
    """
    rows, cols = keys_to_rows_cols(keys, precision)
    n_rows, _ = grid_shape(precision)
    offsets = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    out = []
    for d_row, d_col in offsets:
        r = rows + d_row
        beyond_pole = (r < 0) | (r >= n_rows)
        out.append(np.where(beyond_pole, np.asarray(keys, dtype=np.uint64),
                            rows_cols_to_keys(np.clip(r, 0, n_rows - 1), cols + d_col, precision)))
    return np.stack(out, axis=-1)


def to_string(key: int, precision: int) -> str:
    check_precision(precision)
    key = int(key)
    return "".join(BASE32[(key >> (5 * (precision - 1 - i))) & 31] for i in range(precision))


def from_string(text: str) -> tuple[int, int]:
    """Geohash string -> (key, precision)."""
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_PRECISION:
        raise ValueError(f"geohash must be a string of 1..{MAX_PRECISION} characters, got {text!r}")
    key = 0
    for ch in text.lower():
        if ch not in _BASE32_INDEX:
            raise ValueError(f"invalid geohash character {ch!r} in {text!r}")
        key = (key << 5) | _BASE32_INDEX[ch]
    return key, len(text)
