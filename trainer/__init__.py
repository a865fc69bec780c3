"""geoaware trainer: datasets, the benchmark world, geo-aware models, training and evaluation."""
