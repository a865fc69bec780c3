"""The test harness itself: the shared-data guard skips on a laptop and fails in CI."""
import pytest

from harness import shared_file


def test_shared_data_found_skipped_or_required(tmp_path, monkeypatch):
    (tmp_path / "present.npz").write_bytes(b"x")
    monkeypatch.setenv("GEOAWARE_SHARED_DATA", str(tmp_path))
    monkeypatch.delenv("GEOAWARE_REQUIRE_SHARED_DATA", raising=False)
    assert shared_file("present.npz") == tmp_path / "present.npz"
    with pytest.raises(pytest.skip.Exception, match="absent"):
        shared_file("missing.npz")
    monkeypatch.setenv("GEOAWARE_REQUIRE_SHARED_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="GEOAWARE_REQUIRE_SHARED_DATA=1"):
        shared_file("missing.npz")
