"""Integer geohash against known strings and an independent implementation (pygeohash)."""
import numpy as np
import pytest

from mobile_sdk import geohash

KNOWN = [  # (lat, lon, geohash) from the geohash literature / geohash.org
    (57.64911, 10.40744, "u4pruydqqvj"),
    (37.7749, -122.4194, "9q8yyk8yt"),
    (42.6, -5.6, "ezs42"),
    (-25.382708, -49.265506, "6gkzwgjzn820"),
    (0.0, 0.0, "s0000"),
    (-90.0, -180.0, "00000"),
    (90.0, 179.99999, "zzzzz"),
]


@pytest.mark.parametrize("lat,lon,expected", KNOWN)
def test_known_strings(lat, lon, expected):
    p = len(expected)
    key = geohash.encode(lat, lon, p)
    assert geohash.to_string(int(key), p) == expected
    assert geohash.encode_one(lat, lon, p) == int(key)
    assert geohash.from_string(expected) == (int(key), p)


def test_matches_pygeohash_on_random_points():
    pygeohash = pytest.importorskip("pygeohash")
    rng = np.random.default_rng(0)
    lat = np.r_[rng.uniform(-90, 90, 2000), -90, 90, 0, 1e-12, -1e-12]
    lon = np.r_[rng.uniform(-180, 180, 2000), -180, 179.999999, 0, -1e-12, 1e-12]
    for p in (1, 3, 4, 5, 8, 12):
        keys = geohash.encode(lat, lon, p)
        ours = [geohash.to_string(k, p) for k in keys]
        theirs = [pygeohash.encode(float(a), float(b), p) for a, b in zip(lat, lon)]
        assert ours == theirs, p
        assert [geohash.encode_one(float(a), float(b), p) for a, b in zip(lat, lon)] == keys.tolist()


def test_longitude_wraps_before_encoding():
    # 180 is -180 (geo's rule); 190 is -170.
    assert geohash.encode_one(10.0, 180.0, 5) == geohash.encode_one(10.0, -180.0, 5)
    assert geohash.encode(10.0, 190.0, 5) == geohash.encode(10.0, -170.0, 5)


def test_decode_bounds_contain_point_and_round_trip():
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-90, 90, 500), rng.uniform(-180, 180, 500)
    for p in (2, 4, 7):
        keys = geohash.encode(lat, lon, p)
        lat0, lat1, lon0, lon1 = geohash.decode_bounds(keys, p)
        assert ((lat0 <= lat) & (lat < lat1) & (lon0 <= lon) & (lon < lon1)).all()
        height, width = geohash.cell_size_deg(p)
        np.testing.assert_allclose(lat1 - lat0, height)
        np.testing.assert_allclose(lon1 - lon0, width)
        rows, cols = geohash.keys_to_rows_cols(keys, p)
        assert (geohash.rows_cols_to_keys(rows, cols, p) == keys).all()
        clat, clon = geohash.decode_centres(keys, p)
        assert (geohash.encode(clat, clon, p) == keys).all()


def test_sorted_keys_follow_string_order():
    rng = np.random.default_rng(2)
    keys = np.unique(geohash.encode(rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300), 4))
    strings = [geohash.to_string(k, 4) for k in keys]
    assert strings == sorted(strings)


def test_neighbours_wrap_antimeridian_and_clamp_at_poles():
    p = 4
    height, width = geohash.cell_size_deg(p)
    east_edge = geohash.encode(0.1, 179.99, p)
    nb = geohash.neighbours(east_edge, p)
    # E neighbour of the last column is the first column (-180), same row.
    assert int(nb[2]) == int(geohash.encode(0.1, -179.99, p))
    assert int(nb[6]) == int(geohash.encode(0.1, 179.99 - width, p))
    north_pole_cell = geohash.encode(89.99, 10.0, p)
    nb = geohash.neighbours(north_pole_cell, p)
    assert int(nb[0]) == int(north_pole_cell)  # nothing beyond the pole
    assert int(nb[4]) == int(geohash.encode(89.99 - height, 10.0, p))
    # Every neighbour's centre is one cell away (mod 360 in longitude).
    keys = geohash.encode(np.array([10.0, -45.0]), np.array([20.0, -100.0]), p)
    clat, clon = geohash.decode_centres(keys, p)
    nlat, nlon = geohash.decode_centres(geohash.neighbours(keys, p), p)
    dlat = np.rint((nlat - clat[:, None]) / height)
    dlon = np.rint(((nlon - clon[:, None] + 180) % 360 - 180) / width)
    assert dlat.tolist() == [[1, 1, 0, -1, -1, -1, 0, 1]] * 2
    assert dlon.tolist() == [[0, 1, 1, 1, 0, -1, -1, -1]] * 2


@pytest.mark.parametrize("bad", [0, 13, -1, 2.5, True, "4"])
def test_bad_precision(bad):
    with pytest.raises(ValueError, match="precision"):
        geohash.encode(0.0, 0.0, bad)


@pytest.mark.parametrize("bad", ["", "abc!", "a", 5, "0123456789bcd"])
def test_bad_strings(bad):
    with pytest.raises(ValueError, match="geohash"):
        geohash.from_string(bad)


@pytest.mark.parametrize("precision", range(1, 9))
def test_scalar_encoder_equals_encode(precision):
    rng = np.random.default_rng(precision)
    lat = np.r_[rng.uniform(-90, 90, 500), -90.0, 90.0, 0.0, 45.0]
    lon = np.r_[rng.uniform(-180, 180, 500), -180.0, 180.0 - 1e-13, 179.999999, 0.0]
    key = geohash.scalar_encoder(precision)
    assert [key(a, b) for a, b in zip(lat.tolist(), lon.tolist())] == geohash.encode(lat, lon, precision).tolist()
    with pytest.raises(ValueError):
        geohash.scalar_encoder(9)
