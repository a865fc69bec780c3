"""Location accuracy: how far the true point may lie from the one given (GPS error, or a location
obscured to a cell as iNaturalist does: 0.2 degrees, 22-31 km).

With an accuracy of `a` metres the whitelist never excludes a label observed within radius + a of
the point: it allows the union of the table's cells that meet the disc of radius a. Every label
observed within radius + a has a point q of the disc within the radius of it, and the table's cell
holding q allows every label within the radius of any point of the cell (docs/whitelist-format.md).
"""
from __future__ import annotations

import math

import numpy as np

from . import geohash
from .errors import InvalidLocationError
from .geo import great_circle_km

MAX_ACCURACY_M = 20_000_000.0  # half the Earth's circumference: anything larger is not an accuracy
# A disc meeting more cells than this widens the whitelist to "no filtering" (it would allow almost
# every label anyway, and enumerating the cells would cost more than the model).
MAX_DISC_CELLS = 4096
_KM_PER_DEG = 111.195  # great-circle km per degree of latitude (sphere of 6371.0088 km)


def validate_accuracy_m(accuracy_m) -> float | None:
    """None (unknown: the point is taken as exact) or a finite number of metres in [0, 20,000 km]."""
    if accuracy_m is None:
        return None
    if isinstance(accuracy_m, bool) or not isinstance(accuracy_m, (int, float, np.integer, np.floating)):
        raise InvalidLocationError(f"accuracy_m must be a number of metres or None, got {accuracy_m!r}")
    value = float(accuracy_m)
    if not math.isfinite(value) or value < 0 or value > MAX_ACCURACY_M:
        raise InvalidLocationError(f"accuracy_m must be finite and in [0, {MAX_ACCURACY_M:.0f}] metres, "
                                   f"got {accuracy_m!r}")
    return value


def disc_cells(lat: float, lon: float, accuracy_km: float, precision: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Centres (lat, lon arrays) of the geohash cells of `precision` that meet the disc of radius
    `accuracy_km` around (lat, lon): a superset (a cell is kept when its centre lies within the
    radius plus the cell's half-diagonal). None when there would be more than MAX_DISC_CELLS."""
    n_rows, n_cols = geohash.grid_shape(precision)
    height, width = geohash.cell_size_deg(precision)
    reach_deg = accuracy_km / _KM_PER_DEG + height  # latitude never differs by more than the distance
    rows_lo, _ = geohash.latlon_to_rows_cols(max(lat - reach_deg, -90.0), lon, precision)
    rows_hi, _ = geohash.latlon_to_rows_cols(min(lat + reach_deg, 90.0), lon, precision)
    rows = np.arange(int(rows_lo), int(rows_hi) + 1)
    if abs(lat) + reach_deg >= 90.0:  # the disc (with margin) holds a pole: every longitude
        cols = np.arange(n_cols)
    else:  # a spherical cap of angular radius d spans |dlon| <= asin(sin d / cos lat)
        dlon = math.degrees(math.asin(min(1.0, math.sin(math.radians(reach_deg)) / math.cos(math.radians(lat)))))
        half = int(math.ceil(dlon / width)) + 1
        _, col = geohash.latlon_to_rows_cols(lat, lon, precision)
        cols = np.arange(n_cols) if 2 * half + 1 >= n_cols else np.mod(np.arange(int(col) - half, int(col) + half + 1),
                                                                       n_cols)
    if rows.size * cols.size > MAX_DISC_CELLS:
        return None
    r, c = np.meshgrid(rows, cols, indexing="ij")
    centre_lat = (r.ravel() + 0.5) * height - 90.0
    centre_lon = (c.ravel() + 0.5) * width - 180.0
    half_diagonal = np.maximum(great_circle_km(centre_lat, 0.0, np.minimum(centre_lat + height / 2, 90.0), width / 2),
                               great_circle_km(centre_lat, 0.0, np.maximum(centre_lat - height / 2, -90.0), width / 2))
    near = great_circle_km(lat, lon, centre_lat, centre_lon) <= accuracy_km + half_diagonal + 1e-3
    return centre_lat[near], centre_lon[near]


def widened_whitelist(table, location, accuracy_m: float | None) -> np.ndarray | None:
    """Sorted label indices the table allows at `location` widened by `accuracy_m` (see the module
    docstring), or None when the table does not filter there (no data nearby, or a disc too big)."""
    if not accuracy_m:
        return table.lookup_validated(*location)  # validated once, by the caller
    centres = disc_cells(location[0], location[1], accuracy_m / 1000.0, table.precision)
    if centres is None:
        return None
    labels, covered = table.lookup_batch(*centres)
    if not covered.any():
        return None
    return np.unique(np.concatenate(list(labels[covered])))
