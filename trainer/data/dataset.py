"""GeoDataset: the one columnar record type every dataset reader fills (docs/CONTRACTS.md, "Datasets").

One row per image: path, label, latitude and longitude (NaN where unknown, with
`has_location=False`, never (0, 0)), date and supercategory, plus the label and supercategory names,
the labels' taxonomy when known, and the counts of rows the reader skipped or flagged, by reason.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import numpy as np

from mobile_sdk.preprocess import image_orientation


class DatasetError(ValueError):
    """A dataset that cannot be read at all (missing or malformed file, bad spec)."""


@dataclasses.dataclass(frozen=True, eq=False)
class GeoDataset:
    """Columnar dataset, one row per image (docs/CONTRACTS.md)."""

    paths: np.ndarray  # str
    labels: np.ndarray  # int32, index into label_names
    lat: np.ndarray  # float64, NaN when unknown
    lon: np.ndarray  # float64, NaN when unknown, wrapped into [-180, 180)
    has_location: np.ndarray  # bool
    dates: np.ndarray  # str, "" when unknown
    supercategories: np.ndarray  # int32, index into supercategory_names
    label_names: list[str]
    supercategory_names: list[str]
    skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)  # rows dropped, by reason
    taxonomy: dict | None = None  # the labels' taxonomy (mobile_sdk.taxonomy's document), when known
    flagged: Mapping[str, int] = dataclasses.field(default_factory=dict)  # rows kept but suspect, by reason

    def __post_init__(self):
        n = len(self.paths)
        columns = {"paths": str, "labels": np.int32, "lat": np.float64, "lon": np.float64,
                   "has_location": bool, "dates": str, "supercategories": np.int32}
        for name, dtype in columns.items():
            value = np.asarray(getattr(self, name), dtype=dtype)
            if value.shape != (n,):
                raise DatasetError(f"column {name} has shape {value.shape}, expected ({n},)")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "label_names", list(self.label_names))
        object.__setattr__(self, "supercategory_names", list(self.supercategory_names))
        if n and not (0 <= self.labels.min() and self.labels.max() < len(self.label_names)):
            raise DatasetError(f"labels must lie in [0, {len(self.label_names)})")
        if n and not (0 <= self.supercategories.min() and self.supercategories.max() < len(self.supercategory_names)):
            raise DatasetError(f"supercategories must lie in [0, {len(self.supercategory_names)})")
        if (np.isnan(self.lat) != ~self.has_location).any() or (np.isnan(self.lon) != ~self.has_location).any():
            raise DatasetError("has_location must be False exactly where lat/lon are NaN")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def locations(self) -> np.ndarray:
        """float64 [N, 2] (lat, lon) in degrees; NaN rows where unknown."""
        return np.stack([self.lat, self.lon], axis=1)

    @functools.cached_property
    def orientations(self) -> np.ndarray:
        """int32 [N]: each image's EXIF orientation (1-8; 1 = upright as stored), read from the file
        headers (nothing decoded) on first use. trainer.data.pipeline turns the images upright by it,
        as the SDK does; an unreadable file counts as 1 here and is skipped where it is decoded."""
        return np.array([image_orientation(path) for path in self.paths], np.int32)

    def subset(self, indices) -> "GeoDataset":
        """Rows `indices` (integer array or boolean mask), same label and supercategory lists."""
        idx = np.asarray(indices)
        if idx.dtype != bool:
            idx = idx.astype(np.int64)  # an empty list is float64 to numpy
        columns = {f: getattr(self, f)[idx] for f in
                   ("paths", "labels", "lat", "lon", "has_location", "dates", "supercategories")}
        rows = GeoDataset(**columns, label_names=self.label_names, supercategory_names=self.supercategory_names,
                          taxonomy=self.taxonomy)
        if "orientations" in self.__dict__:  # already read: the subset keeps them (cached_property's slot)
            rows.__dict__["orientations"] = self.orientations[idx]
        return rows

    def train_counts(self) -> np.ndarray:
        """int64 [num_labels]: images per label (head labels have >= 100)."""
        return np.bincount(self.labels, minlength=self.num_labels)
