"""Accuracy metrics and the paper-shaped report tables (Tables 1, 3, 4, 5, 6). numpy only.

A method's result is a JSON-ready `summarize(...)` dict; the table functions render such dicts as
Markdown, so report.json and report.md always show the same numbers. Accuracies are fractions in
JSON and percentages in Markdown; an empty group is None in JSON and "–" in Markdown.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

HEAD_MIN_TRAIN_IMAGES = 100  # paper Table 3: head labels have >= 100 training images
TOP_KS = (1, 5)


def _check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [N, L], got {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must have shape [{scores.shape[0]}] to match scores, got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer label ids, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got range [{labels.min()}, {labels.max()}]")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, labels.astype(np.int64)


def top_k_hits(scores, labels, k: int) -> np.ndarray:
    """bool [N]: the true label is among the k best scores.

    Ties count against the prediction: a label tied with the true one ranks ahead of it. So a
    whitelist's zero-scored labels never earn a top-5 hit by index order.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    scores, labels = _check_scores_labels(scores, labels)
    true_scores = scores[np.arange(len(labels)), labels][:, None]
    rank = (scores >= true_scores).sum(axis=1) - 1
    return rank < k


def top_k_accuracy(scores, labels, k: int) -> float:
    hits = top_k_hits(scores, labels, k)
    if hits.size == 0:
        raise ValueError("top_k_accuracy needs at least one example")
    return float(hits.mean())


def head_labels(train_labels, num_labels: int, min_images: int = HEAD_MIN_TRAIN_IMAGES) -> np.ndarray:
    """bool [L]: labels with at least `min_images` training images (the paper's head)."""
    train_labels = np.asarray(train_labels)
    if train_labels.ndim != 1 or (train_labels.size and (train_labels.min() < 0 or train_labels.max() >= num_labels)):
        raise ValueError(f"train_labels must be a 1-D array of ids in [0, {num_labels})")
    return np.bincount(train_labels.astype(np.int64), minlength=num_labels) >= min_images


def _group(hits: Mapping[int, np.ndarray], mask: np.ndarray) -> dict:
    n = int(mask.sum())
    out = {"n": n}
    for k, h in hits.items():
        out[f"top{k}"] = float(h[mask].mean()) if n else None
    return out


def summarize(
    scores,
    labels,
    *,
    head: np.ndarray,
    supercategories=None,
    supercategory_names: Sequence[str] | None = None,
    ks: Sequence[int] = TOP_KS,
) -> dict:
    """Top-k overall, for head/tail images (by their label's training count, `head` from
    `head_labels`), and per supercategory (`supercategories`: per-row index into the names)."""
    scores, labels = _check_scores_labels(scores, labels)
    head = np.asarray(head, dtype=bool)
    if head.shape != (scores.shape[1],):
        raise ValueError(f"head must be a bool mask of shape [{scores.shape[1]}], got {head.shape}")
    hits = {k: top_k_hits(scores, labels, k) for k in ks}
    everything = np.ones(len(labels), dtype=bool)
    result = _group(hits, everything)
    result["labels"] = int(np.unique(labels).size)
    is_head = head[labels]
    result["head"] = _group(hits, is_head)
    result["tail"] = _group(hits, ~is_head)
    if supercategories is not None:
        groups = np.asarray(supercategories)
        if groups.shape != labels.shape:
            raise ValueError(f"supercategories must have shape {labels.shape}, got {groups.shape}")
        names = list(supercategory_names) if supercategory_names is not None else None
        if names is not None and groups.size and (groups.min() < 0 or groups.max() >= len(names)):
            raise ValueError(f"supercategory index out of range for {len(names)} names")
        result["supercategories"] = {}
        for g in np.unique(groups):
            mask = groups == g
            entry = _group(hits, mask)
            entry["labels"] = int(np.unique(labels[mask]).size)
            result["supercategories"][names[g] if names is not None else str(int(g))] = entry
    return result


# ---- calibration --------------------------------------------------------------------------------

ECE_BINS = 15


def expected_calibration_error(scores, labels, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence: sum over equal-width confidence bins of |accuracy - mean
    confidence| weighted by the bin's share of images (Guo et al. 2017). Rows must sum to 1."""
    scores, labels = _check_scores_labels(scores, labels)
    confidence = scores.max(axis=1)
    correct = top_k_hits(scores, labels, 1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in np.unique(which):
        mask = which == b
        ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def temper(scores, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities with their logits divided by T (rows renormalised)."""
    with np.errstate(divide="ignore"):
        logits = np.log(np.asarray(scores, dtype=np.float64)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(scores, labels, grid=np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))) -> float:
    """The temperature (a log-spaced grid over 0.05..20) with the least negative log-likelihood."""
    scores, labels = _check_scores_labels(scores, labels)
    rows = np.arange(len(labels))

    def nll(t):
        return -np.log(np.maximum(temper(scores, t)[rows, labels], 1e-300)).mean()

    return float(min(grid, key=nll))


# ---- Markdown ----------------------------------------------------------------------------------

def pct(value) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}%"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table_prior_sweep(sweeps: Mapping[str, Mapping]) -> str:
    """Table 1: top-1 of each prior at each radius. `sweeps[name]` = {"val_top1": {r: acc},
    "test_top1": {r: acc}, "chosen_radius": r}. The radius chosen on validation is bold."""
    radii = sorted({float(r) for s in sweeps.values() for r in s["test_top1"]})
    header = ["prior", *[f"{r:g} mi" for r in radii]]
    rows = []
    for name, s in sweeps.items():
        test = {float(r): a for r, a in s["test_top1"].items()}
        val = {float(r): a for r, a in s["val_top1"].items()}
        chosen = float(s["chosen_radius"])
        rows.append([name, *[f"**{pct(test.get(r))}**" if r == chosen else pct(test.get(r)) for r in radii]])
        rows.append([f"{name} (validation, chooses r)", *[pct(val.get(r)) for r in radii]])
    return markdown_table(header, rows)


def table_methods(results: Mapping[str, Mapping], oracle: str | None = None) -> str:
    """Table 3: top-1, top-5, head and tail top-1 per method, plus the gap to `oracle` if given."""
    header = ["method", "top-1", "top-5", f"head ≥{HEAD_MIN_TRAIN_IMAGES} im", f"tail <{HEAD_MIN_TRAIN_IMAGES} im"]
    if oracle is not None:
        header.append("gap to oracle (top-1 points)")
    rows = []
    for name, r in results.items():
        row = [name, pct(r.get("top1")), pct(r.get("top5")), pct(r["head"]["top1"]), pct(r["tail"]["top1"])]
        if oracle is not None:
            gap = None if name == oracle else results[oracle]["top1"] - r["top1"]
            row.append("–" if gap is None else f"{100.0 * gap:+.1f}")
        rows.append(row)
    return markdown_table(header, rows)


def table_supercategories(results: Mapping[str, Mapping]) -> str:
    """Table 4: top-1 per supercategory (rows, with their label count) for each method (columns)."""
    first = next(iter(results.values()))
    header = ["supercategory (labels)", *results.keys()]
    rows = [[f"Overall ({first['labels']})", *[pct(r["top1"]) for r in results.values()]]]
    for name, entry in first.get("supercategories", {}).items():
        rows.append([f"{name} ({entry['labels']})", *[pct(r["supercategories"][name]["top1"]) for r in results.values()]])
    return markdown_table(header, rows)


def table_backbones(results_by_backbone: Mapping[str, Mapping[str, Mapping]]) -> str:
    """Table 5: top-1 of each method (rows) on each image backbone (columns)."""
    methods = list(dict.fromkeys(m for res in results_by_backbone.values() for m in res))
    header = ["method", *results_by_backbone.keys()]
    rows = [[m, *[pct(res[m]["top1"]) if m in res else "–" for res in results_by_backbone.values()]] for m in methods]
    return markdown_table(header, rows)


def table_datasets(results_by_dataset: Mapping[str, Mapping[str, Mapping]]) -> str:
    """Table 6: top-1 of each method (columns) on each evaluation dataset (rows)."""
    methods = list(dict.fromkeys(m for res in results_by_dataset.values() for m in res))
    header = ["evaluation data", *methods]
    rows = [[d, *[pct(res[m]["top1"]) if m in res else "–" for m in methods]] for d, res in results_by_dataset.items()]
    return markdown_table(header, rows)
