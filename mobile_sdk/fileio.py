"""Atomic writes: the one home for 'write to a temporary sibling, then rename'.

Used by everything that writes a file or a folder another process may read: whitelist tables and
bundles (SDK, converters), checkpoints and runs, the world and TFRecords (trainer). A crash or kill
at any point leaves either the old content or the new, never a half-written file that looks done.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path


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


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to a temporary file next to `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        make_shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        make_shareable(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename


@contextmanager
def staged_folder(out, before_swap=None):
    """Yield a hidden temporary folder next to `out`; on success swap it into place as `out`.

    `before_swap(out)` runs just before the swap (e.g. to re-check that replacing is allowed).
    An existing `out` is moved aside first and deleted only after the new folder is in place, so
    an error at any point leaves the old folder intact; a kill leaves at worst a hidden
    `.NAME.partial-*` folder, never a complete-looking `out`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        make_shareable(tmp)
        if before_swap is not None:
            before_swap(out)
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
