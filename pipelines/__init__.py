"""Pipelines: whole-system runs over every wing (world -> training -> export -> SDK), e.g. `make demo`.

The top of the import picture: `mobile_sdk <- trainer <- converters <- pipelines <- benchmarks`.
`pipelines.stages` is the resumable stage engine; `pipelines.demo` is `make demo`.
"""
import sys

if sys.argv[:1] == ["-m"]:  # `python -m pipelines.X` is starting a command: quiet TensorFlow (trainer.console)
    from trainer import console

    console.install()
