"""What a world allows, without training: the accuracy of an IDEAL image model (it reads every
visible mark, and on a hidden-mark image knows only the genus and the training frequencies) alone,
times the true range density (the oracle), and with the paper's two priors.

    python -m trainer.world.ideal [--preset demo] [--seed 0] [--hidden-rate H]

Seconds, no pixels. Also prints, per radius, the Bayesian prior with the training frequencies
divided out of its counts and the share of hidden-mark images around which the whitelist keeps
several look-alikes (why the Bayesian prior beats the whitelist here: docs/evaluation.md). Used to set the difficulty knob (`Preset.mark_hidden_rate`) and the range
scales before spending a training run: a real converged model sits a little below these numbers.
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from trainer.evaluation.priors import PRIOR_METHODS, SWEEP_RADII_MILES, LabelHistogram, product_scores
from trainer.world.build import build_world
from trainer.world.load import World
from trainer.world.presets import PRESETS, get_preset


def ideal_image_probs(species, rows) -> np.ndarray:
    """[N, L]: one-hot on the true label where the mark shows; the genus members weighted by their
    training counts where it is hidden (the best an image model can do there)."""
    genus = np.array([sp["genus"] for sp in species])
    counts = np.array([sp["train_count"] for sp in species], dtype=np.float64)
    out = np.zeros((len(rows), len(species)))
    for i, r in enumerate(rows):
        if r["mark_hidden"]:
            members = genus == genus[r["label"]]
            out[i, members] = counts[members] / counts[members].sum()
        else:
            out[i, r["label"]] = 1.0
    return out


def measure(preset="demo", seed: int = 0) -> dict:
    """Top-1 (%) of the ideal image model, the oracle and both priors at each radius on `val`."""
    preset, species, ranges, grid, records = build_world(preset, seed)
    world = _InMemoryWorld(species, ranges, grid)
    val, train = records["val"], records["train"]
    labels = np.array([r["label"] for r in val])
    latlon = np.array([[r["latitude"], r["longitude"]] for r in val], dtype=np.float64)
    image = ideal_image_probs(species, val)
    # argmax with ties against the prediction, as trainer.evaluation.metrics counts them
    top1 = lambda s: 100.0 * float(np.mean([(row > row[y]).sum() == 0 and (row == row[y]).sum() == 1  # noqa: E731
                                            for row, y in zip(s, labels)]))
    out = {"image": top1(image), "oracle": top1(product_scores(image, world.density(latlon)))}
    hist = LabelHistogram(np.array([[np.nan if r["latitude"] is None else r["latitude"],
                                     np.nan if r["longitude"] is None else r["longitude"]] for r in train]),
                          np.array([r["label"] for r in train]), len(species))
    hidden = np.array([r["mark_hidden"] for r in val])
    train_counts = np.array([sp["train_count"] for sp in species], dtype=np.float64)
    genus = np.array([sp["genus"] for sp in species])
    same_genus = genus[labels][:, None] == genus[None, :]
    for radius in SWEEP_RADII_MILES:
        counts = hist.counts(latlon, radius)
        for method, fuse in PRIOR_METHODS.items():
            out[f"{method}@{radius}"] = top1(fuse(image, counts))
        # Why Bayesian vs whitelist: the Bayesian prior without its second copy of the training
        # frequencies, and how often the whitelist keeps several look-alikes of a hidden-mark image.
        out[f"bayesian_no_double_prior@{radius}"] = top1(PRIOR_METHODS["bayesian"](image, counts / train_counts))
        several = ((counts > 0) & same_genus).sum(axis=1) > 1
        out[f"hidden_several_whitelisted@{radius}"] = 100.0 * float(several[hidden].mean())
    out["hidden_fraction"] = 100.0 * float(hidden.mean())
    return out


class _InMemoryWorld(World):
    """World.density on ranges that were built but not written."""

    def __init__(self, species, ranges, grid):  # noqa: super().__init__ reads files; this does not
        from scipy import sparse

        self.species, self.grid = species, grid
        rows = np.concatenate([np.full(len(r["cells"]), i) for i, r in enumerate(ranges)])
        self._cell_probs = sparse.csr_matrix((np.concatenate([r["probs"] for r in ranges]),
                                              (np.concatenate([r["cells"] for r in ranges]), rows)),
                                             shape=(grid.size, len(species)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.world.ideal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-rate", type=float, help="override the preset's mark_hidden_rate")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    if args.hidden_rate is not None:
        preset = dataclasses.replace(preset, mark_hidden_rate=args.hidden_rate)
    for name, value in measure(preset, args.seed).items():
        print(f"{name:>34}: {value:5.1f}")


if __name__ == "__main__":
    main()
