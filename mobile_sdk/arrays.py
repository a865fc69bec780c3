"""Small numpy building blocks shared by the SDK and the trainer."""
from __future__ import annotations

import numpy as np


def expand_ranges(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index) of every index of the half-open ranges [start, stop), range after range:
    owner is the position of the range the index comes from. One numpy pass, no Python loop."""
    length = stop - start
    owner = np.repeat(np.arange(start.size), length)
    return owner, np.arange(owner.size) - np.repeat(np.cumsum(length) - length, length) + start[owner]
