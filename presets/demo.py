"""`make demo`: the whole system on the `demo` world, end to end, on 2 cores.

    python -m pipelines.demo                  # RUN (what `make demo` runs)
    python -m pipelines.demo --quick          # SMOKE: the tiny world, a few steps per stage

Measured on the 2-core dev machine while it was shared with other work, seed 0, the world of
WORLD below. First full run (load 9-16): world 94 s; image-only 29 epochs to its plateau (kept 26),
about 57 s each (1,644 s); then every stage from post-processing on rerun on that image run with
the current recipe (load 5-9): post-processing 159 epochs (kept 129 on its tuning loss, 145 s with
the logits cache); feature modulation 167 s and the image control 163 s (3 epochs each);
evaluation 67 s; the two exports 69 s and 37 s; fusion 8 s; the range map's geo model on
observations alone 17 s; range map and examples 28 s: about 41 minutes in all. Not timed on an
idle machine.
"""
from presets import Settings, tiny

# 4 supercategories x 4 genera x 3 species = 48 labels of 64 px images, long-tailed 400..50 per label
# (18 tail labels under 100; trained from scratch, a species with 25 images had its visible mark read
# 13% of the time), the diagnostic mark hidden in 40% of images: an ideal image model reaches 72.8%,
# the oracle 84.3% (`python -m trainer.world.ideal --preset demo`).
WORLD = dict(supercategories=4, genera_per_supercategory=4, species_per_genus=3, image_size=64,
             train_max=400, train_min=50, val_per_species=30, mark_hidden_rate=0.4)

# image_epochs is a cap: the image baseline trains to the plateau of its tuning top-1 (patience 3)
# before any geo model starts from it. geo_epochs is a cap too: post-processing (patience 30) still
# improved after 100 epochs on the previous demo world (docs/training.md).
RUN = Settings(world="demo", image_size=64, alpha=0.35, batch_size=32, image_epochs=30, geo_epochs=200,
               featuremod_epochs=3, calibration_samples=100, sdk_examples=6, geoprior_epochs=40)
SMOKE = tiny.RUN
