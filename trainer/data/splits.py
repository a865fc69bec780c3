"""The tuning split: rows that make data-driven choices and are never reported.

One function serves every choice: `trainer.train` holds out a tuning part of *train* to pick the
epoch and stop early, `trainer.prepare` writes that same part as its own TFRecord split, and
`trainer.evaluate` holds out part of the evaluation split to pick the prior radius.
"""
from __future__ import annotations

import numpy as np

from trainer.data.dataset import DatasetError

# The held-out rows depend on the data only, not on the training seed, so an image run and the
# geo runs started from it (and several seeds of one run) never tune on each other's training rows.
TUNE_SEED = 0
DEFAULT_TUNE_FRACTION = 0.1


class SplitError(DatasetError):
    """A split that cannot be made (bad fraction, too few rows)."""


def tuning_split(labels, fraction: float, seed: int = TUNE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(tune, rest) sorted row indices: a seeded `fraction` of each label's rows (rounded) is tuning
    data, the rest is trained on or reported. Stratified, so both parts keep the label mix."""
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"tune fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    tune = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        tune.append(rows[: int(round(fraction * len(rows)))])
    tune = np.sort(np.concatenate(tune)) if tune else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), tune)
    if len(tune) == 0 or len(rest) == 0:
        raise SplitError(f"cannot split {len(labels)} images into tuning and other parts at fraction {fraction}")
    return tune, rest
