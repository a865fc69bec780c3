"""Real geography: 272k iNaturalist observations of 500 species (../shared/data), held out by
observation. How well does location alone pin down the label?

- whitelist (eq. 3): recall of the true label and mean candidate-set size, against radius;
- Bayesian radius prior (eq. 2): log-likelihood and top-k of the true label from location alone;
- the post-processing geo network (256-128-128 + logits), trained on the training observations
  with no image at all (its vision logits are 0): the same log-likelihood and top-k.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import Section
from trainer.metrics import markdown_table, pct, top_k_hits
from trainer.priors import SWEEP_RADII_MILES, LabelHistogram

OBSERVATIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "inat500_observations.npz"
TOP_KS = (1, 5, 10)


def load_observations(path=OBSERVATIONS):
    """(latlon float64 [N,2], label int32 [N], names [L]) with labels indexed in taxon_ids order."""
    with np.load(path) as data:
        taxon_ids = data["taxon_ids"]
        index = {int(t): i for i, t in enumerate(taxon_ids.tolist())}
        labels = np.array([index[int(t)] for t in data["train_ids"]], dtype=np.int32)
        return data["train_locs"].astype(np.float64), labels, data["taxon_names"].tolist()


def split_by_observation(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, test) index arrays: every observation lands in exactly one side."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * test_fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def whitelist_stats(counts: np.ndarray, labels: np.ndarray) -> dict:
    """Recall of the true label and candidate-set size. A point with no training data within r is
    not filtered (the whitelist falls back to every label), as in trainer.priors."""
    present = counts > 0
    empty = ~present.any(axis=1)
    sizes = np.where(empty, counts.shape[1], present.sum(axis=1))
    survives = present[np.arange(len(labels)), labels] | empty
    return {"recall": float(survives.mean()), "mean_candidates": float(sizes.mean()),
            "median_candidates": float(np.median(sizes)), "no_data": float(empty.mean())}


def location_only_stats(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Mean log-likelihood of the true label (nats) and top-k (ties count against) from P(L|G)."""
    true_p = probs[np.arange(len(labels)), labels]
    out = {"loglik": float(np.mean(np.log(np.maximum(true_p, 1e-12))))}
    out.update({f"top{k}": float(top_k_hits(probs, labels, k).mean()) for k in TOP_KS})
    return out


def bayesian_location_probs(counts: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """P(L|G) from the radius histogram with add-`smoothing` (Laplace) counts, so a label never
    seen within r keeps a small probability instead of log 0; uniform where the histogram is empty."""
    smoothed = counts.astype(np.float64) + smoothing
    return smoothed / smoothed.sum(axis=1, keepdims=True)


def train_geo_net(train_latlon, train_labels, num_labels: int, epochs: int, seed: int):
    """The post-processing geo head (trainer.models.build_geo_head) fitted with zero vision logits,
    i.e. on locations alone, with the paper's SGD at 0.02; returns latlon -> P(L|G)."""
    import keras

    from trainer.config import OptimizerConfig
    from trainer.models import build_geo_head

    keras.utils.set_random_seed(seed)
    head = build_geo_head(num_labels, seed=seed)
    model = keras.Model(head.input, head.output["logits"])
    batch = 512
    model.compile(optimizer=OptimizerConfig.for_model("postprocess").build(len(train_labels) // batch),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def inputs(latlon):
        latlon = np.asarray(latlon, np.float32)
        return {"vision_logits": np.zeros((len(latlon), num_labels), np.float32), "location": latlon}

    model.fit(inputs(train_latlon), train_labels, batch_size=batch, epochs=epochs, shuffle=True, verbose=2)

    def predict(latlon):
        logits = model.predict(inputs(latlon), batch_size=4096, verbose=0)
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    return predict


def run(test_fraction: float = 0.1, max_test: int = 5000, geo_epochs: int = 5, seed: int = 0,
        path=OBSERVATIONS) -> Section:
    begin = time.monotonic()
    if not Path(path).exists():
        return Section("Real geography (iNat500 observations)",
                       f"Skipped: {path} is absent.", seconds=time.monotonic() - begin)
    latlon, labels, names = load_observations(path)
    train, test = split_by_observation(len(labels), test_fraction, seed)
    test = np.random.default_rng(seed + 1).choice(test, size=min(max_test, len(test)), replace=False)
    histogram = LabelHistogram(latlon[train], labels[train], len(names))
    rows_w, rows_b, bayes = [], [], {}
    for radius in SWEEP_RADII_MILES:
        counts = histogram.counts(latlon[test], radius)
        w = whitelist_stats(counts, labels[test])
        rows_w.append([f"{radius}", pct(w["recall"]), f"{w['mean_candidates']:.1f}", f"{w['median_candidates']:.0f}", pct(w["no_data"])])
        bayes[radius] = location_only_stats(bayesian_location_probs(counts), labels[test])
    for radius, b in bayes.items():
        rows_b.append([f"Bayesian prior, r = {radius} mi", f"{b['loglik']:.3f}"] + [pct(b[f"top{k}"]) for k in TOP_KS])
    uniform = location_only_stats(np.full((1, len(names)), 1.0 / len(names)).repeat(len(test), 0), labels[test])
    rows_b.append(["uniform (no location)", f"{uniform['loglik']:.3f}"] + [pct(uniform[f"top{k}"]) for k in TOP_KS])
    geo_note = ""
    try:
        predict = train_geo_net(latlon[train], labels[train], len(names), geo_epochs, seed)
        g = location_only_stats(predict(latlon[test]), labels[test])
        rows_b.insert(0, [f"post-processing geo net ({geo_epochs} epochs)", f"{g['loglik']:.3f}"] + [pct(g[f"top{k}"]) for k in TOP_KS])
    except ImportError as exc:
        geo_note = f"\nThe geo network row is missing: {exc}.\n"
    body = (
        f"{len(train):,} training and {len(test):,} held-out observations (random split by observation, "
        f"seed {seed}; held-out subsampled to {max_test:,}), {len(names)} species.\n\n"
        "Whitelist (a point with no training data within r filters nothing):\n\n"
        + markdown_table(["radius (mi)", "recall of true label", "mean candidates", "median candidates", "no data within r"], rows_w)
        + "\n\nThe true label from location alone (log-likelihood in nats per observation, higher is better; "
        "the Bayesian prior uses add-1 smoothing so unseen labels keep a small probability; ties count against):\n\n"
        + markdown_table(["model", "log-likelihood", *[f"top-{k}" for k in TOP_KS]], rows_b)
        + "\n" + geo_note
    )
    return Section("Real geography (iNat500 observations)", body, seconds=time.monotonic() - begin)
