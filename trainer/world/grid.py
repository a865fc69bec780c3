"""The equal-angle cell grid on which every range density is piecewise constant."""
from __future__ import annotations

import numpy as np

GRID_DEG = 0.5


class RangeGrid:
    """Cells of `grid_deg` degrees; a location is drawn by picking a cell, then a point uniform on
    the sphere inside it, so probability / cell area is EXACTLY the density sampled from."""

    def __init__(self, grid_deg: float = GRID_DEG):
        self.grid_deg = float(grid_deg)
        self.n_lat = int(round(180 / grid_deg))
        self.n_lon = int(round(360 / grid_deg))
        lat_edges = np.linspace(-90.0, 90.0, self.n_lat + 1)
        band = np.radians(grid_deg) * (np.sin(np.radians(lat_edges[1:])) - np.sin(np.radians(lat_edges[:-1])))
        self.cell_area = np.repeat(band, self.n_lon)  # steradians; sums to 4*pi
        self.lat_edges = lat_edges

    @property
    def size(self) -> int:
        return self.n_lat * self.n_lon

    def centres(self, cells=None) -> np.ndarray:
        cells = np.arange(self.size) if cells is None else np.asarray(cells)
        i, j = np.divmod(cells, self.n_lon)
        return np.stack([-90.0 + (i + 0.5) * self.grid_deg, -180.0 + (j + 0.5) * self.grid_deg], axis=1)

    def cell_of(self, lat, lon) -> np.ndarray:
        i = np.clip(np.floor((np.asarray(lat) + 90.0) / self.grid_deg).astype(np.int64), 0, self.n_lat - 1)
        j = np.floor((np.asarray(lon) + 180.0) / self.grid_deg).astype(np.int64) % self.n_lon
        return i * self.n_lon + j

    def sample_in_cells(self, cells, rng) -> np.ndarray:
        """Points uniform on the sphere inside each cell (uniform in lon and in sin(lat))."""
        i, j = np.divmod(np.asarray(cells), self.n_lon)
        # Stay a hair inside the cell so 6-decimal rounding in the JSON cannot cross an edge.
        margin = 1e-4 / self.grid_deg
        u = rng.uniform(margin, 1 - margin, size=(len(i), 2))
        s0, s1 = np.sin(np.radians(self.lat_edges[i])), np.sin(np.radians(self.lat_edges[i + 1]))
        lat = np.degrees(np.arcsin(s0 + u[:, 0] * (s1 - s0)))
        lon = -180.0 + (j + u[:, 1]) * self.grid_deg
        return np.stack([lat, lon], axis=1)

    def area_weights(self, cells) -> np.ndarray:
        w = self.cell_area[cells]
        return w / w.sum()
