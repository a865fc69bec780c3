"""The geohash whitelist table: exactness against brute force, format robustness, atomic writes."""
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mobile_sdk import geohash
from mobile_sdk.errors import InvalidLocationError, LabelSetMismatchError, WhitelistTableError
from mobile_sdk.geo import great_circle_km, miles_to_km
from mobile_sdk.whitelist.builder import build_whitelist, row_reach_km, write_whitelist
from mobile_sdk.whitelist.codec import HEADER_SIZE
from mobile_sdk.whitelist.reader import WhitelistTable

OBSERVATIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "inat500_observations.npz"
NAMES = [f"species_{i}" for i in range(6)]


def _synthetic(n=1500, seed=0):
    """Observations crowded at the antimeridian and both poles, plus a spread elsewhere."""
    rng = np.random.default_rng(seed)
    lat = np.r_[rng.uniform(-60, 60, n // 3), rng.uniform(84, 90, n // 6), rng.uniform(-90, -85, n // 6),
                rng.uniform(-30, 30, n - n // 3 - 2 * (n // 6))]
    lon = np.r_[rng.uniform(-180, 180, n // 3 + 2 * (n // 6)), rng.choice([-1, 1], n - n // 3 - 2 * (n // 6))
                * rng.uniform(178.5, 180, n - n // 3 - 2 * (n // 6))]
    labels = rng.integers(0, len(NAMES), n)
    return lat, lon, labels


def _queries(lat, lon, n, seed, spread_deg):
    """Points near observations (so the radius matters), at poles and on the antimeridian."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, lat.size, n)
    q_lat = np.clip(lat[pick] + rng.normal(0, spread_deg, n), -90, 90)
    q_lon = lon[pick] + rng.normal(0, 2 * spread_deg, n)
    extra_lat = np.r_[90.0, -90.0, 89.99, -89.99, 0.0, 0.0, 12.0, -12.0]
    extra_lon = np.r_[0.0, 0.0, 123.0, -77.0, 180.0, -180.0, 179.999, -179.999]
    return np.r_[q_lat, extra_lat], np.r_[q_lon, extra_lon]


def _check_exact(table, lat, lon, labels, q_lat, q_lon, radius_miles, precision):
    """No false negatives; every extra label lies within θ + 2R of the query; never an empty set."""
    theta = float(miles_to_km(radius_miles))
    bound = theta + 2 * row_reach_km(precision, 0.0).max() - 0.0  # θ + 2R (+ slack)
    allowed, covered = table.lookup_batch(q_lat, q_lon)
    for i in range(q_lat.size):
        dist = great_circle_km(q_lat[i], q_lon[i], lat, lon)
        within = np.unique(labels[dist <= theta])
        got = table.lookup(q_lat[i], q_lon[i])
        if got is None:
            assert within.size == 0, (q_lat[i], q_lon[i], within)
            assert not covered[i] and allowed[i].all()
            continue
        assert got.size > 0
        assert set(within) <= set(got.tolist()), (q_lat[i], q_lon[i], set(within) - set(got.tolist()))
        nearest = np.array([dist[labels == g].min() for g in got])
        assert (nearest <= bound).all(), (q_lat[i], q_lon[i], nearest.max(), bound)
        assert covered[i] and np.flatnonzero(allowed[i]).tolist() == got.tolist()
    return covered


@pytest.mark.parametrize("radius,precision", [(100.0, 4), (50.0, 3), (600.0, 2), (20.0, 5)])
def test_no_false_negatives_at_poles_and_antimeridian(radius, precision):
    lat, lon, labels = _synthetic()
    table = WhitelistTable.from_bytes(build_whitelist(lat, lon, labels, len(NAMES), radius, precision, NAMES))
    q_lat, q_lon = _queries(lat, lon, 600, precision, spread_deg=float(miles_to_km(radius)) / 111.0)
    covered = _check_exact(table, lat, lon, labels, q_lat, q_lon, radius, precision)
    assert covered.mean() > 0.5  # the check above really exercised the sets
    assert table.radius_miles == radius and table.precision == precision and table.num_labels == len(NAMES)


def test_across_antimeridian_and_over_the_pole():
    names = ["east", "north"]
    table = WhitelistTable.from_bytes(build_whitelist([10.0, 89.5], [179.9, 0.0], [0, 1], 2, 100.0, 4, names))
    assert 0 in table.lookup(10.0, -179.9)  # 22 km away, across the antimeridian
    assert 1 in table.lookup(89.5, 180.0)  # 111 km away, over the pole
    assert table.lookup(10.0, 170.0) is None  # 1,000+ km from anything: no filtering


def test_no_data_means_none_and_unknown_means_unfiltered():
    table = WhitelistTable.from_bytes(build_whitelist([48.85], [2.35], [1], 3, 100.0, 4, ["a", "b", "c"]))
    assert table.lookup(48.9, 2.4).tolist() == [1]
    assert table.lookup(-33.9, 151.2) is None
    allowed, covered = table.lookup_batch([48.9, np.nan, -33.9], [2.4, np.nan, 151.2])
    assert covered.tolist() == [True, False, False]
    assert allowed.tolist() == [[False, True, False], [True] * 3, [True] * 3]


def test_table_without_any_observation_filters_nothing():
    table = WhitelistTable.from_bytes(build_whitelist([np.nan], [np.nan], [0], 2, 100.0, 4, ["a", "b"]))
    assert table.num_cells == 0 and table.lookup(0.0, 0.0) is None


def test_lookup_validates_coordinates():
    table = WhitelistTable.from_bytes(build_whitelist([0.0], [0.0], [0], 1, 100.0, 4, ["a"]))
    for lat, lon in [(91.0, 0.0), (np.nan, 0.0), (0.0, np.inf), ("x", 0.0), (None, 1.0), (None, None)]:
        with pytest.raises(InvalidLocationError):
            table.lookup(lat, lon)
    with pytest.raises(InvalidLocationError):
        table.lookup_batch([0.0, 95.0], [0.0, 0.0])
    assert table.lookup(0.0, 360.0).tolist() == [0]  # longitude wraps


@pytest.mark.parametrize("kwargs,match", [
    (dict(labels=[0, 7]), "labels must lie"),
    (dict(labels=[0.5, 1.0]), "integers"),
    (dict(lat=[0.0]), "equal lengths"),
    (dict(lat=[0.0, 95.0]), "latitude"),
    (dict(radius_miles=0.0), "radius_miles"),
    (dict(radius_miles=float("nan")), "radius_miles"),
    (dict(precision=7), "precision"),
    (dict(label_names=["a"]), "label_names"),
    (dict(label_names=None), "label_names"),
    (dict(num_labels=0), "num_labels"),
])
def test_builder_rejects_bad_input(kwargs, match):
    args = dict(lat=[0.0, 1.0], lon=[0.0, 1.0], labels=[0, 1], num_labels=2, radius_miles=100.0, precision=4,
                label_names=["a", "b"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_whitelist(**args)


@pytest.fixture(scope="module")
def table_bytes():
    lat, lon, labels = _synthetic(600, seed=3)
    return build_whitelist(lat, lon, labels, len(NAMES), 100.0, 4, NAMES)


def test_open_memory_maps_and_checks_label_set(tmp_path, table_bytes):
    path = tmp_path / "w.gwl"
    path.write_bytes(table_bytes)
    table = WhitelistTable.open(path, expected_label_names=NAMES)
    assert table.lookup(0.0, 0.0) is None or table.lookup(0.0, 0.0).size
    with pytest.raises(LabelSetMismatchError, match="another label set"):
        WhitelistTable.open(path, expected_label_names=NAMES[::-1])
    with pytest.raises(LabelSetMismatchError):
        WhitelistTable.open(path, expected_label_names=NAMES[:-1])
    with pytest.raises(WhitelistTableError, match="cannot open"):
        WhitelistTable.open(tmp_path / "missing.gwl")


def test_corruption_and_truncation_are_typed_errors(table_bytes):
    data = bytearray(table_bytes)
    cases = {
        "empty": b"",
        "header cut": bytes(data[:HEADER_SIZE - 1]),
        "body cut": bytes(data[:-7]),
        "one byte more": bytes(data) + b"\0",
        "bad magic": b"XXXX" + bytes(data[4:]),
        "future version": bytes(data[:4]) + (99).to_bytes(2, "little") + bytes(data[6:]),
    }
    for position in (HEADER_SIZE + 2, len(data) // 2, len(data) - 1):  # index, run/set blocks
        flipped = bytearray(data)
        flipped[position] ^= 0x5A
        cases[f"flip@{position}"] = bytes(flipped)
    for name, blob in cases.items():
        with pytest.raises(WhitelistTableError):
            WhitelistTable.from_bytes(blob)
            pytest.fail(f"{name}: accepted")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = write_whitelist(tmp_path / "w.gwl", [0.0], [0.0], [0], 1, 100.0, 4, ["a"])
    assert WhitelistTable.open(path).lookup(0.0, 0.0).tolist() == [0]
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        write_whitelist(path, [10.0], [10.0], [0], 1, 50.0, 4, ["a"])
    assert path.read_bytes() == before  # the old table survives intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.gwl"]  # no temporary left behind


def test_batch_lookup_equals_single_lookups(table_bytes):
    table = WhitelistTable.from_bytes(table_bytes)
    rng = np.random.default_rng(5)
    q_lat, q_lon = rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)
    allowed, covered = table.lookup_batch(q_lat, q_lon)
    for i in range(q_lat.size):
        single = table.lookup(q_lat[i], q_lon[i])
        assert covered[i] == (single is not None)
        if single is not None:
            assert np.flatnonzero(allowed[i]).tolist() == single.tolist()


def _real_observations():
    if not OBSERVATIONS.exists():
        pytest.skip(f"{OBSERVATIONS} is absent")
    data = np.load(OBSERVATIONS)
    _, labels = np.unique(data["train_ids"], return_inverse=True)
    return (data["train_locs"][:, 0].astype(np.float64), data["train_locs"][:, 1].astype(np.float64),
            labels.astype(np.int64), [str(n) for n in data["taxon_names"]])


@pytest.mark.slow
def test_real_observations_zero_false_negatives_and_compact():
    """272,037 iNaturalist observations, 500 species, precision 4, 100 miles: held-out queries vs an
    exact cKDTree radius query; and the size target against gzip -9 of the naive JSON mapping."""
    spatial = pytest.importorskip("scipy.spatial")
    lat, lon, labels, names = _real_observations()
    rng = np.random.default_rng(0)
    held_out = rng.random(lat.size) < 0.02
    blob = build_whitelist(lat[~held_out], lon[~held_out], labels[~held_out], len(names), 100.0, 4, names)
    table = WhitelistTable.from_bytes(blob, expected_label_names=names)
    train_lat, train_lon, train_labels = lat[~held_out], lon[~held_out], labels[~held_out]

    from mobile_sdk.geo import chord_for_km, to_unit_vectors
    tree = spatial.cKDTree(to_unit_vectors(train_lat, train_lon))
    q_lat, q_lon = lat[held_out][:3000], lon[held_out][:3000]
    neighbours = tree.query_ball_point(to_unit_vectors(q_lat, q_lon), chord_for_km(miles_to_km(100.0)))
    allowed, covered = table.lookup_batch(q_lat, q_lon)
    false_negatives = sum(int((~allowed[i, np.unique(train_labels[n])]).sum()) for i, n in enumerate(neighbours))
    assert false_negatives == 0
    uncovered_with_data = sum(1 for i, n in enumerate(neighbours) if n and not covered[i])
    assert uncovered_with_data == 0
    exact_sizes = np.array([np.unique(train_labels[n]).size for n in neighbours])
    assert allowed[covered].sum(axis=1).mean() < 2 * exact_sizes[covered].mean()  # extras bounded

    keys, set_ids = table.cells()
    assert keys.size == table.num_cells and (np.diff(keys) > 0).all()
    sets = [table.set_labels(s).tolist() for s in range(table.num_sets)]
    naive = {geohash.to_string(int(k), table.precision): sets[s] for k, s in zip(keys.tolist(), set_ids.tolist())}
    gz = len(gzip.compress(json.dumps(naive, separators=(",", ":")).encode(), 9))
    assert len(blob) <= 0.4 * gz, (len(blob), gz)



def _doc_reader_lookup(blob: bytes, lat: float, lon: float):
    """A second reader written from docs/whitelist-format.md alone (plain Python, no numpy, no
    mobile_sdk): proves the document is enough for an app to read the table."""
    import math
    import struct
    import zlib

    def varints(data):
        out, value, shift = [], 0, 0
        for byte in data:
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                out.append(value)
                value, shift = 0, 0
        return out

    assert blob[:4] == b"GWLT" and struct.unpack_from("<H", blob, 4)[0] == 1
    assert zlib.crc32(blob[:8] + b"\0\0\0\0" + blob[12:]) == struct.unpack_from("<I", blob, 8)[0]
    n_labels, = struct.unpack_from("<I", blob, 12)
    p = blob[24]
    n_runs, n_sets, rb, sb, nr, ns = struct.unpack_from("<IIHHII", blob, 32)
    first_keys = struct.unpack_from(f"<{nr}I", blob, 92)
    run_off = struct.unpack_from(f"<{nr + 1}I", blob, 92 + 4 * nr)
    set_off = struct.unpack_from(f"<{ns + 1}I", blob, 92 + 4 * (2 * nr + 1))
    index_end = 92 + 4 * (nr + nr + 1 + ns + 1)
    lon = (lon + 180.0) % 360.0 - 180.0
    lon_bits, lat_bits = (5 * p + 1) // 2, 5 * p // 2
    row = min(max(math.floor((lat + 90) * 2 ** lat_bits / 180), 0), 2 ** lat_bits - 1)
    col = min(max(math.floor((lon + 180) * 2 ** lon_bits / 360), 0), 2 ** lon_bits - 1)
    key = 0
    for i in range(5 * p):  # col bit, row bit, ... from the most significant
        source, bits = (col, lon_bits) if i % 2 == 0 else (row, lat_bits)
        key = (key << 1) | ((source >> (bits - 1 - i // 2)) & 1)
    blocks = [b for b in range(nr) if first_keys[b] <= key]
    if not blocks:
        return None
    b = blocks[-1]
    n = min(rb, n_runs - b * rb)
    v = varints(zlib.decompress(blob[index_end + run_off[b]:index_end + run_off[b + 1]], -15))
    gaps, lengths, codes = v[:n], v[n:2 * n], v[2 * n:]
    start, recent, previous, found = first_keys[b], [], 0, None
    for gap, length, code in zip(gaps, lengths, codes):
        start += gap
        if code < 8:
            set_id = recent.pop(code)
        else:
            z = code - 8
            set_id = previous + (z >> 1 if z % 2 == 0 else -((z + 1) >> 1))
        recent = ([set_id] + recent)[:8]
        previous = set_id
        if start <= key < start + length:
            found = set_id
        start += length
    if found is None:
        return None
    sblock = found // sb
    n = min(sb, n_sets - sblock * sb)
    base = index_end + run_off[nr]
    v = varints(zlib.decompress(blob[base + set_off[sblock]:base + set_off[sblock + 1]], -15))
    offsets, counts, pos, sets = v[:n], v[n:2 * n], 2 * n, []
    for i in range(n):
        flips, label = set(), -1
        for g in v[pos:pos + counts[i]]:
            label += g + 1
            flips.add(label)
        pos += counts[i]
        sets.append((sets[i - offsets[i]] if offsets[i] else set()) ^ flips)
    assert all(label < n_labels for label in sets[found % sb])
    return sorted(sets[found % sb])


def test_format_document_is_enough_to_read_the_table():
    lat, lon, _ = _synthetic(3000, seed=9)
    labels = np.random.default_rng(9).integers(0, 40, lat.size)
    names = [f"s{i}" for i in range(40)]
    blob = build_whitelist(lat, lon, labels, len(names), 150.0, 4, names)
    table = WhitelistTable.from_bytes(blob)
    assert table.num_runs > 512 and table.num_sets > 256  # several blocks of each kind
    q_lat, q_lon = _queries(lat, lon, 300, 9, spread_deg=3.0)
    for a, b in zip(q_lat, q_lon):
        ours = table.lookup(a, b)
        assert _doc_reader_lookup(blob, float(a), float(b)) == (None if ours is None else ours.tolist())
