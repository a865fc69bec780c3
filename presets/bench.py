"""`make bench`'s accuracy section: every method of the paper on the `bench` world (240 labels).

    python -m benchmarks.run --only accuracy --budget-min 45   # RUN, epochs sized to the budget
    python -m benchmarks.run --only accuracy --quick           # SMOKE: the tiny world

The image-only and feature-modulation epochs of RUN are placeholders: the bench times the first
image-only epoch and sizes both to --budget-min (benchmarks.accuracy.budget_epochs).
"""
from presets import Settings, tiny

# 6 supercategories x 10 genera x 4 species = 240 labels of 64 px images, long-tailed 300..20 per label.
WORLD = dict(supercategories=6, genera_per_supercategory=10, species_per_genus=4, image_size=64,
             train_max=300, train_min=20, val_per_species=20, mark_hidden_rate=0.5)

RUN = Settings(world="bench", image_size=64, alpha=0.35, batch_size=32, image_epochs=1, geo_epochs=20,
               featuremod_epochs=1, calibration_samples=200, sdk_examples=0)
SMOKE = tiny.RUN.replace(sdk_examples=0)
