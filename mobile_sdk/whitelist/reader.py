"""What ships to apps: the random-access reader of a whitelist table (docs/whitelist-format.md).

A cell absent from the table has no label within θ of any of its points: a lookup returns None,
meaning "no data nearby, do not filter" (the paper's fallback), so the answer is never empty.
Only the blocks a lookup touches are inflated; decoded blocks, sets and answered cells are kept in
bounded caches (a phone asks about the same area again and again).
"""
from __future__ import annotations

import mmap
import operator
import os
from bisect import bisect_right
from itertools import repeat
from pathlib import Path

import numpy as np

from .. import geohash
from ..errors import InvalidLocationError, LabelSetMismatchError, WhitelistTableError
from ..geo import validate_location, validate_locations
from . import codec
from .codec import label_set_hash

_CACHE_BLOCKS = 256  # decoded run or set blocks kept of each kind
_CACHE_SETS = 65536  # label arrays of sets kept (shared between the cells that use them)
_CACHE_CELLS = 65536  # answered cells kept
_NOT_CACHED = object()


class _BoundedCache(dict):
    """A dict emptied when it grows past `limit`: O(1) hits, bounded memory, no bookkeeping per hit.
    Safe to share between threads (a miss just recomputes the same value)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


class WhitelistTable:
    """Read-only view of a table; memory-mapped when opened from a path. Thread-safe."""

    def __init__(self, buffer, expected_label_names=None, source="<bytes>"):
        self._buffer = buffer
        self.source = source
        self._view = memoryview(buffer)
        self._layout = layout = codec.parse(self._view, source)
        self.num_labels, self.radius_miles, self.precision = layout.num_labels, layout.radius_miles, layout.precision
        self.num_cells, self.num_runs, self.num_sets = layout.num_cells, layout.num_runs, layout.num_sets
        self.label_set_hash = layout.label_set_hash
        if expected_label_names is not None:
            names = [str(n) for n in expected_label_names]
            if len(names) != self.num_labels or label_set_hash(names) != self.label_set_hash:
                raise LabelSetMismatchError(
                    f"{source}: whitelist table was built for another label set "
                    f"({self.num_labels} labels, hash {self.label_set_hash.hex()[:12]}) than the model's "
                    f"({len(names)} labels, hash {label_set_hash(names).hex()[:12]})")
        self._block_keys = layout.block_keys.tolist()
        self._end_keys = self._block_keys[1:] + [1 << (5 * self.precision)]
        self._key = geohash.scalar_encoder(self.precision)
        self._run_blocks = _BoundedCache(_CACHE_BLOCKS)
        self._run_arrays_cache = _BoundedCache(_CACHE_BLOCKS)
        self._merged = (frozenset(), None, None, None)  # (blocks, starts, stops, set ids): what batches search
        self._set_blocks = _BoundedCache(_CACHE_BLOCKS)
        self._sets = _BoundedCache(_CACHE_SETS)
        self._cells = _BoundedCache(_CACHE_CELLS)

    @classmethod
    def open(cls, path, expected_label_names=None) -> "WhitelistTable":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as exc:
            raise WhitelistTableError(f"cannot open whitelist table {path}: {exc.strerror or exc}") from None
        except (OverflowError, ValueError) as exc:  # mmap of a special file
            raise WhitelistTableError(f"cannot open whitelist table {path}: {exc}") from None
        return cls(buffer, expected_label_names, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, expected_label_names=None) -> "WhitelistTable":
        return cls(bytes(data), expected_label_names)

    def __repr__(self):
        return (f"WhitelistTable({self.source}, labels={self.num_labels}, cells={self.num_cells}, "
                f"sets={self.num_sets}, radius={self.radius_miles} mi, precision={self.precision})")

    # -- blocks and sets, decoded on demand

    def _run_block(self, b: int):
        """(stops, lengths, set codes, explicit ids) int64 arrays of run block b (`codec.decode_run_block`)."""
        cached = self._run_blocks.get(b)
        if cached is None:
            lay = self._layout
            cached = self._run_blocks.put(b, codec.decode_run_block(
                self._view[lay.run_offsets[b]:lay.run_offsets[b + 1]], self._block_keys[b], lay.runs_in_block(b),
                self._end_keys[b], f"{self.source}, run block {b}"))
        return cached

    def _run_arrays(self, b: int):
        """(starts, stops, set ids) int64 arrays of run block b: what batches search."""
        cached = self._run_arrays_cache.get(b)
        if cached is None:
            stops, lengths, codes, explicit = self._run_block(b)
            cached = self._run_arrays_cache.put(b, (stops - lengths, stops, codec.decode_set_codes(
                codes, explicit, self.num_sets, f"{self.source}, run block {b}")))
        return cached

    def set_labels(self, set_id: int) -> np.ndarray:
        """Sorted label indices (int64) of one de-duplicated set."""
        labels = self._sets.get(set_id)
        if labels is not None:
            return labels
        if not 0 <= set_id < self.num_sets:
            raise IndexError(f"set id {set_id} outside [0, {self.num_sets})")
        b, i = divmod(set_id, codec.SETS_PER_BLOCK)
        block = self._set_blocks.get(b)
        where = f"{self.source}, set block {b}"
        if block is None:
            lay = self._layout
            block = self._set_blocks.put(b, codec.decode_set_block(
                self._view[lay.set_offsets[b]:lay.set_offsets[b + 1]], lay.sets_in_block(b), self.num_labels,
                lay.max_set_block_bytes, where))
        labels = codec.set_from_block(block, i, where)
        labels.flags.writeable = False  # shared by every cell (and caller) that gets this set
        return self._sets.put(set_id, labels)

    def _set_id(self, key: int) -> int:
        b = bisect_right(self._block_keys, key) - 1
        if b < 0:
            return -1
        stops, lengths, codes, explicit = self._run_block(b)
        run = int(stops.searchsorted(key, side="right"))
        if run == stops.size or key < stops[run] - lengths[run]:
            return -1
        try:
            return codec.run_set_id(codes, explicit, run, self.num_sets)
        except WhitelistTableError as exc:  # the message names the block only when it is needed
            raise WhitelistTableError(f"{self.source}, run block {b}: {exc}") from None

    # -- public queries

    def lookup_validated(self, lat: float, lon: float) -> np.ndarray | None:
        """`lookup` for coordinates `mobile_sdk.geo.validate_location` already returned (floats,
        longitude wrapped): the classifier validates once and calls this."""
        key = self._key(lat, lon)
        labels = self._cells.get(key, _NOT_CACHED)
        if labels is _NOT_CACHED:
            set_id = self._set_id(key)
            labels = self._cells.put(key, None if set_id < 0 else self.set_labels(set_id))
        return labels

    def lookup(self, lat, lon) -> np.ndarray | None:
        """Sorted label indices allowed at (lat, lon) (a read-only array), or None when no training
        data lies nearby (then nothing should be filtered). Raises InvalidLocationError on bad
        coordinates."""
        location = validate_location(lat, lon)
        if location is None:
            raise InvalidLocationError("lookup needs a location: lat and lon are both None")
        return self.lookup_validated(*location)

    def set_ids(self, keys: np.ndarray) -> np.ndarray:
        """Set id per cell key (int64 array), -1 where the table has no cell."""
        keys = np.asarray(keys, dtype=np.int64)
        out = np.full(keys.shape, -1, dtype=np.int64)
        if not self._block_keys or not keys.size:
            return out
        # Searched in key order: sorted needles make numpy's binary searches 2-3x faster (each starts
        # where the previous ended, in cache) than the sort costs.
        order = np.argsort(keys, axis=None)
        keys = keys.ravel()[order]
        block = np.searchsorted(self._layout.block_keys, keys, side="right") - 1
        touched = np.flatnonzero(np.bincount(block + 1, minlength=len(self._block_keys) + 1)[1:]).tolist()
        if not touched:
            return out
        # The runs of any superset of the touched blocks, concatenated in key order, answer every
        # key with one search: a key of block b finds a run of b, since b's first run starts at
        # its first key. The last concatenation is kept while it covers the blocks asked for.
        merged = self._merged
        if not merged[0].issuperset(touched):
            blocks = sorted(merged[0].union(touched))
            merged = self._merged = (frozenset(blocks), *(np.concatenate(part) for part in zip(
                *(self._run_arrays(b) for b in blocks))))
        _, starts, stops, set_ids = merged
        run = np.searchsorted(starts, keys, side="right") - 1
        inside = (block >= 0) & (run >= 0) & (keys < stops[np.maximum(run, 0)])
        found = np.full(keys.size, -1, dtype=np.int64)
        found[inside] = set_ids[run[inside]]
        out.ravel()[order] = found  # out is a fresh C-contiguous array: ravel is a view
        return out

    def lookup_batch(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised lookup of N points (NaN pairs = unknown location).

        Returns (labels, covered): `labels` is an object array [N] holding each point's sorted label
        indices like `lookup` (None where not covered: no data nearby, or unknown location), and
        `covered` bool [N]. `allowed_mask(labels, num_labels)` turns it into a dense bool matrix.
        """
        locs, known = validate_locations(np.stack([np.ravel(np.asarray(lat, dtype=np.float64)),
                                                   np.ravel(np.asarray(lon, dtype=np.float64))], axis=-1))
        set_ids = np.full(known.size, -1, dtype=np.int64)
        set_ids[known] = self.set_ids(geohash.encode(locs[known, 0], locs[known, 1], self.precision))
        unique, inverse = np.unique(set_ids, return_inverse=True)
        ids = unique.tolist()
        labels = list(map(self._sets.get, ids))  # warm: one dict hit per distinct set (-1: None, not covered)
        if sum(map(operator.is_, labels, repeat(None))) > (ids[0] < 0):  # sets not decoded yet (arrays: no ==)
            labels = [self.set_labels(i) if found is None and i >= 0 else found for i, found in zip(ids, labels)]
        answers = np.fromiter(labels, dtype=object, count=unique.size)
        return answers[inverse.ravel()], set_ids >= 0

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored cell: (keys, set ids), in key order; decodes the whole table (tools, tests)."""
        keys, ids = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for b in range(len(self._block_keys)):
            starts, stops, set_ids = self._run_arrays(b)
            lengths = stops - starts
            keys.append(np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum()))
            ids.append(np.repeat(set_ids, lengths))
        return np.concatenate(keys), np.concatenate(ids)


def allowed_mask(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """bool [N, num_labels] from `lookup_batch`'s labels: True where allowed; rows without data
    allow every label."""
    mask = np.ones((len(labels), num_labels), dtype=bool)
    for i, allowed in enumerate(labels):
        if allowed is not None:
            mask[i] = False
            mask[i, allowed] = True
    return mask
