"""Atomic writes: the one home for 'write to a temporary sibling, then rename'; bounded reads.

Used by everything that writes a file or a folder another process may read: whitelist tables and
bundles (SDK, converters), checkpoints and runs, the world and TFRecords (trainer). A crash or kill
at any point leaves either the old content or the new, never a half-written file that looks done.
A command replaces only a folder it wrote itself (`check_replaceable`: its marker file inside),
and the temporary folders and files a killed run left behind are removed by the next run that
writes the same target (`owned_temp_folder`, `atomic_write_bytes`, `atomic_file`).
Untrusted files are read with `read_regular_file`: regular files only, never past a size limit.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import ReplaceRefusedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: leftovers are recognised by age alone
    fcntl = None

# A temporary folder left this long by a process that no longer holds its lock is a leftover of a
# killed run. The age also covers the moment between creating a folder and locking it.
STALE_AFTER_S = 3600.0


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_shareable(path: Path) -> None:
    """mkstemp/mkdtemp create owner-only 0600/0700 entries; results get ordinary permissions."""
    umask = _umask()
    path = Path(path)
    targets = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in targets:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (bundle hashes, prediction-cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_regular_file(path, max_bytes: int, error=OSError, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; else `error` naming the problem.

    Opened non-blocking, so a FIFO cannot hang the caller; devices (/dev/zero), folders and
    sockets are refused before any read, and a file growing past the limit while read is caught."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(fd)
        raise error(f"{what} {path} is not a regular file" if not stat.S_ISREG(info.st_mode) else
                    f"{what} {path} is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} grew past the limit of {max_bytes:,} bytes while being read")
    return data


def check_replaceable(out, marker: str, force: bool, command: str) -> None:
    """May `command` write `out`? Yes if it does not exist, or, with `force`, if it is an empty
    folder or one holding `marker` (what that command writes last). Else ReplaceRefusedError."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        raise ReplaceRefusedError(f"{out} exists and is not a folder written by {command}; choose another output")
    if not force:
        raise ReplaceRefusedError(f"{out} already exists; pass --force to replace it")
    if any(out.iterdir()) and not (out / marker).exists():
        raise ReplaceRefusedError(f"refusing to replace {out}: it is not empty and has no {marker}, "
                                  f"so it was not written by {command}")


def _remove_stale(parent, matches, folders: bool) -> list[Path]:
    """Remove entries of `parent` whose name `matches`, folders (or regular files) older than
    STALE_AFTER_S that no live process holds locked. Returns what was removed; never raises."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if not matches(entry.name) or entry.is_symlink() or \
                    not (entry.is_dir() if folders else entry.is_file()) or \
                    now - entry.stat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a live run holds it
            if folders:
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def remove_stale_folders(parent, prefix: str) -> list[Path]:
    """Remove folders `parent/prefix*` that a killed run left: older than STALE_AFTER_S and not
    locked by a live `owned_temp_folder`. Returns what was removed; never raises."""
    return _remove_stale(parent, lambda name: name.startswith(prefix), folders=True)


def _temporary_sibling(path: Path, suffix: str):
    """A new locked temporary file next to `path` (fd, path) for `atomic_write_bytes`/`atomic_file`;
    the leftovers of killed writes of the same `path` go first. Their names are mkstemp's:
    `.NAME.` + 8 characters of its alphabet + `.tmp` (+ a suffix such as `.keras`)."""
    ours = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp(\.\w+)?").fullmatch
    _remove_stale(path.parent, ours, folders=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this write lives, so no sweep takes it
    return fd, Path(tmp)


@contextmanager
def owned_temp_folder(prefix: str, parent=None):
    """A new temporary folder `parent/prefix*` (default: the system temp folder), locked while this
    process lives and removed on exit (a no-op if it was renamed away). Leftovers with the same
    prefix from killed runs are removed first (`remove_stale_folders`)."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the lock follows the folder through a rename
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to a temporary file next to `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary_sibling(path, "")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        make_shareable(tmp)
        os.replace(tmp, path)  # (a file this fresh is never stale: the lock matters for long writes)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_file(path, suffix: str = ""):
    """Yield a temporary path next to `path` for a writer that wants a file name (e.g. model.save);
    on success it is renamed over `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary_sibling(path, suffix)
    try:
        yield tmp
        make_shareable(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename
        os.close(fd)


@contextmanager
def staged_folder(out, before_swap=None, *, marker: str | None = None, force: bool = False,
                  command: str | None = None):
    """Yield a hidden temporary folder next to `out`; on success swap it into place as `out`.

    With `marker`, `check_replaceable(out, marker, force, command)` runs before and again just
    before the swap; `before_swap(out)` runs there too (e.g. further checks). An existing `out` is
    moved aside first and deleted only after the new folder is in place, so an error at any point
    leaves the old folder intact; a kill leaves at worst a hidden `.NAME.partial-*` (or `.old-*`)
    folder, never a complete-looking `out`, and a later run removes those leftovers.
    """
    out = Path(out)

    def check(target):
        if marker is not None:
            check_replaceable(target, marker, force, command or "this command")
        if before_swap is not None:
            before_swap(target)

    if marker is not None:
        check_replaceable(out, marker, force, command or "this command")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(out.parent, f".{out.name}.old-")
    with owned_temp_folder(f".{out.name}.partial-", out.parent) as tmp:
        yield tmp
        make_shareable(tmp)
        check(out)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
