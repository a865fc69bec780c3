"""mobile_sdk.geo and mobile_sdk.encoding (numpy side): validation, wrapping, NaN rules, distances."""
import math

import numpy as np
import pytest

from mobile_sdk.encoding import encode_locations, encoded_dim
from mobile_sdk.errors import InvalidLocationError
from mobile_sdk.geo import (EARTH_RADIUS_KM, chord_for_km, great_circle_km, miles_to_km, to_unit_vectors,
                            validate_location, validate_locations, wrap_longitude)


@pytest.mark.parametrize("lon,expected", [(0.0, 0.0), (180.0, -180.0), (-180.0, -180.0), (540.0, -180.0),
                                          (359.0, -1.0), (-181.0, 179.0), (179.999, 179.999), (720.5, 0.5)])
def test_wrap_longitude_scalar(lon, expected):
    out = wrap_longitude(lon)
    assert isinstance(out, float) and out == pytest.approx(expected, abs=1e-9)
    assert -180.0 <= out < 180.0


def test_wrap_longitude_array_keeps_nan():
    out = wrap_longitude(np.array([190.0, np.nan, -190.0]))
    assert out[0] == pytest.approx(-170.0) and math.isnan(out[1]) and out[2] == pytest.approx(170.0)


def test_validate_location_accepts_and_wraps():
    assert validate_location(None, None) is None
    assert validate_location(10, 200) == (10.0, -160.0)
    assert validate_location(np.float32(-90.0), np.int64(180)) == (-90.0, -180.0)
    assert validate_location(90.0, 0.0) == (90.0, 0.0)


@pytest.mark.parametrize("lat,lon,match", [
    (1.0, None, "lon is missing"), (None, 1.0, "lat is missing"), (float("nan"), 0.0, "lat must be finite"),
    (0.0, float("-inf"), "lon must be finite"), (90.0001, 0.0, "outside"), (-91, 0, "outside"),
    ("1", 0.0, "real number"), (True, 0.0, "real number"), (0.0, [1.0], "real number"), (0.0, 1j, "real number"),
])
def test_validate_location_rejects(lat, lon, match):
    with pytest.raises(InvalidLocationError, match=match):
        validate_location(lat, lon)


def test_invalid_location_error_is_a_value_error():
    with pytest.raises(ValueError):
        validate_location(100.0, 0.0)


def test_validate_locations_nan_rules_and_wrapping():
    raw = np.array([[10.0, 190.0], [np.nan, np.nan], [-90.0, -180.0], [0.0, 0.0]])
    out, known = validate_locations(raw)
    assert known.tolist() == [True, False, True, True]  # (0, 0) is a real place, NaN is unknown
    assert out[0].tolist() == [10.0, -170.0] and np.isnan(out[1]).all()
    assert raw[0, 1] == 190.0  # the input is not modified
    with pytest.raises(InvalidLocationError, match="unknown"):
        validate_locations(raw, allow_unknown=False)


@pytest.mark.parametrize("bad,match", [
    ([[np.nan, 1.0]], "only one coordinate is NaN"), ([[1.0, np.inf]], "finite"), ([[95.0, 0.0]], "outside"),
    ([1.0, 2.0], r"\[N, 2\]"), ([[1.0, 2.0, 3.0]], r"\[N, 2\]"), ([["a", "b"]], "numeric"),
])
def test_validate_locations_rejects(bad, match):
    with pytest.raises(InvalidLocationError, match=match):
        validate_locations(bad)


def test_great_circle_known_distances():
    assert great_circle_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)  # Paris-London
    assert great_circle_km(0.0, 0.0, 90.0, 0.0) == pytest.approx(math.pi / 2 * EARTH_RADIUS_KM)
    assert great_circle_km(0.0, 179.9, 0.0, -179.9) == pytest.approx(22.24, abs=0.01)  # across the antimeridian
    assert great_circle_km(90.0, 0.0, 90.0, 123.0) == pytest.approx(0.0, abs=1e-6)  # the pole is one point
    assert great_circle_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    a, b = np.array([10.0, -20.0]), np.array([30.0, 40.0])
    np.testing.assert_allclose(great_circle_km(a, b, b, a), great_circle_km(b, a, a, b))


def test_unit_vectors_and_chords_agree_with_arcs():
    rng = np.random.default_rng(0)
    lat1, lon1, lat2, lon2 = rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200), \
        rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200)
    v1, v2 = to_unit_vectors(lat1, lon1), to_unit_vectors(lat2, lon2)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(v1 - v2, axis=1), chord_for_km(great_circle_km(lat1, lon1, lat2, lon2)),
                               atol=1e-9)
    assert miles_to_km(100.0) == pytest.approx(160.9344)


def test_sincos_encoding_values_unknown_rows_and_continuity():
    enc = encode_locations([[0.0, 0.0], [np.nan, np.nan], [90.0, 90.0], [10.0, 179.99], [10.0, -179.99]])
    assert enc.dtype == np.float32 and enc.shape == (5, encoded_dim("sincos")) == (5, 5)
    np.testing.assert_allclose(enc[0], [0, 1, 0, 1, 1], atol=1e-7)  # (0, 0) is known, not "unknown"
    assert enc[1].tolist() == [0, 0, 0, 0, 0]  # unknown: all zeros, known flag 0
    np.testing.assert_allclose(enc[2], [1, 0, 1, 0, 1], atol=1e-7)
    assert np.abs(enc[3] - enc[4]).max() < 1e-3  # across the antimeridian: nearly equal


def test_paper_encoding_and_errors():
    enc = encode_locations([[45.0, -90.0], [np.nan, np.nan], [0.0, 0.0]], kind="paper")
    np.testing.assert_allclose(enc, [[0.5, -0.5, 1], [0, 0, 0], [0, 0, 1]])
    assert encoded_dim("paper") == 3
    with pytest.raises(ValueError, match="unknown location encoding"):
        encode_locations([[0.0, 0.0]], kind="polar")
    with pytest.raises(InvalidLocationError):
        encode_locations([[91.0, 0.0]])
    np.testing.assert_allclose(encode_locations([[10.0, 370.0]]), encode_locations([[10.0, 10.0]]), atol=1e-6)


def test_wrap_longitude_passes_in_range_values_through_bit_exact():
    lons = np.array([-180.0, -0.1, 0.0, 1e-12, 179.99999])
    np.testing.assert_array_equal(wrap_longitude(lons), lons)
    assert wrap_longitude(-0.1) == -0.1


def test_scalar_wrap_equals_numpy_wrap_bit_for_bit():
    """One Python float takes a pure-Python path (the classify hot path); arrays take numpy's."""
    rng = np.random.default_rng(0)
    lons = np.concatenate([rng.uniform(-1e4, 1e4, 2000), rng.uniform(-540, 540, 2000),
                           [-180.0, 180.0, 540.0, -540.0, 179.99999999999997, -180.00000000000003, 1e300, -1e300,
                            5e-324, -5e-324, -0.0, np.inf, -np.inf, np.nan]])
    with np.errstate(invalid="ignore"):
        vectorised = wrap_longitude(lons)
    scalars = np.array([wrap_longitude(float(x)) for x in lons])
    np.testing.assert_array_equal(scalars, vectorised)
    assert [validate_location(0.0, float(x))[1] for x in lons[:100]] == vectorised[:100].tolist()
