"""The compact geohash whitelist table (paper eq. 3): which labels have a training observation
within radius θ of a location. Binary format: docs/whitelist-format.md.

Exactness: a cell's label set is every label with an observation within θ + R of the cell centre,
where R is the cell's largest centre-to-corner great-circle distance (for a lat/lon box the corner
is the farthest point). By the triangle inequality a label within θ of ANY point of the cell is in
the set: no false negatives, and extras lie at most θ + 2R away from the query.

A cell absent from the table has no label within θ of any of its points: `lookup` returns None,
meaning "no data nearby, do not filter" (the paper's fallback), so the answer is never empty.

Writing needs numpy only, like reading; the build is a sweep of latitude rows: the cells of one
row within distance D of an observation form one longitude interval, found in closed form.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import os
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import geohash
from .fileio import atomic_write_bytes
from .errors import InvalidLocationError, LabelSetMismatchError, WhitelistTableError
from .geo import EARTH_RADIUS_KM, great_circle_km, miles_to_km, validate_location, validate_locations

MAGIC = b"GWLT"
VERSION = 1
HEADER = struct.Struct("<4sHHIIdBBHIIIHHII32s8x")  # 92 bytes, little-endian: docs/whitelist-format.md
HEADER_SIZE = HEADER.size
CRC_OFFSET = 8
MAX_TABLE_PRECISION = 6  # keys are stored as uint32: 5 * 6 = 30 bits
RUNS_PER_BLOCK = 512
SETS_PER_BLOCK = 256
PARENT_WINDOW = 64
MTF_SIZE = 8
_SLACK_KM = 1e-3  # absorbs floating-point rounding in the distance test; it only ever adds labels
_CACHE_BLOCKS = 512  # decoded blocks kept: at most ~12 KB (runs) or L/8 * 256 bytes (sets) each


def label_set_hash(label_names) -> bytes:
    """sha256 of the label names joined by newlines (UTF-8): what labels.txt holds, in order."""
    return hashlib.sha256("\n".join(str(n) for n in label_names).encode("utf-8")).digest()


# ---------------------------------------------------------------------------------------------
# varints (unsigned LEB128) and raw DEFLATE
# ---------------------------------------------------------------------------------------------

def _encode_varints(values: np.ndarray) -> bytes:
    values = np.asarray(values, dtype=np.uint64)
    if values.size == 0:
        return b""
    n_bytes = np.ones(values.shape, dtype=np.int64)
    for shift in range(7, 64, 7):
        n_bytes += values >= np.uint64(1 << shift)
    ends = np.cumsum(n_bytes)
    out = np.zeros(int(ends[-1]), dtype=np.uint8)
    owner = np.repeat(np.arange(values.size), n_bytes)
    pos = np.arange(out.size) - np.repeat(ends - n_bytes, n_bytes)
    out[:] = (values[owner] >> (np.uint64(7) * pos.astype(np.uint64))) & np.uint64(0x7F)
    out[np.arange(out.size) != ends[owner] - 1] |= 0x80
    return out.tobytes()


def _decode_varints(data: bytes) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    if raw[-1] & 0x80:
        raise WhitelistTableError("corrupted whitelist table: a varint runs past the end of its block")
    last = np.flatnonzero(raw < 0x80)
    starts = np.concatenate([[0], last[:-1] + 1])
    owner = np.repeat(np.arange(last.size), last - starts + 1)
    shift = (np.arange(raw.size) - starts[owner]) * 7
    if shift.max() > 56:
        raise WhitelistTableError("corrupted whitelist table: varint longer than 8 bytes")
    parts = (raw & 0x7F).astype(np.int64) << shift
    return np.add.reduceat(parts, starts)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)  # raw deflate: no zlib header or adler32
    return c.compress(data) + c.flush()


def _inflate(data: bytes) -> bytes:
    try:
        d = zlib.decompressobj(-15)
        out = d.decompress(data) + d.flush()
    except zlib.error as exc:
        raise WhitelistTableError(f"corrupted whitelist table: block does not inflate ({exc})") from None
    if not d.eof:
        raise WhitelistTableError("corrupted whitelist table: truncated block")
    return out


# ---------------------------------------------------------------------------------------------
# block codecs (docs/whitelist-format.md); each block is one raw-deflate stream of varints
# ---------------------------------------------------------------------------------------------

def _encode_set_ids(set_ids: np.ndarray) -> np.ndarray:
    """Run set ids -> codes: < MTF_SIZE picks a recently used set (move-to-front list), else
    MTF_SIZE + zigzag(id - previous id). Z-order revisits a few sets back and forth."""
    codes, recent, previous = [], [], 0
    for set_id in set_ids.tolist():
        if set_id in recent:
            codes.append(recent.index(set_id))
            recent.remove(set_id)
        else:
            step = set_id - previous
            codes.append(MTF_SIZE + (step << 1 if step >= 0 else ((-step) << 1) - 1))
        recent.insert(0, set_id)
        del recent[MTF_SIZE:]
        previous = set_id
    return np.asarray(codes, dtype=np.int64)


def _decode_set_ids(codes: np.ndarray) -> np.ndarray:
    out, recent, previous = [], [], 0
    for code in codes.tolist():
        if code < MTF_SIZE:
            if code >= len(recent):
                raise WhitelistTableError("corrupted whitelist table: bad set reference in a run block")
            set_id = recent.pop(code)
        else:
            z = code - MTF_SIZE
            set_id = previous + (-((z + 1) >> 1) if z & 1 else z >> 1)
        recent.insert(0, set_id)
        del recent[MTF_SIZE:]
        out.append(set_id)
        previous = set_id
    return np.asarray(out, dtype=np.int64)


def _encode_set_block(block: np.ndarray) -> np.ndarray:
    """bool [n, L] sets -> [parent offsets x n][flip counts x n][flip gaps...]: each set is the XOR
    of the closest of the PARENT_WINDOW previous sets of its block (offset k: set i-k; 0: the empty
    set) with its flips; the gaps are between sorted flipped label indices, minus one."""
    n = block.shape[0]
    packed = np.packbits(block, axis=1)
    distance = np.full((n, PARENT_WINDOW + 1), np.iinfo(np.int64).max)
    distance[:, 0] = block.sum(axis=1)
    for k in range(1, min(PARENT_WINDOW, n - 1) + 1):
        distance[k:, k] = np.bitwise_count(packed[k:] ^ packed[:-k]).sum(axis=1)
    offsets = np.argmin(distance, axis=1)
    parents = np.where((offsets > 0)[:, None], block[np.arange(n) - offsets], False)
    rows, labels = np.nonzero(block ^ parents)
    first_of_row = np.r_[True, rows[1:] != rows[:-1]]
    gaps = labels - np.where(first_of_row, -1, np.r_[-1, labels[:-1]]) - 1
    return np.concatenate([offsets, np.bincount(rows, minlength=n), gaps]).astype(np.int64)

# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------

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


def _label_cells(lat, lon, labels, radius_miles, precision):
    """All (cell key, label) pairs of the table, sorted by key then label."""
    n_rows, n_cols = geohash.grid_shape(precision)
    height, width = geohash.cell_size_deg(precision)
    reach = np.minimum(row_reach_km(precision, radius_miles) / EARTH_RADIUS_KM, np.pi)  # radians
    row_lat = np.radians((np.arange(n_rows) + 0.5) * height - 90.0)

    if not lat.size:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    # Duplicates (same label, same place) cannot change the answer.
    order = np.lexsort((lon, lat, labels))
    label_s, lat_s, lon_s = labels[order], lat[order], lon[order]
    distinct = np.r_[True, (label_s[1:] != label_s[:-1]) | (lat_s[1:] != lat_s[:-1]) | (lon_s[1:] != lon_s[:-1])]
    p_label, p_lat, p_lon = label_s[distinct], lat_s[distinct], lon_s[distinct]

    # Candidate rows: latitude difference never exceeds the great-circle distance.
    margin = np.degrees(reach.max())
    lo = np.clip(np.floor((p_lat - margin + 90.0) / height - 0.5), 0, n_rows - 1).astype(np.int64)
    hi = np.clip(np.ceil((p_lat + margin + 90.0) / height - 0.5), 0, n_rows - 1).astype(np.int64)
    count = hi - lo + 1
    pt = np.repeat(np.arange(p_lat.size), count)
    rows = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + lo[pt]

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

    # Merge overlapping intervals per (label, row) so each (label, cell) pair is produced once.
    group = lab * n_rows + rows
    order = np.argsort(group * n_cols + start)  # one int64 key sorts faster than a lexsort
    group, start, stop = group[order], start[order], stop[order]
    offset = group * (n_cols + 2)  # keeps the running max from leaking across groups
    reach_end = np.maximum.accumulate(stop + offset) - offset
    new = np.ones(group.size, dtype=bool)
    new[1:] = (group[1:] != group[:-1]) | (start[1:] > reach_end[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], group.size) - 1
    g, s, e = group[first], start[first], reach_end[last]

    length = e - s + 1
    owner = np.repeat(np.arange(g.size), length)
    cols = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length) + s[owner]
    keys = geohash.rows_cols_to_keys(g[owner] % n_rows, cols, precision)
    pair_labels = g[owner] // n_rows
    order = np.argsort(keys.astype(np.int64) * (int(lab.max()) + 1) + pair_labels)  # key, then label
    return keys[order], pair_labels[order]


def build_whitelist(lat, lon, labels, num_labels, radius_miles=100.0, precision=4, label_names=None) -> bytes:
    """Build the table from training observations; returns the file's bytes.

    lat/lon: degrees (NaN rows = unknown, skipped); labels: int label index per observation;
    label_names: the model's labels in output order (their hash is stored so a reader can refuse a
    table made for another label set). Raises ValueError (InvalidLocationError for bad coordinates).
    """
    if label_names is None:
        raise ValueError("label_names is required: the table stores their hash to detect label-set mismatches")
    lat, lon, labels, num_labels, radius_miles, precision, label_names = _check_build_args(
        lat, lon, labels, num_labels, radius_miles, precision, label_names)
    keys, pair_labels = _label_cells(lat, lon, labels, radius_miles, precision)

    # One bitmap row per cell, then de-duplicate the rows: cell -> set id.
    cell_start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, np.int64)
    cells = keys[cell_start].astype(np.int64)
    n_bytes = (num_labels + 7) // 8
    bitmaps = np.zeros((cells.size, n_bytes), dtype=np.uint8)
    cell_of_pair = np.cumsum(np.r_[False, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, np.int64)
    np.bitwise_or.at(bitmaps, (cell_of_pair, pair_labels // 8), (1 << (pair_labels % 8)).astype(np.uint8))
    _, first_seen, cell_set = np.unique(bitmaps.view(np.dtype((np.void, n_bytes))).ravel(),
                                        return_index=True, return_inverse=True)
    # Number sets in order of first use along the key order: neighbouring cells get near ids.
    rank = np.empty(first_seen.size, dtype=np.int64)
    rank[np.argsort(first_seen)] = np.arange(first_seen.size)
    cell_set = rank[cell_set.ravel()]
    set_bitmaps = np.unpackbits(bitmaps[np.sort(first_seen)], axis=1, bitorder="little")[:, :num_labels].astype(bool)

    # Runs: maximal stretches of consecutive keys with one set.
    is_start = np.r_[True, (cells[1:] != cells[:-1] + 1) | (cell_set[1:] != cell_set[:-1])] if cells.size else np.zeros(0, bool)
    run_first = np.flatnonzero(is_start)
    run_key, run_set = cells[run_first], cell_set[run_first]
    run_len = np.diff(np.append(run_first, cells.size))

    run_first_keys, run_offsets, run_data = [], [0], io.BytesIO()
    for b in range(0, run_key.size, RUNS_PER_BLOCK):
        k, n, s = run_key[b:b + RUNS_PER_BLOCK], run_len[b:b + RUNS_PER_BLOCK], run_set[b:b + RUNS_PER_BLOCK]
        gaps = k - np.r_[k[0], (k + n)[:-1]]
        run_data.write(_deflate(_encode_varints(np.concatenate([gaps, n, _encode_set_ids(s)]))))
        run_first_keys.append(int(k[0]))
        run_offsets.append(run_data.tell())

    set_offsets, set_data = [0], io.BytesIO()
    for b in range(0, set_bitmaps.shape[0], SETS_PER_BLOCK):
        set_data.write(_deflate(_encode_varints(_encode_set_block(set_bitmaps[b:b + SETS_PER_BLOCK]))))
        set_offsets.append(set_data.tell())

    header = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, 0, num_labels, radius_miles, precision, 0, 0,
                         cells.size, run_key.size, set_bitmaps.shape[0], RUNS_PER_BLOCK, SETS_PER_BLOCK,
                         len(run_first_keys), len(set_offsets) - 1, label_set_hash(label_names))
    body = b"".join([np.asarray(run_first_keys, "<u4").tobytes(), np.asarray(run_offsets, "<u4").tobytes(),
                     np.asarray(set_offsets, "<u4").tobytes(), run_data.getvalue(), set_data.getvalue()])
    crc = zlib.crc32(body, zlib.crc32(header))
    return header[:CRC_OFFSET] + struct.pack("<I", crc) + header[CRC_OFFSET + 4:] + body


def write_whitelist(path, lat, lon, labels, num_labels, radius_miles=100.0, precision=4, label_names=None) -> Path:
    """Build the table and write it atomically (temporary file in the same folder, then rename)."""
    data = build_whitelist(lat, lon, labels, num_labels, radius_miles, precision, label_names)
    return atomic_write_bytes(path, data)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

class WhitelistTable:
    """Read-only view of a table; memory-mapped when opened from a path. Thread-safe."""

    def __init__(self, buffer, expected_label_names=None, source="<bytes>"):
        self._buffer = buffer
        self.source = source
        view = memoryview(buffer)
        if len(view) < HEADER_SIZE:
            raise WhitelistTableError(f"{source}: truncated whitelist table ({len(view)} bytes, header needs {HEADER_SIZE})")
        (magic, version, header_size, crc, self.num_labels, self.radius_miles, self.precision, _, _, self.num_cells,
         self.num_runs, self.num_sets, runs_per_block, sets_per_block, n_run_blocks, n_set_blocks,
         self.label_set_hash) = HEADER.unpack_from(view, 0)
        if magic != MAGIC:
            raise WhitelistTableError(f"{source}: not a whitelist table (magic {bytes(magic)!r}, expected {MAGIC!r})")
        if version != VERSION or header_size != HEADER_SIZE:
            raise WhitelistTableError(f"{source}: unsupported whitelist table version {version} (this SDK reads {VERSION})")
        if not 1 <= self.precision <= MAX_TABLE_PRECISION or self.num_labels < 1:
            raise WhitelistTableError(f"{source}: corrupted header (precision {self.precision}, labels {self.num_labels})")
        index_end = HEADER_SIZE + 4 * (n_run_blocks + (n_run_blocks + 1) + (n_set_blocks + 1))
        if len(view) < index_end:
            raise WhitelistTableError(f"{source}: truncated whitelist table (index cut off)")
        pos = HEADER_SIZE
        self._block_keys = np.frombuffer(view, "<u4", n_run_blocks, pos).astype(np.int64)
        pos += 4 * n_run_blocks
        self._run_offsets = np.frombuffer(view, "<u4", n_run_blocks + 1, pos).astype(np.int64) + index_end
        pos += 4 * (n_run_blocks + 1)
        set_base = int(self._run_offsets[-1])
        self._set_offsets = np.frombuffer(view, "<u4", n_set_blocks + 1, pos).astype(np.int64) + set_base
        total = int(self._set_offsets[-1])
        if len(view) != total:
            kind = "truncated" if len(view) < total else "oversized"
            raise WhitelistTableError(f"{source}: {kind} whitelist table ({len(view)} bytes, header says {total})")
        actual = zlib.crc32(view[CRC_OFFSET + 4:], zlib.crc32(bytes(view[:CRC_OFFSET]) + b"\0\0\0\0"))
        if actual != crc:
            raise WhitelistTableError(f"{source}: corrupted whitelist table (checksum {actual:08x} != {crc:08x})")
        self._runs_per_block, self._sets_per_block = runs_per_block, sets_per_block
        if expected_label_names is not None:
            names = [str(n) for n in expected_label_names]
            if len(names) != self.num_labels or label_set_hash(names) != self.label_set_hash:
                raise LabelSetMismatchError(
                    f"{source}: whitelist table was built for another label set "
                    f"({self.num_labels} labels, hash {self.label_set_hash.hex()[:12]}) than the model's "
                    f"({len(names)} labels, hash {label_set_hash(names).hex()[:12]})")
        self._view = view
        self._lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()

    @classmethod
    def open(cls, path, expected_label_names=None) -> "WhitelistTable":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as exc:
            raise WhitelistTableError(f"cannot open whitelist table {path}: {exc.strerror or exc}") from None
        return cls(buffer, expected_label_names, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, expected_label_names=None) -> "WhitelistTable":
        return cls(bytes(data), expected_label_names)

    def __repr__(self):
        return (f"WhitelistTable({self.source}, labels={self.num_labels}, cells={self.num_cells}, "
                f"sets={self.num_sets}, radius={self.radius_miles} mi, precision={self.precision})")

    # -- blocks, decoded on demand and cached (a phone asks about the same area again and again)

    def _cached(self, key, decode):
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = decode()
        with self._lock:
            self._cache[key] = value
            if len(self._cache) > _CACHE_BLOCKS:
                self._cache.popitem(last=False)
        return value

    def _run_block(self, b: int):
        def decode():
            values = _decode_varints(_inflate(self._view[self._run_offsets[b]:self._run_offsets[b + 1]]))
            n = min(self._runs_per_block, self.num_runs - b * self._runs_per_block)
            if n < 1 or values.size != 3 * n:
                raise WhitelistTableError(f"{self.source}: corrupted run block {b}")
            gaps, lengths = values[:n], values[n:2 * n]
            starts = self._block_keys[b] + np.cumsum(gaps) + np.r_[0, np.cumsum(lengths)[:-1]]
            set_ids = _decode_set_ids(values[2 * n:])
            if (set_ids < 0).any() or (set_ids >= self.num_sets).any():
                raise WhitelistTableError(f"{self.source}: corrupted run block {b} (set id out of range)")
            return starts, starts + lengths, set_ids
        return self._cached(("run", b), decode)

    def _set_block(self, b: int) -> np.ndarray:
        """uint8 [n, ceil(L/8)]: the sets of block b as little-endian bitmaps. Each set is its flips XOR its parent's set, so the
        XOR of the flips along its parent chain; pointer jumping resolves all chains at once."""
        def decode():
            values = _decode_varints(_inflate(self._view[self._set_offsets[b]:self._set_offsets[b + 1]]))
            n = min(self._sets_per_block, self.num_sets - b * self._sets_per_block)
            offsets, counts = values[:n], values[n:2 * n]
            if n < 1 or counts.size != n or 2 * n + counts.sum() != values.size or (offsets > np.arange(n)).any():
                raise WhitelistTableError(f"{self.source}: corrupted set block {b}")
            rows = np.repeat(np.arange(n), counts)
            first = np.r_[0, np.cumsum(counts)[:-1]]
            steps = values[2 * n:] + 1
            if not steps.size:
                raise WhitelistTableError(f"{self.source}: corrupted set block {b} (no labels)")
            labels = np.cumsum(steps) - np.repeat(np.cumsum(steps)[first - 1] * (first > 0), counts) - 1
            if not labels.size or labels.max() >= self.num_labels:
                raise WhitelistTableError(f"{self.source}: corrupted set block {b} (label out of range)")
            sets = np.zeros((n, self.num_labels), dtype=bool)
            sets[rows, labels] = True
            parent = np.arange(n) - offsets  # a root (offset 0) points at itself
            root = offsets == 0
            while not root.all():
                sets[~root] ^= sets[parent[~root]]
                root, parent = root | root[parent], parent[parent]
            if not sets.any(axis=1).all():
                raise WhitelistTableError(f"{self.source}: corrupted set block {b} (empty set)")
            return np.packbits(sets, axis=1, bitorder="little")  # 8x less cache memory
        return self._cached(("set", b), decode)

    def _set_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Set id per key, -1 where the table has no cell."""
        out = np.full(keys.shape, -1, dtype=np.int64)
        if not self._block_keys.size:
            return out
        block = np.searchsorted(self._block_keys, keys, side="right") - 1
        for b in np.unique(block[block >= 0]):
            sel = np.flatnonzero(block == b)
            starts, stops, set_ids = self._run_block(int(b))
            run = np.searchsorted(starts, keys[sel], side="right") - 1
            inside = (run >= 0) & (keys[sel] < stops[np.maximum(run, 0)])
            out[sel[inside]] = set_ids[run[inside]]
        return out

    def _set_rows(self, set_ids: np.ndarray) -> np.ndarray:
        rows = np.ones((set_ids.size, self.num_labels), dtype=bool)
        block = set_ids // self._sets_per_block
        for b in np.unique(block[set_ids >= 0]):
            sel = np.flatnonzero((block == b) & (set_ids >= 0))
            packed = self._set_block(int(b))[set_ids[sel] - b * self._sets_per_block]
            rows[sel] = np.unpackbits(packed, axis=1, count=self.num_labels, bitorder="little").astype(bool)
        return rows

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored cell: (keys, set ids), in key order; decodes the whole table (tools, tests)."""
        keys, ids = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for b in range(self._block_keys.size):
            starts, stops, set_ids = self._run_block(b)
            lengths = stops - starts
            keys.append(np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum()))
            ids.append(np.repeat(set_ids, lengths))
        return np.concatenate(keys), np.concatenate(ids)

    def set_labels(self, set_id: int) -> np.ndarray:
        """Sorted label indices of one de-duplicated set."""
        if not 0 <= set_id < self.num_sets:
            raise IndexError(f"set id {set_id} outside [0, {self.num_sets})")
        row = self._set_block(set_id // self._sets_per_block)[set_id % self._sets_per_block]
        return np.flatnonzero(np.unpackbits(row, count=self.num_labels, bitorder="little"))

    # -- public queries

    def lookup(self, lat, lon) -> np.ndarray | None:
        """Sorted label indices allowed at (lat, lon), or None when no training data lies nearby
        (then nothing should be filtered). Raises InvalidLocationError on bad coordinates."""
        location = validate_location(lat, lon)
        if location is None:
            raise InvalidLocationError("lookup needs a location: lat and lon are both None")
        key = geohash.encode_one(location[0], location[1], self.precision)
        block = int(np.searchsorted(self._block_keys, key, side="right")) - 1
        if block < 0:
            return None
        starts, stops, set_ids = self._run_block(block)
        run = int(np.searchsorted(starts, key, side="right")) - 1
        if run < 0 or key >= stops[run]:
            return None
        return self.set_labels(int(set_ids[run]))

    def lookup_batch(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised lookup of N points (NaN pairs = unknown location).

        Returns (allowed bool [N, num_labels], covered bool [N]); rows that are not covered (no data
        nearby, or unknown location) allow every label.
        """
        locs, known = validate_locations(np.stack([np.ravel(np.asarray(lat, dtype=np.float64)),
                                                   np.ravel(np.asarray(lon, dtype=np.float64))], axis=-1))
        set_ids = np.full(known.size, -1, dtype=np.int64)
        keys = geohash.encode(locs[known, 0], locs[known, 1], self.precision).astype(np.int64)
        set_ids[known] = self._set_of_keys(keys)
        return self._set_rows(set_ids), set_ids >= 0
