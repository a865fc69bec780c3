"""Pipelines: whole-system runs over every wing (world -> training -> export -> SDK), e.g. `make demo`.

The top of the import picture: `mobile_sdk <- trainer <- converters <- pipelines <- benchmarks`.
`pipelines.stages` is the resumable stage engine; `pipelines.demo` is `make demo`.
"""
