"""Presets: every size and epoch count of an experiment, as data, in one small file per experiment.

    presets/tiny.py    the smallest world and model: tests and every `--quick` smoke run
    presets/demo.py    `make demo`
    presets/bench.py   `make bench` (its accuracy section)

Each file has a docstring with the command that runs it, `WORLD` (the keyword arguments of
`trainer.world.presets.Preset`: what `python -m trainer.world --preset NAME` generates) and, for an
experiment, `RUN` (the `Settings` of its stages) and `SMOKE` (its smoke variant). The demo, the
bench, the world generator, the tests and the docs read these files; change a number here, not there.
This package imports nothing from the project, so every wing may read it.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

NAMES = ("tiny", "demo", "bench")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The sizes of one experiment's stages (world -> training -> export -> SDK examples)."""

    world: str  # the world preset (a name in NAMES)
    image_size: int
    alpha: float  # MobileNet V2 width multiplier
    batch_size: int
    image_epochs: int  # image-only training from scratch
    geo_epochs: int  # the post-processing geo net on the frozen image model
    featuremod_epochs: int  # feature modulation fine-tuned from the image-only weights
    calibration_samples: int  # int8 export calibration images
    sdk_examples: int  # validation images shown classified through the SDK
    steps_per_epoch: int | None = None  # cap (smoke runs only)
    # A geo model on the world's observations alone (trainer.train --model geoprior, its default
    # recipe but this batch size and epochs; the best epoch on its validation observations is kept),
    # drawn on the range map beside the post-processing geo net; None: not trained.
    geoprior_epochs: int | None = None
    geoprior_batch_size: int = 256

    def epochs(self, kind: str) -> int:
        return {"image": self.image_epochs, "postprocess": self.geo_epochs, "featuremod": self.featuremod_epochs}[kind]

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def load(name: str) -> ModuleType:
    """The preset file `presets/NAME.py`; a ValueError names the choices for an unknown name."""
    if name not in NAMES:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")
