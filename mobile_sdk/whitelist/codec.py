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
VERSION = 2
HEADER = struct.Struct("<4sHHIIdBBHIIIHHII32sII")  # 92 bytes, little-endian
HEADER_SIZE = HEADER.size
CRC_OFFSET = 8
MAX_TABLE_PRECISION = 6  # keys are stored as uint32: 5 * 6 = 30 bits
RUNS_PER_BLOCK = 1024
SETS_PER_BLOCK = 256
PARENT_WINDOW = 64
BACK_REFS = 8  # run set codes below this repeat the set of one of the 8 previous runs
MAX_SET_BLOCK_BYTES = 4 << 20  # inflated; the writer refuses to exceed it, the reader to inflate past it
MAX_DEFLATE_RATIO = 1032  # DEFLATE's largest expansion (258 bytes per 2-bit code, rounded up)
VARINT_MAX_BYTES = 5  # every stored value fits in 32 bits


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


def decode_varints(data) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    more = raw >= 0x80
    cont = np.flatnonzero(more)
    if not cont.size:  # every value below 128
        return raw.astype(np.int64)
    if more[-1]:
        raise WhitelistTableError("corrupted whitelist table: a varint runs past the end of its block")
    # Horner from each value's last byte back to its first: v[c] = low7[c] + (v[c + 1] << 7) for every
    # byte c that continues, one pass per continuing byte of the longest value (deeper ones settle
    # first). A few numpy calls whatever the block's size: the first lookup decodes whole blocks.
    after = cont + 1
    deeper = cont[more[after]]  # continuing bytes followed by another: values of 3 or more bytes
    passes = 1
    while deeper.size:
        passes += 1
        if passes >= VARINT_MAX_BYTES:
            raise WhitelistTableError("corrupted whitelist table: varint longer than 5 bytes")
        deeper = deeper[more[deeper + passes]]
    values = raw.astype(np.int64)
    low = values[cont] & 0x7F
    for _ in range(passes):
        values[cont] = low + (values[after] << 7)
    first = np.ones(raw.size, dtype=bool)
    first[after] = False  # a byte after a continuing one does not start a value
    return values[first]


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)  # raw deflate: no zlib header or adler32
    return c.compress(data) + c.flush()


def inflate(data, max_bytes: int, where: str) -> bytes:
    """Raw-inflate one block, refusing to produce more than `max_bytes` (a forged block cannot
    make the reader allocate beyond what the header implies)."""
    try:
        d = zlib.decompressobj(-15)
        out = d.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise WhitelistTableError(f"{where}: corrupted, block does not inflate ({exc})") from None
    if len(out) > max_bytes:
        raise WhitelistTableError(f"{where}: corrupted, block inflates past the {max_bytes:,} bytes the header allows")
    if not d.eof or d.unused_data:
        raise WhitelistTableError(f"{where}: corrupted, truncated or padded block")
    return out


def _resolve_back_refs(target: np.ndarray, is_ref: np.ndarray) -> np.ndarray:
    """Follow back references (each strictly earlier) to the item that is not one, by pointer jumping."""
    target = np.where(is_ref, target, np.arange(target.size))
    while is_ref[target].any():
        target = target[target]
    return target


# ---------------------------------------------------------------------------------------------
# run blocks: gaps, lengths, set codes
# ---------------------------------------------------------------------------------------------

def encode_set_codes(set_ids: np.ndarray) -> np.ndarray:
    """Run set ids -> codes: c < BACK_REFS repeats the set of run i-1-c (Z-order revisits a few sets
    back and forth), else BACK_REFS + zigzag(id - the previous explicitly coded id)."""
    ids = set_ids.tolist()
    codes, previous = [], 0
    for i, set_id in enumerate(ids):
        back = next((k for k in range(BACK_REFS) if i - 1 - k >= 0 and ids[i - 1 - k] == set_id), None)
        if back is None:
            step = set_id - previous
            codes.append(BACK_REFS + (2 * step if step >= 0 else -2 * step - 1))
            previous = set_id
        else:
            codes.append(back)
    return np.asarray(codes, dtype=np.int64)


def explicit_set_ids(codes: np.ndarray) -> np.ndarray:
    """Per run, the id its explicit codes reach so far (the value a back reference does not change)."""
    z = codes - BACK_REFS
    np.maximum(z, 0, out=z)  # back references add nothing
    ids = z >> 1
    z &= 1
    np.negative(z, out=z)
    ids ^= z  # unzigzag
    return np.cumsum(ids, out=ids)


def decode_set_codes(codes: np.ndarray, explicit: np.ndarray, num_sets: int, where: str) -> np.ndarray:
    """Set id of every run of a block (all back references resolved, by pointer jumping), from its
    codes and their `explicit_set_ids`."""
    is_ref = codes < BACK_REFS
    target = np.arange(codes.size) - 1 - codes
    if (target[is_ref] < 0).any():
        raise WhitelistTableError(f"{where}: corrupted, set code refers before the block")
    ids = explicit[_resolve_back_refs(target, is_ref)]
    if ids.min() < 0 or ids.max() >= num_sets:
        raise WhitelistTableError(f"{where}: corrupted, set code out of range")
    return ids


def encode_run_block(keys: np.ndarray, lengths: np.ndarray, set_ids: np.ndarray) -> bytes:
    """A block's runs -> (uncompressed) varints [gaps][lengths][set codes]."""
    gaps = keys - np.r_[keys[0], (keys + lengths)[:-1]]
    return encode_varints(np.concatenate([gaps, lengths, encode_set_codes(set_ids)]))


def run_block_bound(n: int) -> int:
    """Largest inflated size of a run block of n runs: 3n varints of at most 5 bytes."""
    return 3 * n * VARINT_MAX_BYTES


def decode_run_block(data, first_key: int, n: int, end_key: int, where: str):
    """-> (stops, lengths, set codes, explicit ids) int64 arrays of the block's n runs: run i covers
    keys [stops[i] - lengths[i], stops[i]). Keys must stay below end_key (the next block's first key).
    Back references and set ids are checked where they are resolved (`run_set_id`, `decode_set_codes`):
    a block's first lookup pays for what it reads, a few numpy calls fewer."""
    values = decode_varints(inflate(data, run_block_bound(n), where))
    if values.size != 3 * n:
        raise WhitelistTableError(f"{where}: corrupted, {values.size} values for {n} runs")
    lengths = values[n:2 * n]
    if values[0] != 0 or lengths.min() < 1:
        raise WhitelistTableError(f"{where}: corrupted, bad run gap or length")
    stops = values[:n]
    stops += lengths  # gaps become steps in place: values[:n] is not read again
    stops[0] += first_key
    np.cumsum(stops, out=stops)
    if stops[-1] > end_key:
        raise WhitelistTableError(f"{where}: corrupted, runs past the block's end")
    codes = values[2 * n:]
    return stops, lengths, codes, explicit_set_ids(codes)


def run_set_id(codes: np.ndarray, explicit: np.ndarray, run: int, num_sets: int) -> int:
    """Set id of one run of a decoded run block: its back references followed, the id checked."""
    code = int(codes[run])
    while code < BACK_REFS:  # the same set as an earlier run of the block
        run -= 1 + code
        if run < 0:
            raise WhitelistTableError("corrupted, set code refers before the block")
        code = int(codes[run])
    set_id = int(explicit[run])
    if not 0 <= set_id < num_sets:
        raise WhitelistTableError("corrupted, set code out of range")
    return set_id


# ---------------------------------------------------------------------------------------------
# set blocks: the block's label dictionary, parent offsets, flip counts, flips
# ---------------------------------------------------------------------------------------------

def _gaps(sorted_values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per group of sorted values: first value, then differences minus one."""
    first = np.cumsum(counts) - counts
    previous = np.r_[-1, sorted_values[:-1]]
    previous[first[counts > 0]] = -1
    return sorted_values - previous - 1


def encode_set_block(starts: np.ndarray, labels: np.ndarray) -> bytes:
    """Sets as sorted label lists (set i is labels[starts[i]:starts[i + 1]]) -> (uncompressed) varints
    [D][D dictionary gaps][parent offsets x n][flip counts x n][flip gaps...].

    Each set is the XOR of the closest of the PARENT_WINDOW previous sets of its block (offset k:
    set i-k; 0: the empty set) with its flips. Flips name labels through the block's dictionary
    (its sorted distinct flipped labels), so they are small numbers even among many labels. The
    distances are counted over the labels the block uses, not all labels: the work follows the
    block's sets, not the label count."""
    n = starts.size - 1
    used, column = np.unique(labels, return_inverse=True)
    block = np.zeros((n, used.size), dtype=bool)
    block[np.repeat(np.arange(n), np.diff(starts)), column] = True
    words = -(-used.size // 64)  # popcounts over 64-bit words
    packed = np.zeros((n, 8 * words), dtype=np.uint8)
    packed[:, :(used.size + 7) // 8] = np.packbits(block, axis=1)
    packed = packed.view(np.uint64)
    distance = np.full((n, PARENT_WINDOW + 1), np.iinfo(np.int64).max)
    distance[:, 0] = np.diff(starts)
    for k in range(1, min(PARENT_WINDOW, n - 1) + 1):
        distance[k:, k] = np.bitwise_count(packed[k:] ^ packed[:-k]).sum(axis=1)
    offsets = np.argmin(distance, axis=1)
    parents = np.where((offsets > 0)[:, None], block[np.arange(n) - offsets], False)
    rows, flipped = np.nonzero(block ^ parents)
    flipped = used[flipped]
    dictionary = np.unique(flipped)
    counts = np.bincount(rows, minlength=n)
    values = np.concatenate([[dictionary.size], _gaps(dictionary, np.array([dictionary.size])), offsets, counts,
                             _gaps(np.searchsorted(dictionary, flipped), counts)])
    data = encode_varints(values)
    if len(data) > MAX_SET_BLOCK_BYTES:
        raise ValueError(f"a set block needs {len(data):,} bytes, over the format's {MAX_SET_BLOCK_BYTES:,}")
    return data


def decode_set_block(data, n: int, num_labels: int, max_bytes: int, where: str):
    """-> (parent offsets [n] and flip starts [n + 1] as lists, each flip's dictionary position,
    the dictionary): what `set_from_block` walks. Parents are checked on the walk."""
    values = decode_varints(inflate(data, max_bytes, where))
    size = int(values[0]) if values.size else -1
    if size < 0 or values.size < 1 + size + 2 * n:
        raise WhitelistTableError(f"{where}: corrupted, set block too short")
    dictionary = values[1:1 + size] + 1
    np.cumsum(dictionary, out=dictionary)
    dictionary -= 1
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(values[1 + size + n:1 + size + 2 * n], out=starts[1:])
    steps = values[1 + size + 2 * n:] + 1  # flips are gaps - 1 over dictionary positions, restarting per set
    if starts[-1] != steps.size or (size and dictionary[-1] >= num_labels):
        raise WhitelistTableError(f"{where}: corrupted, inconsistent set block")
    positions = np.cumsum(steps, out=steps)
    before = np.concatenate(([0], positions))[starts[:-1]]  # the running total at each set's first flip
    positions -= np.repeat(before + 1, np.diff(starts))
    if positions.size and positions.max() >= size:
        raise WhitelistTableError(f"{where}: corrupted, flip outside the block's dictionary")
    return values[1 + size:1 + size + n].tolist(), starts.tolist(), positions, dictionary


def set_from_block(block, i: int, where: str) -> np.ndarray:
    """Sorted labels of set i of a decoded set block: the XOR of the flips along its parent chain."""
    offsets, starts, positions, dictionary = block
    chain = [positions[starts[i]:starts[i + 1]]]
    while offsets[i]:
        i -= offsets[i]
        if i < 0:
            raise WhitelistTableError(f"{where}: corrupted, parent outside the block")
        chain.append(positions[starts[i]:starts[i + 1]])
    # A position flipped an even number of times along the chain is out; positions rise with labels.
    kept = chain[0] if len(chain) == 1 else np.flatnonzero(np.bincount(np.concatenate(chain)) & 1)
    if not kept.size:
        raise WhitelistTableError(f"{where}: corrupted, empty set")
    return dictionary[kept]


# ---------------------------------------------------------------------------------------------
# the whole file: header + index + blocks, CRC over everything
# ---------------------------------------------------------------------------------------------

def assemble(num_labels: int, radius_miles: float, precision: int, num_cells: int, num_runs: int, num_sets: int,
             run_first_keys, run_blocks: list[bytes], set_blocks: list[bytes], label_hash: bytes) -> bytes:
    """The file's bytes from its encoded, uncompressed blocks (deflated, offsets and CRC computed here)."""
    max_set_block_bytes = max((len(b) for b in set_blocks), default=0)
    run_blocks, set_blocks = [deflate(b) for b in run_blocks], [deflate(b) for b in set_blocks]
    run_offsets = np.cumsum([0] + [len(b) for b in run_blocks])
    set_offsets = np.cumsum([0] + [len(b) for b in set_blocks])
    header = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, 0, num_labels, radius_miles, precision, 0, 0, num_cells,
                         num_runs, num_sets, RUNS_PER_BLOCK, SETS_PER_BLOCK, len(run_blocks), len(set_blocks),
                         label_hash, 0, max_set_block_bytes)
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
    label_set_hash: bytes
    max_set_block_bytes: int
    block_keys: np.ndarray  # int64 [NR]: first key of each run block
    run_offsets: np.ndarray  # int64 [NR + 1]
    set_offsets: np.ndarray  # int64 [NS + 1]

    def runs_in_block(self, b: int) -> int:
        return min(RUNS_PER_BLOCK, self.num_runs - b * RUNS_PER_BLOCK)

    def sets_in_block(self, b: int) -> int:
        return min(SETS_PER_BLOCK, self.num_sets - b * SETS_PER_BLOCK)


def _blocks(n: int, per_block: int) -> int:
    return -(-n // per_block)


def parse(view: memoryview, source: str) -> Layout:
    """Header + index of a whole file, checked in the order docs/whitelist-format.md gives: every
    count against the others and the file size before anything is allocated."""
    def corrupted(why):
        return WhitelistTableError(f"{source}: corrupted whitelist table ({why})")

    if len(view) < HEADER_SIZE:
        raise WhitelistTableError(f"{source}: truncated whitelist table ({len(view)} bytes, header needs {HEADER_SIZE})")
    (magic, version, header_size, crc, num_labels, radius_miles, precision, _, _, num_cells, num_runs, num_sets,
     runs_per_block, sets_per_block, n_run_blocks, n_set_blocks, label_hash, _, max_set_bytes) = HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise WhitelistTableError(f"{source}: not a whitelist table (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION or header_size != HEADER_SIZE:
        raise WhitelistTableError(f"{source}: unsupported whitelist table version {version} (this SDK reads {VERSION})")
    if not 1 <= precision <= MAX_TABLE_PRECISION or num_labels < 1 or not (np.isfinite(radius_miles) and radius_miles > 0):
        raise corrupted(f"precision {precision}, labels {num_labels}, radius {radius_miles}")
    if (runs_per_block, sets_per_block) != (RUNS_PER_BLOCK, SETS_PER_BLOCK):
        raise corrupted(f"{runs_per_block} runs and {sets_per_block} sets per block, the format fixes "
                        f"{RUNS_PER_BLOCK} and {SETS_PER_BLOCK}")
    if not num_sets <= num_runs <= num_cells <= 1 << (5 * precision) or (num_sets == 0) != (num_cells == 0):
        raise corrupted(f"{num_cells} cells, {num_runs} runs, {num_sets} sets at precision {precision}")
    if n_run_blocks != _blocks(num_runs, RUNS_PER_BLOCK) or n_set_blocks != _blocks(num_sets, SETS_PER_BLOCK):
        raise corrupted(f"{n_run_blocks} run blocks and {n_set_blocks} set blocks for {num_runs} runs and {num_sets} sets")
    if not 0 < max_set_bytes <= MAX_SET_BLOCK_BYTES and num_sets:
        raise corrupted(f"set blocks said to inflate to {max_set_bytes:,} bytes")
    index_end = HEADER_SIZE + 4 * (n_run_blocks + (n_run_blocks + 1) + (n_set_blocks + 1))
    if len(view) < index_end + 2 * (n_run_blocks + n_set_blocks):  # a raw DEFLATE stream takes >= 2 bytes
        raise WhitelistTableError(f"{source}: truncated whitelist table ({len(view)} bytes, "
                                  f"{n_run_blocks + n_set_blocks} blocks need more)")
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
    if run_offsets[0] != index_end or (np.diff(run_offsets) < 2).any() or (np.diff(set_offsets) < 2).any():
        raise corrupted("block offsets out of order")
    if (np.diff(block_keys) <= 0).any() or (block_keys.size and block_keys[-1] >= 1 << (5 * precision)):
        raise corrupted("run block keys out of order")
    return Layout(num_labels, radius_miles, precision, num_cells, num_runs, num_sets, label_hash, max_set_bytes,
                  block_keys, run_offsets, set_offsets)
