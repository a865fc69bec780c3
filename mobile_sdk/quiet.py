"""Native start-up notices, filtered: the C++ runtimes (LiteRT, TensorFlow) write INFO lines straight
to file descriptor 2, below Python's logging and its levels. `filtered_native_stderr(drop)` runs a
short block (a library import, an interpreter's first run) with fd 2 captured in a temporary file,
then writes back every captured line that `drop` does not name as noise, errors included.
GEOAWARE_VERBOSE=1 turns the filtering off.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable


@contextlib.contextmanager
def filtered_native_stderr(drop: Callable[[list[str]], set[int]]):
    """Run the block with fd 2 captured; `drop(lines)` returns the indices of lines to leave out."""
    if os.environ.get("GEOAWARE_VERBOSE") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. an embedded interpreter)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()  # Python-level writes of the block go to the capture too
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            dropped = drop(lines)
            kept = "".join(line for i, line in enumerate(lines) if i not in dropped)
            if kept:
                os.write(2, kept.encode("utf-8"))


def drop_lines_with(*markers: str) -> Callable[[list[str]], set[int]]:
    """A `drop` for filtered_native_stderr: every line containing one of `markers`."""
    return lambda lines: {i for i, line in enumerate(lines) if any(m in line for m in markers)}
