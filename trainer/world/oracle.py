"""The oracle's density: a generated world's true range density of each label, in a run's label
order. The evaluation's upper bound multiplies image-only probabilities by it; the examples sheet
draws it. It only reads a world folder back (`load.load_world`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainer.world.load import load_world

logger = logging.getLogger(__name__)


def world_density(spec: str, labels: list[str]):
    """latlon -> true range density [N, L] in `labels` order when SPEC is a trainer.world folder
    holding every label, else None (no oracle row)."""
    if not Path(spec).is_dir():
        return None
    try:
        world = load_world(spec)
    except (OSError, ValueError) as exc:  # the message already names the folder and what is wrong
        logger.info("%s: no oracle row", exc)
        return None
    column = {name: i for i, name in enumerate(world.label_names)}
    missing = [name for name in labels if name not in column]
    if missing:
        logger.warning("the world lacks %d of the run's labels (e.g. %r): no oracle row", len(missing), missing[0])
        return None
    order = np.array([column[name] for name in labels])
    return lambda latlon: world.density(latlon)[:, order]
