"""geoaware trainer: datasets, the benchmark world, geo-aware models, training and evaluation."""
import sys

if sys.argv[:1] == ["-m"]:  # `python -m trainer.X` is starting a command, not importing a library
    from trainer import console

    console.install()
