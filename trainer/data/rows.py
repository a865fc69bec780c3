"""What every dataset reader shares: the row collector and reading a JSON file with a typed error.

Every reader skips bad rows instead of crashing — invalid coordinates, unknown labels, missing or
unreadable image files — counts them by reason, and reports ONE summary line through `logging`
(warning when something was skipped). The counts are also kept in `GeoDataset.skipped`.
A missing location is not a reason to skip: it stays NaN with `has_location=False`, never (0, 0).
"""
from __future__ import annotations

import collections
import json
import logging
import os
from typing import Sequence

import numpy as np

from mobile_sdk.errors import InvalidLocationError
from mobile_sdk.geo import validate_location
from trainer.data.dataset import DatasetError, GeoDataset

logger = logging.getLogger(__name__)

UNKNOWN_SUPERCATEGORY = "unknown"


class RowCollector:
    """Accumulates kept rows and skip reasons; builds the dataset and logs the one summary line."""

    def __init__(self, source: str, label_names: Sequence[str], supercategory_names: Sequence[str],
                 check_files: bool, taxonomy: dict | None = None):
        self.source = source
        self.taxonomy = taxonomy
        self.label_names = list(label_names)
        self.label_index = {name: i for i, name in enumerate(self.label_names)}
        self.supercategory_names = list(supercategory_names)
        self.check_files = check_files
        self.rows: list[tuple] = []
        self.skipped: collections.Counter = collections.Counter()
        self.flagged: collections.Counter = collections.Counter()
        self.seen = 0

    def add(self, path: str, label_name: str, lat, lon, date: str, supercategory: int) -> bool:
        """Validate one row; keep it or count why not. Returns whether it was kept."""
        self.seen += 1
        label = self.label_index.get(label_name)
        if label is None:
            self.skipped["unknown_label"] += 1
            return False
        try:
            location = validate_location(_to_float_or_none(lat), _to_float_or_none(lon))
        except InvalidLocationError:
            self.skipped["invalid_location"] += 1
            return False
        if self.check_files:
            problem = _file_problem(path)
            if problem:
                self.skipped[problem] += 1
                return False
        la, lo = location if location is not None else (np.nan, np.nan)
        if location == (0.0, 0.0):  # iNat's classic "no location" value, or the Gulf of Guinea
            self.flagged["zero_location"] += 1
        self.rows.append((path, label, la, lo, location is not None, date or "", supercategory))
        return True

    def skip(self, reason: str) -> None:
        self.seen += 1
        self.skipped[reason] += 1

    def build(self) -> GeoDataset:
        cols = list(zip(*self.rows)) if self.rows else [[]] * 7
        ds = GeoDataset(paths=np.asarray(cols[0], dtype=str), labels=cols[1], lat=cols[2], lon=cols[3],
                        has_location=cols[4], dates=np.asarray(cols[5], dtype=str), supercategories=cols[6],
                        label_names=self.label_names, supercategory_names=self.supercategory_names,
                        skipped=dict(sorted(self.skipped.items())), taxonomy=self.taxonomy,
                        flagged=dict(sorted(self.flagged.items())))
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        unknown = int((~ds.has_location).sum())
        message = (f"{self.source}: kept {len(ds)} of {self.seen} rows ({unknown} without location); "
                   f"skipped {sum(self.skipped.values())} ({reasons})")
        if self.flagged:
            message += "; kept but flagged: " + ", ".join(f"{k}={v}" for k, v in sorted(self.flagged.items()))
        logger.log(logging.WARNING if self.skipped or self.flagged else logging.INFO, message)
        return ds


def _to_float_or_none(value):
    """JSON null / empty CSV cell -> None (unknown); numbers and numeric strings -> float.

    Anything else is passed through so validate_location names the problem."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _file_problem(path: str) -> str | None:
    """'missing_file' / 'unreadable_file' / None. Reads only the header, so it is cheap."""
    if not os.path.isfile(path):
        return "missing_file"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "unreadable_file"
    # Only JPEG and PNG decode in the pipeline (and in the SDK): anything else is unreadable.
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "unreadable_file"


def load_json(path) -> object:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, huge numbers
        raise DatasetError(f"cannot read JSON {path}: {str(exc)[:200]}") from None
