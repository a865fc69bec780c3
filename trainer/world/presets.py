"""World presets: the sizes and the difficulty of each benchmark world (`tiny`, `demo`, `bench`)."""
from __future__ import annotations

import dataclasses

import presets


@dataclasses.dataclass(frozen=True)
class Preset:
    supercategories: int
    genera_per_supercategory: int
    species_per_genus: int
    image_size: int
    train_max: int  # images of the most common species
    train_min: int  # images of the rarest species
    val_per_species: int
    # The difficulty knob: the fraction of images whose one diagnostic mark (the species' colour
    # patch) is hidden by an occluding leaf. Such an image shows only the genus, so image-only
    # top-1 is capped near (1 - h) + h / species_per_genus however long a model trains.
    mark_hidden_rate: float = 0.55
    # Other offsets of a species from its genus mean (colour, pattern, shape), in units of the
    # individual variation: small, so a hidden mark is not recoverable from them.
    subtlety: float = 0.3
    range_sigma_deg: tuple = (1.5, 3.5)  # vMF blob spread (about 170-390 km)
    # Genus members' range centres from the genus centre: sister species abut or partly overlap.
    member_separation_deg: tuple = (1.5, 4.0)
    sympatric_rate: float = 0.25  # chance a member shares the genus centre (location cannot separate it)
    missing_location_rate: float = 0.01  # train images without a location (iNat has some)

    def __post_init__(self):
        if not 0.0 <= self.mark_hidden_rate <= 1.0:
            raise ValueError(f"mark_hidden_rate must lie in [0, 1], got {self.mark_hidden_rate}")
        if not 0.0 <= self.sympatric_rate <= 1.0:
            raise ValueError(f"sympatric_rate must lie in [0, 1], got {self.sympatric_rate}")


# The sizes and difficulty of each named world live with their experiment, in presets/NAME.py
# (the top-level data package) as `WORLD`, the keyword arguments of Preset.
PRESETS = {name: Preset(**presets.load(name).WORLD) for name in presets.NAMES}


def get_preset(preset) -> Preset:
    """A Preset from its name (or a Preset itself, e.g. a `dataclasses.replace`d one)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]
