"""What ships to apps: the random-access reader of a whitelist table (docs/whitelist-format.md).

A cell absent from the table has no label within θ of any of its points: `lookup` returns None,
meaning "no data nearby, do not filter" (the paper's fallback), so the answer is never empty.
Only the blocks a lookup touches are inflated, then cached.
"""
from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import geohash
from ..errors import InvalidLocationError, LabelSetMismatchError, WhitelistTableError
from ..geo import validate_location, validate_locations
from . import codec
from .codec import label_set_hash

_CACHE_BLOCKS = 512  # decoded blocks kept: at most ~12 KB (runs) or L/8 * 256 bytes (sets) each


class WhitelistTable:
    """Read-only view of a table; memory-mapped when opened from a path. Thread-safe."""

    def __init__(self, buffer, expected_label_names=None, source="<bytes>"):
        self._buffer = buffer
        self.source = source
        view = memoryview(buffer)
        layout = codec.parse(view, source)
        self.num_labels, self.radius_miles, self.precision = layout.num_labels, layout.radius_miles, layout.precision
        self.num_cells, self.num_runs, self.num_sets = layout.num_cells, layout.num_runs, layout.num_sets
        self.label_set_hash = layout.label_set_hash
        self._block_keys, self._run_offsets, self._set_offsets = layout.block_keys, layout.run_offsets, layout.set_offsets
        self._runs_per_block, self._sets_per_block = layout.runs_per_block, layout.sets_per_block
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
        n = min(self._runs_per_block, self.num_runs - b * self._runs_per_block)
        data = self._view[self._run_offsets[b]:self._run_offsets[b + 1]]
        return self._cached(("run", b), lambda: codec.decode_run_block(
            data, int(self._block_keys[b]), n, self.num_sets, f"{self.source}, run block {b}"))

    def _set_block(self, b: int) -> np.ndarray:
        """uint8 [n, ceil(L/8)]: the sets of block b as little-endian bitmaps."""
        n = min(self._sets_per_block, self.num_sets - b * self._sets_per_block)
        data = self._view[self._set_offsets[b]:self._set_offsets[b + 1]]
        return self._cached(("set", b), lambda: codec.decode_set_block(
            data, n, self.num_labels, f"{self.source}, set block {b}"))

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
