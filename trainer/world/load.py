"""A written world, read back: its species and their TRUE range densities p(G | L) (the oracle's)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import sparse

from mobile_sdk.geo import validate_locations
from trainer.world.grid import RangeGrid

WORLD_FORMAT = "geoaware-world"
WORLD_VERSION = 2  # 2: diagnostic marks (hidden_marks.json), realistic range scales
MARKS_FILE = "hidden_marks.json"  # {split: [file_name, ...]} of the images whose mark is hidden


class World:
    """A written world: its species and their TRUE range densities p(G | L)."""

    def __init__(self, root):
        self.root = Path(root)
        try:
            self.info = json.loads((self.root / "world.json").read_text(encoding="utf-8"))
            ranges = np.load(self.root / "ranges.npz")
        except FileNotFoundError as exc:
            raise ValueError(f"{root} is not a world folder written by trainer.world: {exc.filename} missing") from None
        if self.info.get("format") != WORLD_FORMAT:
            raise ValueError(f"{root}/world.json is not a {WORLD_FORMAT} file")
        self.species = self.info["species"]
        self.label_names = [sp["name"] for sp in self.species]
        self.genus = [sp["genus"] for sp in self.species]
        self.supercategory = [sp["supercategory"] for sp in self.species]
        self.grid = RangeGrid(float(ranges["grid_deg"]))
        offsets = ranges["offsets"]
        rows = np.repeat(np.arange(len(self.species)), np.diff(offsets))
        # [cells, labels] probability of each label's range in each cell.
        self._cell_probs = sparse.csr_matrix((ranges["probs"], (ranges["cells"], rows)),
                                             shape=(self.grid.size, len(self.species)))

    @property
    def num_labels(self) -> int:
        return len(self.species)

    def density(self, latlon) -> np.ndarray:
        """float64 [N, L]: p(G | L) per steradian at each location (rows of NaN for unknown ones).

        Longitudes wrap; invalid coordinates raise mobile_sdk.errors.InvalidLocationError."""
        locs, known = validate_locations(latlon)
        out = np.full((len(locs), self.num_labels), np.nan)
        cells = self.grid.cell_of(locs[known, 0], locs[known, 1])
        out[known] = self._cell_probs[cells].toarray() / self.grid.cell_area[cells][:, None]
        return out

    def hidden_marks(self, split: str) -> set[str]:
        """File names (relative to the world folder) of `split`'s images whose mark is hidden."""
        path = self.root / MARKS_FILE
        return set(json.loads(path.read_text(encoding="utf-8")).get(split, [])) if path.is_file() else set()


def load_world(root) -> World:
    return World(root)
