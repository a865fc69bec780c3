"""mobile_sdk.fileio: the one home of atomic writes (files and whole folders)."""
import os
import stat

import pytest

from mobile_sdk.fileio import atomic_file, atomic_write_bytes, staged_folder


def test_atomic_write_bytes_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "table.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's owner-only 0600


def test_atomic_write_bytes_keeps_old_content_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_atomic_file_removes_the_temporary_on_error(tmp_path):
    target = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with atomic_file(target, suffix=".keras") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-save")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_staged_folder_swaps_in_on_success_and_keeps_the_old_folder_on_error(tmp_path):
    out = tmp_path / "bundle"
    with staged_folder(out) as tmp:
        (tmp / "a.txt").write_text("v1")
        assert not out.exists()  # nothing complete-looking until the swap
    assert (out / "a.txt").read_text() == "v1"

    with pytest.raises(RuntimeError):
        with staged_folder(out) as tmp:
            (tmp / "a.txt").write_text("v2")
            raise RuntimeError("interrupted")
    assert (out / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no leftovers

    with staged_folder(out) as tmp:
        (tmp / "b.txt").write_text("v3")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_staged_folder_before_swap_can_refuse(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def refuse(target):
        raise FileExistsError(f"{target} exists")

    with pytest.raises(FileExistsError):
        with staged_folder(out, before_swap=refuse) as tmp:
            (tmp / "x").write_text("new")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["world"]


def test_sha256_file_matches_hashlib_across_block_boundaries(tmp_path):
    import hashlib

    from mobile_sdk.fileio import sha256_file

    data = bytes(range(256)) * 8193  # a little over 2 MiB: several 1 MiB blocks
    path = tmp_path / "model.tflite"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
