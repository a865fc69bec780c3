import json

import numpy as np
import pytest

from trainer.evaluation import metrics


SCORES = np.array(
    [
        [0.1, 0.7, 0.2, 0.0],  # label 1 is best
        [0.4, 0.3, 0.2, 0.1],  # label 2 is 3rd
        [0.25, 0.25, 0.5, 0.0],  # label 0 tied with label 1 for 2nd
        [0.0, 0.0, 1.0, 0.0],  # label 3 tied with two others at 0 -> rank 4 of 4
    ]
)
LABELS = np.array([1, 2, 0, 3])


def test_top_k_hits_hand_computed():
    assert metrics.top_k_hits(SCORES, LABELS, 1).tolist() == [True, False, False, False]
    # Ties rank against the truth: row 2's label 0 is tied with label 1, so it ranks 3rd, not 2nd.
    assert metrics.top_k_hits(SCORES, LABELS, 2).tolist() == [True, False, False, False]
    assert metrics.top_k_hits(SCORES, LABELS, 3).tolist() == [True, True, True, False]
    assert metrics.top_k_hits(SCORES, LABELS, 4).tolist() == [True, True, True, True]
    assert metrics.top_k_accuracy(SCORES, LABELS, 3) == 0.75


@pytest.mark.parametrize(
    "scores, labels, k, message",
    [
        (np.zeros(4), [0], 1, "shape"),
        (np.zeros((2, 3)), [0], 1, "labels must have shape"),
        (np.zeros((2, 3)), [0, 3], 1, "must lie in"),
        (np.zeros((2, 3)), [0.0, 1.0], 1, "integer"),
        (np.full((1, 3), np.nan), [0], 1, "NaN"),
        (np.zeros((1, 3)), [0], 0, "positive integer"),
    ],
)
def test_bad_input_is_a_clear_value_error(scores, labels, k, message):
    with pytest.raises(ValueError, match=message):
        metrics.top_k_hits(scores, np.asarray(labels), k)


def test_head_labels_threshold_is_inclusive():
    train = np.array([0] * 100 + [1] * 99 + [3] * 150)
    assert metrics.head_labels(train, 4).tolist() == [True, False, False, True]
    assert metrics.head_labels(train, 4, min_images=150).tolist() == [False, False, False, True]


def test_summarize_head_tail_and_supercategories():
    head = np.array([True, True, False, False])
    supercats = np.array([0, 0, 1, 1])
    summary = metrics.summarize(SCORES, LABELS, head=head, supercategories=supercats, supercategory_names=["Aves", "Plantae"])
    assert summary["n"] == 4 and summary["labels"] == 4
    assert summary["top1"] == 0.25
    assert summary["top5"] == 1.0  # only 4 labels: every label is in the top 5
    # Head labels 0, 1 -> rows 0 (hit) and 2 (miss); tail labels 2, 3 -> rows 1 and 3 (both miss).
    assert summary["head"] == {"n": 2, "top1": 0.5, "top5": 1.0}
    assert summary["tail"] == {"n": 2, "top1": 0.0, "top5": 1.0}
    assert summary["supercategories"]["Aves"] == {"n": 2, "top1": 0.5, "top5": 1.0, "labels": 2}
    assert summary["supercategories"]["Plantae"]["top1"] == 0.0
    json.dumps(summary)  # JSON-ready


def test_summarize_empty_group_is_none():
    summary = metrics.summarize(SCORES, LABELS, head=np.ones(4, dtype=bool))
    assert summary["tail"] == {"n": 0, "top1": None, "top5": None}
    assert "–" in metrics.table_methods({"image only": summary})


def test_tables_show_the_numbers_and_mark_the_chosen_radius():
    a = metrics.summarize(SCORES, LABELS, head=np.array([True, True, False, False]), supercategories=[0, 0, 1, 1], supercategory_names=["Aves", "Plantae"])
    better = metrics.summarize(np.eye(4)[LABELS], LABELS, head=np.array([True, True, False, False]), supercategories=[0, 0, 1, 1], supercategory_names=["Aves", "Plantae"])
    t3 = metrics.table_methods({"image only": a, "oracle": better}, oracle="oracle")
    assert "| image only | 25.0% | 100.0% | 50.0% | 0.0% | +75.0 |" in t3
    t4 = metrics.table_supercategories({"image only": a, "oracle": better})
    assert "| Overall (4) | 25.0% | 100.0% |" in t4 and "| Plantae (2) | 0.0% | 100.0% |" in t4
    t1 = metrics.table_prior_sweep(
        {"whitelist": {"val_top1": {50: 0.5, 100: 0.6}, "test_top1": {50: 0.7, 100: 0.65}, "chosen_radius": 100}}
    )
    assert "| whitelist | 70.0% | **65.0%** |" in t1
    assert "| whitelist (validation, chooses r) | 50.0% | 60.0% |" in t1
    t5 = metrics.table_backbones({"mobilenet_v2": {"image only": a}, "inception_v3": {"image only": better, "whitelist": a}})
    assert "| whitelist | – | 25.0% |" in t5
    t6 = metrics.table_datasets({"world val": {"image only": a}, "yfcc": {"image only": better}})
    assert "| yfcc | 100.0% |" in t6
