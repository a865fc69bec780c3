"""The CSV readers: a plain manifest (file, label, latitude, longitude) and the paper's YFCC100M
evaluation CSV, whose images are found by their YFCC100M ID under an image folder."""
from __future__ import annotations

import collections
import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

from mobile_sdk.errors import BundleError
from mobile_sdk.taxonomy import Taxonomy
from trainer.data.dataset import DatasetError, GeoDataset
from trainer.data.rows import UNKNOWN_SUPERCATEGORY, RowCollector, load_json

YFCC_MAX_PER_LABEL = 10  # the paper's cap for its YFCC100M evaluation set
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CSV_TAXONOMY_FILE = "taxonomy.json"  # optional, next to a CSV manifest


def _read_csv_rows(path, required: Iterable[str]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (Excel) is not part of the header
            reader = csv.DictReader(f)
            fields = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in fields]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; found {fields}")
            return [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read CSV {path}: {exc}") from None


def _supercategories_of(rows: list[dict]) -> tuple[list[str], dict]:
    names = sorted({(r.get("supercategory") or "").strip() or UNKNOWN_SUPERCATEGORY for r in rows}) \
        or [UNKNOWN_SUPERCATEGORY]
    return names, {s: i for i, s in enumerate(names)}


def _csv_taxonomy(csv_path, labels: Sequence[str]) -> dict | None:
    """`taxonomy.json` next to the CSV (mobile_sdk.taxonomy's document), restricted to `labels`."""
    path = Path(csv_path).parent / CSV_TAXONOMY_FILE
    if not path.is_file():
        return None
    doc = load_json(path)
    entries = doc.get("labels") if isinstance(doc, dict) else None
    if isinstance(entries, dict):
        doc = {**doc, "labels": {k: v for k, v in entries.items() if k in set(labels)}}
    try:
        return Taxonomy(doc, labels, source=str(path)).doc
    except BundleError as exc:
        raise DatasetError(str(exc)) from None


def read_csv_manifest(csv_path, image_root=None, label_names: Sequence[str] | None = None) -> GeoDataset:
    """CSV with header `file,label,latitude,longitude[,date][,supercategory]`.

    `label` is a label name; without `label_names` the labels are the sorted distinct names.
    Relative `file` paths resolve against image_root (default: the CSV's folder).
    Empty latitude and longitude cells mean an unknown location. A `taxonomy.json` next to the CSV
    (format in docs/datasets.md) gives the labels' ranks."""
    rows = _read_csv_rows(csv_path, ("file", "label", "latitude", "longitude"))
    root = Path(image_root) if image_root is not None else Path(csv_path).parent
    labels = list(label_names) if label_names is not None else sorted({(r["label"] or "").strip() for r in rows} - {""})
    supers, super_index = _supercategories_of(rows)
    out = RowCollector(f"csv {csv_path}", labels, supers, check_files=True, taxonomy=_csv_taxonomy(csv_path, labels))
    for r in rows:
        if not (r.get("file") or "").strip():
            out.skip("malformed_row")
            continue
        super_name = (r.get("supercategory") or "").strip() or UNKNOWN_SUPERCATEGORY
        out.add(str(root / r["file"].strip()), (r["label"] or "").strip(), r["latitude"], r["longitude"],
                (r.get("date") or "").strip(), super_index[super_name])
    return out.build()


def _index_images_by_stem(root: Path) -> dict[str, str]:
    """Walk IMAGE_ROOT once: file stem (the YFCC100M ID) -> path. First path in sorted order wins."""
    if not root.is_dir():
        raise DatasetError(f"image root is not a folder: {root}")
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                found.setdefault(stem, os.path.join(dirpath, name))
    return found


def read_yfcc(csv_path, image_root, label_names: Sequence[str] | None = None,
              max_per_label: int = YFCC_MAX_PER_LABEL) -> GeoDataset:
    """The paper's YFCC100M evaluation CSV (`yfcc100m ID`, `yfcc100m line number`, `label`,
    `latitude`, `longitude`, `Flickr URL`, `mmcommons URL`).

    Images are found anywhere under `image_root` as `<yfcc100m ID>.jpg|.jpeg|.png`. Labels map
    by name onto `label_names` (normally the training labels). At most `max_per_label` usable
    images per label are kept: rows are taken in increasing numeric ID order, so the cap is
    deterministic; rows beyond it are counted as `over_cap`."""
    if max_per_label < 1:
        raise DatasetError(f"max_per_label must be >= 1, got {max_per_label}")
    rows = _read_csv_rows(csv_path, ("yfcc100m ID", "label", "latitude", "longitude"))
    by_stem = _index_images_by_stem(Path(image_root))
    labels = list(label_names) if label_names is not None else sorted({(r["label"] or "").strip() for r in rows} - {""})
    supers, super_index = _supercategories_of(rows)
    out = RowCollector(f"yfcc {csv_path}", labels, supers, check_files=True)

    def sort_key(r):
        ident = (r.get("yfcc100m ID") or "").strip()
        return (0, int(ident), ident) if ident.isdigit() else (1, 0, ident)

    kept_per_label: collections.Counter = collections.Counter()
    for r in sorted(rows, key=sort_key):
        ident = (r.get("yfcc100m ID") or "").strip()
        label = (r["label"] or "").strip()
        if not ident:
            out.skip("malformed_row")
            continue
        if kept_per_label[label] >= max_per_label and label in out.label_index:
            out.skip("over_cap")
            continue
        path = by_stem.get(ident, str(Path(image_root) / f"{ident}.jpg"))  # absent -> missing_file
        super_name = (r.get("supercategory") or "").strip() or UNKNOWN_SUPERCATEGORY
        if out.add(path, label, r["latitude"], r["longitude"], "", super_index[super_name]):
            kept_per_label[label] += 1
    return out.build()
