"""The smallest world and model: the tests and every smoke run (`--quick`) use it; seconds per stage.

    python -m trainer.world --out /tmp/tiny --preset tiny
    python -m pipelines.demo --quick          # the demo's smoke variant runs on it
"""
from presets import Settings

# 2 supercategories x 2 genera x 2 species = 8 labels of 32 px images.
WORLD = dict(supercategories=2, genera_per_supercategory=2, species_per_genus=2, image_size=32,
             train_max=120, train_min=12, val_per_species=8)

RUN = Settings(world="tiny", image_size=32, alpha=0.35, batch_size=16, image_epochs=1, geo_epochs=2,
               featuremod_epochs=1, calibration_samples=8, sdk_examples=3, steps_per_epoch=4, geoprior_epochs=2)
SMOKE = RUN
