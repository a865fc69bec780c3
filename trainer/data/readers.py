"""Geolocated datasets: one columnar record type for every source, and the readers that fill it.

Every reader skips bad rows instead of crashing — invalid coordinates, unknown labels, missing or
unreadable image files — counts them by reason, and reports ONE summary line through `logging`
(warning when something was skipped). The counts are also kept in `GeoDataset.skipped`.
A missing location is not a reason to skip: it stays NaN with `has_location=False`, never (0, 0).

Data SPECs (`load_split`; full syntax in docs/datasets.md). `{split}` in any path is replaced by
the split name; the parts after `FORMAT:` are separated by commas:

    DIR                                   folder in the iNat 2021 layout (trainer.world output):
                                          DIR/{split}.json, image paths relative to DIR
    inat2021:JSON_OR_DIR[,IMAGE_ROOT]     iNat 2021 JSON (lat/lon on each image)
    inat2017:JSON_OR_DIR,LOCATIONS[,IMAGE_ROOT]
                                          iNat 2017/2018 JSON joined with the location JSON list
    csv:CSV[,IMAGE_ROOT]                  manifest with columns file,label,latitude,longitude[,date]
    yfcc:CSV,IMAGE_ROOT                   the paper's YFCC100M evaluation CSV (<=10 images/label)
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from mobile_sdk.errors import BundleError, InvalidLocationError
from mobile_sdk.geo import validate_location
from mobile_sdk.preprocess import image_orientation
from mobile_sdk.taxonomy import LINNAEAN_RANKS, TAXONOMY_FORMAT, Taxonomy

logger = logging.getLogger(__name__)

UNKNOWN_SUPERCATEGORY = "unknown"
YFCC_MAX_PER_LABEL = 10  # the paper's cap for its YFCC100M evaluation set
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CSV_TAXONOMY_FILE = "taxonomy.json"  # optional, next to a CSV manifest


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


class _Collector:
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


def _load_json(path) -> object:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, huge numbers
        raise DatasetError(f"cannot read JSON {path}: {str(exc)[:200]}") from None


def _is_id(value) -> bool:
    """An image id must be a JSON number or string (not a list, object, null or bool)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _coco_taxonomy(categories: list, labels: Sequence[str]) -> dict | None:
    """The categories' ranks as a taxonomy document: the Linnaean ranks the records carry (iNat
    2018/2021: kingdom ... genus), plus the supercategory above them when there is no kingdom
    (iNat 2017 and the generated worlds carry only a supercategory, the worlds also a genus)."""
    ranks = [r for r in LINNAEAN_RANKS if any(c.get(r) for c in categories)]
    if "kingdom" not in ranks and any(c.get("supercategory") for c in categories):
        ranks.insert(0, "supercategory")
    if not ranks:
        return None
    wanted = set(labels)
    entries = {str(c["name"]): {r: str(c[r]) for r in ranks if c.get(r)} for c in categories
               if str(c["name"]) in wanted}
    return {"format": TAXONOMY_FORMAT, "ranks": ranks, "labels": entries}


def _coco_categories(doc: dict, path, label_names: Sequence[str] | None):
    """Label names (categories sorted by id unless `label_names` is given), supercategories,
    maps category id -> (name, supercategory index), and the taxonomy document (or None)."""
    try:
        categories = sorted(doc["categories"], key=lambda c: c["id"])
        names = {c["id"]: str(c["name"]) for c in categories}
        supers_of = {c["id"]: str(c.get("supercategory") or UNKNOWN_SUPERCATEGORY) for c in categories}
    except (KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: malformed 'categories' ({exc!r})") from None
    supercategory_names = sorted(set(supers_of.values())) or [UNKNOWN_SUPERCATEGORY]
    super_index = {s: i for i, s in enumerate(supercategory_names)}
    by_id = {cid: (names[cid], super_index[supers_of[cid]]) for cid in names}
    labels = list(label_names) if label_names is not None else [names[c["id"]] for c in categories]
    return labels, supercategory_names, by_id, _coco_taxonomy(categories, labels)


def _coco_rows(doc: dict, path) -> tuple[list, dict]:
    try:
        images = list(doc["images"])
        annotations = list(doc.get("annotations", []))
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: malformed 'images'/'annotations' ({exc!r})") from None
    # A malformed annotation leaves its image without a label (counted as unknown_label).
    label_of = {a["image_id"]: a["category_id"] for a in annotations
                if isinstance(a, dict) and _is_id(a.get("image_id")) and _is_id(a.get("category_id"))}
    return images, label_of


def _read_coco(json_path, image_root, label_names, source, location_of) -> GeoDataset:
    """Shared body of the iNat readers; `location_of(image) -> (lat, lon, date)`."""
    doc = _load_json(json_path)
    if not isinstance(doc, dict):
        raise DatasetError(f"{json_path}: expected a JSON object with images/annotations/categories")
    labels, supercategory_names, by_id, taxonomy = _coco_categories(doc, json_path, label_names)
    images, label_of = _coco_rows(doc, json_path)
    root = Path(image_root) if image_root is not None else Path(json_path).parent
    out = _Collector(source, labels, supercategory_names, check_files=True, taxonomy=taxonomy)
    seen_ids = set()
    for image in images:
        if not isinstance(image, dict) or not _is_id(image.get("id")) \
                or not isinstance(image.get("file_name"), str) or not image["file_name"]:
            out.skip("malformed_row")
            continue
        if image["id"] in seen_ids:
            out.skip("duplicate_id")
            continue
        seen_ids.add(image["id"])
        category = by_id.get(label_of.get(image["id"]))
        if category is None:
            out.skip("unknown_label")
            continue
        lat, lon, date = location_of(image)
        out.add(str(root / image["file_name"]), category[0], lat, lon, date, category[1])
    return out.build()


def read_inat2021(json_path, image_root=None, label_names: Sequence[str] | None = None) -> GeoDataset:
    """iNaturalist 2021 JSON (`latitude`/`longitude`/`date` on each image; null = unknown).

    Image paths are `image_root / file_name`, image_root defaulting to the JSON's folder.
    Labels are the categories sorted by id, or `label_names` (matched by category name)."""
    return _read_coco(json_path, image_root, label_names, f"inat2021 {json_path}",
                      lambda im: (im.get("latitude"), im.get("longitude"), str(im.get("date") or "")))


def read_inat2017(json_path, locations_path, image_root=None,
                  label_names: Sequence[str] | None = None) -> GeoDataset:
    """iNaturalist 2017/2018 JSON joined with the released location list
    `[{id, lat, lon, date, user_id}, ...]` by image id. Images absent from the list keep NaN."""
    records = _load_json(locations_path)
    if not isinstance(records, list):
        raise DatasetError(f"{locations_path}: expected a JSON list of {{id, lat, lon, date, user_id}}")
    where = {r["id"]: r for r in records if isinstance(r, dict) and _is_id(r.get("id"))}

    def location_of(image):
        r = where.get(image["id"], {})
        return r.get("lat"), r.get("lon"), str(r.get("date") or "")

    return _read_coco(json_path, image_root, label_names, f"inat2017 {json_path}", location_of)


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
    doc = _load_json(path)
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
    out = _Collector(f"csv {csv_path}", labels, supers, check_files=True, taxonomy=_csv_taxonomy(csv_path, labels))
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
    out = _Collector(f"yfcc {csv_path}", labels, supers, check_files=True)

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
