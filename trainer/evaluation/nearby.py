"""Expected nearby in the evaluation: how often each model's "expected nearby" flags hold the true
label at its own location (recall) and how many labels they flag, on the reported rows.

The method is the export's (mobile_sdk.nearby.Method, one home): LPT-R thresholds over the training
locations on the log scores of a run's location-only logits (post-processing: log softmax of its geo
head's geo logits, here from Keras instead of the bundle's geo.tflite), the whitelist table the export would write (its
default radius and precision, from the training locations) for the others. Nothing here is chosen:
the thresholds and the table read the training rows only.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mobile_sdk import nearby
from mobile_sdk.geo_scores import location_objective
from mobile_sdk.whitelist.builder import build_whitelist
from mobile_sdk.whitelist.reader import WhitelistTable
from trainer.evaluation.metrics import markdown_table, pct

GEO_HEAD = "geo_head"  # trainer.model.networks.build_geo_head's name, a layer of every post-processing model


def location_logits(run):
    """latlon float32 [N, 2] -> [N, L] of a run's location-only logits, or None for runs without them.

    Post-processing: the geo head alone, fed zero vision logits (its geo logits are added after it
    and do not depend on them)."""
    outputs = run.model.output
    if not (isinstance(outputs, dict) and "geo_logits" in outputs):  # a model with separable geo logits
        return None
    import tensorflow as tf

    head = run.model.get_layer(GEO_HEAD)
    forward = tf.function(lambda latlon: head({"vision_logits": tf.zeros((tf.shape(latlon)[0], len(run.labels))),
                                               "location": latlon}, training=False)["geo_logits"])
    return lambda latlon: forward(np.asarray(latlon, np.float32)).numpy()


def methods_for(runs: Mapping, train) -> dict[str, nearby.Method]:
    """{run kind: its expected-nearby method}; the whitelist table is built once for every run without
    location-only logits."""
    out, table = {}, None
    for kind, run in runs.items():
        logits = location_logits(run)
        if logits is not None:
            objective = location_objective(run.config.model, run.config.geo_objective)
            out[kind] = nearby.lpt_r_method(logits, objective, train.lat, train.lon, train.labels, train.num_labels)
            continue
        if table is None:
            table = nearby.whitelist_method(WhitelistTable.from_bytes(build_whitelist(
                train.lat, train.lon, train.labels, train.num_labels, label_names=train.label_names)))
        out[kind] = table
    return out


def evaluation_section(methods: Mapping[str, nearby.Method], evalset) -> dict:
    """{"labels": L, "models": {name: {"method", "rows", "recall", "mean_flagged"}}} over the located
    rows of `evalset`."""
    return {"labels": evalset.num_labels,
            "models": {name: method.report(evalset.lat, evalset.lon, evalset.labels) for name, method in methods.items()}}


def table(section: Mapping) -> str:
    how = {"lpt_r": f"LPT-R: {nearby.DEFAULT_PERCENTILE:g}th percentile of its geo log score over its training cells",
           "whitelist": "whitelist table: observed within the export's radius"}
    return markdown_table(
        ["model", "a label is expected nearby by", "located images", "recall of the true label",
         f"mean labels flagged (of {section['labels']})"],
        [[name, how[r["method"]], str(r["rows"]), pct(r.get("recall")),
          f"{r['mean_flagged']:.1f}" if r["rows"] else "–"] for name, r in section["models"].items()])
