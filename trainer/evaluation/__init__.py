"""Evaluation without TensorFlow at import: metrics and the paper's tables (`metrics`), geolocation
priors (`priors`), roll-up answers (`rollup`), expected-nearby
recall (`nearby`), the report (`report`) and a model over a dataset,
cached on disk (`inference`). The command is `python -m trainer.evaluate`."""
