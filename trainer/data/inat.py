"""The iNaturalist readers: the 2021 JSON (the generated world's layout too) and the 2017/2018 JSON
joined with its separate location list, both COCO-style documents (images, annotations, categories)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mobile_sdk.taxonomy import LINNAEAN_RANKS, TAXONOMY_FORMAT
from trainer.data.dataset import DatasetError, GeoDataset
from trainer.data.rows import UNKNOWN_SUPERCATEGORY, RowCollector, load_json


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
    doc = load_json(json_path)
    if not isinstance(doc, dict):
        raise DatasetError(f"{json_path}: expected a JSON object with images/annotations/categories")
    labels, supercategory_names, by_id, taxonomy = _coco_categories(doc, json_path, label_names)
    images, label_of = _coco_rows(doc, json_path)
    root = Path(image_root) if image_root is not None else Path(json_path).parent
    out = RowCollector(source, labels, supercategory_names, check_files=True, taxonomy=taxonomy)
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
    records = load_json(locations_path)
    if not isinstance(records, list):
        raise DatasetError(f"{locations_path}: expected a JSON list of {{id, lat, lon, date, user_id}}")
    where = {r["id"]: r for r in records if isinstance(r, dict) and _is_id(r.get("id"))}

    def location_of(image):
        r = where.get(image["id"], {})
        return r.get("lat"), r.get("lon"), str(r.get("date") or "")

    return _read_coco(json_path, image_root, label_names, f"inat2017 {json_path}", location_of)
