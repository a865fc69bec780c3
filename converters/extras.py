"""The optional files of a bundle, written by converters.export next to model.tflite:

- `taxonomy.json` when the training data has a taxonomy (trainer.data.readers readers);
- `geo.tflite` + `vision.tflite` for post-processing models (converters.geo_parts), verified
  against model.tflite;
- the "expected nearby" method (mobile_sdk.nearby): LPT-R thresholds from the geo part over the
  training locations (`expected_nearby.json`), or the whitelist table for models without a geo part;
  with its recall and mean number of labels flagged on the validation rows (never used to choose).

Returns the manifest sections (mobile_sdk.bundle.OPTIONAL_SECTIONS).
"""
from __future__ import annotations

import numpy as np

from mobile_sdk import nearby
from mobile_sdk.bundle import GEO_MODEL_FILE, NEARBY_FILE, TAXONOMY_FILE, VISION_MODEL_FILE, WHITELIST_FILE
from mobile_sdk.fileio import atomic_write_bytes
from mobile_sdk.split_runner import PartModel
from mobile_sdk.taxonomy import Taxonomy
from mobile_sdk.whitelist.reader import WhitelistTable

from .geo_parts import PARTS, convert_part, has_parts, verify_split


def _geo_logits_fn(geo: PartModel):
    return lambda latlon: np.stack([geo.run_part(latlon[i:i + 1]) for i in range(len(latlon))])


def _nearby_report(flags_at, val) -> dict:
    """Recall of the true label and mean labels flagged over the located validation rows."""
    rows = np.flatnonzero(val.has_location)
    flags = np.stack([flags_at(val.lat[i], val.lon[i]) for i in rows]) if rows.size else np.zeros((0, val.num_labels))
    return nearby.recall_and_count(flags == True, val.labels[rows]) if rows.size else {"rows": 0}  # noqa: E712


def write_extras(folder, run, train, val, model_content: bytes, config, samples) -> dict:
    """Write the optional files into the staged bundle `folder`; returns the manifest sections.

    `config`: the bundle's QuantizationConfig; `samples`: (images, locations) the export verified on."""
    sections: dict = {"taxonomy": None, "split_models": None, "expected_nearby": None}
    labels = list(run.labels)
    if train.taxonomy:
        taxonomy = Taxonomy(train.taxonomy, labels, source="the training data's taxonomy")
        atomic_write_bytes(folder / TAXONOMY_FILE, taxonomy.to_json().encode("utf-8"))
        sections["taxonomy"] = {"file": TAXONOMY_FILE, "ranks": taxonomy.ranks}
    if has_parts(run.model):
        contents = {part: convert_part(run.model, part, config) for part in PARTS}
        report = verify_split(model_content, contents["geo"], contents["vision"], *samples, config.mode)
        atomic_write_bytes(folder / GEO_MODEL_FILE, contents["geo"])
        atomic_write_bytes(folder / VISION_MODEL_FILE, contents["vision"])
        # The single two-input model stays the default contract; an app opts in to the parts.
        sections["split_models"] = {"geo": GEO_MODEL_FILE, "vision": VISION_MODEL_FILE, "recommended": False,
                                    "verification": report}
        geo_logits = _geo_logits_fn(PartModel(contents["geo"], *PARTS["geo"]))
        thresholds = nearby.lpt_r_thresholds(geo_logits, train.lat, train.lon, train.labels, len(labels))
        nearby.write_thresholds(folder / NEARBY_FILE, thresholds, nearby.DEFAULT_PERCENTILE,
                                nearby.DEFAULT_CELL_PRECISION)
        values = np.array([np.nan if t is None else t for t in thresholds])
        sections["expected_nearby"] = {
            "method": "lpt_r", "file": NEARBY_FILE, "percentile": nearby.DEFAULT_PERCENTILE,
            "cell_precision": nearby.DEFAULT_CELL_PRECISION,
            "validation": _nearby_report(lambda la, lo: nearby.flags_from_logits(
                geo_logits(np.array([[la, lo]], np.float32))[0], values), val)}
    elif (folder / WHITELIST_FILE).exists():
        table = WhitelistTable.open(folder / WHITELIST_FILE)
        sections["expected_nearby"] = {
            "method": "whitelist", "file": None, "radius_miles": table.radius_miles,
            "validation": _nearby_report(lambda la, lo: nearby.flags_from_whitelist(
                table.lookup(la, lo), len(labels)), val)}
    return sections
