"""The readers keep the labels' taxonomy: iNat category ranks, the world's genus and supercategory,
and a CSV manifest's taxonomy.json (mobile_sdk.taxonomy's document)."""
import csv
import json

import pytest

from mobile_sdk.taxonomy import Taxonomy
from trainer.data.dataset import DatasetError
from trainer.data.inat import read_inat2021
from trainer.data.readers import load_split
from trainer.world.build import write_world

from test_data import write_image

RANKED = [{"id": 1, "name": "Picus viridis", "supercategory": "Aves", "kingdom": "Animalia", "phylum": "Chordata",
           "class": "Aves", "order": "Piciformes", "family": "Picidae", "genus": "Picus"},
          {"id": 2, "name": "Bombus terrestris", "supercategory": "Insecta", "kingdom": "Animalia",
           "phylum": "Arthropoda", "class": "Insecta", "order": "Hymenoptera", "family": "Apidae", "genus": "Bombus"}]


def test_inat_reader_keeps_the_category_ranks(tmp_path):
    write_image(tmp_path / "a.jpg")
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "latitude": 1.0, "longitude": 2.0}],
           "annotations": [{"image_id": 1, "category_id": 2}], "categories": RANKED}
    (tmp_path / "train.json").write_text(json.dumps(doc))
    ds = read_inat2021(tmp_path / "train.json")
    assert ds.taxonomy["ranks"] == ["kingdom", "phylum", "class", "order", "family", "genus"]
    assert ds.taxonomy["labels"]["Bombus terrestris"]["family"] == "Apidae"
    assert ds.subset([0]).taxonomy == ds.taxonomy
    # iNat 2017 style: only a supercategory, which becomes the one rank
    (tmp_path / "train.json").write_text(json.dumps({**doc, "categories": [
        {"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]} for c in RANKED]}))
    assert read_inat2021(tmp_path / "train.json").taxonomy["ranks"] == ["supercategory"]


def test_world_writes_genus_and_supercategory(tmp_path):
    ds = load_split(str(write_world(tmp_path / "w", "tiny", seed=0, progress=False)), "train")
    assert ds.taxonomy["ranks"] == ["supercategory", "genus"]
    tax = Taxonomy(ds.taxonomy, ds.label_names)
    for i, name in enumerate(ds.label_names):
        assert tax.name_of(i, "genus") == name.split()[0]  # world species are "Genus epithet"


def test_csv_manifest_takes_a_taxonomy_file(tmp_path):
    write_image(tmp_path / "x.jpg")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "label", "latitude", "longitude"], ["x.jpg", "fox", "45", "7"],
                                 ["x.jpg", "owl", "46", "7"]])
    assert load_split(f"csv:{tmp_path / 'm.csv'}").taxonomy is None
    doc = {"format": 1, "ranks": ["order"], "labels": {"fox": {"order": "Carnivora"}, "owl": {"order": "Strigiformes"},
                                                       "bat": {"order": "Chiroptera"}}}
    (tmp_path / "taxonomy.json").write_text(json.dumps(doc))
    ds = load_split(f"csv:{tmp_path / 'm.csv'}")
    assert ds.taxonomy["labels"] == {"fox": {"order": "Carnivora"}, "owl": {"order": "Strigiformes"}}
    (tmp_path / "taxonomy.json").write_text(json.dumps({"format": 1, "ranks": "order", "labels": {}}))
    with pytest.raises(DatasetError, match="ranks"):
        load_split(f"csv:{tmp_path / 'm.csv'}")


def test_rollup_threshold_is_the_lowest_reaching_the_target_on_tuning_rows():
    from trainer.evaluation.rollup import choose_threshold, rollup_report
    tax = Taxonomy({"format": 1, "ranks": ["genus"], "labels": {"a1": {"genus": "A"}, "a2": {"genus": "A"},
                                                                 "b1": {"genus": "B"}}}, ["a1", "a2", "b1"])
    import numpy as np
    probs = np.array([[0.6, 0.35, 0.05], [0.95, 0.05, 0.0], [0.2, 0.3, 0.5]])
    truth = np.array([1, 0, 2])
    # t=0.5: a1 (wrong), a1, b1 -> 2/3; t=0.7: genus A, a1, nothing reaches (no answer) -> 2/2
    threshold, sweep = choose_threshold(probs, truth, tax, target=0.9, grid=(0.5, 0.7, 0.9))
    assert sweep == {0.5: pytest.approx(2 / 3), 0.7: 1.0, 0.9: 1.0} and threshold == 0.7
    report = rollup_report(probs, truth, tax, 0.7)
    assert report["species_top1"] == pytest.approx(2 / 3) and report["answered"] == pytest.approx(2 / 3)
    assert report["by_rank"] == {"species": {"share": pytest.approx(1 / 3), "accuracy": 1.0},
                                 "genus": {"share": pytest.approx(1 / 3), "accuracy": 1.0},
                                 "none": {"share": pytest.approx(1 / 3), "accuracy": 0.0}}


def test_rollup_threshold_on_a_bundle_is_measured_on_the_sdk_scores(tiny_world, tiny_bundle, capsys):
    """`trainer.evaluation.rollup --bundle`: the scores an app gets (tempered, fused as the manifest recommends),
    the threshold chosen on the tuning rows only."""
    import numpy as np

    from mobile_sdk import GeoClassifier
    from trainer.evaluation.inference import sdk_scores
    from trainer.evaluation.rollup import choose_threshold, main
    from trainer.data.splits import tuning_split

    out = main(["--data", tiny_world, "--bundle", str(tiny_bundle)])
    val = load_split(tiny_world, "val")
    scores = sdk_scores(tiny_bundle, val)
    with GeoClassifier.from_bundle(tiny_bundle) as clf:
        for row in np.flatnonzero(val.has_location)[[0, -1]]:
            result = clf.classify(val.paths[row], float(val.lat[row]), float(val.lon[row]))
            assert scores[row, [c.index for c in result.categories]] == pytest.approx([c.score for c in result.categories])
    tune, _ = tuning_split(val.labels, 0.3, 0)
    chosen, sweep = choose_threshold(scores[tune], val.labels[tune], Taxonomy(val.taxonomy, val.label_names))
    assert (out["chosen_threshold"], out["tuning_sweep"], out["tuning_rows"]) == (chosen, sweep, len(tune))
    assert np.allclose(scores.sum(axis=1), 1.0)
