"""What a command prints: quiet by default, honest about real problems.

`install()` runs when a project command starts (`python -m trainer.X` and the commands above it: see
trainer/__init__.py); importing the packages as a library changes nothing. It
- filters TensorFlow's start-up notices from the native stderr while TensorFlow loads: the oneDNN
  and CPU-instruction notices, "could not find cuda drivers", and the `cuInit` error, but that one
  only where TensorFlow found no CUDA driver at all (a CPU-only machine, where it is expected);
  every other line of that window is written back. TensorFlow's own INFO logs stay off
  (TF_CPP_MIN_LOG_LEVEL=1), warnings and errors stay on;
- makes progress bars (tqdm) print one line per update, at most every 10 s, when stderr is not a
  terminal (a log file, CI), instead of one huge line of carriage returns;
- shows INFO logging, e.g. the summary line each dataset reader logs.
GEOAWARE_VERBOSE=1 keeps every native line.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys

from mobile_sdk.quiet import filtered_native_stderr

_NOTICES = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on",
            "This TensorFlow binary is optimized", "To enable the following instructions",
            "Could not find cuda drivers")
_NO_DRIVER, _CUINIT = "Could not find cuda drivers", "failed call to cuInit"


def tensorflow_notices(lines: list[str]) -> set[int]:
    """Indices of TensorFlow's start-up notices among captured stderr lines (see the module doc)."""
    no_driver = any(_NO_DRIVER in line for line in lines)
    return {i for i, line in enumerate(lines)
            if any(notice in line for notice in _NOTICES) or (no_driver and _CUINIT in line)}


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Loads `tensorflow`, and lists its devices (where cuInit runs), inside filtered_native_stderr."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and lets the real finders locate the package below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            with filtered_native_stderr(tensorflow_notices):
                load(module)
                module.config.list_physical_devices()
        spec.loader.exec_module = exec_module
        return spec


def _line_per_update(file_is_terminal) -> None:
    from tqdm import std

    terminal_printer = std.tqdm.status_printer

    def status_printer(file):
        if file_is_terminal(file):
            return terminal_printer(file)

        def print_line(text):
            if text.strip():
                file.write(text.strip() + "\n")
                file.flush()
        return print_line
    std.tqdm.status_printer = staticmethod(status_printer)


def _is_terminal(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


_installed = False


def install() -> None:
    """Once per process (the packages of a command may each ask)."""
    global _installed
    if _installed:
        return
    _installed = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    if not _is_terminal(sys.stderr):
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    _line_per_update(_is_terminal)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
