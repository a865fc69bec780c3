"""`make demo`: the whole system on the `demo` world, budgeted to ~15 minutes on 2 cores.

    python -m pipelines.demo                  # RUN (what `make demo` runs)
    python -m pipelines.demo --quick          # SMOKE: the tiny world, a few steps per stage

Measured on the 2-core dev machine before the world's version 2, the image control and the fusion
stages: `make demo ARGS=--fresh` with RUN took 7 min 17 s (load ~1; venv already installed): world
36 s, image 228 s, post-processing 22 s, feature modulation 88 s, the rest 60 s. The current demo
has not been timed on an idle machine.
"""
from presets import Settings, tiny

# 4 supercategories x 4 genera x 3 species = 48 labels of 64 px images, long-tailed 400..25 per label.
WORLD = dict(supercategories=4, genera_per_supercategory=4, species_per_genus=3, image_size=64,
             train_max=400, train_min=25, val_per_species=30)

# image_epochs is a cap: the image baseline trains to the plateau of its tuning top-1 (patience 3)
# before any geo model starts from it.
RUN = Settings(world="demo", image_size=64, alpha=0.35, batch_size=32, image_epochs=30, geo_epochs=100,
               featuremod_epochs=3, calibration_samples=100, sdk_examples=6)
SMOKE = tiny.RUN
