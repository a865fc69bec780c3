"""The optional files of a bundle, written by converters.export next to model.tflite:

- `taxonomy.json` when the training data has a taxonomy (the trainer's dataset readers);
- `geo.tflite` + `vision.tflite` for post-processing models (converters.geo_parts), verified
  against model.tflite;
- the "expected nearby" method (mobile_sdk.nearby): LPT-R thresholds over the training locations
  (`expected_nearby.json`) on the log scores (mobile_sdk.geo_scores) of the bundle's location-only
  logits (the geo part's geo logits, a geo model's logits), or the whitelist table for models without them;
  with its recall and mean number of labels flagged on the validation rows (never used to choose).

Returns the manifest sections (mobile_sdk.bundle.OPTIONAL_SECTIONS).
"""
from __future__ import annotations

import numpy as np

from mobile_sdk import nearby
from mobile_sdk.bundle import GEO_MODEL_FILE, NEARBY_FILE, TAXONOMY_FILE, VISION_MODEL_FILE, WHITELIST_FILE
from mobile_sdk.fileio import atomic_write_bytes
from mobile_sdk.geo_scores import location_objective
from mobile_sdk.runtime import TFLiteModel
from mobile_sdk.split_runner import PartModel
from mobile_sdk.taxonomy import Taxonomy
from mobile_sdk.whitelist.reader import WhitelistTable

from .geo_parts import PARTS, convert_part, has_parts, verify_split


def _batched(run_one):
    """latlon [N, 2] -> [N, L] from a batch-1 LiteRT call (the SDK runs one point at a time too)."""
    return lambda latlon: np.stack([run_one(latlon[i:i + 1]).reshape(-1) for i in range(len(latlon))])


def _location_logits(run, model_content: bytes, geo_part: bytes | None):
    """latlon -> the bundle's location-only logits, as the SDK gets them: the geo part's geo logits,
    a geo model's logits f; None for models without."""
    if geo_part is not None:
        return _batched(PartModel(geo_part, *PARTS["geo"]).run_part)
    if run.config.model == "geoprior":
        model = TFLiteModel(model_content, source="exported geo model")
        blank = np.zeros((1, *model.input_size, 3), np.uint8)
        return _batched(lambda location: model.run(blank, location)["logits"])
    return None


def write_extras(folder, run, train, val, model_content: bytes, config, samples) -> dict:
    """Write the optional files into the staged bundle `folder`; returns the manifest sections.

    `config`: the bundle's QuantizationConfig; `samples`: (images, locations) the export verified on."""
    sections: dict = {"taxonomy": None, "split_models": None, "expected_nearby": None}
    labels, geo_part = list(run.labels), None
    if train.taxonomy:
        taxonomy = Taxonomy(train.taxonomy, labels, source="the training data's taxonomy")
        atomic_write_bytes(folder / TAXONOMY_FILE, taxonomy.to_json().encode("utf-8"))
        sections["taxonomy"] = {"file": TAXONOMY_FILE, "ranks": taxonomy.ranks}
    if has_parts(run.model):
        contents = {part: convert_part(run.model, part, config) for part in PARTS}
        report = verify_split(model_content, contents["geo"], contents["vision"], *samples, config.mode)
        geo_part = contents["geo"]
        atomic_write_bytes(folder / GEO_MODEL_FILE, geo_part)
        atomic_write_bytes(folder / VISION_MODEL_FILE, contents["vision"])
        # The single two-input model stays the default contract; an app opts in to the parts.
        sections["split_models"] = {"geo": GEO_MODEL_FILE, "vision": VISION_MODEL_FILE, "recommended": False,
                                    "verification": report}
    location_logits = _location_logits(run, model_content, geo_part)
    if location_logits is not None:
        objective = location_objective(run.config.model, run.config.geo_objective)
        method = nearby.lpt_r_method(location_logits, objective, train.lat, train.lon, train.labels, len(labels))
        nearby.write_thresholds(folder / NEARBY_FILE, method.thresholds, nearby.DEFAULT_PERCENTILE,
                                nearby.DEFAULT_CELL_PRECISION)
        section = {"method": "lpt_r", "file": NEARBY_FILE, "percentile": nearby.DEFAULT_PERCENTILE,
                   "cell_precision": nearby.DEFAULT_CELL_PRECISION}
    elif (folder / WHITELIST_FILE).exists():
        table = WhitelistTable.open(folder / WHITELIST_FILE)
        method = nearby.whitelist_method(table)
        section = {"method": "whitelist", "file": None, "radius_miles": table.radius_miles}
    else:
        return sections
    report = method.report(val.lat, val.lon, val.labels)
    sections["expected_nearby"] = {**section, "validation": {k: v for k, v in report.items() if k != "method"}}
    return sections
