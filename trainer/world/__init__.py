"""The benchmark world: a seeded, fine-grained, geolocated species dataset with KNOWN range densities.

    python -m trainer.world --out DIR [--preset tiny|demo|bench] [--seed N] [--observations FILE] [--force]

writes, in the iNaturalist 2021 layout (so `trainer.data.readers` reads it with no special case):
    DIR/train.json, DIR/val.json    images[{id, file_name, latitude, longitude, date}],
                                    annotations[{image_id, category_id}], categories[{id, name, supercategory, genus}]
    DIR/train/LLLL/IIIIII.jpg ...   the images (JPEG)
    DIR/world.json                  preset, seed, species (genus, supercategory, counts, range parameters)
    DIR/ranges.npz                  each species' TRUE range density (see `load.World.density`)
    DIR/hidden_marks.json           the images whose diagnostic mark is hidden, per split

It is built to sit in the paper's regime (image-only MobileNet V2 near 60% top-1, location adding
roughly 10-15 points):
- Image-only accuracy is limited by what the image shows: genera are easy to tell apart, but the
  members of a genus are look-alikes told apart only by one diagnostic mark, hidden in a set
  fraction of images (`Preset.mark_hidden_rate`, the difficulty knob). A hidden-mark photo shows
  only the genus, and no amount of training recovers the species from it.
- Ranges at realistic scales: sister species abut or partly overlap (a few hundred km), and some
  look-alikes are sympatric (`Preset.sympatric_rate`), so location separates some hidden-mark
  look-alikes, not all, and the geo model's spatial resolution matters.
- Training counts are long-tailed (log-uniform over ranks: head >= 100, tail < 100 images per
  species); validation counts are nearly uniform, as in iNaturalist.

Ranges are piecewise constant on a grid of `grid.GRID_DEG` cells: each species has a probability
per cell, and a location is drawn by picking a cell, then a point uniform on the sphere inside it,
so the density `World.density` reports is EXACTLY the one sampled from and integrates to 1 over
the sphere. Procedural ranges (default) are mixtures of von Mises-Fisher blobs masked to land by
`global-land-mask`; with `--observations` (CSV or npz of label/lat/lon, e.g. the shared
inat500_observations.npz) each species takes a real taxon's range as a vMF kernel density over its
observations, genus members being given taxa whose ranges overlap only partly.

One idea per file: `presets` (sizes and difficulty), `grid` (the cell grid), `ranges` (range
densities), `appearance` (body plans, marks, the renderer), `build` (assembly and writing),
`load` (reading a world back: `load_world(DIR).density(latlon)`), `oracle` (a world's true density
in a run's label order, for the oracle bound).
"""
