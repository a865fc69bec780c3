"""The whitelist table's binary format, both ways: docs/whitelist-format.md is its specification.

Header, index and the two block kinds (runs of cells, label sets); each block is one raw-DEFLATE
stream of unsigned LEB128 varints. Decoders raise WhitelistTableError on anything malformed.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import WhitelistTableError

MAGIC = b"GWLT"
VERSION = 1
HEADER = struct.Struct("<4sHHIIdBBHIIIHHII32s8x")  # 92 bytes, little-endian
HEADER_SIZE = HEADER.size
CRC_OFFSET = 8
MAX_TABLE_PRECISION = 6  # keys are stored as uint32: 5 * 6 = 30 bits
RUNS_PER_BLOCK = 512
SETS_PER_BLOCK = 256
PARENT_WINDOW = 64
MTF_SIZE = 8


def label_set_hash(label_names) -> bytes:
    """sha256 of the label names joined by newlines (UTF-8): what labels.txt holds, in order."""
    return hashlib.sha256("\n".join(str(n) for n in label_names).encode("utf-8")).digest()


# ---------------------------------------------------------------------------------------------
# varints (unsigned LEB128) and raw DEFLATE
# ---------------------------------------------------------------------------------------------

def encode_varints(values: np.ndarray) -> bytes:
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


def decode_varints(data: bytes) -> np.ndarray:
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


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)  # raw deflate: no zlib header or adler32
    return c.compress(data) + c.flush()


def inflate(data: bytes) -> bytes:
    try:
        d = zlib.decompressobj(-15)
        out = d.decompress(data) + d.flush()
    except zlib.error as exc:
        raise WhitelistTableError(f"corrupted whitelist table: block does not inflate ({exc})") from None
    if not d.eof:
        raise WhitelistTableError("corrupted whitelist table: truncated block")
    return out


# ---------------------------------------------------------------------------------------------
# run blocks: gaps, lengths, set codes
# ---------------------------------------------------------------------------------------------

def encode_set_ids(set_ids: np.ndarray) -> np.ndarray:
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


def decode_set_ids(codes: np.ndarray) -> np.ndarray:
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


def encode_run_block(keys: np.ndarray, lengths: np.ndarray, set_ids: np.ndarray) -> bytes:
    gaps = keys - np.r_[keys[0], (keys + lengths)[:-1]]
    return deflate(encode_varints(np.concatenate([gaps, lengths, encode_set_ids(set_ids)])))


def decode_run_block(data: bytes, first_key: int, n: int, num_sets: int, where: str):
    """-> (starts, stops, set ids) of the block's n runs."""
    values = decode_varints(inflate(data))
    if n < 1 or values.size != 3 * n:
        raise WhitelistTableError(f"{where}: corrupted")
    gaps, lengths = values[:n], values[n:2 * n]
    starts = first_key + np.cumsum(gaps) + np.r_[0, np.cumsum(lengths)[:-1]]
    set_ids = decode_set_ids(values[2 * n:])
    if (set_ids < 0).any() or (set_ids >= num_sets).any():
        raise WhitelistTableError(f"{where}: corrupted (set id out of range)")
    return starts, starts + lengths, set_ids


# ---------------------------------------------------------------------------------------------
# set blocks: parent offsets, flip counts, flip gaps
# ---------------------------------------------------------------------------------------------

def encode_set_block(block: np.ndarray) -> bytes:
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
    return deflate(encode_varints(np.concatenate([offsets, np.bincount(rows, minlength=n), gaps])))


def decode_set_block(data: bytes, n: int, num_labels: int, where: str) -> np.ndarray:
    """uint8 [n, ceil(L/8)]: the block's sets as little-endian bitmaps. Each set is its flips XOR
    its parent's set, so the XOR of the flips along its parent chain; pointer jumping resolves all
    chains at once."""
    values = decode_varints(inflate(data))
    offsets, counts = values[:n], values[n:2 * n]
    if n < 1 or counts.size != n or 2 * n + counts.sum() != values.size or (offsets > np.arange(n)).any():
        raise WhitelistTableError(f"{where}: corrupted")
    rows = np.repeat(np.arange(n), counts)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    steps = values[2 * n:] + 1
    if not steps.size:
        raise WhitelistTableError(f"{where}: corrupted (no labels)")
    labels = np.cumsum(steps) - np.repeat(np.cumsum(steps)[first - 1] * (first > 0), counts) - 1
    if not labels.size or labels.max() >= num_labels:
        raise WhitelistTableError(f"{where}: corrupted (label out of range)")
    sets = np.zeros((n, num_labels), dtype=bool)
    sets[rows, labels] = True
    parent = np.arange(n) - offsets  # a root (offset 0) points at itself
    root = offsets == 0
    while not root.all():
        sets[~root] ^= sets[parent[~root]]
        root, parent = root | root[parent], parent[parent]
    if not sets.any(axis=1).all():
        raise WhitelistTableError(f"{where}: corrupted (empty set)")
    return np.packbits(sets, axis=1, bitorder="little")  # 8x less cache memory


# ---------------------------------------------------------------------------------------------
# the whole file: header + index + blocks, CRC over everything
# ---------------------------------------------------------------------------------------------

def assemble(num_labels: int, radius_miles: float, precision: int, num_cells: int, num_runs: int, num_sets: int,
             run_first_keys, run_blocks: list[bytes], set_blocks: list[bytes], label_hash: bytes) -> bytes:
    """The file's bytes from its encoded blocks (offsets and CRC computed here)."""
    run_offsets = np.cumsum([0] + [len(b) for b in run_blocks])
    set_offsets = np.cumsum([0] + [len(b) for b in set_blocks])
    header = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, 0, num_labels, radius_miles, precision, 0, 0, num_cells,
                         num_runs, num_sets, RUNS_PER_BLOCK, SETS_PER_BLOCK, len(run_blocks), len(set_blocks),
                         label_hash)
    body = b"".join([np.asarray(run_first_keys, "<u4").tobytes(), np.asarray(run_offsets, "<u4").tobytes(),
                     np.asarray(set_offsets, "<u4").tobytes(), *run_blocks, *set_blocks])
    crc = zlib.crc32(body, zlib.crc32(header))
    return header[:CRC_OFFSET] + struct.pack("<I", crc) + header[CRC_OFFSET + 4:] + body


@dataclass(frozen=True)
class Layout:
    """The parsed header and index of a table: where every block lies (absolute byte offsets)."""

    num_labels: int
    radius_miles: float
    precision: int
    num_cells: int
    num_runs: int
    num_sets: int
    runs_per_block: int
    sets_per_block: int
    label_set_hash: bytes
    block_keys: np.ndarray  # int64 [NR]: first key of each run block
    run_offsets: np.ndarray  # int64 [NR + 1]
    set_offsets: np.ndarray  # int64 [NS + 1]


def parse(view: memoryview, source: str) -> Layout:
    """Header + index of a whole file, checked in the order docs/whitelist-format.md gives."""
    if len(view) < HEADER_SIZE:
        raise WhitelistTableError(f"{source}: truncated whitelist table ({len(view)} bytes, header needs {HEADER_SIZE})")
    (magic, version, header_size, crc, num_labels, radius_miles, precision, _, _, num_cells, num_runs, num_sets,
     runs_per_block, sets_per_block, n_run_blocks, n_set_blocks, label_hash) = HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise WhitelistTableError(f"{source}: not a whitelist table (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION or header_size != HEADER_SIZE:
        raise WhitelistTableError(f"{source}: unsupported whitelist table version {version} (this SDK reads {VERSION})")
    if not 1 <= precision <= MAX_TABLE_PRECISION or num_labels < 1:
        raise WhitelistTableError(f"{source}: corrupted header (precision {precision}, labels {num_labels})")
    index_end = HEADER_SIZE + 4 * (n_run_blocks + (n_run_blocks + 1) + (n_set_blocks + 1))
    if len(view) < index_end:
        raise WhitelistTableError(f"{source}: truncated whitelist table (index cut off)")
    pos = HEADER_SIZE
    block_keys = np.frombuffer(view, "<u4", n_run_blocks, pos).astype(np.int64)
    pos += 4 * n_run_blocks
    run_offsets = np.frombuffer(view, "<u4", n_run_blocks + 1, pos).astype(np.int64) + index_end
    pos += 4 * (n_run_blocks + 1)
    set_offsets = np.frombuffer(view, "<u4", n_set_blocks + 1, pos).astype(np.int64) + int(run_offsets[-1])
    total = int(set_offsets[-1])
    if len(view) != total:
        kind = "truncated" if len(view) < total else "oversized"
        raise WhitelistTableError(f"{source}: {kind} whitelist table ({len(view)} bytes, header says {total})")
    actual = zlib.crc32(view[CRC_OFFSET + 4:], zlib.crc32(bytes(view[:CRC_OFFSET]) + b"\0\0\0\0"))
    if actual != crc:
        raise WhitelistTableError(f"{source}: corrupted whitelist table (checksum {actual:08x} != {crc:08x})")
    return Layout(num_labels, radius_miles, precision, num_cells, num_runs, num_sets, runs_per_block, sets_per_block,
                  label_hash, block_keys, run_offsets, set_offsets)
