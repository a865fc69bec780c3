"""Assemble a world (species, appearance, ranges, image records; deterministic in the seed) and
write it atomically in the iNaturalist 2021 layout."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mobile_sdk.fileio import check_replaceable, staged_folder
from trainer.world.appearance import BODY_PLANS, PATTERNS, genus_appearance, render, species_appearance
from trainer.world.grid import RangeGrid
from trainer.world.load import MARKS_FILE, WORLD_FORMAT, WORLD_VERSION
from trainer.world.presets import get_preset
from trainer.world.ranges import observation_ranges, procedural_ranges

_SYLLABLES = ("ka", "lo", "mi", "ra", "te", "vu", "sen", "dor", "pha", "xi", "qua", "bel", "tor", "nym", "zo", "cri")
_EPITHETS = ("borealis", "australis", "occidentalis", "orientalis", "montana", "minor", "major", "rufa",
             "viridis", "maculata", "lineata", "vulgaris", "elegans", "ornata", "pallida", "obscura")


def _names(rng, n_genera, per_genus):
    genera, seen = [], set()
    while len(genera) < n_genera:
        name = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        if name not in seen:
            seen.add(name)
            genera.append(name)
    epithets = [list(rng.permutation(_EPITHETS)[:per_genus]) for _ in genera]
    return genera, epithets


def _long_tail_counts(n, hi, lo, rng):
    """Log-uniform over ranks from `hi` to `lo`, ranks shuffled across species."""
    ranks = rng.permutation(n)
    return np.round(hi * (lo / hi) ** (ranks / max(n - 1, 1))).astype(int)


def build_world(preset="demo", seed: int = 0, observations=None):
    """Everything but the pixels: (preset, species, ranges, grid, records). `preset` is a name or a
    Preset. Each record says whether its image hides the diagnostic mark."""
    preset = get_preset(preset)
    if preset.species_per_genus > len(_EPITHETS) or preset.supercategories > len(BODY_PLANS):
        raise ValueError("preset too large for the name/body-plan tables")
    rng = np.random.default_rng(seed)
    n_genera = preset.supercategories * preset.genera_per_supercategory
    genus_names, epithets = _names(rng, n_genera, preset.species_per_genus)
    species, genera = [], []
    for g in range(n_genera):
        plan = BODY_PLANS[g // preset.genera_per_supercategory]
        if g % preset.genera_per_supercategory == 0:
            # Genera of one body plan differ in pattern type and body hue, so look-alikes are
            # mostly confused within their genus (as in real fine-grained data).
            patterns = rng.permutation(PATTERNS)
            hues = (rng.uniform() + np.arange(preset.genera_per_supercategory) / preset.genera_per_supercategory) % 1.0
        k = g % preset.genera_per_supercategory
        look = genus_appearance(rng, plan, str(patterns[k % len(PATTERNS)]), float(hues[k]))
        members = []
        for m, e in enumerate(epithets[g]):
            members.append(len(species))
            species.append({"id": len(species), "name": f"{genus_names[g]} {e}", "genus": genus_names[g],
                            "supercategory": plan,
                            "appearance": species_appearance(look, rng, preset.subtlety, m, len(epithets[g]))})
        genera.append(members)
    grid = RangeGrid()
    range_rng = np.random.default_rng([seed, 1])
    ranges = (observation_ranges(grid, genera, observations, range_rng) if observations
              else procedural_ranges(grid, genera, preset, range_rng))
    train_counts = _long_tail_counts(len(species), preset.train_max, preset.train_min, rng)
    spread = max(1, preset.val_per_species // 5)
    val_counts = rng.integers(preset.val_per_species - spread, preset.val_per_species + spread + 1, size=len(species))
    for sp, r, nt, nv in zip(species, ranges, train_counts, val_counts):
        sp.update(range=r["params"], train_count=int(nt), val_count=int(nv))
    # Its own stream, so the difficulty knob changes which marks are hidden and nothing else.
    hide_rng = np.random.default_rng([seed, 2])
    records = {}
    next_id = 0
    for split, counts in (("train", train_counts), ("val", val_counts)):
        rows = []
        for sp, r, count in zip(species, ranges, counts):
            cells = rng.choice(r["cells"], size=count, p=r["probs"])
            locs = grid.sample_in_cells(cells, rng)
            missing = rng.uniform(size=count) < (preset.missing_location_rate if split == "train" else 0.0)
            hidden = hide_rng.uniform(size=count) < preset.mark_hidden_rate
            for k in range(count):
                day = int(rng.integers(0, 3 * 365))
                rows.append({"id": next_id, "label": sp["id"], "file_name": f"{split}/{sp['id']:04d}/{next_id:06d}.jpg",
                             "latitude": None if missing[k] else round(float(locs[k, 0]), 6),
                             "longitude": None if missing[k] else round(float(locs[k, 1]), 6),
                             "date": f"{2018 + day // 365}-{1 + (day % 365) // 31:02d}-{1 + day % 28:02d}",
                             "seed": int(rng.integers(2 ** 63)), "mark_hidden": bool(hidden[k])})
                next_id += 1
        records[split] = rows
    return preset, species, ranges, grid, records


def _coco_doc(species, rows):
    return {
        "info": {"description": "geoaware benchmark world", "version": WORLD_VERSION},
        "images": [{k: r[k] for k in ("id", "file_name", "latitude", "longitude", "date")} for r in rows],
        "annotations": [{"id": r["id"], "image_id": r["id"], "category_id": r["label"]} for r in rows],
        "categories": [{"id": sp["id"], "name": sp["name"], "supercategory": sp["supercategory"], "genus": sp["genus"]}
                       for sp in species],
    }


def _dump_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def _encode_jpeg(pixels, quality):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_world(out, preset="demo", seed: int = 0, observations=None, force: bool = False,
                progress: bool = True) -> Path:
    """Generate the world into `out` atomically (a temp folder renamed into place). Returns `out`."""
    out = Path(out)
    replace = dict(marker="world.json", force=force, command="trainer.world")  # world.json is written last
    check_replaceable(out, **replace)  # before the work, and again at the swap
    preset_name = preset if isinstance(preset, str) else "custom"
    preset, species, ranges, grid, records = build_world(preset, seed, observations)
    with staged_folder(out, **replace) as tmp:
        total = sum(len(r) for r in records.values())
        with tqdm(total=total, desc=f"world {preset_name} seed {seed}", unit="img", disable=not progress) as bar:
            for split, rows in records.items():
                for r in rows:
                    rng = np.random.default_rng(r["seed"])
                    pixels = render(species[r["label"]]["appearance"], rng, preset.image_size, r["mark_hidden"])
                    path = tmp / r["file_name"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(_encode_jpeg(pixels, int(rng.integers(80, 96))))
                    bar.update()
                _dump_json(_coco_doc(species, rows), tmp / f"{split}.json")
        offsets = np.cumsum([0] + [len(r["cells"]) for r in ranges])
        np.savez_compressed(tmp / "ranges.npz", grid_deg=np.float64(grid.grid_deg), offsets=offsets,
                            cells=np.concatenate([r["cells"] for r in ranges]).astype(np.int64),
                            probs=np.concatenate([r["probs"] for r in ranges]),
                            label_names=np.array([sp["name"] for sp in species]))
        _dump_json({split: [r["file_name"] for r in rows if r["mark_hidden"]] for split, rows in records.items()},
                   tmp / MARKS_FILE)
        _dump_json({"format": WORLD_FORMAT, "version": WORLD_VERSION, "preset": preset_name, "seed": seed,
                    "observations": str(observations) if observations else None,
                    "settings": dataclasses.asdict(preset), "image_size": preset.image_size,
                    "grid_deg": grid.grid_deg,
                    "supercategories": sorted({sp["supercategory"] for sp in species}),
                    "species": species}, tmp / "world.json")
    return out
