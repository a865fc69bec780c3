"""Data SPECs: `load_split` reads one split of any supported dataset by handing its SPEC to the
reader of its format (trainer.data.inat, trainer.data.csv_tables; every reader fills a
trainer.data.dataset.GeoDataset through trainer.data.rows).

Full syntax in docs/datasets.md. `{split}` in any path is replaced by the split name; the parts
after `FORMAT:` are separated by commas:

    DIR                                   folder in the iNat 2021 layout (trainer.world output):
                                          DIR/{split}.json, image paths relative to DIR
    inat2021:JSON_OR_DIR[,IMAGE_ROOT]     iNat 2021 JSON (lat/lon on each image)
    inat2017:JSON_OR_DIR,LOCATIONS[,IMAGE_ROOT]
                                          iNat 2017/2018 JSON joined with the location JSON list
    csv:CSV[,IMAGE_ROOT]                  manifest with columns file,label,latitude,longitude[,date]
    yfcc:CSV,IMAGE_ROOT                   the paper's YFCC100M evaluation CSV (<=10 images/label)
"""
from __future__ import annotations

import os
from typing import Sequence

from trainer.data.csv_tables import read_csv_manifest, read_yfcc
from trainer.data.dataset import DatasetError, GeoDataset
from trainer.data.inat import read_inat2017, read_inat2021


def _split_spec(spec: str) -> tuple[str | None, list[str]]:
    """'FORMAT:a,b' -> ('format', ['a', 'b']); a bare path -> (None, [path])."""
    head, sep, rest = spec.partition(":")
    if sep and head.lower() in READERS:
        parts = [p.strip() for p in rest.split(",")]
        if not all(parts):
            raise DatasetError(f"data spec {spec!r} has an empty part; see docs/datasets.md")
        return head.lower(), parts
    return None, [spec]


def _json_for_split(path: str, split: str) -> str:
    """A folder means `<folder>/<split>.json`; a file is used as it is."""
    return os.path.join(path, f"{split}.json") if os.path.isdir(path) else path


READERS = {
    # format: (min parts, max parts)
    "inat2021": (1, 2),
    "inat2017": (2, 3),
    "csv": (1, 2),
    "yfcc": (2, 2),
}


def load_split(spec: str, split: str = "train", label_names: Sequence[str] | None = None) -> GeoDataset:
    """Resolve a data SPEC (module docstring, docs/datasets.md) for one split.

    `label_names` aligns the labels with a training label list (rows whose label is not in it are
    skipped as unknown_label): pass the training set's `label_names` when loading val/test data."""
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"data spec must be a non-empty string, got {spec!r}")
    fmt, parts = _split_spec(spec.strip())
    parts = [p.replace("{split}", split) for p in parts]
    if fmt is None:
        folder = parts[0]
        if not os.path.isdir(folder):
            known = ", ".join(f"{k}:" for k in READERS)
            raise DatasetError(f"data spec {spec!r} is neither a dataset folder nor one of {known}")
        return read_inat2021(os.path.join(folder, f"{split}.json"), folder, label_names)
    low, high = READERS[fmt]
    if not low <= len(parts) <= high:
        raise DatasetError(f"data spec {spec!r}: {fmt} takes {low} to {high} comma-separated parts")
    if fmt == "inat2021":
        return read_inat2021(_json_for_split(parts[0], split), parts[1] if len(parts) > 1 else None, label_names)
    if fmt == "inat2017":
        return read_inat2017(_json_for_split(parts[0], split), _json_for_split(parts[1], split),
                             parts[2] if len(parts) > 2 else None, label_names)
    if fmt == "csv":
        return read_csv_manifest(parts[0], parts[1] if len(parts) > 1 else None, label_names)
    return read_yfcc(parts[0], parts[1], label_names)
