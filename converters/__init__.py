"""geoaware converters: quantized TFLite export and app-ready bundles."""
import sys

if sys.argv[:1] == ["-m"]:  # `python -m converters.X` is starting a command: quiet TensorFlow (trainer.console)
    from trainer import console

    console.install()
