"""mobile_sdk.fileio: the one home of atomic writes (files and whole folders)."""
import os
import stat
from pathlib import Path

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


def test_check_replaceable_replaces_only_what_the_command_wrote(tmp_path):
    from mobile_sdk.errors import GeoAwareError, ReplaceRefusedError
    from mobile_sdk.fileio import check_replaceable

    check_replaceable(tmp_path / "new", "world.json", force=False, command="trainer.world")  # absent: fine
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("years of work")
    with pytest.raises(ReplaceRefusedError, match="already exists; pass --force"):
        check_replaceable(thesis, "world.json", force=False, command="trainer.world")
    with pytest.raises(ReplaceRefusedError, match=r"thesis: it is not empty and has no world.json") as exc:
        check_replaceable(thesis, "world.json", force=True, command="trainer.world")
    assert isinstance(exc.value, (GeoAwareError, FileExistsError))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReplaceRefusedError, match="is not a folder written by trainer.world"):
        check_replaceable(tmp_path / "file", "world.json", force=True, command="trainer.world")
    (tmp_path / "link").symlink_to(thesis)
    with pytest.raises(ReplaceRefusedError, match="is not a folder written by"):
        check_replaceable(tmp_path / "link", "world.json", force=True, command="trainer.world")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "world.json", force=True, command="trainer.world")
    (thesis / "world.json").write_text("{}")
    check_replaceable(thesis, "world.json", force=True, command="trainer.world")


def test_staged_folder_with_a_marker_refuses_a_foreign_folder_and_keeps_it(tmp_path):
    from mobile_sdk.errors import ReplaceRefusedError

    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("mine")
    with pytest.raises(ReplaceRefusedError):
        with staged_folder(out, marker="index.json", force=True, command="trainer.prepare") as tmp:
            (tmp / "index.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _age(path, seconds):
    import time

    then = time.time() - seconds
    os.utime(path, (then, then))


def test_leftovers_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    """A kill -9 leaves .NAME.partial-*/.old-* (and geoaware-savedmodel-*) folders; the next run
    removes them once they are stale, but never a folder a live run still holds."""
    from mobile_sdk.fileio import STALE_AFTER_S, owned_temp_folder

    out = tmp_path / "bundle"
    killed = tmp_path / ".bundle.partial-dead1"
    parked = tmp_path / ".bundle.old-dead2"
    fresh = tmp_path / ".bundle.partial-fresh"  # maybe a run that has just created it
    other = tmp_path / ".other.partial-dead3"  # another output's leftover: not ours to judge here
    for folder in (killed, parked, fresh, other):
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"x")
    for folder in (killed, parked, other):
        _age(folder, STALE_AFTER_S + 60)
    with owned_temp_folder(".bundle.partial-", tmp_path) as live:  # a concurrent run, still writing
        _age(live, STALE_AFTER_S + 60)
        with staged_folder(out) as tmp:
            (tmp / "manifest.json").write_text("{}")
        assert live.is_dir()  # locked: left alone although old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bundle", fresh.name, other.name])

    saved = tmp_path / "geoaware-savedmodel-dead"
    saved.mkdir()
    _age(saved, STALE_AFTER_S + 60)
    with owned_temp_folder("geoaware-savedmodel-", tmp_path) as new:
        assert new.is_dir() and not saved.exists()
    assert not new.exists()


def test_read_regular_file_refuses_devices_fifos_folders_and_big_files(tmp_path):
    from mobile_sdk.errors import InvalidImageError
    from mobile_sdk.fileio import read_regular_file

    small = tmp_path / "small.bin"
    small.write_bytes(b"12345")
    assert read_regular_file(small, 5) == b"12345"
    with pytest.raises(InvalidImageError, match="over the limit of 4"):
        read_regular_file(small, 4, InvalidImageError, "image")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo, tmp_path):
        with pytest.raises(InvalidImageError, match="is not a regular file"):
            read_regular_file(path, 1 << 20, InvalidImageError, "image")
    with pytest.raises(InvalidImageError, match="cannot read image"):
        read_regular_file(tmp_path / "absent", 10, InvalidImageError, "image")


def test_temporary_files_of_killed_writes_are_removed_by_the_next_write(tmp_path):
    """kill -9 during atomic_write_bytes/atomic_file leaves `.NAME.XXXXXXXX.tmp*`; the next write
    of the same file removes it once stale, but never a fresh one, one a live writer holds, or
    anything else (other targets' temporaries, look-alike names, folders)."""
    import signal
    import subprocess
    import sys

    from mobile_sdk.fileio import STALE_AFTER_S

    target = tmp_path / "report.json"
    writer = ("import sys, time; from mobile_sdk.fileio import atomic_file\n"
              "with atomic_file(sys.argv[1], suffix='.keras') as tmp:\n"
              "    tmp.write_bytes(b'half'); print(tmp, flush=True); time.sleep(60)\n")
    killed = []
    for name in ("report.json", "model.keras"):  # a real kill -9 in mid-write, twice
        child = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path / name)], stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        killed.append(Path(child.stdout.readline().strip()))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    with atomic_file(tmp_path / "report.json", suffix=".keras") as live:  # a concurrent write, still going
        live.write_bytes(b"busy")
        fresh = tmp_path / ".report.json.fresh123.tmp"
        keep = [tmp_path / n for n in (".report.json.notes.tmp", "report.json.abcd1234.tmp",
                                       ".report.json.abcd1234.tmp.keras~", ".model.json.abcd1234.tmp")]
        for path in (fresh, *keep):
            path.write_bytes(b"x")
        (tmp_path / ".report.json.folder12.tmp").mkdir()
        keep.append(tmp_path / ".report.json.folder12.tmp")
        for path in (*killed, live, *keep):
            _age(path, STALE_AFTER_S + 60)
        assert all(p.exists() for p in killed)
        atomic_write_bytes(target, b"done")
        assert not killed[0].exists() and killed[1].exists()  # model.keras's leftover waits for model.keras
        assert live.exists() and fresh.exists() and all(p.exists() for p in keep)
    atomic_write_bytes(tmp_path / "model.keras", b"m")
    assert not killed[1].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["report.json", "model.keras", fresh.name, *(p.name for p in keep)])
