"""Export time: training observations -> whitelist table bytes (numpy only, like the reader).

Exactness: a cell's label set is every label with an observation within θ + R of the cell centre,
where R is the cell's largest centre-to-corner great-circle distance (for a lat/lon box the corner
is the farthest point). By the triangle inequality a label within θ of ANY point of the cell is in
the set: no false negatives, and extras lie at most θ + 2R away from the query. A cell without
any such label gets no entry (the reader's "no data nearby").

The build is a sweep of latitude rows: the cells of one row within distance D of an observation
form one longitude interval, found in closed form.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import geohash
from ..arrays import expand_ranges
from ..fileio import atomic_write_bytes
from ..geo import EARTH_RADIUS_KM, great_circle_km, miles_to_km, validate_locations
from . import codec
from .codec import MAX_TABLE_PRECISION, RUNS_PER_BLOCK, SETS_PER_BLOCK, label_set_hash

DEFAULT_RADIUS_MILES = 100.0  # the paper's best radius
DEFAULT_PRECISION = 4
_SLACK_KM = 1e-3  # absorbs floating-point rounding in the distance test; it only ever adds labels
_POINTS_PER_CHUNK = 100_000  # observations turned into row intervals at once (~20 rows each at precision 4)
_TILE_SIDE_BITS = 6  # cells are expanded to (cell, label) pairs 64 x 64 cells at a time


def _check_build_args(lat, lon, labels, num_labels, radius_miles, precision, label_names):
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    label_names = [str(n) for n in label_names]
    if len(label_names) != num_labels:
        raise ValueError(f"label_names has {len(label_names)} names but num_labels is {num_labels}")
    if not isinstance(radius_miles, (int, float, np.integer, np.floating)) or not np.isfinite(radius_miles) or radius_miles <= 0:
        raise ValueError(f"radius_miles must be a positive finite number, got {radius_miles!r}")
    if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)) or not 1 <= precision <= MAX_TABLE_PRECISION:
        raise ValueError(f"precision must be an integer in [1, {MAX_TABLE_PRECISION}], got {precision!r}")
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    labels = np.asarray(labels)
    if not (lat.shape == lon.shape == labels.shape):
        raise ValueError(f"lat, lon and labels must have equal lengths, got {lat.shape}, {lon.shape}, {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels}), got range [{labels.min()}, {labels.max()}]")
    locs, known = validate_locations(np.stack([lat, lon], axis=-1))  # NaN rows = unknown: skipped
    return locs[known, 0], locs[known, 1], labels[known], int(num_labels), float(radius_miles), int(precision), label_names


def row_reach_km(precision: int, radius_miles: float) -> np.ndarray:
    """Per latitude row: θ + R_row (+ a metre of slack), the search radius around each cell centre."""
    n_rows, _ = geohash.grid_shape(precision)
    height, width = geohash.cell_size_deg(precision)
    centre = (np.arange(n_rows) + 0.5) * height - 90.0
    corner = np.maximum(great_circle_km(centre, 0.0, centre + height / 2, width / 2),
                        great_circle_km(centre, 0.0, centre - height / 2, width / 2))
    return float(miles_to_km(radius_miles)) + corner + _SLACK_KM


def _row_intervals(p_label, p_lat, p_lon, precision, reach, row_lat):
    """Per (point, latitude row): the interval of cell columns whose centres lie within `reach` of
    the point, as (label * rows + row, first column, last column), wrapped into [0, columns)."""
    n_rows, n_cols = geohash.grid_shape(precision)
    height, width = geohash.cell_size_deg(precision)
    # Candidate rows: latitude difference never exceeds the great-circle distance.
    margin = np.degrees(reach.max())
    lo = np.clip(np.floor((p_lat - margin + 90.0) / height - 0.5), 0, n_rows - 1).astype(np.int64)
    hi = np.clip(np.ceil((p_lat + margin + 90.0) / height - 0.5), 0, n_rows - 1).astype(np.int64)
    pt, rows = expand_ranges(lo, hi + 1)

    # On row r, the centres within `reach` of a point are those with cos Δλ >= x (spherical law of
    # cosines); the trigonometry is per row and per point, then combined per pair.
    phi_o = np.radians(p_lat)
    num = np.cos(reach)[rows] - np.sin(row_lat)[rows] * np.sin(phi_o)[pt]
    den = np.cos(row_lat)[rows] * np.cos(phi_o)[pt]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(den > 1e-15, num / np.maximum(den, 1e-300), np.where(num <= 0, -np.inf, np.inf))
    keep = x <= 1.0
    x, rows, pt = x[keep], rows[keep], pt[keep]
    half = np.degrees(np.arccos(np.maximum(x, -1.0)))
    start = np.ceil((p_lon[pt] - half + 180.0) / width - 0.5).astype(np.int64)
    stop = np.floor((p_lon[pt] + half + 180.0) / width - 0.5).astype(np.int64)
    whole_row = (x <= -1.0) | (stop - start + 1 >= n_cols)
    start, stop = np.where(whole_row, 0, start), np.where(whole_row, n_cols - 1, stop)
    keep = stop >= start
    start, stop, rows, lab = start[keep], stop[keep], rows[keep], p_label[pt[keep]]

    # Wrap intervals across the antimeridian into [0, n_cols): at most two pieces each.
    shift = np.floor_divide(start, n_cols) * n_cols
    start, stop = start - shift, stop - shift
    wraps = stop >= n_cols
    start = np.concatenate([start, np.zeros(wraps.sum(), dtype=np.int64)])
    stop = np.concatenate([np.minimum(stop, n_cols - 1), stop[wraps] - n_cols])
    rows, lab = np.concatenate([rows, rows[wraps]]), np.concatenate([lab, lab[wraps]])
    return lab * n_rows + rows, start, stop


def _merge_intervals(group, start, stop, n_cols):
    """Merge overlapping or touching intervals of each group: disjoint, sorted by (group, start)."""
    order = np.argsort(group * n_cols + start)  # one int64 key sorts faster than a lexsort
    group, start, stop = group[order], start[order], stop[order]
    offset = group * (n_cols + 2)  # keeps the running max from leaking across groups
    reach_end = np.maximum.accumulate(stop + offset) - offset
    new = np.ones(group.size, dtype=bool)
    new[1:] = (group[1:] != group[:-1]) | (start[1:] > reach_end[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], group.size) - 1
    return group[first], start[first], reach_end[last]


def _label_intervals(lat, lon, labels, radius_miles, precision):
    """Every label's cells as disjoint column intervals per latitude row: (row, label, first column,
    last column), sorted by row. Observations stream through in chunks (sorted by label, so a
    chunk's intervals mostly merge among themselves): memory follows the merged intervals, not
    observations x rows."""
    n_rows, n_cols = geohash.grid_shape(precision)
    height, _ = geohash.cell_size_deg(precision)
    reach = np.minimum(row_reach_km(precision, radius_miles) / EARTH_RADIUS_KM, np.pi)  # radians
    row_lat = np.radians((np.arange(n_rows) + 0.5) * height - 90.0)
    # Duplicates (same label, same place) cannot change the answer.
    order = np.lexsort((lon, lat, labels))
    label_s, lat_s, lon_s = labels[order], lat[order], lon[order]
    del order
    distinct = np.r_[True, (label_s[1:] != label_s[:-1]) | (lat_s[1:] != lat_s[:-1]) | (lon_s[1:] != lon_s[:-1])]
    p_label, p_lat, p_lon = label_s[distinct], lat_s[distinct], lon_s[distinct]
    del label_s, lat_s, lon_s, distinct

    pieces = [_merge_intervals(*_row_intervals(p_label[i:i + _POINTS_PER_CHUNK], p_lat[i:i + _POINTS_PER_CHUNK],
                                               p_lon[i:i + _POINTS_PER_CHUNK], precision, reach, row_lat), n_cols)
              for i in range(0, p_lat.size, _POINTS_PER_CHUNK)]
    g, s, e = _merge_intervals(*(np.concatenate(part) for part in zip(*pieces)), n_cols)
    del pieces
    order = np.argsort(g % n_rows, kind="stable")
    g, s, e = g[order], s[order], e[order]
    return g % n_rows, g // n_rows, s, e


def _tiles(row, label, start, stop, precision):
    """(cell keys, labels) of every (cell, label) pair, one square tile of cells at a time in key
    order, each sorted by key then label: a tile is the cells sharing all key bits but the last
    `2 * side_bits`, so tiles in key order are the key order."""
    n_rows, _ = geohash.grid_shape(precision)
    side_bits = min(_TILE_SIDE_BITS, geohash.bit_split(precision)[0])
    side = 1 << side_bits
    tile_keys = np.arange(1 << (5 * precision - 2 * side_bits), dtype=np.uint64)
    tile_rows, tile_cols = geohash.keys_to_rows_cols(tile_keys << np.uint64(2 * side_bits), precision)
    # A cell's key is its tile's first key plus an offset that depends only on its place in the tile.
    offsets = np.arange(side * side, dtype=np.uint64)
    local_rows, local_cols = geohash.keys_to_rows_cols(offsets, precision)
    offset_of = np.empty(side * side, dtype=np.int16)
    offset_of[local_rows * side + local_cols] = offsets.astype(np.int16)
    row_bounds = np.searchsorted(row, np.arange(n_rows + side))
    for tile, r0, c0 in zip(tile_keys.tolist(), tile_rows.tolist(), tile_cols.tolist()):
        lo, hi = row_bounds[r0], row_bounds[min(r0 + side, n_rows)]
        if lo == hi:
            continue
        s = np.maximum(start[lo:hi], c0)
        e = np.minimum(stop[lo:hi], c0 + side - 1)
        keep = np.flatnonzero(s <= e)
        if not keep.size:
            continue
        owner, cols = expand_ranges(s[keep], e[keep] + 1)
        owner = keep[owner] + lo
        offset = offset_of[(row[owner] - r0) * side + (cols - c0)]
        # Intervals come by row, then label: a stable sort by cell keeps each cell's labels sorted.
        order = np.argsort(offset, kind="stable")
        yield (tile << (2 * side_bits)) + offset[order].astype(np.int64), label[owner[order]]


def _label_weights(num_labels: int) -> np.ndarray:
    """Random uint64 per label: a set's digest is the sum of its labels' weights (mod 2**64)."""
    return np.random.default_rng(0).integers(0, np.iinfo(np.int64).max, num_labels, dtype=np.int64).view(np.uint64)


def _cell_sets(pairs, num_labels: int):
    """(cell keys, set ids, set starts, set labels) from key-ordered (keys, labels) pieces: each
    distinct label set gets an id in order of first use along the key order, so neighbouring cells
    get near ids; set i is labels[starts[i]:starts[i + 1]] (sorted). A tile's cells are grouped by a
    hash of their sets, each group confirmed label by label; a dict over the distinct sets' labels
    numbers them across tiles. Sets stay lists of labels: nothing here is cells x labels."""
    weights = _label_weights(num_labels)
    ids: dict[bytes, int] = {}  # a set's labels (int32 bytes) -> set id; insertion order is id order
    all_keys, all_ids = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for keys, labels in pairs:
        labels = labels.astype(np.int32)
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        size = np.diff(np.append(first, keys.size))
        digest = np.add.reduceat(weights[labels], first)  # wraps around: a sum mod 2**64
        # Equal sets are neighbours in (digest, size) order; confirm each neighbour pair label by label.
        order = np.lexsort((size, digest))
        same = (digest[order][1:] == digest[order][:-1]) & (size[order][1:] == size[order][:-1])
        pair = np.flatnonzero(same)
        a, b = order[pair + 1], order[pair]
        owner, index = expand_ranges(first[a], first[a] + size[a])
        differ = labels[index] != labels[index - first[a][owner] + first[b][owner]]
        same[pair[np.unique(owner[differ])]] = False
        group = np.empty(first.size, dtype=np.int64)
        group[order] = np.cumsum(np.r_[True, ~same]) - 1
        group_first = np.full(group[order[-1]] + 1 if first.size else 0, first.size, dtype=np.int64)
        np.minimum.at(group_first, group, np.arange(first.size))
        global_id = np.empty(group_first.size, dtype=np.int64)
        for g in np.argsort(group_first).tolist():  # the tile's groups, in order of first use
            cell = group_first[g]
            members = labels[first[cell]:first[cell] + size[cell]].tobytes()
            set_id = ids.get(members)
            if set_id is None:
                set_id = ids[members] = len(ids)
            global_id[g] = set_id
        all_keys.append(keys[first])
        all_ids.append(global_id[group])
    set_labels = np.frombuffer(b"".join(ids), dtype=np.int32).astype(np.int64)
    set_starts = np.r_[0, np.cumsum([len(k) // 4 for k in ids])].astype(np.int64)
    return np.concatenate(all_keys), np.concatenate(all_ids), set_starts, set_labels


def build_whitelist(lat, lon, labels, num_labels, radius_miles=DEFAULT_RADIUS_MILES,
                    precision=DEFAULT_PRECISION, label_names=None) -> bytes:
    """Build the table from training observations; returns the file's bytes.

    lat/lon: degrees (NaN rows = unknown, skipped); labels: int label index per observation;
    label_names: the model's labels in output order (their hash is stored so a reader can refuse a
    table made for another label set). Raises ValueError (InvalidLocationError for bad coordinates).
    """
    if label_names is None:
        raise ValueError("label_names is required: the table stores their hash to detect label-set mismatches")
    lat, lon, labels, num_labels, radius_miles, precision, label_names = _check_build_args(
        lat, lon, labels, num_labels, radius_miles, precision, label_names)
    pairs = _tiles(*_label_intervals(lat, lon, labels, radius_miles, precision), precision) if lat.size else iter(())
    cells, cell_set, set_starts, set_labels = _cell_sets(pairs, num_labels)
    num_sets = set_starts.size - 1

    # Runs: maximal stretches of consecutive keys with one set.
    is_start = np.r_[True, (cells[1:] != cells[:-1] + 1) | (cell_set[1:] != cell_set[:-1])] if cells.size else np.zeros(0, bool)
    run_first = np.flatnonzero(is_start)
    run_key, run_set = cells[run_first], cell_set[run_first]
    run_len = np.diff(np.append(run_first, cells.size))

    run_blocks = [codec.encode_run_block(run_key[b:b + RUNS_PER_BLOCK], run_len[b:b + RUNS_PER_BLOCK],
                                         run_set[b:b + RUNS_PER_BLOCK])
                  for b in range(0, run_key.size, RUNS_PER_BLOCK)]
    set_blocks = [codec.encode_set_block(set_starts[b:b + SETS_PER_BLOCK + 1] - set_starts[b],
                                         set_labels[set_starts[b]:set_starts[min(b + SETS_PER_BLOCK, num_sets)]])
                  for b in range(0, num_sets, SETS_PER_BLOCK)]
    return codec.assemble(num_labels, radius_miles, precision, cells.size, run_key.size, num_sets,
                          run_key[::RUNS_PER_BLOCK], run_blocks, set_blocks, label_set_hash(label_names))


def write_whitelist(path, lat, lon, labels, num_labels, radius_miles=DEFAULT_RADIUS_MILES,
                    precision=DEFAULT_PRECISION, label_names=None) -> Path:
    """Build the table and write it atomically (temporary file in the same folder, then rename)."""
    data = build_whitelist(lat, lon, labels, num_labels, radius_miles, precision, label_names)
    return atomic_write_bytes(path, data)
